"""netcheck --collective: the pure parts (sizes, bus bandwidth, argv, parsing the ranks'
JSON lines, findings, report) and the orchestration over local stand-in connections with
a fake venv python (torch is not needed: the fake prints what the agent would)."""
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from clusterctl.errors import EXIT_BAD_INPUT, InputError
from clusterctl.netcheck import collective as C
from clusterctl.netcheck.collective_agent import init_method, parse_args
from clusterctl.netcheck.model import Link, NetcheckResult, NodeInfo, Settings
from clusterctl.render import JSON_SCHEMA_VERSION, print_json

sys.path.insert(0, str(Path(__file__).parent))
from localconn import LocalConnection  # noqa: E402


# -- sizes, iterations, bandwidth ------------------------------------------------------
def test_parse_sizes_binary_units_sorted_unique():
    assert C.parse_sizes("32M, 8K,1m,8192") == [8192, 1 << 20, 32 << 20]
    assert C.parse_sizes("4") == [4]
    assert C.parse_sizes("1GiB") == [1 << 30]


@pytest.mark.parametrize("text", ["", " , ", "8X", "one", "-1M", "2G", "2"])
def test_parse_sizes_rejects_bad_input_with_the_option_named(text):
    with pytest.raises(InputError) as exc:
        C.parse_sizes(text)
    assert "--collective-sizes" in str(exc.value) and exc.value.exit_code == EXIT_BAD_INPUT


def test_iterations_many_small_few_large():
    assert C.iterations(8 << 10) == 50
    assert C.iterations(1 << 20) == 50
    assert C.iterations(32 << 20) == 5
    assert C.iterations(1 << 30) == 5
    counts = [C.iterations(1 << k) for k in range(2, 31)]
    assert counts == sorted(counts, reverse=True)


def test_bus_factor_all_reduce_and_all_gather():
    assert C.bus_factor("all_reduce", 2) == 1.0
    assert C.bus_factor("all_reduce", 4) == 1.5
    assert C.bus_factor("all_reduce", 1) == 0.0
    assert C.bus_factor("all_gather", 4) == 0.75
    with pytest.raises(ValueError):
        C.bus_factor("broadcast", 4)
    with pytest.raises(ValueError):
        C.bus_factor("all_reduce", 0)


def test_algbw_and_busbw():
    # 125 MB in 1 s is 1 Gbit/s of algorithm bandwidth; 3 ranks: x 4/3 on the bus
    assert C.algbw_gbps(125_000_000, 1.0) == pytest.approx(1.0)
    assert C.busbw_gbps("all_reduce", 125_000_000, 1.0, 3) == pytest.approx(4 / 3)
    assert C.busbw_gbps("all_gather", 125_000_000, 0.5, 2) == pytest.approx(1.0)
    assert C.algbw_gbps(1000, 0) is None and C.busbw_gbps("all_reduce", 1, 0.0, 2) is None
    s = C.SizeResult("all_reduce", 1 << 20, 0.001, 8)
    assert s.busbw_gbps == pytest.approx(s.algbw_gbps * 2 * 7 / 8)
    assert s.latency_us == pytest.approx(1000.0)


def test_lifetime_grows_with_the_work_and_covers_the_join():
    small = C.lifetime([8192], [50], 60)
    big = C.lifetime([8192, 32 << 20], [50, 5], 60)
    assert 90 <= small < big
    assert C.lifetime([8192], [50], 10) < small


def test_human_bytes():
    assert [C.human_bytes(n) for n in (8192, 1 << 20, 3 << 30, 1000)] == \
        ["8 KiB", "1 MiB", "3 GiB", "1000 B"]


# -- backend, ranks, argv -------------------------------------------------------------------
def node(name, *, head=False, gpus=None, iface="eth1", ip=None, env=None, torch="2.13.0"):
    n = NodeInfo(name, ip or f"10.0.0.{ord(name[-1]) % 200 + 1}", is_head=head)
    n.cluster_ip, n.interface, n.gpus = n.address, iface, gpus
    n.env = dict(env or {})
    n.env_source = {k: "/etc/clusterctl/nccl.env" for k in n.env}
    n.versions = {"torch": torch}
    return n


def test_choose_backend():
    assert C.choose_backend([node("a", gpus=8), node("b", gpus=8)])[0] == "nccl"
    backend, why = C.choose_backend([node("a", gpus=8), node("b")])
    assert backend == "gloo" and "a" in why
    assert C.choose_backend([node("a"), node("b")]) == ("gloo", "no GPUs: Gloo on CPU tensors")


def test_rank_order_puts_the_head_first():
    nodes = [node("w1"), node("h", head=True), node("w2")]
    assert [n.name for n in C.rank_order(nodes)] == ["h", "w1", "w2"]
    assert [n.name for n in C.rank_order(nodes[::2])] == ["w1", "w2"]


def test_agent_argv_round_trips_through_the_agents_parser():
    argv = C.agent_argv("/opt/v/bin/python", "/tmp/r/agent.py", rank=2, world=3,
                        master_addr="10.0.0.1", master_port=29500, backend="gloo",
                        sizes=[8192, 1 << 20], iters=[50, 20], ifname="eth1",
                        join_timeout=30, host="w2")
    assert argv[:2] == ["/opt/v/bin/python", "/tmp/r/agent.py"]
    args = parse_args(argv[2:])
    assert (args.rank, args.world, args.master_addr, args.master_port) == \
        (2, 3, "10.0.0.1", 29500)
    assert args.sizes == [8192, 1 << 20] and args.iters == [50, 20]
    assert args.ifname == "eth1" and args.join_timeout == 30 and args.host == "w2"
    assert args.ops == list(C.OPS) and "--ops" not in argv          # the default: both
    only = C.agent_argv("p", "a", rank=0, world=2, master_addr="10.0.0.1", master_port=1,
                        backend="gloo", sizes=[4], iters=[5], ifname=None, join_timeout=1,
                        host="h", ops=("all_reduce",))
    assert parse_args(only[2:]).ops == ["all_reduce"]
    assert "--ifname" not in C.agent_argv("p", "a", rank=0, world=2, master_addr="fd00::1",
                                          master_port=1, backend="nccl", sizes=[4],
                                          iters=[5], ifname=None, join_timeout=1, host="h")


@pytest.mark.parametrize("kw", [dict(master_addr="10.0.0.1; rm -rf /"),
                                dict(backend="mpi"), dict(rank=3), dict(iters=[1]),
                                dict(ops=()), dict(ops=("broadcast",))])
def test_agent_argv_refuses_what_it_cannot_pass_on(kw):
    base = dict(rank=0, world=3, master_addr="10.0.0.1", master_port=1, backend="gloo",
                sizes=[4, 8], iters=[5, 5], ifname=None, join_timeout=1, host="h")
    with pytest.raises(ValueError):
        C.agent_argv("p", "a", **{**base, **kw})


def test_init_method_brackets_ipv6():
    assert init_method("10.0.0.1", 29500) == "tcp://10.0.0.1:29500"
    assert init_method("fd00::1", 29500) == "tcp://[fd00::1]:29500"


# -- parsing a rank's output ---------------------------------------------------------------
def lines(*events, stderr=""):
    text = "\n".join(e if isinstance(e, str) else json.dumps(e) for e in events)
    return text + f"\n{C.OUT_MARKER} stderr\n{stderr}"


START = {"event": "start", "rank": 1, "host": "w1", "pid": 42, "torch": "2.13.0+cpu",
         "backend": "gloo", "ifname": {"GLOO_SOCKET_IFNAME": "eth1",
                                       "NCCL_SOCKET_IFNAME": None}}


def test_parse_a_complete_rank():
    r = C.parse_rank_output(lines(
        START, {"event": "joined", "rank": 1, "seconds": 0.8},
        {"event": "result", "op": "all_reduce", "bytes": 8192, "iters": 50, "seconds": 2e-4},
        {"event": "result", "op": "all_gather", "bytes": 8192, "iters": 50, "seconds": 3e-4},
        {"event": "done", "rank": 1}), 1, "w1")
    assert r.started and r.joined and r.done and r.error is None and r.malformed == 0
    assert r.torch == "2.13.0+cpu" and r.ifname["GLOO_SOCKET_IFNAME"] == "eth1"
    assert r.join_seconds == 0.8
    assert [(x["op"], x["bytes"], x["seconds"]) for x in r.results] == \
        [("all_reduce", 8192, 2e-4), ("all_gather", 8192, 3e-4)]


def test_parse_counts_malformed_lines_and_keeps_the_rest():
    r = C.parse_rank_output(lines(
        "Traceback (most recent call last):", "[1, 2]", '{"no": "event"}', START,
        '{"event": "result", "op": "all_reduce", "bytes": "8K", "seconds": 1}',
        '{"event": "result", "op": "all_reduce", "bytes": 8, "seconds": NaN}',
        '{"event": "result", "op": "all_reduce", "bytes": 8, "seconds": -1}',
        '{"event": "result", "op": "scatter", "bytes": 8, "seconds": 1}',
        '{"event": "mystery"}', '{"event": "joined", "seconds": "soon"}', "{truncated"),
        1, "w1")
    assert r.malformed == 9 and r.results == [] and r.joined and r.join_seconds is None
    assert r.started and not r.done


def test_parse_an_error_and_a_silent_rank():
    r = C.parse_rank_output(lines(START, {"event": "error", "rank": 1, "phase": "init",
                                          "type": "DistStoreError", "message": "x" * 5000}),
                            1, "w1")
    assert r.error["phase"] == "init" and len(r.error["message"]) == 1500 and not r.joined
    silent = C.parse_rank_output(lines(stderr="Segmentation fault\n"), 2, "w2")
    assert not silent.started and "Segmentation fault" in silent.note
    assert C.parse_rank_output("", 0, "h").note == "no output from the rank"
    assert C.parse_rank_output(None, 0, "h").started is False


def test_summarize_takes_the_slowest_rank_and_orders_by_op_and_size():
    a = C.RankReport(0, "h", results=[{"op": "all_gather", "bytes": 8, "seconds": 1.0},
                                      {"op": "all_reduce", "bytes": 64, "seconds": 2.0},
                                      {"op": "all_reduce", "bytes": 8, "seconds": 1.0}])
    b = C.RankReport(1, "w", results=[{"op": "all_reduce", "bytes": 8, "seconds": 3.0}])
    got = C.summarize([a, b], 2)
    assert [(s.op, s.bytes, s.seconds) for s in got] == \
        [("all_reduce", 8, 3.0), ("all_reduce", 64, 2.0), ("all_gather", 8, 1.0)]
    assert all(s.world == 2 for s in got)


def test_slowest_link_is_the_slowest_single_flow_among_the_ranks():
    links = [Link("a", "b", gbps=9.0, single_stream_gbps=4.0),
             Link("b", "a", gbps=8.0, single_stream_gbps=6.0),
             Link("a", "x", gbps=0.1, single_stream_gbps=0.1),     # x takes no part
             Link("b", "c", gbps=0.5),                            # multi-stream only
             Link("c", "a")]                                      # not measured
    assert C.slowest_link(links, ["a", "b"]).single_stream_gbps == 4.0
    assert (C.slowest_link(links, ["a", "b", "c"]).src,
            C.slowest_link(links, ["a", "b", "c"]).dst) == ("b", "c")
    assert C.slowest_link([Link("a", "b")], ["a", "b"]) is None


# -- a slow group: reference, bandwidth-bound, the bisect plan ------------------------------
def test_reference_is_the_median_nodes_best_link_so_one_slow_node_cannot_hide():
    # w2's port is slow: 4 of the 6 directions touch it, so the slowest link (and even
    # the median link) is w2's; each node's best link says what the others carry
    links = [Link(a, b, gbps=0.1 if "w2" in (a, b) else 0.95,
                  single_stream_gbps=0.09 if "w2" in (a, b) else 0.9)
             for a in ("h", "w1", "w2") for b in ("h", "w1", "w2") if a != b]
    assert C.node_capacity(links, ["h", "w1", "w2"]) == {"h": 0.9, "w1": 0.9, "w2": 0.09}
    assert C.reference_gbps(links, ["h", "w1", "w2"]) == 0.9
    assert C.reference_gbps(links, ["h", "w2"]) == 0.09          # only the pair's link
    assert C.reference_gbps([Link("h", "w1", gbps=2.0)], ["h", "w1"]) == 2.0  # multi only
    assert C.reference_gbps([], ["h", "w1"]) is None
    assert C.is_slow(0.3, 0.9) and not C.is_slow(0.5, 0.9) and not C.is_slow(0.1, None)


def test_bandwidth_bound_needs_a_message_that_dwarfs_the_latency():
    lat = C.SizeResult("all_reduce", 8192, 0.0176, 3)          # the loaded lab's latency
    one_m = C.SizeResult("all_reduce", 1 << 20, 0.0285, 3)     # 0.39 Gbit/s busbw
    big = C.SizeResult("all_reduce", 32 << 20, 0.5, 3)
    assert not C.bandwidth_bound(one_m, lat, 0.9)                # 12 ms ideal < 4 x 17.6
    assert C.bandwidth_bound(big, lat, 0.9)                      # 0.4 s ideal
    assert C.bandwidth_bound(big, None, 0.9) and not C.bandwidth_bound(big, lat, None)
    assert C.ideal_seconds("all_reduce", 125_000_000, 2, 1.0) == pytest.approx(1.0)


def world(caps, scale=0.8):
    """A stand-in cluster: a ring runs at its slowest member's rate (times Gloo's share)."""
    return lambda group: scale * min(caps[h] for h in group)


def bisect(hosts, busbw, good=0.45, max_rounds=30):
    """Drive bisect_plan as run_collective does; returns (plan, runs measured)."""
    measured = {tuple(hosts): busbw(hosts)}
    runs = 0
    for _ in range(max_rounds):
        plan = C.bisect_plan(hosts, measured, good)
        if not plan.measure:
            return plan, runs
        for g in plan.measure:
            assert g not in measured and len(g) >= 2 and set(g) <= set(hosts)
            assert list(g) == [h for h in hosts if h in g]          # rank order
            measured[g] = busbw(g)
            runs += 1
    raise AssertionError("the plan did not end")


def test_three_nodes_one_slow_is_leave_one_out():
    hosts = ["h", "w1", "w2"]
    plan = C.bisect_plan(hosts, {tuple(hosts): 0.07}, 0.45)
    assert plan.measure == (("h", "w1"), ("h", "w2"), ("w1", "w2")) and not plan.blamed
    for victim in hosts:
        caps = {h: 0.09 if h == victim else 0.9 for h in hosts}
        plan, runs = bisect(hosts, world(caps))
        assert plan.blamed == (victim,) and runs == 3 and not plan.unresolved
        assert set(plan.cleared) == set(hosts) - {victim}


def test_halves_then_pairs_with_a_node_known_at_speed():
    hosts = [f"n{i}" for i in range(8)]
    caps = {h: 0.1 if h == "n5" else 1.0 for h in hosts}
    measured = {tuple(hosts): 0.08}
    plan = C.bisect_plan(hosts, measured, 0.45)
    assert plan.measure == (("n0", "n1", "n2", "n3"), ("n4", "n5", "n6", "n7"))
    measured.update({g: world(caps)(g) for g in plan.measure})
    plan = C.bisect_plan(hosts, measured, 0.45)
    assert plan.measure == (("n4", "n5"), ("n6", "n7"))            # the slow half, halved
    plan, runs = bisect(hosts, world(caps))
    assert plan.blamed == ("n5",) and runs == 6                     # 2 + 2 + 2 pairs


@pytest.mark.parametrize("n", range(3, 17))
def test_one_slow_node_is_named_alone_for_every_size_and_place(n):
    hosts = [f"n{i}" for i in range(n)]
    for victim in hosts:
        plan, runs = bisect(hosts, world({h: 0.1 if h == victim else 1.0 for h in hosts}))
        assert plan.blamed == (victim,), (n, victim)
        assert runs <= C.BISECT_MAX_RUNS and runs <= 2 * n


def test_two_slow_nodes_are_both_named():
    hosts = [f"n{i}" for i in range(8)]
    for slow in (("n1", "n6"), ("n2", "n3"), ("n0", "n7")):
        caps = {h: 0.1 if h in slow else 1.0 for h in hosts}
        plan, _ = bisect(hosts, world(caps))
        assert plan.blamed == slow
    # 4 nodes, one slow in each half: no half at speed, then the pairs find an anchor
    hosts = ["a", "b", "c", "d"]
    plan, runs = bisect(hosts, world({"a": 1, "b": 0.1, "c": 1, "d": 0.1}))
    assert plan.blamed == ("b", "d")


@given(st.integers(3, 14).flatmap(lambda n: st.tuples(
    st.just(n), st.sets(st.integers(0, n - 1), max_size=n))))
@settings(max_examples=150, deadline=None)
def test_bisect_ends_and_blames_only_slow_nodes(case):
    n, slow = case
    hosts = [f"n{i}" for i in range(n)]
    caps = {h: 0.1 if i in slow else 1.0 for i, h in enumerate(hosts)}
    plan, runs = bisect(hosts, world(caps))
    assert set(plan.blamed) <= {hosts[i] for i in slow}
    assert runs <= 3 * n
    if len(slow) == 1:
        assert plan.blamed == (hosts[min(slow)],)
    if len(slow) >= n - 1:
        assert plan.blamed == () and plan.unresolved        # nothing at speed to compare


def test_everything_slow_or_two_nodes_is_unresolved_not_blamed():
    plan, runs = bisect(["h", "w1", "w2"], world({"h": 0.1, "w1": 0.1, "w2": 0.1}))
    assert runs == 3 and plan.blamed == () and "no node" in plan.unresolved[0]
    plan = C.bisect_plan(["h", "w1"], {("h", "w1"): 0.1}, 0.45)
    assert plan.measure == () and plan.blamed == () and "h, w1" in plan.unresolved[0]


def test_a_group_that_failed_is_evidence_of_nothing_and_not_retried():
    hosts = ["h", "w1", "w2"]
    measured = {tuple(hosts): 0.07, ("h", "w1"): 0.8, ("h", "w2"): None, ("w1", "w2"): 0.07}
    plan = C.bisect_plan(hosts, measured, 0.45)
    assert plan.measure == () and plan.blamed == ("w2",)     # from (w1, w2) and the whole


def test_slow_together_though_each_is_at_speed_elsewhere_is_the_path():
    hosts = ["a", "b", "c", "d"]
    measured = {tuple(hosts): 0.1, ("a", "b"): 0.9, ("c", "d"): 0.9}
    plan = C.bisect_plan(hosts, measured, 0.45)
    assert plan.measure == () and plan.blamed == ()
    assert "the path between them" in plan.unresolved[0]


def test_the_bisect_result_says_who_with_and_without():
    b = C.Bisect(bytes=16 << 20, reference_gbps=0.9, good_gbps=0.45,
                 full=C.BisectRun(("h", "w1", "w2"), 0.07))
    b.runs = [C.BisectRun(("h", "w1"), 0.78, 4.0), C.BisectRun(("h", "w2"), 0.08, 12.0),
              C.BisectRun(("w1", "w2"), 0.08, 12.0)]
    plan = C.conclude(b, ["h", "w1", "w2"])
    assert plan.measure == () and b.blamed == ["w2"] and b.stopped is None
    assert b.without_blamed().hosts == ("h", "w1")
    data = b.to_json()
    assert data["blamed"] == ["w2"] and len(data["runs"]) == 4
    assert data["runs"][0] == {"hosts": ["h", "w1", "w2"], "busbw_gbps": 0.07,
                               "seconds": None, "error": None}
    cut = C.Bisect(bytes=1, reference_gbps=0.9, good_gbps=0.45,
                   full=C.BisectRun(("h", "w1", "w2"), 0.07))
    C.conclude(cut, ["h", "w1", "w2"])                 # stopped before any run
    assert cut.stopped and cut.blamed == []


# -- findings --------------------------------------------------------------------------------
def done_rank(rank, host, torch="2.13.0", ifname="eth1"):
    return C.RankReport(rank, host, started=True, joined=True, done=True, torch=torch,
                        ifname={"GLOO_SOCKET_IFNAME": ifname})


def failed_rank(rank, host, message="", *, phase="init", type_="DistStoreError",
                torch="2.13.0", ifname="eth1", started=True):
    return C.RankReport(rank, host, started=started, torch=torch if started else None,
                        ifname={"GLOO_SOCKET_IFNAME": ifname} if started else {},
                        error={"phase": phase, "type": type_, "message": message}
                        if message else None)


NODES = [node("h", head=True, ip="10.0.0.1"), node("w1", ip="10.0.0.2"),
         node("w2", ip="10.0.0.3")]


def result_of(ranks, sizes=(), link=None, backend="gloo"):
    return C.CollectiveResult(backend, "no GPUs", [r.host for r in ranks], ranks=list(ranks),
                              sizes=list(sizes), slowest_link=link)


def test_a_healthy_fast_group_has_no_findings():
    ranks = [done_rank(i, n.name) for i, n in enumerate(NODES)]
    big = C.SizeResult("all_reduce", 32 << 20, (32 << 20) * 8 / 0.9e9, 3)  # algbw 0.9
    res = result_of(ranks, [big], Link("w1", "w2", gbps=0.95, single_stream_gbps=0.9))
    assert big.busbw_gbps == pytest.approx(1.2)
    assert C.collective_findings(res, NODES, 29500) == []


def test_busbw_far_below_the_slowest_link_is_a_warning_with_the_figures():
    ranks = [done_rank(i, n.name) for i, n in enumerate(NODES)]
    big = C.SizeResult("all_reduce", 32 << 20, (32 << 20) * 8 / 0.2e9, 3)  # busbw 0.27
    res = result_of(ranks, [big], Link("w1", "w2", gbps=9.0, single_stream_gbps=8.0))
    (f,) = C.collective_findings(res, NODES, 29500)
    assert f.code == "collective-slow" and f.severity == "warning"
    assert "0.27 Gbit/s" in f.message and "8.00 Gbit/s" in f.message and "w1->w2" in f.message
    assert f.hosts == ["h", "w1", "w2"] and "GLOO_SOCKET_IFNAME" in f.fix


def test_slow_group_with_two_named_draggers_and_an_unresolved_one():
    ranks = [done_rank(i, n.name) for i, n in enumerate(NODES)]
    big = C.SizeResult("all_reduce", 32 << 20, (32 << 20) * 8 / 0.06e9, 3)  # busbw 0.08
    res = result_of(ranks, [big], Link("h", "w2", gbps=0.1, single_stream_gbps=0.09))
    res.reference_gbps = 0.9
    b = C.Bisect(bytes=32 << 20, reference_gbps=0.9, good_gbps=0.45,
                 full=C.BisectRun(("h", "w1", "w2"), 0.08))
    b.runs = [C.BisectRun(g, v) for g, v in ((("h", "w1"), 0.08), (("h", "w2"), 0.08),
                                             (("w1", "w2"), 0.08))]
    C.conclude(b, res.hosts)
    res.bisect = b
    (f,) = C.collective_findings(res, NODES, 29500)
    assert f.hosts == ["h", "w1", "w2"] and "no node stands out" in f.message
    assert "slowest link (h->w2)" in f.message and "pair matrix" in f.fix


def test_small_messages_alone_say_nothing_about_bandwidth():
    ranks = [done_rank(i, n.name) for i, n in enumerate(NODES)]
    sizes = [C.SizeResult("all_reduce", 8192, 0.0176, 3),
             C.SizeResult("all_reduce", 1 << 20, 0.0285, 3)]   # 0.39 of 0.9: latency
    res = result_of(ranks, sizes, Link("w1", "w2", gbps=0.95, single_stream_gbps=0.9))
    assert C.collective_findings(res, NODES, 29500) == []


def test_wrong_nic_names_the_rank_and_the_fix():
    ranks = [failed_rank(0, "h", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/2"),
             failed_rank(1, "w1", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/2"),
             failed_rank(2, "w2", "Unable to find address for: docker0", type_="RuntimeError",
                         ifname="docker0")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert (f.code, f.severity, f.hosts) == ("collective-failed", "error", ["w2"])
    assert "GLOO_SOCKET_IFNAME=docker0" in f.message and "wrong NIC" in f.message
    assert "set GLOO_SOCKET_IFNAME=eth1 in /etc/clusterctl/nccl.env on w2" in f.fix


def test_nccl_prefix_rules_decide_for_nccl():
    nodes = [node("h", head=True, gpus=1), node("w1", gpus=1)]
    ok = C.RankReport(0, "h", started=True, ifname={"NCCL_SOCKET_IFNAME": "eth"},
                      error={"phase": "op", "type": "RuntimeError", "message": "boom"})
    bad = C.RankReport(1, "w1", started=True, ifname={"NCCL_SOCKET_IFNAME": "^eth"},
                       error={"phase": "init", "type": "RuntimeError", "message": "boom"})
    found = C.collective_findings(result_of([ok, bad], backend="nccl"), nodes, 1)
    assert [f.hosts for f in found] == [["w1"]] and "NCCL_SOCKET_IFNAME=^eth" in found[0].message


def test_torch_version_skew_names_the_odd_one_out():
    ranks = [failed_rank(0, "h", "Connection reset by peer"),
             failed_rank(1, "w1", "Connection reset by peer"),
             failed_rank(2, "w2", "Connection reset by peer", torch="2.12.0")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert f.hosts == ["w2"] and "version skew" in f.message and "2.12.0" in f.message
    assert "install torch 2.13.0" in f.fix


def test_no_worker_reaches_the_store_names_the_head():
    msg = "The client socket has timed out after 60000ms while trying to connect to " \
          "(10.0.0.1, 29500)."
    ranks = [failed_rank(0, "h", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/1"),
             failed_rank(1, "w1", msg, type_="DistNetworkError"),
             failed_rank(2, "w2", msg, type_="DistNetworkError")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert f.hosts == ["h"] and "blocked" in f.message and "29500" in f.fix


def test_one_worker_without_a_path_to_the_store_is_named():
    msg = "The client socket has timed out after 60000ms while trying to connect to " \
          "(10.0.0.1, 29500)."
    ranks = [failed_rank(0, "h", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/2"),
             failed_rank(1, "w1", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/2"),
             failed_rank(2, "w2", msg, type_="DistNetworkError")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert f.hosts == ["w2"] and "could not reach the TCP store on h" in f.message


def test_the_rank_the_others_waited_for_is_named():
    ranks = [failed_rank(0, "h", "wait timeout after 60000ms, keys: /default_pg/0//cpu//0/1"),
             C.RankReport(1, "w1", note="lost: the node stopped answering"),
             failed_rank(2, "w2", "wait timeout after 60000ms, keys: [/default_pg/0//cpu//0/1]")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert f.hosts == ["w1"] and "waited in vain for w1" in f.message
    assert "stopped answering" in f.message


def test_a_peer_address_in_the_errors_names_that_peer():
    msg = "Gloo connectFullMesh failed with [pair.cc:144] Timed out connecting to " \
          "10.0.0.3:41234"
    ranks = [failed_rank(0, "h", msg), failed_rank(1, "w1", msg),
             failed_rank(2, "w2", "Connection reset by peer")]
    (f,) = C.collective_findings(result_of(ranks), NODES, 29500)
    assert f.hosts == ["w2"] and "32768-60999" in f.fix


def test_import_failure_and_an_unexplained_failure():
    ranks = [done_rank(0, "h"), failed_rank(1, "w1", "No module named 'torch'",
                                            phase="import", type_="ModuleNotFoundError",
                                            started=False)]
    (f,) = C.collective_findings(result_of(ranks), NODES[:2], 1)
    assert f.hosts == ["w1"] and "torch does not import" in f.message
    ranks = [done_rank(0, "h"), C.RankReport(1, "w1", started=True, torch="2.13.0")]
    (f,) = C.collective_findings(result_of(ranks), NODES[:2], 1)
    assert f.hosts == ["w1"] and "did not finish" in f.message


def test_gloo_on_a_cluster_with_some_gpus_says_so():
    nodes = [node("h", head=True, gpus=2), node("w1")]
    res = result_of([done_rank(0, "h"), done_rank(1, "w1")])
    (f,) = C.collective_findings(res, nodes, 1)
    assert (f.code, f.severity) == ("collective-backend", "info")


def test_no_torch_is_one_clear_input_error():
    err = C.no_torch_error(["w1", "w2"], "/opt/clusterctl/venv")
    assert err.exit_code == EXIT_BAD_INPUT
    text = str(err)
    assert "w1, w2 have none" in text and "/opt/clusterctl/venv" in text
    assert "python.vllm" in text and "bin/python -m pip install torch" in text
    assert C.torch_missing([node("a"), node("b", torch=None)]) == ["b"]


# -- report and JSON ----------------------------------------------------------------------------
def full_result():
    ranks = [done_rank(i, n.name) for i, n in enumerate(NODES)]
    sizes = C.summarize([C.RankReport(0, "h", results=[
        {"op": op, "bytes": b, "seconds": t, "iters": C.iterations(b)}
        for op in C.OPS for b, t in ((8192, 4e-4), (32 << 20, 0.5))])], 3)
    res = result_of(ranks, sizes, Link("w1", "w2", gbps=0.95, single_stream_gbps=0.9))
    res.master = "h 10.0.0.1:29500"
    return res


def test_report_shows_busbw_latency_and_the_slowest_link_side_by_side():
    con = Console(record=True, width=140)
    C.render_collective(full_result(), con)
    text = con.export_text()
    assert "gloo over 3 ranks" in text and "3/3 joined" in text
    assert "all_reduce of 8 KiB takes 400 µs" in text
    busbw = C.busbw_gbps("all_reduce", 32 << 20, 0.5, 3)
    assert f"bus bandwidth (all_reduce 32 MiB): {busbw:.3f} Gbit/s" in text
    assert "slowest link w1->w2 by iperf3: 0.900 Gbit/s with one stream" in text


def test_report_shows_the_bisect_runs_and_who_drags():
    res = full_result()
    b = C.Bisect(bytes=32 << 20, reference_gbps=0.9, good_gbps=0.45,
                 full=C.BisectRun(("h", "w1", "w2"), 0.07))
    b.runs = [C.BisectRun(("h", "w1"), 0.78), C.BisectRun(("h", "w2"), 0.08),
              C.BisectRun(("w1", "w2"), None)]
    C.conclude(b, res.hosts)
    res.bisect = b
    con = Console(record=True, width=140)
    C.render_collective(res, con)
    text = con.export_text()
    assert "bisect (all_reduce of 32 MiB; at speed from 0.450 Gbit/s, 50% of 0.900)" in text
    assert "h, w1: 0.780 Gbit/s  at speed" in text and "h, w2: 0.080 Gbit/s  slow" in text
    assert "w1, w2: did not finish" in text and "drags the group: w2" in text


def test_report_of_a_failed_rank():
    res = result_of([done_rank(0, "h"), failed_rank(1, "w1", "refused")])
    con = Console(record=True, width=140)
    C.render_collective(res, con)
    text = con.export_text()
    assert "no figures" in text and "rank 1 (w1) did not finish" in text and "refused" in text


def test_json_is_strict_and_versioned():
    res = NetcheckResult([], [], [], [], collective=full_result())
    buf = io.StringIO()
    print_json(res.to_json(), file=buf)
    data = json.loads(buf.getvalue())
    assert data["schema_version"] == JSON_SCHEMA_VERSION
    col = data["collective"]
    assert col["world"] == 3 and col["joined"] == ["h", "w1", "w2"]
    assert col["busbw_gbps"] == round(C.busbw_gbps("all_reduce", 32 << 20, 0.5, 3), 3)
    assert col["small_latency_us"] == 400.0
    assert col["slowest_link"]["single_stream_gbps"] == 0.9
    assert {s["op"] for s in col["sizes"]} == set(C.OPS) and len(col["sizes"]) == 4
    assert [r["rank"] for r in col["ranks"]] == [0, 1, 2]
    assert "collective" not in NetcheckResult([], [], [], []).to_json()


# -- the agent's shell around it: start, wait, stop (locally) -------------------------------
FAKE_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env python3
    # stands in for the venv's python: `-c CODE` runs, AGENT.py prints what the agent would
    import json, os, sys, time
    if sys.argv[1] == "-c":
        code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
        exec(code)
        sys.exit(0)
    args = sys.argv[2:]
    rank = int(args[args.index("--rank") + 1])
    host = args[args.index("--host") + 1]
    ifname = os.environ.get("GLOO_SOCKET_IFNAME") or args[args.index("--ifname") + 1]
    mode = os.environ.get("FAKE_COLLECTIVE", "ok")
    emit = lambda **e: print(json.dumps(e), flush=True)
    if mode == "sleep":
        emit(event="start", rank=rank, host=host, torch="2.13.0", ifname={})
        open(os.environ["FAKE_COLLECTIVE_PIDS"] + f"/{rank}", "w").write(str(os.getpid()))
        time.sleep(600)
    emit(event="start", rank=rank, host=host, torch="2.13.0", backend="gloo",
         ifname={"GLOO_SOCKET_IFNAME": ifname})
    if mode == "fail" and rank == 2:
        emit(event="error", rank=rank, phase="init", type="RuntimeError",
             message="Unable to find address for: " + ifname)
        sys.exit(4)
    emit(event="joined", rank=rank, seconds=0.1)
    sizes = [int(s) for s in args[args.index("--sizes") + 1].split(",")]
    iters = [int(s) for s in args[args.index("--iters") + 1].split(",")]
    ops = (args[args.index("--ops") + 1].split(",") if "--ops" in args
           else ["all_reduce", "all_gather"])
    rate = 1e7 if host in os.environ.get("FAKE_COLLECTIVE_DRAG", "").split(",") else 1e8
    if os.environ.get("FAKE_COLLECTIVE_LOG"):
        with open(os.environ["FAKE_COLLECTIVE_LOG"], "a") as log:
            log.write(f"{host} {rank} {','.join(ops)}\\n")
    for size, n in zip(sizes, iters):
        for op in ops:
            emit(event="result", rank=rank, op=op, bytes=size, iters=n,
                 seconds=size / rate + 1e-4 * (rank + 1))
    print("a stray line")
    emit(event="done", rank=rank)
""")


class _Host:
    def __init__(self, name):
        self.name, self.address = name, "127.0.0.1"


@pytest.fixture
def local_run(tmp_path, monkeypatch):
    """netcheck's _Run over three local 'nodes' whose venv python is the fake."""
    from clusterctl.netcheck.run import NetcheckOptions, _Run
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    monkeypatch.setattr(C, "RUN_PREFIX", str(tmp_path / "run-"))
    nodes = {}
    for i, name in enumerate(("h", "w1", "w2")):
        n = node(name, head=i == 0, ip="127.0.0.1", iface="lo")
        nodes[name] = n
    conns = {name: LocalConnection(_Host(name)) for name in nodes}
    return _Run(NetcheckOptions(), Settings(venv=str(venv)), nodes, conns), tmp_path


def test_run_collective_end_to_end_with_a_fake_agent(local_run):
    run, tmp = local_run
    links = [Link("h", "w1", gbps=9.0, single_stream_gbps=5.0)]
    res = C.run_collective(run, links, [8192, 1 << 20], join_timeout=5)
    assert res.hosts == ["h", "w1", "w2"] and res.joined == ["h", "w1", "w2"]
    assert [r.malformed for r in res.ranks] == [1, 1, 1]          # the stray line
    assert [(s.op, s.bytes) for s in res.sizes] == [
        ("all_reduce", 8192), ("all_reduce", 1 << 20), ("all_gather", 8192),
        ("all_gather", 1 << 20)]
    big = res.largest()
    assert big.seconds == pytest.approx((1 << 20) / 1e8 + 3e-4)   # the slowest rank
    assert res.master.startswith("h 127.0.0.1:") and res.slowest_link is links[0]
    assert all(r.ifname["GLOO_SOCKET_IFNAME"] == "lo" for r in res.ranks)  # --ifname
    assert not list(tmp.glob("run-*"))                             # cleaned up


LAB_LINKS = [Link(a, b, gbps=0.95, single_stream_gbps=0.9)
             for a in ("h", "w1", "w2") for b in ("h", "w1", "w2") if a != b]


def test_a_healthy_group_is_not_bisected(local_run, monkeypatch, tmp_path):
    run, _ = local_run
    monkeypatch.setenv("FAKE_COLLECTIVE_LOG", str(tmp_path / "log"))
    res = C.run_collective(run, LAB_LINKS, [8192, 1 << 20], join_timeout=5)
    assert res.reference_gbps == 0.9 and res.largest().busbw_gbps > 0.45
    assert res.bisect is None and res.findings == []
    assert len((tmp_path / "log").read_text().splitlines()) == 3     # one group only


def test_run_collective_bisects_a_slow_group_and_names_the_node(local_run, monkeypatch,
                                                                 tmp_path):
    run, tmp = local_run
    monkeypatch.setenv("FAKE_COLLECTIVE_DRAG", "w2")          # w2 runs at a tenth
    monkeypatch.setenv("FAKE_COLLECTIVE_LOG", str(tmp_path / "log"))
    said = []
    run.options.progress = said.append
    res = C.run_collective(run, LAB_LINKS, [8192, 1 << 20], join_timeout=5)
    b = res.bisect
    assert b.blamed == ["w2"] and b.bytes == 1 << 20 and b.stopped is None
    assert [r.hosts for r in b.runs] == [("h", "w1"), ("h", "w2"), ("w1", "w2")]
    assert b.runs[0].busbw_gbps > 0.45 > b.runs[1].busbw_gbps
    log = (tmp_path / "log").read_text().splitlines()
    assert len(log) == 3 + 6 and all(ln.endswith(" all_reduce") for ln in log[3:])
    assert "h 0 all_reduce" in log and "w2 1 all_reduce" in log   # fresh ranks per group
    (f,) = res.findings
    assert f.code == "collective-slow" and f.hosts == ["w2"] and f.severity == "warning"
    assert "w2 drags the collective" in f.message and "without (h, w1)" in f.message
    assert "pair matrix" in f.fix and "ethtool lo" in f.fix
    data = res.to_json()
    assert data["bisect"]["blamed"] == ["w2"] and data["reference_gbps"] == 0.9
    assert [r["hosts"] for r in data["bisect"]["runs"]][0] == ["h", "w1", "w2"]
    assert any("bisecting" in m for m in said)
    assert not list(tmp.glob("run-*"))                             # every group cleaned


def test_the_bisect_stops_at_its_time_bound(local_run, monkeypatch):
    run, _ = local_run
    monkeypatch.setenv("FAKE_COLLECTIVE_DRAG", "w2")
    res = C.run_collective(run, LAB_LINKS, [8192, 1 << 20], join_timeout=5,
                           bisect_seconds=0)
    assert res.bisect.runs == [] and "time bound" in res.bisect.stopped
    (f,) = res.findings
    assert f.hosts == ["h", "w1", "w2"] and "time bound" in f.message


def test_run_collective_names_the_rank_that_failed(local_run, monkeypatch):
    run, _ = local_run
    monkeypatch.setenv("FAKE_COLLECTIVE", "fail")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "docker0")     # what a wrong env file does
    res = C.run_collective(run, [], [8192], join_timeout=5)
    errors = [f for f in res.findings if f.severity == "error"]
    assert errors and all(f.code == "collective-failed" for f in errors)
    assert "w2" in {h for f in errors for h in f.hosts}
    assert any("GLOO_SOCKET_IFNAME=docker0" in f.message for f in errors)


def test_run_collective_stops_the_ranks_on_ctrl_c(local_run, monkeypatch, tmp_path):
    run, tmp = local_run
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    monkeypatch.setenv("FAKE_COLLECTIVE", "sleep")
    monkeypatch.setenv("FAKE_COLLECTIVE_PIDS", str(pids_dir))
    original = run.parallel
    calls = []

    def interrupting(fn, items, **kw):
        calls.append(fn.__name__)
        if fn.__name__ == "wait":
            deadline = time.monotonic() + 30
            while len(list(pids_dir.iterdir())) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
        return original(fn, items, **kw)

    monkeypatch.setattr(run, "parallel", interrupting)
    with pytest.raises(KeyboardInterrupt):
        C.run_collective(run, [], [8192], join_timeout=5)
    assert calls == ["start", "wait", "stop"]
    pids = [int(p.read_text()) for p in pids_dir.iterdir()]
    assert len(pids) == 3
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]
    assert not list(tmp.glob("run-*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_run_collective_without_torch_raises_before_starting_anything(local_run):
    run, tmp = local_run
    run.nodes["w1"].versions["torch"] = None
    with pytest.raises(C.CollectiveUnavailable) as exc:
        C.run_collective(run, [], [8192])
    assert "w1 has none" in str(exc.value)
    assert not list(tmp.glob("run-*"))


def test_start_script_exports_the_env_file(tmp_path):
    env = tmp_path / "nccl.env"
    env.write_text("GLOO_SOCKET_IFNAME=eth7\nNCCL_SOCKET_IFNAME=eth7\n")
    py = tmp_path / "python"
    py.write_text("#!/bin/sh\necho \"$GLOO_SOCKET_IFNAME $NCCL_SOCKET_IFNAME $*\"\n")
    py.chmod(0o755)
    rundir = str(tmp_path / "rd")
    out = subprocess.run(["bash", "-c", C.start_script(rundir, b"print(1)\n",
                                                       [str(py), rundir + "/agent.py", "x"],
                                                       30, str(env))],
                         capture_output=True, text=True, check=True).stdout
    pid = int(out.split()[-1])
    waited = subprocess.run(["bash", "-c", C.wait_script(rundir, pid, 10)],
                            capture_output=True, text=True, check=True).stdout
    assert waited.startswith(f"eth7 eth7 {rundir}/agent.py x\n")
    assert Path(rundir, "agent.py").read_text() == "print(1)\n"
    subprocess.run(["bash", "-c", C.stop_script(rundir, pid)], check=True)
    assert not Path(rundir).exists()
    missing = subprocess.run(["bash", "-c", C.start_script(rundir, b"", ["/nonexistent/py",
                                                                         "a"], 5)],
                             capture_output=True, text=True).stdout
    assert missing.strip() == "no-python"


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_without_torch_exits_2_with_one_message(monkeypatch, tmp_path):
    from clusterctl.cli import main
    from clusterctl.netcheck import run as runmod
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    h: {ansible_host: 10.0.0.1, role: head}\n    w: "
                   "{ansible_host: 10.0.0.2}\n")

    def no_torch(inventory, hosts, options, session=None):
        assert options.collective and options.collective_sizes == (4096, 1 << 20)
        assert options.collective_bisect_seconds == 42
        raise C.no_torch_error(["w"], "/opt/clusterctl/venv")
    monkeypatch.setattr(runmod, "run_netcheck", no_torch)
    res = CliRunner().invoke(main, ["netcheck", "-i", str(inv), "--collective", "--json",
                                    "--collective-sizes", "4K,1M",
                                    "--collective-bisect-seconds", "42"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "needs torch" in res.output


def test_cli_bad_sizes_exit_2(tmp_path):
    from clusterctl.cli import main
    res = CliRunner().invoke(main, ["netcheck", "-i", str(tmp_path / "none.yaml"),
                                    "--collective", "--collective-sizes", "lots"])
    assert res.exit_code == 2 and "--collective-sizes" in res.output
