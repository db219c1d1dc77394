"""Every finding code from synthetic measurements, naming the right hosts."""
from itertools import permutations

import pytest

from clusterctl.netcheck.findings import analyze, culprits
from clusterctl.netcheck.model import (IbPort, Link, NetcheckResult, NodeInfo, PortCheck,
                                       Settings)

NAMES = ["n1", "n2", "n3", "n4"]
SETTINGS = Settings(network="198.18.0.0/24", mtu=9000, ray_port=6379,
                    ray_worker_ports=(10002, 10100), rpc_port=50052, vllm_port=8000,
                    venv="/opt/clusterctl/venv")


def healthy(n=4, gbps=9.4, mtu=9000):
    nodes, links = [], []
    names = [f"n{i}" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        ip = f"198.18.0.{11 + i}"
        nodes.append(NodeInfo(
            name=name, address=ip, is_head=i == 0, cluster_ip=ip, interface="eth1", mtu=mtu,
            link_type="ether", interfaces={"lo": ["127.0.0.1"], "eth1": [ip]},
            route_interfaces={f"198.18.0.{11 + j}": "eth1" for j in range(n) if j != i},
            env={"NCCL_SOCKET_IFNAME": "eth1", "GLOO_SOCKET_IFNAME": "eth1",
                 "VLLM_HOST_IP": ip},
            env_source={k: "/etc/clusterctl/nccl.env" for k in
                        ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP")},
            ray_node_ip=ip, iperf3=True,
            versions={"python": "3.11.2", "ray": "2.60.0", "vllm": None, "torch": None,
                      "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-40-amd64"}))
    for a, b in permutations(names, 2):
        links.append(Link(a, b, gbps=gbps, rtt_ms=0.05, ping_ok=True, jumbo_ok=True,
                          jumbo_size=mtu - 28, streams=4, bidir=True,
                          single_stream_gbps=round(0.9 * gbps, 3)))
    ports = []
    for w in names[1:]:
        ports += [PortCheck(w, "n1", 6379, "Ray GCS", "open"),
                  PortCheck(w, "n1", 10002, "Ray worker port range", "open"),
                  PortCheck(w, "n1", 8000, "vLLM API", "open"),
                  PortCheck("n1", w, 50052, "llama.cpp RPC", "open")]
    return nodes, links, ports


def by_code(findings, code, severity=None):
    return [f for f in findings if f.code == code and (severity is None or f.severity == severity)]


def errors(findings):
    return [f for f in findings if f.severity == "error"]


def node(nodes, name):
    return next(n for n in nodes if n.name == name)


def test_healthy_cluster_has_no_errors_or_warnings():
    nodes, links, ports = healthy()
    f = analyze(nodes, links, ports, SETTINGS)
    assert [x.code for x in f] == ["parallelism"]
    assert f[0].severity == "info" and "pipeline_parallel_size=4" in f[0].message


def test_unreachable_node():
    nodes, links, ports = healthy()
    n3 = node(nodes, "n3")
    n3.reachable, n3.error = False, "timed out connecting to 198.18.0.13:22 after 10s"
    links = [ln for ln in links if "n3" not in (ln.src, ln.dst)]
    ports = [p for p in ports if "n3" not in (p.src, p.dst)]
    f = analyze(nodes, links, ports, SETTINGS)
    (u,) = by_code(f, "unreachable")
    assert u.hosts == ["n3"] and u.severity == "error" and "timed out" in u.message
    assert errors(f) == [u]


def test_partitioned_node_named_alone():
    nodes, links, ports = healthy()
    for ln in links:
        if "n4" in (ln.src, ln.dst):
            ln.ping_ok, ln.jumbo_ok, ln.gbps = False, False, None
    f = analyze(nodes, links, ports, SETTINGS)
    (u,) = by_code(f, "unreachable")
    assert u.hosts == ["n4"]
    assert not by_code(f, "mtu-blackhole")       # no ping at all is not an MTU problem


def test_mtu_blackhole_names_the_node_behind_the_1500_port():
    nodes, links, ports = healthy()
    for ln in links:
        if "n2" in (ln.src, ln.dst):
            ln.jumbo_ok = False
    f = analyze(nodes, links, ports, SETTINGS)
    (b,) = by_code(f, "mtu-blackhole")
    assert b.hosts == ["n2"] and b.severity == "error"
    assert "switch port" in b.fix and "cluster.mtu: 1500" in b.fix and "9000" in b.fix
    assert not by_code(f, "mtu-mismatch")


def test_mtu_mismatch_names_the_odd_node():
    nodes, links, ports = healthy()
    node(nodes, "n3").mtu = 1500
    for ln in links:
        if ln.src == "n3":
            ln.jumbo_size = 1472
        elif ln.dst == "n3":
            ln.jumbo_ok = False            # 8972 bytes do not fit n3's 1500
    f = analyze(nodes, links, ports, SETTINGS)
    (m,) = by_code(f, "mtu-mismatch")
    assert m.hosts == ["n3"] and "1500" in m.message and "9000" in m.fix
    assert not by_code(f, "mtu-blackhole")   # explained by the mismatch


def test_mtu_mismatch_uses_majority_over_target():
    nodes, links, ports = healthy(mtu=1500)
    node(nodes, "n2").mtu = 9000
    f = analyze(nodes, links, ports, SETTINGS)
    (m,) = by_code(f, "mtu-mismatch")
    assert m.hosts == ["n2"]


def test_all_nodes_below_target_is_a_warning():
    nodes, links, ports = healthy(mtu=1500)
    f = analyze(nodes, links, ports, SETTINGS)
    (m,) = by_code(f, "mtu-mismatch")
    assert m.severity == "warning" and m.hosts == NAMES
    assert not errors(f)


def test_slow_link_on_one_port_names_that_node():
    nodes, links, ports = healthy()
    for ln in links:
        if ln.dst == "n3":               # shaped port: traffic towards n3
            ln.gbps = 0.095
        elif ln.src == "n3":
            ln.gbps = 0.098
    f = analyze(nodes, links, ports, SETTINGS)
    (s,) = by_code(f, "slow-link", "error")
    assert s.hosts == ["n3"] and "below 1 Gbit/s" in s.message
    assert [x.hosts for x in errors(f)] == [["n3"]]


def test_one_gbe_link_is_a_tp_warning_not_an_error():
    nodes, links, ports = healthy(gbps=0.958)
    f = analyze(nodes, links, ports, SETTINGS)
    (s,) = by_code(f, "slow-link")
    assert s.severity == "warning" and "tensor parallel" in s.message
    assert s.hosts == NAMES
    assert not errors(f)


def test_outlier_link_warning():
    nodes, links, ports = healthy(gbps=94.0)
    for ln in links:
        if "n4" in (ln.src, ln.dst):
            ln.gbps = 23.0
    f = analyze(nodes, links, ports, SETTINGS)
    (s,) = by_code(f, "slow-link")
    assert s.severity == "warning" and s.hosts == ["n4"] and "median" in s.message


def test_asymmetric_link():
    nodes, links, ports = healthy()
    for ln in links:
        if ln.dst == "n2":
            ln.gbps = 2.0
    f = analyze(nodes, links, ports, SETTINGS)
    (a,) = by_code(f, "asymmetric-link")
    assert a.hosts == ["n2"] and a.severity == "warning"


def test_blocked_ray_port_on_the_head():
    nodes, links, ports = healthy()
    for p in ports:
        if p.port == 6379:
            p.state, p.detail = "blocked", "timeout"
    f = analyze(nodes, links, ports, SETTINGS)
    (p,) = by_code(f, "port-blocked")
    assert p.hosts == ["n1"] and "6379" in p.message and "Ray GCS" in p.message
    assert "6379" in p.fix and p.severity == "error"


def test_blocked_port_from_one_worker_names_the_worker():
    nodes, links, ports = healthy()
    for p in ports:
        if p.port == 6379 and p.src == "n4":
            p.state = "blocked"
    (p,) = by_code(analyze(nodes, links, ports, SETTINGS), "port-blocked")
    assert p.hosts == ["n4"]


def test_blocked_rpc_port_on_a_worker():
    nodes, links, ports = healthy()
    for p in ports:
        if p.port == 50052 and p.dst == "n3":
            p.state = "refused"
    (p,) = by_code(analyze(nodes, links, ports, SETTINGS), "port-blocked")
    assert p.hosts == ["n3"] and "llama.cpp RPC" in p.message


@pytest.mark.parametrize("change,expect", [
    (lambda n: n.env.update(NCCL_SOCKET_IFNAME="eth0"), "NCCL_SOCKET_IFNAME=eth0"),
    (lambda n: n.env.update(GLOO_SOCKET_IFNAME="docker0"), "GLOO_SOCKET_IFNAME=docker0"),
    (lambda n: n.env.update(VLLM_HOST_IP="10.0.0.5"), "VLLM_HOST_IP=10.0.0.5"),
    (lambda n: setattr(n, "ray_node_ip", "10.0.0.5"), "Ray runs with node IP 10.0.0.5"),
    (lambda n: n.route_interfaces.update({"198.18.0.11": "eth0"}), "leaves via eth0"),
])
def test_wrong_interface(change, expect):
    nodes, links, ports = healthy()
    change(node(nodes, "n2"))
    f = analyze(nodes, links, ports, SETTINGS)
    (w,) = by_code(f, "wrong-interface")
    assert w.hosts == ["n2"] and expect in w.message and w.severity == "error"


@pytest.mark.parametrize("spec,ok", [("eth", True), ("=eth1", True), ("^docker,lo", True),
                                     ("=eth", False), ("^eth", False), ("ib,eth1", True)])
def test_nccl_ifname_semantics(spec, ok):
    nodes, links, ports = healthy()
    node(nodes, "n2").env["NCCL_SOCKET_IFNAME"] = spec
    assert bool(by_code(analyze(nodes, links, ports, SETTINGS), "wrong-interface")) != ok


def test_no_cluster_address():
    nodes, links, ports = healthy()
    n = node(nodes, "n4")
    n.cluster_ip = n.interface = n.mtu = None
    (w,) = by_code(analyze(nodes, links, ports, SETTINGS), "wrong-interface")
    assert w.hosts == ["n4"] and "198.18.0.0/24" in w.message


def test_ray_version_skew_names_the_odd_node():
    nodes, links, ports = healthy()
    node(nodes, "n3").versions["ray"] = "2.59.0"
    f = analyze(nodes, links, ports, SETTINGS)
    (v,) = by_code(f, "version-skew")
    assert v.hosts == ["n3"] and v.severity == "error"
    assert "2.59.0 on n3" in v.message and "ray==2.60.0" in v.fix
    assert "/opt/clusterctl/venv/bin/pip" in v.fix


def test_ray_missing_on_one_node_is_skew():
    nodes, links, ports = healthy()
    node(nodes, "n2").versions["ray"] = None
    (v,) = by_code(analyze(nodes, links, ports, SETTINGS), "version-skew")
    assert v.hosts == ["n2"] and "not installed on n2" in v.message


def test_kernel_skew_is_info_and_python_patch_is_warning():
    nodes, links, ports = healthy()
    node(nodes, "n2").versions["kernel"] = "6.1.0-41-amd64"
    node(nodes, "n4").versions["python"] = "3.11.9"
    f = analyze(nodes, links, ports, SETTINGS)
    sev = {x.message.split()[0]: x.severity for x in by_code(f, "version-skew")}
    assert sev == {"kernel": "info", "Python": "warning"}
    assert not errors(f)


def test_ib_port_down_and_no_subnet_manager():
    nodes, links, ports = healthy()
    node(nodes, "n1").ib_ports = [IbPort("mlx5_0", 1, "Down", "Polling", 200.0)]
    node(nodes, "n2").ib_ports = [IbPort("mlx5_0", 1, "Initializing", "LinkUp", 200.0)]
    node(nodes, "n3").ib_ports = [IbPort("mlx5_0", 1, "Initializing", "LinkUp", 200.0)]
    node(nodes, "n4").ib_ports = [IbPort("mlx5_0", 1, "Active", "LinkUp", 200.0)]
    f = analyze(nodes, links, ports, SETTINGS)
    (d,) = by_code(f, "ib-port-down")
    assert d.hosts == ["n1"] and "Polling" in d.message
    (s,) = by_code(f, "no-subnet-manager")
    assert s.hosts == ["n2", "n3"] and "opensm" in s.fix
    node(nodes, "n4").sm_running = True
    assert not by_code(analyze(nodes, links, ports, SETTINGS), "no-subnet-manager")


def test_infiniband_link_classified_by_port_rate():
    nodes, links, ports = healthy(gbps=25.0)      # IPoIB through the kernel
    for n in nodes:
        n.link_type = "infiniband"
        n.ib_ports = [IbPort("mlx5_0", 1, "Active", "LinkUp", 200.0)]
    f = analyze(nodes, links, ports, SETTINGS)
    assert "IB HDR" in by_code(f, "parallelism")[0].message


def test_iperf3_missing_and_failed_runs():
    nodes, links, ports = healthy()
    node(nodes, "n2").iperf3 = False
    for ln in links:
        if "n2" in (ln.src, ln.dst):
            ln.gbps, ln.error = None, "iperf3: unable to connect to server"
    f = analyze(nodes, links, ports, SETTINGS)
    assert by_code(f, "iperf3-missing")[0].hosts == ["n2"]
    assert by_code(f, "bandwidth-failed")[0].hosts == ["n2"]


def test_errors_sorted_first_and_exit_code():
    nodes, links, ports = healthy()
    node(nodes, "n2").versions["kernel"] = "x"
    node(nodes, "n3").versions["ray"] = "2.0.0"
    f = analyze(nodes, links, ports, SETTINGS)
    sev = [x.severity for x in f]
    assert sev == sorted(sev, key=["error", "warning", "info"].index)
    assert NetcheckResult(nodes, links, ports, f).exit_code == 1
    ok = analyze(*healthy(), SETTINGS)
    assert NetcheckResult(nodes, links, ports, ok).exit_code == 0


def test_culprits():
    star = [("a", "x"), ("b", "x"), ("c", "x")]
    assert culprits(star) == ["x"]
    assert culprits([("a", "b")]) == ["a", "b"]                       # can't tell
    assert culprits([("a", "b")], good=[("a", "c"), ("a", "d")]) == ["b"]
    assert culprits([]) == []
    assert sorted(culprits([("a", "b"), ("c", "d")])) == ["a", "b", "c", "d"]


def test_down_node_is_one_finding():
    nodes, links, ports = healthy()
    n2 = node(nodes, "n2")
    n2.reachable, n2.error = False, "timed out connecting to 198.18.0.12:22 after 10s"
    links = [ln for ln in links if ln.src != "n2"]
    for ln in links:
        if ln.dst == "n2":
            ln.ping_ok, ln.jumbo_ok, ln.rtt_ms, ln.gbps = False, False, None, None
    f = analyze(nodes, links, [p for p in ports if "n2" not in (p.src, p.dst)], SETTINGS)
    (u,) = by_code(f, "unreachable")
    assert u.hosts == ["n2"] and "cannot ping it" in u.message
    assert [x.hosts for x in errors(f)] == [["n2"]]


def test_ssh_stalls_behind_a_1500_port():
    """port MTU 1500 under a 9000 node: the controller's SSH stalls too."""
    nodes, links, ports = healthy()
    n3 = node(nodes, "n3")
    n3.reachable, n3.error = False, "SSH connects but commands stall (no answer within 30s)"
    n3.mtu = n3.cluster_ip = n3.interface = None
    links = [ln for ln in links if ln.src != "n3"]
    for ln in links:
        if ln.dst == "n3":
            ln.jumbo_ok, ln.gbps = False, None
    f = analyze(nodes, links, [p for p in ports if "n3" not in (p.src, p.dst)], SETTINGS)
    (b,) = by_code(f, "mtu-blackhole")
    assert b.hosts == ["n3"]
    (u,) = by_code(f, "unreachable")
    assert u.hosts == ["n3"] and "see mtu-blackhole" in u.message
    assert {h for x in errors(f) for h in x.hosts} == {"n3"}


# -- one stream far below several ---------------------------------------------------
def test_single_stream_far_below_multi_stream_names_the_node():
    nodes, links, ports = healthy()
    for ln in links:
        if "n3" in (ln.src, ln.dst):
            ln.single_stream_gbps = 2.1            # 9.4 with 4 streams, 2.1 with one
    f = analyze(nodes, links, ports, SETTINGS)
    (w,) = by_code(f, "single-stream-slow")
    assert w.severity == "warning" and w.hosts == ["n3"]
    assert "n1->n3 2.10 vs 9.40 with 4" in w.message
    assert "NCCL_SOCKET_NTHREADS" in w.fix and "NCCL_NSOCKS_PERTHREAD" in w.fix
    assert "ethtool -k" in w.fix and "n3" in w.fix
    assert not errors(f) and not by_code(f, "slow-link")   # the link itself is fine


@pytest.mark.parametrize("change", [
    dict(single_stream_gbps=4.8),                   # 51%: not far below
    dict(single_stream_gbps=None),                  # not measured (--no-single-stream)
    dict(single_stream_gbps=2.0, streams=1),        # -P 1: one figure, nothing to compare
    dict(single_stream_gbps=2.0, gbps=None),        # the multi-stream run failed
])
def test_single_stream_no_finding(change):
    nodes, links, ports = healthy()
    for ln in links:
        for k, v in change.items():
            setattr(ln, k, v)
    f = analyze(nodes, links, ports, SETTINGS)
    assert not by_code(f, "single-stream-slow")
