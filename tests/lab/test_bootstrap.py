"""`clusterctl bootstrap` on the 3-node lab: from fresh nodes to a verified Ray cluster,
idempotent, exact under --check, safe about MTU, and isolating a dead node."""
import json
import re
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


def assert_others_fine(recap: dict, victim: str) -> None:
    """Every host but the victim converged: none failed, none unreachable."""
    for name, r in recap.items():
        if name != victim:
            assert r["failed"] == 0 and not r["unreachable"], (name, r)


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


def _sent_mb(message: str) -> tuple[float, float]:
    """(size, what the controller sent) in MB from a fanned-out task's message."""
    m = re.search(r"([\d.]+) MB\b.*the controller sent ([\d.]+) MB for (\d+) nodes", message)
    assert m, message
    return float(m.group(1)), float(m.group(2))


def test_software_leaves_the_controller_once(converged, lab):
    """The Debian packages, the venv's wheels and the llama.cpp build travel the relay
    chain: the controller sends one copy for the three nodes, every node holds the same
    verified wheel set and installed from that local folder only."""
    by_task: dict[str, list] = {}
    for r in converged["results"]:
        by_task.setdefault(r["task"], []).append(r)
    [pip] = [rs for t, rs in by_task.items() if t.endswith("python packages (pinned)")]
    assert sorted(r["host"] for r in pip) == sorted(n.name for n in lab.nodes)
    set_ids = set()
    for r in pip:
        assert r["status"] == "changed", r
        size, sent = _sent_mb(r["message"])
        assert 0 < sent <= size * 1.01 + 1, r["message"]          # one copy, not three
        set_ids.add(re.search(r"wheel set ([0-9a-f]{16})", r["message"]).group(1))
        [cmd] = r["commands"]
        assert "--no-index" in cmd and "--index-url" not in cmd, cmd
    [set_id] = set_ids
    folder = f"/var/cache/clusterctl/wheels/{set_id}"
    for r in pip:
        assert f"--find-links {folder} " in r["commands"][0]
    [apt] = [rs for t, rs in by_task.items() if t.endswith("build and network tools")]
    for r in apt:
        assert r["status"] == "changed" and "fanned out as set" in r["message"], r
        size, sent = _sent_mb(r["message"])
        assert 0 < sent <= size * 1.01 + 1, r["message"]
    [build] = [rs for t, rs in by_task.items() if t.endswith("llama.cpp with RPC")]
    shipped = [r for r in build if "the controller sent" in r["message"]]
    assert shipped, build
    for r in shipped:
        size, sent = _sent_mb(r["message"])
        assert 0 < sent <= size * 1.01 + 1, r["message"]
    inv = load_inventory(lab.inventory_path)
    listings = {}
    for host in inv.hosts.values():
        res = node_run(host, f"cd {folder} && sha256sum *.whl")
        assert res.ok, (host.name, res.stderr)
        listings[host.name] = res.stdout
    assert len(set(listings.values())) == 1, listings
    record = json.loads(node_run(inv.head, f"cat {folder}/WHEELS.json").stdout)
    assert {ln.split()[1]: ln.split()[0] for ln in listings[inv.head.name].splitlines()} \
        == record["files"]


def test_ray_status_lists_every_node(converged, lab):
    inv = load_inventory(lab.inventory_path)
    head = inv.head
    venv = head.vars["python"]["venv"]
    res = node_run(head, f"{venv}/bin/ray status --address={head.address}:6379")
    assert res.ok, res.stderr
    active = res.stdout.split("Active:")[1].split("Pending:")[0]
    assert len([ln for ln in active.splitlines() if "node_" in ln]) == 3, res.stdout


def test_ray_check_totals_equal_ray_status(converged, lab):
    """The Ray check (a task of the run, in the recap and JSON) waits until every node's
    resources are registered: its CPU total is what `ray status` says."""
    from clusterctl.engine.raycheck import parse_ray_status_totals
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0 and report["exit_code"] == 0, err[-3000:]
    ray = [r for r in report["results"] if r["task"].endswith("every node joined the Ray "
                                                                "cluster")]
    assert sorted(r["host"] for r in ray) == sorted(n.name for n in lab.nodes)
    assert all(r["status"] == "ok" for r in ray), ray
    [summary] = [r["message"] for r in ray if r["message"].startswith("ray: ")]
    cpus = float(summary.split(" CPU")[0].rsplit(" ", 1)[-1])
    inv = load_inventory(lab.inventory_path)
    venv = inv.head.vars["python"]["venv"]
    status = node_run(inv.head, f"{venv}/bin/ray status --address={inv.head.address}:6379")
    assert parse_ray_status_totals(status.stdout)["CPU"] == cpus, (summary, status.stdout)


def test_ray_check_names_a_worker_that_cannot_join(converged, lab):
    """A worker cut off from the head (partition) and restarted by the run never joins:
    exit 1, that worker failed in the recap with its unit's journal, the others ok, and
    the JSON agrees with the exit code."""
    import time
    from clusterctl.engine.raycheck import FETCH_JSON, parse_state_nodes
    inv = load_inventory(lab.inventory_path)
    victim = inv.hosts[lab.nodes[2].name]
    assert node_run(victim, "systemctl stop ray-worker.service").ok
    labs.fault(lab.name, victim.name, "partition", "")
    try:
        # Ray keeps a stopped node ALIVE until its health checks time out: wait for the
        # head to drop it, so the run's check meets a worker that really cannot join
        url = f"http://{inv.head.address}:8265/api/v0/nodes?limit=100"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            res = node_run(inv.head, ["python3", "-c", FETCH_JSON, url])
            alive = {n.get("node_ip") for n in parse_state_nodes(res.stdout)
                     if n.get("state") == "ALIVE"} if res.ok else set()
            if res.ok and victim.address not in alive:
                break
            time.sleep(3)
        else:
            pytest.fail("the head never marked the stopped worker dead")
        code, report, err = bootstrap_json(lab.inventory_path)
        assert code == 1 and report["exit_code"] == 1, err[-3000:]
        recap = report["recap"]
        assert recap[victim.name]["failed"] == 1
        assert "has not joined the Ray cluster" in recap[victim.name]["error"]
        assert "ray-worker.service" in recap[victim.name]["error"]
        assert_others_fine(recap, victim.name)
    finally:
        labs.heal(lab.name, victim.name)
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]


def test_sigterm_ends_a_bootstrap_with_143_and_a_message(converged, lab):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "clusterctl.cli", "bootstrap",
                             str(lab.inventory_path), "--forks", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        out_first = proc.stdout.readline()          # "PLAY base packages ..."
        assert "PLAY" in out_first, out_first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out[-2000:], err[-2000:])
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    # the cluster lock went with the run: the next one is not refused
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]


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
        assert_others_fine(recap, victim.name)
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
        assert_others_fine(recap, victim.name)
    finally:
        labs.heal(lab.name, victim.name)
    code, report, err = bootstrap_json(lab.inventory_path)
    assert code == 0, err[-3000:]
    assert report["recap"][victim.name]["changed"] >= 1
    assert node_run(victim, "test -f /etc/profile.d/clusterctl-nccl.sh").ok
