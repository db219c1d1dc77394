"""The deploy commands' CLI without hosts: plan-model for hypothetical nodes, option errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clusterctl.deploy.cli import deploy_model_command, plan_model_command
from clusterctl.deploy.tinymodels import write_tiny_hf


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_hf(tmp_path / "tiny-hf")


def test_plan_model_for_hypothetical_gpu_nodes(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "2",
                                                  "--gpus-per-node", "8",
                                                  "--gpu-memory-gb", "80"])
    assert res.exit_code == 0, res.output
    assert "Plan: FITS" in res.output
    assert "--tensor-parallel-size 1" in res.output


def test_plan_model_json(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "1",
                                                  "--gpus-per-node", "0", "--ram-gb", "16",
                                                  "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["fits"] and data["device"] == "cpu"
    assert data["vllm_args"][:2] == ["--tensor-parallel-size", "1"]
    assert data["model_info"]["head_dim"] == 32


def test_plan_model_that_does_not_fit_exits_2(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "1",
                                                  "--gpus-per-node", "1",
                                                  "--gpu-memory-gb", "1"])
    assert res.exit_code == 2, res.output
    assert "DOES NOT FIT" in res.output


def test_plan_model_option_errors(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "2"])
    assert res.exit_code == 2 and "--gpus-per-node" in res.output
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "2",
                                                  "--gpus-per-node", "4"])
    assert res.exit_code == 2 and "--gpu-memory-gb" in res.output


def test_deploy_model_bad_tensor_split_is_an_input_error(tmp_path, tiny):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 127.0.0.1, role: head}\n")
    res = CliRunner().invoke(deploy_model_command, [str(tiny), "-i", str(inv),
                                                    "--tensor-split", "x,y"])
    assert res.exit_code == 2, res.output
    assert "tensor-split" in res.output
