"""clusterctl lab: a real multi-node cluster on one Linux machine.

Python API (the CLI and the tests use the same):

    from clusterctl import lab
    state = lab.up("citest", nodes=3, link="1gbit")      # -> LabState
    state.inventory_path, state.bridge_ip, state.mirror_url
    for n in state.nodes: n.name, n.ip, n.port, n.pid     # pid: the node's PID 1 on the host
    lab.fault("citest", "node2", "block-port", 22); lab.heal("citest", "node2")
    lab.status("citest"); lab.down("citest")
"""
from .core import (DEFAULT_NAME, DEFAULT_NODES, check_ssh, down, fault, heal, health,
                   node_health, owner_alive, ssh_argv, status, up)
from .netplan import DEFAULT_LINK, FAULT_KINDS, LINK_CLASSES
from .state import FaultState, LabState, NodeState, list_labs, load_state

__all__ = [
    "up", "down", "status", "fault", "heal", "health", "node_health", "check_ssh",
    "ssh_argv", "owner_alive", "LabState", "NodeState", "FaultState", "list_labs", "load_state",
    "DEFAULT_NAME", "DEFAULT_NODES", "DEFAULT_LINK", "FAULT_KINDS", "LINK_CLASSES",
]
