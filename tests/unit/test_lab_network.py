"""After `lab heal`: which paths must answer, and the wait until they do (no host needed:
the probe is a stand-in)."""
import pytest

from clusterctl.errors import ClusterctlError
from clusterctl.lab import network
from clusterctl.lab.state import FaultState, LabState, NodeState


def make_state(n: int = 3, faults=()) -> LabState:
    st = LabState(name="t", subnet="198.18.4.0/24", bridge="cc-t", bridge_ip="198.18.4.1",
                  link="1gbit", mtu=9000, node_mtu=9000, image="/img/rootfs",
                  nft_table="clusterctl_lab_t", phase="up")
    for k in range(1, n + 1):
        st.nodes.append(NodeState(name=f"t-node{k}", index=k, ip=f"198.18.4.{10 + k}",
                                  port=f"cc-t-{k}", pid=1000 + k, pid_start=5000 + k))
    st.faults = [FaultState(*f) for f in faults]
    return st


def described(paths) -> list[tuple[str, str]]:
    return [(src.name, what) for src, _ip, what in paths]


def test_a_healed_node_is_checked_to_and_from_every_peer_and_the_controller():
    st = make_state(3)
    paths = network.paths_to_check(st, ["t-node3"])
    assert described(paths) == [
        ("t-node3", "the controller"),
        ("t-node3", "t-node1"), ("t-node1", "t-node3"),
        ("t-node3", "t-node2"), ("t-node2", "t-node3")]
    ips = {what: ip for _src, ip, what in paths}
    assert ips["the controller"] == "198.18.4.1" and ips["t-node1"] == "198.18.4.11"


def test_each_pair_is_checked_once_when_several_nodes_heal():
    st = make_state(3)
    paths = described(network.paths_to_check(st, ["t-node1", "t-node2", "t-node3"]))
    assert len(paths) == len(set(paths)) == 3 + 3 * 2       # 3 to the controller, 6 pairs


def test_nodes_still_cut_off_are_not_expected_to_answer():
    # node2 keeps its partition, node4 its down port; node3 only loses a slow link
    st = make_state(4, [("t-node2", "partition"), ("t-node4", "down"),
                        ("t-node1", "block-port", "22")])
    paths = described(network.paths_to_check(st, ["t-node3", "t-node2"]))
    assert ("t-node3", "t-node2") not in paths and ("t-node2", "t-node3") not in paths
    assert all("t-node4" not in p for p in paths)
    assert all(src != "t-node2" for src, _ in paths)          # still partitioned
    assert ("t-node3", "t-node1") in paths                    # block-port leaves ICMP
    assert network.paths_to_check(st, []) == []


def test_wait_tries_a_path_again_until_it_answers(monkeypatch):
    monkeypatch.setattr(network.time, "sleep", lambda s: None)
    st = make_state(2)
    calls = []

    def probe(src, ip):             # node2 -> node1 fails twice, like an ARP that ran out
        calls.append((src.name, ip))
        return not (src.name == "t-node2" and ip == "198.18.4.11"
                    and calls.count((src.name, ip)) <= 2)
    network.wait_paths(st, ["t-node2"], timeout=5, probe=probe)
    assert calls.count(("t-node2", "198.18.4.11")) == 3
    assert calls.count(("t-node1", "198.18.4.12")) == 1       # answered: not asked again


def test_wait_names_the_paths_that_never_answer(monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(network.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(network.time, "sleep", lambda s: None)
    st = make_state(2)
    with pytest.raises(ClusterctlError) as err:
        network.wait_paths(st, ["t-node2"], timeout=10,
                           probe=lambda src, ip: ip != "198.18.4.11")
    msg = str(err.value)
    assert "after 10s" in msg and "t-node2 -> t-node1 (198.18.4.11)" in msg
    assert "the controller" not in msg and "t-node1 -> t-node2" not in msg


def test_wait_with_nothing_healed_probes_nothing():
    network.wait_paths(make_state(2), [], probe=lambda src, ip: pytest.fail("probed"))
