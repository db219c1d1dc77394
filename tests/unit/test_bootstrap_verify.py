"""Parsing what Ray says about its cluster."""
import json

from clusterctl.engine.raycheck import RayCheck, parse_ray_status_totals, parse_state_nodes

RAY_STATUS = """======== Autoscaler status: 2026-11-21 10:00:00.000000 ========
Node status
---------------------------------------------------------------
Active:
 1 node_aaa
 1 node_bbb
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/4.0 CPU
 0.0/2.0 GPU
 0B/3.72GiB memory
 0B/1.59GiB object_store_memory

Demands:
 (no resource demands)
"""


def test_status_totals():
    totals = parse_ray_status_totals(RAY_STATUS)
    assert totals["CPU"] == 4.0
    assert totals["GPU"] == 2.0


def test_state_api_nodes():
    body = json.dumps({"result": True, "msg": "", "data": {"result": {"total": 2, "result": [
        {"node_id": "a", "node_ip": "198.18.0.11", "state": "ALIVE", "is_head_node": True},
        {"node_id": "b", "node_ip": "198.18.0.12", "state": "DEAD", "is_head_node": False},
    ]}}})
    nodes = parse_state_nodes(body)
    assert [n["node_ip"] for n in nodes] == ["198.18.0.11", "198.18.0.12"]


def test_missing_nodes_named():
    check = RayCheck("h", {"h": "198.18.0.11", "w": "198.18.0.12"},
                     alive={"198.18.0.11": {}})
    assert check.missing == ["w"]
    assert not check.ok


def test_a_record_from_before_the_units_restart_does_not_count():
    """A worker restarted in this run whose new raylet has not registered yet: Ray still
    lists the old raylet as ALIVE until its health checks expire. Only a record that
    registered after the unit started counts; the newest record of an IP wins."""
    from clusterctl.engine.raycheck import RayCheck
    check = RayCheck("head", {"head": "10.0.0.1", "w1": "10.0.0.2", "w2": "10.0.0.3"},
                     started={"w1": 1000.0, "w2": 1000.0})
    nodes = [
        {"node_ip": "10.0.0.1", "state": "ALIVE", "start_time_ms": 500_000,
         "resources_total": {"CPU": 2}},
        {"node_ip": "10.0.0.2", "state": "ALIVE", "start_time_ms": 900_000,     # stale
         "resources_total": {"CPU": 2}},
        {"node_ip": "10.0.0.3", "state": "ALIVE", "start_time_ms": 990_000,     # stale
         "resources_total": {"CPU": 2}},
        {"node_ip": "10.0.0.3", "state": "ALIVE", "start_time_ms": 1_001_500,   # the new one
         "resources_total": {"CPU": 4}},
        {"node_ip": "10.0.0.3", "state": "DEAD", "start_time_ms": 1_002_000,
         "resources_total": {"CPU": 8}},
    ]
    check.accept(nodes)
    assert check.missing == ["w1"]
    assert check.alive["10.0.0.3"]["resources_total"]["CPU"] == 4
    # within the clock slack it counts; without start times (older Ray) it counts
    check = RayCheck("head", {"w1": "10.0.0.2"}, started={"w1": 1000.0})
    check.accept([{"node_ip": "10.0.0.2", "state": "ALIVE", "start_time_ms": 999_000}])
    assert check.missing == []
    check.accept([{"node_ip": "10.0.0.2", "state": "ALIVE"}])
    assert check.missing == []


def test_parse_active_enter():
    from clusterctl.engine.raycheck import parse_active_enter
    assert parse_active_enter("@1764561481\n\n") == 1764561481.0
    assert parse_active_enter("\n@1764561481\n@1764561999\n") == 1764561999.0
    assert parse_active_enter("\n\n") is None
    assert parse_active_enter("@x\nn/a\n") is None
