"""The session: bounded parallel map with a group result, per-host deadlines, one
connection per host, and the cluster view (pure, from recorded facts)."""
import threading
import time

import pytest

from clusterctl import session as session_mod
from clusterctl.engine.raycheck import RayCheck
from clusterctl.errors import HostError
from clusterctl.facts import FactRequest, Facts, Interface, Route
from clusterctl.session import ClusterView, GroupResult, Session, cluster_address


class Host:
    def __init__(self, name, address, network=None, is_head=False, gpus=None):
        self.name, self.address, self.is_head, self.gpus = name, address, is_head, gpus
        self.vars = {"cluster": {"network": network}} if network else {}


class Inventory:
    def __init__(self, *hosts):
        self.hosts = {h.name: h for h in hosts}


def facts(*ifaces, default_dev=None, gpus=()):
    routes = [Route("default", "192.0.2.1", default_dev, None, None, None, None)] if default_dev else []
    return Facts({FactRequest("interfaces"): list(ifaces), FactRequest("routes"): routes,
                  FactRequest("gpus"): list(gpus)})


def iface(name, *addrs, mtu=1500):
    return Interface(name, mtu, "UP", None, [(a, 24) for a in addrs], "ether")


# -- cluster address ---------------------------------------------------------------

def test_cluster_address_by_cidr_prefers_the_ssh_address():
    f = facts(iface("eth0", "10.0.0.5"), iface("ib0", "198.18.0.9", "198.18.0.7"))
    assert cluster_address(Host("a", "198.18.0.7", "198.18.0.0/24"), f) == ("ib0", "198.18.0.7")
    assert cluster_address(Host("a", "10.0.0.5", "198.18.0.0/24"), f) == ("ib0", "198.18.0.9")


def test_cluster_address_by_interface_name_and_by_ssh_address():
    f = facts(iface("eth0", "10.0.0.5"), iface("eth1", "198.18.0.9"))
    assert cluster_address(Host("a", "10.0.0.5", "eth1"), f) == ("eth1", "198.18.0.9")
    assert cluster_address(Host("a", "10.0.0.5"), f) == ("eth0", "10.0.0.5")


def test_cluster_address_falls_back_to_the_default_route_without_a_network():
    f = facts(iface("eth0", "10.0.0.5"), default_dev="eth0")
    assert cluster_address(Host("a", "node1.example"), f) == ("eth0", "10.0.0.5")
    # with a network that nothing matches there is no guessing
    assert cluster_address(Host("a", "node1.example", "198.18.0.0/24"), f) == (None, None)


def test_cluster_address_network_override_and_ipv6_only():
    f = facts(iface("eth0", "10.0.0.5"), iface("eth1", "fe80::1", "2001:db8::5"))
    assert cluster_address(Host("a", "10.0.0.5"), f, "eth1") == ("eth1", "2001:db8::5")


def test_cluster_view_is_built_once_and_shares_peer_entries():
    inv = Inventory(Host("h", "198.18.0.1", is_head=True), Host("w1", "198.18.0.2", gpus=4),
                    Host("w2", "198.18.0.3"))
    view = ClusterView.build(inv, {
        "h": facts(iface("eth0", "198.18.0.1")),
        "w1": facts(iface("eth0", "198.18.0.2")),
        "w2": facts(iface("eth0", "198.18.0.3"), gpus=["g0", "g1"])})
    assert view.head.name == "h" and view.head_entry()["cluster_ip"] == "198.18.0.1"
    assert [p["name"] for p in view.peers("w1")] == ["h", "w2"]
    assert view.hosts["w1"].gpus == 4          # stated in the inventory wins
    assert view.hosts["w2"].gpus == 2          # else detected
    assert view.ips() == {"h": "198.18.0.1", "w1": "198.18.0.2", "w2": "198.18.0.3"}
    assert view.peers("w1")[0] is view.peers("w2")[0]   # one entry per host, not per pair


# -- the parallel map ---------------------------------------------------------------

def test_map_collects_values_and_failures_without_stopping_the_others():
    s = Session(Inventory(), forks=3)

    def fn(name):
        if name == "bad":
            raise HostError(name, "disk full")
        if name == "bug":
            raise KeyError("x")
        return name.upper()
    res = s.map(fn, ["a", "bad", "b", "bug"], step="write")
    assert res.succeeded == {"a": "A", "b": "B"}
    assert set(res.failed) == {"bad", "bug"}
    assert res.failed["bad"].reason == "disk full" and res.failed["bad"].step == "write"
    assert res.failed["bug"].reason.startswith("KeyError")
    assert str(res.failed["bad"]) == "bad: write: disk full"
    assert not res.ok and "a" in res and "zz" not in res
    assert isinstance(res.outcome("bad"), HostError) and res.outcome("a") == "A"
    assert res.to_dict()["failed"]["bad"] == {"host": "bad", "step": "write",
                                              "reason": "disk full"}


def test_map_is_bounded_by_forks():
    s = Session(Inventory(), forks=2)
    running, peak = [0], [0]
    lock = threading.Lock()

    def fn(_):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
    res = s.map(fn, [f"h{i}" for i in range(8)])
    assert res.ok and len(res.succeeded) == 8
    assert peak[0] == 2


def test_map_deadline_cuts_a_stalled_host_and_names_the_step(monkeypatch):
    s = Session(Inventory(), forks=4)
    released = threading.Event()
    aborted = []

    def abort(name):          # what cutting a stalled SSH connection does to its thread
        aborted.append(name)
        released.set()
    monkeypatch.setattr(s, "abort", abort)

    def fn(name):
        if name == "stuck":
            released.wait(30)
            raise HostError(name, "connection lost")
        return "ok"
    res = s.map(fn, ["a", "stuck", "b"], step="facts", deadline=0.5)
    assert res.succeeded == {"a": "ok", "b": "ok"}
    assert aborted == ["stuck"]
    assert res.failed["stuck"].reason.startswith("timed out after 0.5s during facts")


def test_empty_map():
    assert Session(Inventory()).map(lambda x: x, []) == GroupResult()


def test_one_connection_per_host(monkeypatch):
    made = []

    class FakeConn:
        def __init__(self, host, **kw):
            made.append(host.name)
            self.is_open = False

        def open(self):
            self.is_open = True
            return self

        def close(self):
            self.is_open = False
    monkeypatch.setattr(session_mod, "Connection", FakeConn)
    inv = Inventory(Host("a", "198.18.0.1"), Host("b", "198.18.0.2"))
    with Session(inv, forks=4) as s:
        s.connect(inv.hosts.values())
        s.map(lambda name: s.connection(name), ["a", "b", "a", "b"] * 5,
              name=lambda n: n + str(id(object())))
        assert s.connection("a") is s.connection(inv.hosts["a"])
        assert sorted(made) == ["a", "b"] and s.opened == 2


# -- the Ray check's registration rule ------------------------------------------------

def test_ray_check_waits_for_registered_resources():
    check = RayCheck("h", {"h": "198.18.0.1", "w": "198.18.0.2"}, gpus={"w": 2},
                     alive={"198.18.0.1": {"resources_total": {"CPU": 2.0}},
                            "198.18.0.2": {"resources_total": {"CPU": 2.0, "GPU": 1.0}}})
    assert check.missing == [] and check.unregistered() == ["w"] and not check.ok
    check.alive["198.18.0.2"]["resources_total"]["GPU"] = 2.0
    assert check.ok
    check.alive["198.18.0.1"] = {"resources_total": {}}
    assert check.unregistered() == ["h"]


# -- locks: the remote script under local bash -------------------------------------------

def test_real_connection_has_what_the_session_uses():
    from clusterctl import remote
    for attr in ("is_open", "open", "close", "abort", "run", "open_channel"):
        assert hasattr(remote.Connection, attr), attr


def test_lock_script_holds_while_stdin_is_open_and_reports_the_holder(tmp_path, monkeypatch):
    import subprocess
    monkeypatch.setattr(session_mod, "LOCK_DIR", str(tmp_path / "locks"))
    first = subprocess.Popen(["bash", "-c", session_mod.lock_script("cluster", "holder=a\ncommand=bootstrap")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "LOCKED"
    second = subprocess.run(["bash", "-c", session_mod.lock_script("cluster", "holder=b")],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)
    locked, owner = session_mod.parse_lock_answer(second.stdout)
    assert second.returncode == 75 and not locked
    assert owner["holder"] == "a" and owner["command"] == "bootstrap"
    assert owner["pid"] == str(first.pid)
    first.stdin.close()                    # the holder's channel ends: released
    first.wait(timeout=10)
    third = subprocess.Popen(["bash", "-c", session_mod.lock_script("cluster", "holder=c")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert third.stdout.readline().strip() == "LOCKED"
    third.stdin.close()
    third.wait(timeout=10)


def test_lock_names_are_plain():
    with pytest.raises(ValueError):
        session_mod.lock_script("deploy-../../etc", "x")
