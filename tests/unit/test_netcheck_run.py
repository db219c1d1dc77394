"""Orchestration pieces that need no node: the watchdog on stalled connections."""
import threading
import time

from clusterctl.netcheck.model import NodeInfo, Settings
from clusterctl.netcheck.run import NetcheckOptions, _Run


class StallingConn:
    """Blocks in run() until aborted, like paramiko on a path that drops large frames."""

    def __init__(self):
        self.aborted = threading.Event()

    def abort(self):
        self.aborted.set()

    def close(self):
        pass


def test_stalled_node_is_cut_and_reported_unreachable():
    nodes = {n: NodeInfo(n, "192.0.2.1") for n in ("a", "b")}
    conns = {"a": StallingConn(), "b": StallingConn()}
    run = _Run(NetcheckOptions(), Settings(), nodes, dict(conns))

    def fn(name):
        if name == "b":
            conns["b"].aborted.wait(30)
            raise OSError("connection reset")     # what the thread sees after the abort
        return "ok"

    t = time.monotonic()
    out = run.parallel(fn, ["a", "b"], timeout=0.5)
    assert time.monotonic() - t < 5
    assert out == {"a": "ok"}
    assert conns["b"].aborted.is_set()
    assert not nodes["b"].reachable and "stall" in nodes["b"].error
    assert nodes["a"].reachable and "b" not in run.conns and run.problems == []


def test_exceptions_are_recorded_not_raised():
    nodes = {"a": NodeInfo("a", "192.0.2.1")}
    run = _Run(NetcheckOptions(), Settings(), nodes, {"a": StallingConn()})

    def boom(name):
        raise ValueError("unparsable output")

    assert run.parallel(boom, ["a"], timeout=5) == {}
    (p,) = run.problems
    assert p.code == "probe-failed" and p.hosts == ["a"] and "unparsable" in p.message


def test_error_text_is_one_short_line():
    from clusterctl.netcheck.run import _short
    assert _short("connection lost running __f() {\nlots\nof script\n}\n__f: ") == \
        "connection lost while a command ran"
    assert _short("connection lost running x\ny: Socket is closed") == \
        "connection lost while a command ran: Socket is closed"
    assert _short("timed out connecting to 198.18.0.13:22 after 5s") == \
        "timed out connecting to 198.18.0.13:22 after 5s"
