"""The RPC watchdog's pure parts: the kernel TCP table parser and the decision tracker."""
from __future__ import annotations

import json
import socket

import pytest

from clusterctl.deploy import rpcwatch
from clusterctl.deploy.rpcwatch import Tracker, Worker, parse_proc_tcp, parse_worker

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")
# 198.18.0.2:40000 -> 198.18.0.3:50052, established, 0x200 bytes unacked, 4 retransmits
STALLED = ("   3: 020012C6:9C40 030012C6:C384 01 00000200:00000000 01:00000BB8 00000004     0"
           "        0 5555 2 0000000000000000 200 4 0 10 -1\n")
# the same peer on another port, healthy
HEALTHY = ("   4: 020012C6:9C41 030012C6:1F90 01 00000000:00000000 00:00000000 00000000     0"
           "        0 5556 1 0000000000000000 20 4 30 10 -1\n")
LISTEN = ("   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
          "        0 1145 1 0000000000000000 100 0 0 10 0\n")

WORKERS = [Worker("node2", "198.18.0.3", 50052), Worker("node3", "198.18.0.4", 50052)]


def test_parse_worker():
    assert parse_worker("node2=198.18.0.3:50052") == Worker("node2", "198.18.0.3", 50052)
    assert parse_worker("v6=[fd00::3]:50052") == Worker("v6", "fd00::3", 50052)
    for bad in ("node2", "node2=198.18.0.3", "=1.2.3.4:5", "n=host:5", "n=1.2.3.4:0",
                "n=1.2.3.4:70000", "n=1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_worker(bad)


def test_parse_proc_tcp_keeps_established_with_retransmits():
    rows = parse_proc_tcp(HEADER + LISTEN + STALLED + HEALTHY + "garbage line\n   9: zz\n")
    assert rows == [{"remote": ("198.18.0.3", 50052), "retransmits": 4, "tx_queue": 0x200},
                    {"remote": ("198.18.0.3", 8080), "retransmits": 0, "tx_queue": 0}]
    assert rpcwatch.stalled_workers(rows, WORKERS, 3) == {"node2"}
    assert rpcwatch.stalled_workers(rows, WORKERS, 5) == set()


def test_parse_proc_tcp6_and_mapped_v4():
    # ::ffff:198.18.0.4 port 50052, as the kernel prints it in /proc/net/tcp6
    mapped = "0000000000000000FFFF0000040012C6:C384"
    line = (f"   0: 0000000000000000FFFF0000020012C6:9C40 {mapped} 01 00000010:00000000 "
            "01:00000100 00000003     0        0 77 2 0 20 4 0 10 -1\n")
    rows = parse_proc_tcp(HEADER + line)
    assert rows[0]["remote"] == ("198.18.0.4", 50052)
    assert rpcwatch.stalled_workers(rows, WORKERS, 3) == {"node3"}


def test_parse_proc_tcp_reads_this_kernel():
    """A real established loopback connection shows up in the real kernel table."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    try:
        rows = rpcwatch.read_tcp_rows()
        mine = [r for r in rows if r["remote"] == ("127.0.0.1", port)]
        assert mine and mine[0]["retransmits"] == 0
    finally:
        for s in (cli, conn, srv):
            s.close()


def test_tracker_stalled_connection_stops_at_once():
    t = Tracker(WORKERS)
    assert t.observe(1.0, pinged={"node2": True, "node3": True}, stalled=set()) is None
    assert t.observe(2.0, pinged={"node2": True, "node3": True}, stalled={"node3"}) == "stop"
    d = t.to_dict("clusterctl-tiny.service")
    assert d["state"] == "degraded" and d["since"] == 2.0
    assert [x["name"] for x in d["lost"]] == ["node3"]
    assert "198.18.0.4:50052" in d["lost"][0]["why"]
    json.dumps(d)


def test_tracker_ping_misses_need_a_run():
    t = Tracker(WORKERS, misses=3)
    up = {"node2": True, "node3": True}
    down3 = {"node2": True, "node3": False}
    assert t.observe(1, pinged=down3, stalled=set()) is None
    assert t.observe(2, pinged=up, stalled=set()) is None          # a miss, then an answer
    assert t.observe(3, pinged=down3, stalled=set()) is None
    assert t.observe(4, pinged=down3, stalled=set()) is None
    assert t.observe(5, pinged=down3, stalled=set()) == "stop"
    assert "ping" in t.lost["node3"]


def test_tracker_recovers_only_when_all_answer_twice():
    t = Tracker(WORKERS, misses=1, recover_rounds=2)
    up = {"node2": True, "node3": True}
    assert t.observe(1, pinged={"node2": True, "node3": False}, stalled=set()) == "stop"
    # node answers ping but its RPC port is closed: still degraded
    assert t.observe(2, pinged=up, stalled=set(), port_open={"node2": True, "node3": False}) is None
    ports = {"node2": True, "node3": True}
    assert t.observe(3, pinged=up, stalled=set(), port_open=ports) is None
    assert t.observe(4, pinged={"node2": False, "node3": True}, stalled=set(),
                     port_open=ports) is None                     # a relapse resets the count
    assert t.observe(5, pinged=up, stalled=set(), port_open=ports) is None
    assert t.observe(6, pinged=up, stalled=set(), port_open=ports) == "start"
    assert t.state == "ok" and t.lost == {}


def test_main_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        rpcwatch.main(["--unit", "u", "--state", "/nonexistent/x"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        rpcwatch.main(["--unit", "u", "--state", "s", "--worker", "nope"])
    assert "NAME=IP:PORT" in capsys.readouterr().err


def test_status_reads_the_watchdogs_state_files(tmp_path):
    """`status` reads every watchdog's state file in one command per host and names the
    workers a degraded watchdog lost; a missing or garbled file is left out."""
    import subprocess
    from types import SimpleNamespace

    from clusterctl.deploy import launch, layout

    states = {"clusterctl-a-rpc-watch.service": {"state": "degraded", "since": 5.0,
                                                 "lost": [{"name": "n3", "why": "ping"}]},
              "clusterctl-b-rpc-watch.service": {"state": "ok", "lost": []},
              "clusterctl-c-rpc-watch.service": "{not json"}
    root = tmp_path / "root"
    for name, data in states.items():
        path = root / layout.watch_state_path(name).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data))

    class Conn:
        def run(self, script, check=False, timeout=None):
            script = script.replace(" /run/", f" {root}/run/")
            out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
            return SimpleNamespace(stdout=out.stdout)

    units = [SimpleNamespace(name=n) for n in
             [*states, "clusterctl-missing-rpc-watch.service"]]
    got = launch.read_watch_states(Conn(), units)
    assert set(got) == {"clusterctl-a-rpc-watch.service", "clusterctl-b-rpc-watch.service"}
    assert launch.lost_workers(got) == [{"host": "n3", "why": "ping", "since": 5.0}]
