"""The sync report (JSON, exit code, rendering), CLI helpers, cluster IP choice (pure)."""
import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from clusterctl.facts import FactRequest, Facts, Interface
from clusterctl.cli.sync import node_states_text, parse_rate, short_names, sync_model_command
from clusterctl.sync.manifest import Manifest
from clusterctl.sync.nodes import cluster_ip_of, guess_cluster_ip
from clusterctl.sync.report import (FAILED, SYNCED, UNCHANGED, NodeReport, RoundReport,
                                    SyncReport, render, to_json)


def _report():
    m = Manifest.from_scan({"kind": "dir", "files": [
        {"path": "a", "size": 2_000_000_000, "mtime_ns": 1, "sha256": "a" * 64}]}, "m")
    r = SyncReport(source="/data/m", name="m", destination="/opt/models/m", manifest=m)
    r.nodes = {"n1": NodeReport("n1", SYNCED, 1, 1, 2_000_000_000, check="sha256"),
               "n2": NodeReport("n2", UNCHANGED, 1),
               "n3": NodeReport("n3", FAILED, 1, error="not enough disk space on n3 in "
                                "/opt/models: ...")}
    r.rounds = [RoundReport(1, "controller -> n1", 1, 2_000_000_000, 16.5)]
    r.seconds, r.controller_bytes = 17.2, 2_000_000_000
    return r


def test_json_report():
    data = json.loads(to_json(_report()))
    assert data["ok"] is False and data["failed"] == ["n3"]
    assert data["nodes"]["n1"]["state"] == "synced"
    assert data["nodes"]["n3"]["error"].startswith("not enough disk space")
    assert data["rounds"][0]["chain"] == "controller -> n1"
    assert data["manifest"]["files"][0]["sha256"] == "a" * 64
    assert data["total_bytes"] == 2_000_000_000 and data["controller_bytes"] == 2_000_000_000


def test_exit_code():
    r = _report()
    assert r.exit_code == 1
    r.nodes.pop("n3")
    assert r.ok and r.exit_code == 0


def test_render_names_the_failed_node():
    buf = io.StringIO()
    render(_report(), Console(file=buf, width=120, highlight=False))
    text = buf.getvalue()
    assert "controller -> n1" in text and "n3: not enough disk space" in text
    assert "2.0 GB" in text


@pytest.mark.parametrize("text,value", [("200M", 200_000_000), ("1.5G", 1_500_000_000),
                                        ("800mbit", 100_000_000), ("1gbit", 125_000_000),
                                        ("4096", 4096), ("50MB/s", 50_000_000)])
def test_parse_rate(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "-5M", "0", "1x"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_short_names_and_states():
    assert short_names(["lab-node1", "lab-node2"]) == {"lab-node1": "node1", "lab-node2": "node2"}
    assert short_names(["a1", "a2"]) == {"a1": "a1", "a2": "a2"}
    assert short_names(["solo-1"]) == {"solo-1": "solo-1"}
    text = node_states_text({"lab-n1": "verified", "lab-n2": "42%", "lab-n3": "failed"})
    assert "n1 ✓" in text and "n2 42%" in text and "n3 ✗" in text


def test_cli_rejects_a_bad_bwlimit():
    res = CliRunner().invoke(sync_model_command, ["/tmp", "--bwlimit", "fast"])
    assert res.exit_code == 2 and "--bwlimit" in res.output


def test_cli_bad_inventory_is_one_clear_error(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    h1: {ansible_host: 'not an address!'}\n")
    res = CliRunner().invoke(sync_model_command, [str(tmp_path), "-i", str(inv)])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


class _Host:
    def __init__(self, address, network):
        self.address, self.vars = address, {"cluster": {"network": network}}


def _facts(*ifaces):
    return Facts({FactRequest("interfaces"): list(ifaces)})


LO = Interface("lo", 65536, "UNKNOWN", None, [("127.0.0.1", 8)], "loopback")
ETH0 = Interface("eth0", 1500, "UP", "aa", [("10.0.0.5", 24), ("fe80::1", 64)], "ether")
ETH1 = Interface("eth1", 9000, "UP", "bb", [("198.18.0.7", 24)], "ether")


def test_cluster_ip_inside_the_cluster_network():
    assert cluster_ip_of(_Host("10.0.0.5", "198.18.0.0/24"), _facts(LO, ETH0, ETH1)) \
        == "198.18.0.7"


def test_cluster_ip_is_ansible_host_when_it_is_inside():
    assert cluster_ip_of(_Host("198.18.0.7", "198.18.0.0/15"), _facts(LO, ETH0, ETH1)) \
        == "198.18.0.7"


def test_cluster_ip_by_interface_name_or_default():
    assert cluster_ip_of(_Host("10.0.0.5", "eth1"), _facts(ETH0, ETH1)) == "198.18.0.7"
    assert cluster_ip_of(_Host("10.0.0.5", None), _facts(ETH0, ETH1)) == "10.0.0.5"


def test_no_cluster_ip():
    assert cluster_ip_of(_Host("10.0.0.5", "192.168.0.0/16"), _facts(ETH0, ETH1)) is None


def test_guess_cluster_ip_before_asking_the_node():
    assert guess_cluster_ip(_Host("198.18.5.11", "198.18.5.0/24")) == "198.18.5.11"
    assert guess_cluster_ip(_Host("198.18.5.11", None)) == "198.18.5.11"
    assert guess_cluster_ip(_Host("10.0.0.5", "198.18.5.0/24")) is None   # NAT / other NIC
    assert guess_cluster_ip(_Host("10.0.0.5", "eth1")) is None            # ask the node
    assert guess_cluster_ip(_Host("node1.example", "198.18.5.0/24")) is None


def test_relay_cpu_per_gb_in_json_and_table():
    r = _report()
    r.nodes["n1"].cpu_seconds, r.nodes["n1"].relay_bytes = 3.0, 2_000_000_000
    data = json.loads(to_json(r))
    assert data["nodes"]["n1"]["cpu_seconds_per_gb"] == 1.5
    assert data["nodes"]["n2"]["cpu_seconds_per_gb"] is None      # no relay ran there
    out = io.StringIO()
    render(r, Console(file=out, width=200, highlight=False))
    assert "relay CPU-s/GB" in out.getvalue() and "1.50" in out.getvalue()


def test_cli_json_goes_through_print_json(monkeypatch, tmp_path):
    """--json: strict JSON with schema_version, like every other command."""
    from clusterctl.sync import run as sync_run
    monkeypatch.setattr(sync_run, "sync_model", lambda *a, **kw: _report())
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    n1: {ansible_host: 10.0.0.1, role: head}\n")
    res = CliRunner().invoke(sync_model_command, ["/data/m", "-i", str(inv), "--json"])
    assert res.exit_code == 1, (res.output, res.exception)
    data = json.loads(res.stdout)
    assert data["schema_version"] == 1 and data["failed"] == ["n3"]


def test_lost_says_why_a_node_does_not_hold_the_files():
    rep = SyncReport(source="/m", name="m", destination="/opt/models/m",
                     manifest=Manifest("dir", {}),
                     nodes={"a": NodeReport("a", state=SYNCED),
                            "b": NodeReport("b", state=UNCHANGED),
                            "c": NodeReport("c", state=FAILED, error="disk full"),
                            "d": NodeReport("d")})
    assert rep.lost("a") is None and rep.lost("b") is None
    assert rep.lost("c") == "disk full"
    assert rep.lost("d") == "pending"                     # never finished: not held
    assert rep.lost("e") == "not reached"
