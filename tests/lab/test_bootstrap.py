"""`clusterctl bootstrap` on the 3-node lab: from fresh nodes to a verified Ray cluster,
idempotent, exact under --check, safe about MTU, and isolating a dead node."""
import json
import subprocess
import sys

import pytest

from clusterctl import lab as labs
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection

pytestmark = pytest.mark.lab


def clusterctl(*args, timeout=1800):
    proc = subprocess.run([sys.executable, "-m", "clusterctl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc


def bootstrap_json(inv_path, *extra):
    proc = clusterctl("bootstrap", str(inv_path), "--json", *extra)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"bootstrap printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode, report, proc.stderr


def node_run(host, cmd):
    with Connection(host) as c:
        return c.run(cmd, check=False)


@pytest.fixture(scope="module")
def converged(lab):
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-4000:]
    return report


def test_first_converge_changes_every_node_and_verifies_ray(converged, lab):
    recap = converged["recap"]
    assert sorted(recap) == sorted(n.name for n in lab.nodes)
    for host, r in recap.items():
        assert r["failed"] == 0 and not r["unreachable"], (host, r)


def test_second_run_changes_nothing(converged, lab):
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]
    changed = [r for r in report["results"] if r["status"] == "changed"]
    assert changed == [], changed
    assert "3 node(s) alive" in err


def test_check_on_converged_cluster_reports_nothing(converged, lab):
    code, report, err = bootstrap_json(lab.inventory_path, "--check")
    assert code == 0, err[-3000:]
    assert all(r["changed"] == 0 for r in report["recap"].values())


def test_ray_status_lists_every_node(converged, lab):
    inv = load_inventory(lab.inventory_path)
    head = inv.head
    venv = head.vars["python"]["venv"]
    res = node_run(head, f"{venv}/bin/ray status --address={head.address}:6379")
    assert res.ok, res.stderr
    active = res.stdout.split("Active:")[1].split("Pending:")[0]
    assert len([ln for ln in active.splitlines() if "node_" in ln]) == 3, res.stdout


def test_testinfra_suite_passes(converged, lab):
    proc = clusterctl("verify", str(lab.inventory_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_mtu_fault_rolls_back_that_node_only(converged, lab):
    inv = load_inventory(lab.inventory_path)
    victim = inv.hosts[lab.nodes[1].name]
    iface = "eth0"
    # a node that still runs at 1500, under a switch port that only carries 1500
    res = node_run(victim, f"rm -rf /etc/systemd/network/*.network.d/90-clusterctl-mtu.conf; "
                           f"ip link set dev {iface} mtu 1500")
    assert res.ok, res.stderr
    labs.fault(lab.name, victim.name, "port-mtu", "1500")
    try:
        code, report, err = bootstrap_json(lab.inventory_path)
        assert code == 1
        recap = report["recap"]
        assert recap[victim.name]["failed"] == 1
        assert "jumbo frames (9000) do not pass" in recap[victim.name]["error"]
        assert "rolled back to mtu 1500" in recap[victim.name]["error"]
        for name, r in recap.items():
            if name != victim.name:
                assert r["failed"] == 0 and not r["unreachable"], (name, r)
        mtu = node_run(victim, f"cat /sys/class/net/{iface}/mtu").stdout.strip()
        assert mtu == "1500"
        assert node_run(victim, "true").ok      # still reachable
    finally:
        labs.heal(lab.name, victim.name)
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]
    assert node_run(victim, f"cat /sys/class/net/{iface}/mtu").stdout.strip() == "9000"


def test_down_node_fails_alone_and_converges_later(converged, lab):
    inv = load_inventory(lab.inventory_path)
    victim = inv.hosts[lab.nodes[2].name]
    node_run(victim, "rm -f /etc/profile.d/clusterctl-nccl.sh")   # drift to repair later
    labs.fault(lab.name, victim.name, "down", "")
    try:
        code, report, err = bootstrap_json(lab.inventory_path, "--skip-verify")
        assert code == 1
        recap = report["recap"]
        assert recap[victim.name]["unreachable"]
        for name, r in recap.items():
            if name != victim.name:
                assert r["failed"] == 0 and not r["unreachable"], (name, r)
    finally:
        labs.heal(lab.name, victim.name)
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]
    assert report["recap"][victim.name]["changed"] >= 1
    assert node_run(victim, "test -f /etc/profile.d/clusterctl-nccl.sh").ok
