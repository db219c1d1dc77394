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
