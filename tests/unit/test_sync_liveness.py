"""A sync whose node stops answering or whose relay freezes, and what earlier runs left on
a node: the round ends within seconds naming the node, the relays still reachable are
stopped, the node is left out of the next chain; run folders of runs that are over go.
The poll loop runs here against stand-in nodes and feeder; the shell scripts run on this
machine against stand-in relays."""
import os
import subprocess
import sys
import threading
import time

import pytest

from clusterctl import session as session_mod
from clusterctl.errors import HostError
from clusterctl.session import parallel_map
from clusterctl.sync import run as sync_run
from clusterctl.sync.nodes import (OTHER_RUN_MARKER, parse_status, stale_runs_script)
from clusterctl.sync.plan import CONTROLLER, Chain
from standins import started  # noqa: F401  (the fixture)

# -- the poll loop --------------------------------------------------------------------


class FakeSession:
    def map(self, fn, items, *, forks, deadline=None):
        return parallel_map(fn, items, forks=forks, deadline=deadline)


class FakeNode:
    """A node's SSH side: status() answers, or raises like a connection cut by its
    timeout; stop() is recorded."""

    def __init__(self, name, status=None, dead=False):
        self.name, self._status, self.dead = name, status or {}, dead
        self.stops = 0
        self.status_calls = 0

    def status(self, role, timeout=30):
        self.status_calls += 1
        if self.dead:
            raise HostError(self.name, f"command timed out after {timeout:g}s "
                                       "(connection cut)")
        return dict(self._status)

    def stop(self):
        self.stops += 1
        self._status = dict(self._status, state="failed", error="stopped", alive=False)


class FakeFeeder:
    """The controller's feeder: records of the nodes it still hears from."""

    def __init__(self, fresh):
        self.fresh = fresh          # names whose records keep arriving
        self.sent = 1000
        self.chain_over = False
        self.stop = threading.Event()
        self.cuts = 0

    def snapshot(self):
        return {n: {"node": n, "state": "receiving", "bytes_in": 500, "current": "w.bin",
                    "forwarding": True} for n in ["a", "b", "c"]}

    def seen_at(self):
        now = time.monotonic()
        return {n: now for n in self.fresh}

    def cut(self):
        self.cuts += 1


@pytest.fixture
def fast(monkeypatch):
    for key, value in {"SILENT_S": 0.3, "PROBE_EVERY": 0.1, "TICK": 0.02,
                       "FALLBACK_INTERVAL": 0.2, "PROBE_TIMEOUT": 1.0,
                       "STALL_TIMEOUT": 30.0}.items():
        monkeypatch.setattr(sync_run, key, value)


def make_job(nodes):
    job = object.__new__(sync_run._SyncJob)
    job.nodes = nodes
    job.dead, job.stop_reason, job.warnings = {}, {}, []
    job.phase_nodes = {n: "" for n in nodes}
    job.progress_fn = None
    job.session = FakeSession()
    job.forks = 4
    return job


def test_a_node_that_stops_answering_ends_the_round_and_is_named(fast):
    alive = {"state": "receiving", "alive": True, "age": 0.1, "bytes_in": 400}
    nodes = {"a": FakeNode("a", alive), "b": FakeNode("b", dead=True),
             "c": FakeNode("c", alive)}
    job = make_job(nodes)
    feeder = FakeFeeder(fresh=["a"])        # b's records stop, and c's behind it
    chain = Chain(CONTROLLER, ["a", "b", "c"])
    started = time.monotonic()
    view, _ = job.poll(chain, feeder, {"a": 2000, "b": 2000, "c": 2000}, 1)
    assert time.monotonic() - started < 20
    assert list(job.dead) == ["b"]
    message = job.dead["b"]
    assert "stopped answering in round 1 while receiving w.bin" in message
    assert "forwarding to c" in message and "timed out" in message
    # the relays still reachable were stopped (partial files stay), the feeder cut
    assert nodes["a"].stops == 1 and nodes["c"].stops == 1 and nodes["b"].stops == 0
    assert feeder.cuts == 1
    assert view["a"]["state"] == "failed" and view["c"]["state"] == "failed"


def test_a_node_that_answers_is_not_dead_while_a_node_before_it_stalls(fast):
    """Nodes behind a dead node are silent too (their records travel through it), but
    they answer the probe: only the dead one is named."""
    alive = {"state": "receiving", "alive": True, "age": 0.1}
    nodes = {"a": FakeNode("a", dead=True), "b": FakeNode("b", alive),
             "c": FakeNode("c", alive)}
    job = make_job(nodes)
    job.poll(Chain(CONTROLLER, ["a", "b", "c"]), FakeFeeder(fresh=[]),
             {"a": 1, "b": 1, "c": 1}, 2)
    assert list(job.dead) == ["a"] and "round 2" in job.dead["a"]


def test_one_missed_probe_is_not_enough(fast, monkeypatch):
    """A node that misses one probe (a loaded machine) and then answers stays in."""
    node = FakeNode("a", {"state": "receiving", "alive": True, "age": 0.1})
    real = node.status

    def flaky(role, timeout=30):
        if node.status_calls == 0:
            node.status_calls += 1
            raise HostError("a", "command timed out after 1s (connection cut)")
        return real(role, timeout)

    node.status = flaky
    job = make_job({"a": node})
    feeder = FakeFeeder(fresh=[])
    box = {}
    t = threading.Thread(target=lambda: box.update(
        r=job.poll(Chain(CONTROLLER, ["a"]), feeder, {"a": 1}, 1)), daemon=True)
    t.start()
    time.sleep(1.5)
    assert job.dead == {} and t.is_alive()
    node._status = dict(node._status, state="done", alive=False)    # the round ends
    t.join(10)
    assert not t.is_alive() and job.dead == {}


def test_a_frozen_relay_is_stopped_and_goes_again_next_round(fast):
    frozen = {"state": "receiving", "alive": True, "age": 60.0}
    nodes = {"a": FakeNode("a", frozen)}
    job = make_job(nodes)
    job.poll(Chain(CONTROLLER, ["a"]), FakeFeeder(fresh=[]), {"a": 1}, 1)
    assert nodes["a"].stops >= 1 and job.dead == {}
    assert "stalled (no status for 60s while receiving)" in job.stop_reason["a"]


def test_the_senders_seen_times_become_local_times():
    seen = sync_run._sender_seen({"seen": {"a": 100.0, "b": 90.0}, "node_time": 101.0,
                                  "read_at": 5000.0})
    assert seen == {"a": 4999.0, "b": 4989.0}
    assert sync_run._sender_seen({}) == {}


def test_parse_status_reads_age_clock_and_liveness():
    st = parse_status('{"state": "receiving", "bytes_in": 5}\n'
                      "T 1700000010.5 1700000000\nALIVE\n")
    assert st == {"state": "receiving", "bytes_in": 5, "node_time": 1700000010.5,
                  "age": 10.5, "alive": True}
    st = parse_status("\nT 1700000010.5 0\nDEAD\n")      # no status file yet
    assert st == {"node_time": 1700000010.5, "alive": False}
    assert parse_status("") == {"alive": False}


# -- what earlier runs left -----------------------------------------------------------

STANDIN = r"""
import os, sys, time
rundir = sys.argv[1]
with open(os.path.join(rundir, "relay.pid"), "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def standin(started, rundir):
    proc = subprocess.Popen([sys.executable, "-c", STANDIN, str(rundir)])
    started.append(proc)
    deadline = time.monotonic() + 10
    while not (rundir / "relay.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def folder(tmp_path, run, node, name=None):
    d = tmp_path / f"clusterctl-sync-{run}-{node}"
    d.mkdir()
    (d / "agent.py").write_text("# agent")
    if name is not None:
        (d / "name").write_text(name)
    return d


def test_earlier_runs_of_this_name_go_and_the_others_are_listed(tmp_path, started):
    prefix = str(tmp_path / "clusterctl-sync-")
    ours = folder(tmp_path, "aaaaaaaaaaaa", "node1", "llama")
    same = folder(tmp_path, "bbbbbbbbbbbb", "node1", "llama")      # a cut run of ours
    other = folder(tmp_path, "cccccccccccc", "node1", "qwen")      # maybe running
    legacy = folder(tmp_path, "dddddddddddd", "node1")             # no name file
    old = folder(tmp_path, "eeeeeeeeeeee", "node1")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    orphan = standin(started, same)
    running = standin(started, other)
    res = subprocess.run(["sh", "-c", stale_runs_script(prefix, "aaaaaaaaaaaa", "llama")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ours.exists() and other.exists() and legacy.exists() and old.exists()
    assert not same.exists()
    assert orphan.wait(timeout=10) is not None          # its relay was stopped
    assert running.poll() is None                       # another name's: left alone
    listed = sorted(ln.split(" ", 3)[1:] for ln in res.stdout.splitlines())
    assert all(ln.startswith(OTHER_RUN_MARKER + " ") for ln in res.stdout.splitlines())
    assert listed == [[str(other), "0", "qwen"], [str(legacy), "0", ""],
                      [str(old), "1", ""]]


def test_held_locks_are_told_from_locks_whose_holder_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "LOCK_DIR", str(tmp_path))
    (tmp_path / "sync-a.owner").write_text(f"pid={os.getpid()}\nholder=x\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "sync-b.owner").write_text(f"pid={gone.pid}\n")
    from clusterctl.session import held_locks_script
    script = held_locks_script(["sync-a", "sync-b", "sync-c", "..bad name"])
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.split("\n")[:-1] == ["HELD sync-a"]


class FakeConn:
    def __init__(self, out):
        self.out, self.commands = out, []

    def run(self, cmd, check=True, timeout=None):
        self.commands.append(cmd)
        return type("R", (), {"stdout": self.out, "exit_code": 0})()


def test_stale_runs_are_those_whose_lock_is_free(tmp_path):
    job = object.__new__(sync_run._SyncJob)
    job.dead = {"n3": "stopped answering"}
    node = type("N", (), {})
    n1, n2, n3 = node(), node(), node()
    n1.other_runs = {"/tmp/clusterctl-sync-b-n1": ("qwen", False),
                     "/tmp/clusterctl-sync-c-n1": ("mistral", False),
                     "/tmp/clusterctl-sync-d-n1": ("", False),
                     "/tmp/clusterctl-sync-e-n1": ("", True)}
    n2.other_runs = {}
    n3.other_runs = {"/tmp/clusterctl-sync-b-n3": ("qwen", False)}
    job.nodes = {"n1": n1, "n2": n2, "n3": n3}
    head = FakeConn("HELD sync-mistral\n")
    job.inv = type("I", (), {"head": "n1"})()
    job.session = type("S", (), {"connection": lambda self, h: head})()
    assert job.stale_runs() == {"n1": ["/tmp/clusterctl-sync-b-n1",
                                       "/tmp/clusterctl-sync-e-n1"]}
    assert "sync-mistral" in head.commands[0] and "sync-qwen" in head.commands[0]


def test_a_feeding_node_that_stops_answering_ends_the_round(fast):
    """A source or seed node feeds with its own sender: when it stops answering, the
    round ends, the receivers are stopped, and the warning names it."""
    alive = {"state": "receiving", "alive": True, "age": 0.1}
    nodes = {"src": FakeNode("src", dead=True), "a": FakeNode("a", alive)}
    job = make_job(nodes)
    job.poll(Chain("src", ["a"]), None, {"a": 1}, 1)
    assert list(job.dead) == ["src"] and "while sending" in job.dead["src"]
    assert nodes["a"].stops == 1
    assert job.warnings and job.warnings[0].startswith("the feeder src stopped answering")
