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
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
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


FAKE_IPERF3 = """\
import json, os, sys
args = sys.argv[1:]
streams = int(args[args.index("-P") + 1]) if "-P" in args else 1
bidir = "--bidir" in args
here = os.path.dirname(os.path.abspath(__file__))
with open(os.environ["FAKE_IPERF_LOG"], "a") as f:
    f.write(json.dumps([args[args.index("-c") + 1], streams, bidir]) + "\\n")
busy = os.path.join(here, "busy-" + os.environ["FAKE_IPERF_NODE"])
if os.path.exists(busy):
    left = int(open(busy).read())
    if left > 0:
        open(busy, "w").write(str(left - 1))
        print('{"start": {}, "intervals": [], "end": {}, "error": "error - the server is '
              'busy running a test. try again later"}')
        sys.exit(1)
print(open(os.path.join(here, f"doc-{streams}-{int(bidir)}.json")).read())
"""


class FakeNode:
    """Runs netcheck's iperf3 pair script with bash, as a node would, with a fake `iperf3`
    first on PATH: one flow gets `single` Gbit/s, several streams share `link` Gbit/s; it
    answers "busy" to the first `busy` client runs. Records every client run."""

    def __init__(self, name, log, bindir, *, link=0.94, single=0.9, busy=0):
        self.name, self.log, self.bindir = name, log, bindir
        self.logfile = bindir / f"log-{name}"
        if busy:
            (bindir / f"busy-{name}").write_text(str(busy))
        for streams in (1, 2, 4):
            for bidir in (False, True):
                per = min(single, link / streams)
                (bindir / f"doc-{streams}-{int(bidir)}.json").write_text(
                    iperf_doc(streams, bidir, per, per))

    @staticmethod
    def make_bin(bindir):
        exe = bindir / "iperf3"
        exe.write_text(f"#!{sys.executable}\n" + FAKE_IPERF3)
        exe.chmod(0o755)

    running = 0                     # client commands running at once, over all nodes
    most = 0
    count_lock = threading.Lock()

    def run(self, cmd, timeout=None, check=False):
        assert isinstance(cmd, str)
        if "iperf3 -s" in cmd or "'-s'" in cmd:
            return RunResult("server", 0, "pid 4242\n", "")
        if probe.IPERF_MARK not in cmd:
            return RunResult("stop", 0, "", "")
        with FakeNode.count_lock:
            FakeNode.running += 1
            FakeNode.most = max(FakeNode.most, FakeNode.running)
        try:
            return self._client(cmd)
        finally:
            with FakeNode.count_lock:
                FakeNode.running -= 1

    def _client(self, cmd):
        env = {**os.environ, "PATH": f"{self.bindir}:{os.environ['PATH']}",
               "FAKE_IPERF_LOG": str(self.logfile), "FAKE_IPERF_NODE": self.name}
        res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env,
                             timeout=60)
        if self.logfile.exists():
            for line in self.logfile.read_text().splitlines():
                self.log.append((self.name, *json.loads(line)))
            self.logfile.unlink()
        return RunResult("client", res.returncode, res.stdout, res.stderr)

    def close(self):
        pass


def bandwidth_run(n, options, tmp_path, *, versions=None, busy=None, **node_kw):
    names = [f"n{i}" for i in range(1, n + 1)]
    ips = {x: f"198.18.0.{11 + i}" for i, x in enumerate(names)}
    nodes = {x: NodeInfo(x, ips[x], cluster_ip=ips[x], iperf3=True) for x in names}
    log = []
    FakeNode.make_bin(tmp_path)
    conns = {x: FakeNode(ips[x], log, tmp_path, busy=(busy or {}).get(x, 0), **node_kw)
             for x in names}
    run = _Run(options, Settings(), nodes, dict(conns))
    for x in names:
        run.extras[x] = probe.Extra(tools={"iperf3"}, iperf3_version=(versions or {}).get(
            x, "iperf 3.12 (cJSON 1.7.15)"))
    links = {(a, b): Link(a, b, ping_ok=True) for a in names for b in names if a != b}
    got = _bandwidth(run, links)
    return got, links, log, run


def test_serial_schedule_runs_one_pair_at_a_time(tmp_path):
    FakeNode.most = 0
    (rounds, n_phases, _), links, log, run = bandwidth_run(
        4, NetcheckOptions(duration=1, streams=1, schedule="serial"), tmp_path)
    assert rounds == n_phases == 6 and len(log) == 6 and FakeNode.most == 1
    assert all(ln.gbps is not None for ln in links.values())


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


@pytest.mark.parametrize("pipeline", [True, False])
def test_bandwidth_step_both_directions_and_single_stream(tmp_path, pipeline):
    FakeNode.most = 0
    (rounds, n_phases, bidir), links, log, run = bandwidth_run(
        6, NetcheckOptions(duration=3, streams=4, pipeline=pipeline), tmp_path, link=0.94,
        single=0.9)
    assert (rounds, n_phases, bidir) == (5, 5, True)
    assert FakeNode.most <= 3                  # never more runs at once than a round has
    # one multi-stream and one single-stream client run per pair, all --bidir
    assert len(log) == 2 * 15 and all(b for *_, b in log)
    assert sorted(s for _, _, s, _ in log) == [1] * 15 + [4] * 15
    for ln in links.values():
        assert ln.gbps == pytest.approx(0.94) and ln.single_stream_gbps == pytest.approx(0.9)
        assert ln.streams == 4 and ln.bidir is True and ln.error is None
        assert len(ln.stream_gbps) == 4
    assert run.problems == []


def test_bandwidth_step_old_iperf3_falls_back_and_says_so(tmp_path):
    (rounds, n_phases, bidir), links, log, run = bandwidth_run(
        4, NetcheckOptions(duration=1, streams=2, single_stream_seconds=0), tmp_path,
        versions={"n2": "iperf 3.6 (cJSON 1.5.2)"})
    assert (rounds, n_phases, bidir) == (3, 6, False)
    assert len(log) == 12 and not any(b for *_, b in log)      # each direction on its own
    assert all(ln.gbps is not None and ln.bidir is False for ln in links.values())
    assert all(ln.single_stream_gbps is None for ln in links.values())
    (p,) = run.problems
    assert p.code == "iperf3-old" and p.severity == "info" and p.hosts == ["n2"]
    assert "3.7" in p.message and "6 phases instead of 3" in p.message


def test_bandwidth_step_retries_a_busy_server_on_the_node(tmp_path):
    """iperf3 answers "busy" while the server still closes the last test: the pair's
    script starts the run again on the node (no round trip through the controller)."""
    (_, _, _), links, log, run = bandwidth_run(
        2, NetcheckOptions(duration=2, streams=4), tmp_path, busy={"n1": 2, "n2": 2})
    # the client (whichever node it is) was refused twice, then ran both runs
    assert [streams for _, _, streams, _ in log] == [4, 4, 4, 1]
    for ln in links.values():
        assert ln.gbps == pytest.approx(0.94) and ln.single_stream_gbps == pytest.approx(0.9)
        assert ln.error is None


def test_a_server_busy_too_long_is_an_error_and_no_single_stream_run(tmp_path):
    (_, _, _), links, log, run = bandwidth_run(
        2, NetcheckOptions(duration=2, streams=4), tmp_path,
        busy={"n1": probe.BUSY_TRIES, "n2": probe.BUSY_TRIES})
    assert len(log) == probe.BUSY_TRIES and all(s == 4 for _, _, s, _ in log)
    for ln in links.values():
        assert ln.gbps is None and ln.single_stream_gbps is None and "busy" in ln.error


def test_pair_output_parses_both_runs_and_a_missing_one():
    doc4, doc1 = iperf_doc(4, True, 0.2, 0.2), iperf_doc(1, True, 0.9, 0.8)
    m = probe.IPERF_MARK
    main, one = probe.parse_iperf_pair(f"{m} main\n{doc4}\n{m} tries 2\n{m} single\n"
                                       f"{doc1}\n{m} tries 1\n", bidir=True)
    assert main.fwd == pytest.approx(0.8) and main.rev == pytest.approx(0.8)
    assert one.fwd == pytest.approx(0.9) and one.rev == pytest.approx(0.8)
    main, one = probe.parse_iperf_pair(f"{m} main\n{doc4}\n{m} tries 1\n", bidir=True)
    assert main.error is None and one is None
    main, one = probe.parse_iperf_pair("bash: line 1: syntax error\n", bidir=True)
    assert "did not run" in main.error and "syntax error" in main.error and one is None


def test_pair_script_waits_seconds_bound():
    assert probe.iperf_pair_seconds(2, 1) == pytest.approx(
        3 + 2 * (probe.BUSY_TRIES - 1) * probe.BUSY_WAIT_S)
    assert probe.iperf_pair_seconds(3) == pytest.approx(3 + (probe.BUSY_TRIES - 1) *
                                                        probe.BUSY_WAIT_S)
    script = probe.iperf_pair_script("198.18.0.11", "198.18.0.12", 5201, 2, bidir=True,
                                     streams=4, single_seconds=0)
    assert script.count("__nc_iperf iperf3") == 1 and "single" not in script


# -- the pipeline: each pair when its two nodes are free, not when its phase is --------
from clusterctl.netcheck.schedule import tournament  # noqa: E402


def _pipeline_run(names):
    nodes = {n: NodeInfo(n, "192.0.2.1") for n in names}
    conns = {n: StallingConn() for n in names}
    return _Run(NetcheckOptions(), Settings(), nodes, dict(conns)), conns


def test_pipeline_keeps_pairs_disjoint_and_each_node_in_phase_order():
    import random
    names = [f"n{i}" for i in range(1, 10)]
    plan = tournament(names)
    run, _ = _pipeline_run(names)
    lock = threading.Lock()
    busy, done, started = set(), [], []
    rng = random.Random(7)

    def fn(pair):
        with lock:
            assert not busy & set(pair), f"{pair} while {busy} run"
            busy.update(pair)
        time.sleep(rng.random() * 0.02)
        with lock:
            busy.difference_update(pair)
            done.append(pair)

    run.pipeline(fn, plan, timeout=30, node_of=lambda p: p[0], started=started.append)
    assert sorted(done) == sorted(p for ph in plan for p in ph)      # each pair once
    phase_of = {p: i for i, ph in enumerate(plan) for p in ph}
    for n in names:                                                  # per node: in order
        mine = [phase_of[p] for p in done if n in p]
        assert mine == sorted(mine)
    assert sorted(started) == list(range(len(plan))) and run.problems == []


def test_pipeline_a_slow_pair_holds_up_only_its_own_nodes():
    """The first pair of phase 1 waits until a pair of phase 2 on other nodes has run:
    with a barrier after each phase it would wait forever (here: 20 s, then fail)."""
    names = [f"n{i}" for i in range(1, 7)]
    plan = tournament(names)
    slow = plan[0][0]
    later = next(p for p in plan[1] if not set(p) & set(slow))
    released = threading.Event()
    run, _ = _pipeline_run(names)

    def fn(pair):
        if pair == slow:
            assert released.wait(20), "a later pair on other nodes never started"
        if pair == later:
            released.set()

    run.pipeline(fn, plan, timeout=60, node_of=lambda p: p[0])
    assert released.is_set() and run.problems == []


def test_pipeline_a_stalled_pair_is_cut_and_the_rest_goes_on():
    names = ["a", "b", "c", "d"]
    plan = tournament(names)
    stuck = plan[0][0]
    run, conns = _pipeline_run(names)
    ran = []

    def fn(pair):
        if pair == stuck:
            conns[pair[0]].aborted.wait(30)
            raise OSError("connection reset")
        ran.append(pair)

    t = time.monotonic()
    run.pipeline(fn, plan, timeout=0.5, node_of=lambda p: p[0])
    assert time.monotonic() - t < 20
    assert conns[stuck[0]].aborted.is_set()
    assert not run.nodes[stuck[0]].reachable and "stall" in run.nodes[stuck[0]].error
    assert len(ran) == sum(len(ph) for ph in plan) - 1


# -- run_netcheck's order: pings, ports and the servers' start at once ----------------
from types import SimpleNamespace  # noqa: E402

from clusterctl.netcheck import run as runmod  # noqa: E402
from clusterctl.session import GroupResult  # noqa: E402


def _orchestration(monkeypatch, *, pings_fail=False):
    """run_netcheck over two fake hosts with every step replaced by a recorder."""
    events, lock = [], threading.Lock()
    servers_started, ports_started = threading.Event(), threading.Event()

    def note(what):
        with lock:
            events.append(what)

    def gather(run, hosts):
        for n in run.nodes:
            run.nodes[n].cluster_ip = run.nodes[n].address
            run.nodes[n].iperf3 = True

    def pings(run, links, hosts):
        # the servers' start and the port checks go on while the pings run
        assert servers_started.wait(10) and ports_started.wait(10)
        note("pings")
        if pings_fail:
            raise RuntimeError("pings broke")

    def ports(run, head):
        ports_started.set()
        note("ports")
        return []

    def start_servers(run, names):
        servers_started.set()
        note("servers started")
        return runmod._Servers(pids={n: 7 for n in names})

    def bandwidth(run, links, servers):
        assert servers is not None and sorted(servers.pids) == ["a", "b"]
        note("bandwidth")
        return 1, 1, True

    def stop_servers(run, servers):
        note(f"servers stopped {sorted(servers.pids)}")

    for name, fn in (("_gather", gather), ("_pings", pings), ("_ports", ports),
                     ("_start_servers", start_servers), ("_bandwidth", bandwidth),
                     ("_stop_servers", stop_servers)):
        monkeypatch.setattr(runmod, name, fn)
    hosts = [SimpleNamespace(name=n, address=f"192.0.2.{i}", is_head=i == 1, vars={},
                             port=22, user="root")
             for i, n in enumerate(["a", "b"], 1)]
    monkeypatch.setattr(runmod, "login_hint", lambda h: ("ssh " + h.name, 22))
    session = SimpleNamespace(connect=lambda hs: GroupResult(
        succeeded={h.name: StallingConn() for h in hs}))
    inventory = SimpleNamespace(head=hosts[0])
    return events, lambda: runmod.run_netcheck(inventory, hosts, NetcheckOptions(),
                                               session=session)


def test_servers_start_during_the_pings_and_stop_after_the_bandwidth_step(monkeypatch):
    events, go = _orchestration(monkeypatch)
    result = go()
    assert events.index("servers started") < events.index("pings")
    assert events.index("ports") < events.index("pings")
    assert events[-2:] == ["bandwidth", "servers stopped ['a', 'b']"]
    assert {"ping", "ports", "servers", "checks", "bandwidth"} <= set(result.timings)


def test_servers_started_early_are_stopped_when_a_later_step_fails(monkeypatch):
    events, go = _orchestration(monkeypatch, pings_fail=True)
    with pytest.raises(RuntimeError, match="pings broke"):
        go()
    assert "bandwidth" not in events and events[-1] == "servers stopped ['a', 'b']"
