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


# -- bandwidth: the plan and the step, over fake nodes ----------------------------------
import json  # noqa: E402
import threading as _threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from clusterctl.netcheck import probe  # noqa: E402
from clusterctl.netcheck.model import Link  # noqa: E402
from clusterctl.netcheck.run import _bandwidth, bandwidth_plan  # noqa: E402
from clusterctl.remote import RunResult  # noqa: E402

RECORDED = Path(__file__).parent / "fixtures" / "netcheck" / "iperf3-3.12-bidir-P2.json"


def iperf_doc(streams: int, bidir: bool, fwd_per_stream: float, rev_per_stream: float) -> str:
    """An iperf3 -J document of the recorded shape with chosen per-stream Gbit/s."""
    doc = json.loads(RECORDED.read_text())
    template = doc["end"]["streams"][0]
    entries = []
    for sender, rate, count in ((True, fwd_per_stream, streams),
                                (False, rev_per_stream, streams if bidir else 0)):
        for _ in range(count):
            e = json.loads(json.dumps(template))
            for half in ("sender", "receiver"):
                e[half]["sender"], e[half]["bits_per_second"] = sender, rate * 1e9
            entries.append(e)
    doc["end"]["streams"] = entries
    doc["end"]["sum_received"]["bits_per_second"] = streams * fwd_per_stream * 1e9
    if bidir:
        doc["end"]["sum_received_bidir_reverse"]["bits_per_second"] = (
            streams * rev_per_stream * 1e9)
    else:
        del doc["end"]["sum_received_bidir_reverse"], doc["end"]["sum_sent_bidir_reverse"]
    return json.dumps(doc)


class FakeNode:
    """Answers netcheck's iperf3 commands like a node: one flow gets `single` Gbit/s,
    several streams share `link` Gbit/s. Records every client run."""

    def __init__(self, name, log, *, link=0.94, single=0.9, busy_once=False):
        self.name, self.log, self.link, self.single = name, log, link, single
        self.busy_once = busy_once
        self.lock = _threading.Lock()

    def run(self, cmd, timeout=None, check=False):
        if isinstance(cmd, str):
            if "iperf3 -s" in cmd or "'-s'" in cmd:
                return RunResult("server", 0, "pid 4242\n", "")
            return RunResult("stop", 0, "", "")
        assert cmd[:2] == ["iperf3", "-c"]
        streams = int(cmd[cmd.index("-P") + 1]) if "-P" in cmd else 1
        bidir = "--bidir" in cmd
        with self.lock:
            self.log.append((self.name, cmd[2], streams, bidir))
            if self.busy_once:
                self.busy_once = False
                return RunResult("client", 1, '{"error": "error - the server is busy '
                                 'running a test. try again later"}', "")
        per = min(self.single, self.link / streams)
        return RunResult("client", 0, iperf_doc(streams, bidir, per, per), "")

    def close(self):
        pass


def bandwidth_run(n, options, *, versions=None, **node_kw):
    names = [f"n{i}" for i in range(1, n + 1)]
    ips = {x: f"198.18.0.{11 + i}" for i, x in enumerate(names)}
    nodes = {x: NodeInfo(x, ips[x], cluster_ip=ips[x], iperf3=True) for x in names}
    log = []
    conns = {x: FakeNode(ips[x], log, **node_kw) for x in names}
    run = _Run(options, Settings(), nodes, dict(conns))
    for x in names:
        run.extras[x] = probe.Extra(tools={"iperf3"}, iperf3_version=(versions or {}).get(
            x, "iperf 3.12 (cJSON 1.7.15)"))
    links = {(a, b): Link(a, b, ping_ok=True) for a in names for b in names if a != b}
    got = _bandwidth(run, links)
    return got, links, log, run


def test_bandwidth_plan_is_bidir_with_n_minus_1_phases():
    names = [f"n{i}" for i in range(1, 9)]
    new = {x: "iperf 3.12 (cJSON 1.7.15)" for x in names}
    rounds, plan, bidir, old = bandwidth_plan(names, NetcheckOptions(), new)
    assert bidir and old == [] and len(rounds) == len(plan) == 7
    rounds, plan, bidir, old = bandwidth_plan(names, NetcheckOptions(bidir=False), new)
    assert not bidir and old == [] and len(plan) == 14
    older = {**new, "n3": "iperf 3.6 (cJSON 1.5.2)", "n5": None}
    rounds, plan, bidir, old = bandwidth_plan(names, NetcheckOptions(), older)
    assert not bidir and old == ["n3", "n5"] and len(plan) == 14


def test_bandwidth_step_both_directions_and_single_stream():
    (rounds, n_phases, bidir), links, log, run = bandwidth_run(
        6, NetcheckOptions(duration=3, streams=4), link=0.94, single=0.9)
    assert (rounds, n_phases, bidir) == (5, 5, True)
    # one multi-stream and one single-stream client run per pair, all --bidir
    assert len(log) == 2 * 15 and all(b for *_, b in log)
    assert sorted(s for _, _, s, _ in log) == [1] * 15 + [4] * 15
    for ln in links.values():
        assert ln.gbps == pytest.approx(0.94) and ln.single_stream_gbps == pytest.approx(0.9)
        assert ln.streams == 4 and ln.bidir is True and ln.error is None
        assert len(ln.stream_gbps) == 4
    assert run.problems == []


def test_bandwidth_step_old_iperf3_falls_back_and_says_so():
    (rounds, n_phases, bidir), links, log, run = bandwidth_run(
        4, NetcheckOptions(duration=1, streams=2, single_stream_seconds=0),
        versions={"n2": "iperf 3.6 (cJSON 1.5.2)"})
    assert (rounds, n_phases, bidir) == (3, 6, False)
    assert len(log) == 12 and not any(b for *_, b in log)      # each direction on its own
    assert all(ln.gbps is not None and ln.bidir is False for ln in links.values())
    assert all(ln.single_stream_gbps is None for ln in links.values())
    (p,) = run.problems
    assert p.code == "iperf3-old" and p.severity == "info" and p.hosts == ["n2"]
    assert "3.7" in p.message and "6 phases instead of 3" in p.message


def test_bandwidth_step_retries_a_busy_server_once():
    (_, _, _), links, log, run = bandwidth_run(2, NetcheckOptions(duration=1, streams=1),
                                               busy_once=True)
    assert len(log) == 2                       # the busy answer, then the real run
    for ln in links.values():
        assert ln.gbps is not None and ln.single_stream_gbps == ln.gbps and ln.error is None
