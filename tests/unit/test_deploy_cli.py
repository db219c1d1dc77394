"""The deploy commands' CLI without hosts: plan-model for hypothetical nodes, option errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clusterctl.cli.deploy import deploy_model_command, plan_model_command
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


# ------------------------------------------------------------------ bounded options


@pytest.mark.parametrize("args", [
    ["--gpu-memory-gb", "nan"], ["--gpu-memory-gb", "inf"], ["--gpu-memory-gb", "-1"],
    ["--gpu-memory-utilization", "nan"], ["--nodes", "100000000"], ["--concurrency", "0"],
    ["--gpus-per-node", "100000"], ["--max-model-len", "1e9"], ["--ram-gb", "Infinity"],
    ["--tensor-split", "1,nan", "--backend", "llamacpp"],
])
def test_plan_model_refuses_non_finite_and_unbounded_numbers(tiny, args):
    base = ["--nodes", "2", "--gpus-per-node", "1", "--gpu-memory-gb", "80"]
    res = CliRunner().invoke(plan_model_command, [str(tiny)] + base + args)
    assert res.exit_code == 2, res.output
    assert "Invalid value" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args", [["--name", "../../etc/x"], ["--name", "/etc/x"],
                                  ["--timeout", "nan"], ["--replicas", "99999999"],
                                  ["--gpu-memory-utilization", "inf"],
                                  ["--tensor-split", "inf,1"]])
def test_deploy_model_bad_options_rejected_before_connecting(tmp_path, tiny, monkeypatch,
                                                             args):
    import clusterctl.session as session

    def no_ssh(*a, **k):
        raise AssertionError("connected before checking the options")
    monkeypatch.setattr(session, "Connection", no_ssh)
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 127.0.0.1, role: head}\n")
    res = CliRunner().invoke(deploy_model_command, [str(tiny), "-i", str(inv)] + args)
    assert res.exit_code == 2, res.output
    assert "Invalid value" in res.output


# ------------------------------------------------------------------ JSON, backends, report


def _strict_loads(text: str):
    def refuse(const):
        raise AssertionError(f"non-standard JSON constant {const}")
    return json.loads(text, parse_constant=refuse)


def test_plan_model_json_is_strict_and_versioned(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "1",
                                                  "--gpus-per-node", "1",
                                                  "--gpu-memory-gb", "0.5", "--json"])
    data = _strict_loads(res.output)
    assert res.exit_code == 2 and data["fits"] is False
    assert data["schema_version"] == 1 and data["memory_unit"] == "GiB"
    assert data["max_concurrency"] is None or data["max_concurrency"] >= 0
    assert isinstance(data["alternatives"], list)
    assert all("kind" in a and "text" in a for a in data["alternatives"])


@pytest.fixture
def tiny_gguf(tmp_path):
    pytest.importorskip("gguf")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from test_modelinfo import write_gguf
    path = tmp_path / "tiny.gguf"
    write_gguf(path, layers=4)
    return path


def test_plan_model_gguf_plans_llamacpp_split(tiny_gguf, tmp_path):
    svg = tmp_path / "plan.svg"
    res = CliRunner().invoke(plan_model_command, [str(tiny_gguf), "--nodes", "3",
                                                  "--gpus-per-node", "1",
                                                  "--gpu-memory-gb", "8", "--report",
                                                  str(svg)])
    assert res.exit_code == 0, res.output
    assert "llama-server: --n-gpu-layers 999 --tensor-split" in res.output
    assert "--tensor-parallel-size" not in res.output
    assert "Memory per device (GiB" in res.output and "node2 GPU0 (RPC)" in res.output
    import xml.etree.ElementTree as ET
    assert ET.parse(svg).getroot().tag.endswith("svg")
    res = CliRunner().invoke(plan_model_command, [str(tiny_gguf), "--nodes", "1",
                                                  "--gpus-per-node", "1",
                                                  "--gpu-memory-gb", "8", "--backend", "vllm",
                                                  "--json"])
    data = _strict_loads(res.output)
    assert data["backend"] == "vllm" and data["vllm_args"]


def test_plan_model_report_must_be_svg(tiny):
    res = CliRunner().invoke(plan_model_command, [str(tiny), "--nodes", "1",
                                                  "--gpus-per-node", "1",
                                                  "--gpu-memory-gb", "8", "--report", "x.png"])
    assert res.exit_code == 2 and ".svg" in res.output


def test_plan_model_without_ssh_when_inventory_states_gpus(tmp_path, tiny, monkeypatch):
    import clusterctl.session as session

    def no_ssh(*a, **k):
        raise AssertionError("plan-model connected although the inventory states the GPUs")
    monkeypatch.setattr(session, "Connection", no_ssh)
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n"
                   "    a: {ansible_host: 10.0.0.1, role: head, gpus: 2, gpu_memory_mib: 24564}\n"
                   "    b: {ansible_host: 10.0.0.2, gpus: 2, gpu_memory_mib: 24564}\n")
    res = CliRunner().invoke(plan_model_command, [str(tiny), "-i", str(inv), "--json"])
    assert res.exit_code == 0, res.output
    data = _strict_loads(res.output)
    assert data["fits"] and data["nodes"] == ["a"]


def test_plan_model_asks_hosts_when_gpus_not_stated(tmp_path, tiny, monkeypatch):
    import clusterctl.session as session
    from clusterctl.errors import UnreachableError
    calls = []

    class Refused:
        is_open = False

        def __init__(self, host, **kwargs):
            calls.append([host.name])
            self.name = host.name

        def open(self):
            raise UnreachableError(self.name, "refused")
    monkeypatch.setattr(session, "Connection", Refused)
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 10.0.0.1, role: head}\n")
    res = CliRunner().invoke(plan_model_command, [str(tiny), "-i", str(inv)])
    assert calls == [["a"]] and res.exit_code == 1 and "cannot reach" in res.output


def test_print_json_is_strict_and_versioned():
    import io

    from clusterctl.render import print_json
    buf = io.StringIO()
    print_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": (1, 2)}, file=buf)
    data = _strict_loads(buf.getvalue())
    assert data == {"schema_version": 1, "a": None, "b": [None, 1.5], "c": [1, 2]}
    buf = io.StringIO()
    print_json({"schema_version": 7}, file=buf)
    assert json.loads(buf.getvalue()) == {"schema_version": 7}
    buf = io.StringIO()
    print_json([1, float("-inf")], file=buf)
    assert json.loads(buf.getvalue()) == [1, None]


def test_limit_is_checked_by_status_and_refused_by_undeploy(tmp_path):
    from click.testing import CliRunner
    from clusterctl.cli import main
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 198.18.0.250, role: head}\n")
    res = CliRunner().invoke(main, ["status", "-i", str(inv), "--limit", "nothing*"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["undeploy", "x", "-i", str(inv), "--limit", "a"])
    assert res.exit_code == 2 and "whole deployment" in res.output
