"""The inventory `lab up` writes (Ansible YAML, read by clusterctl.inventory). Pure."""
from __future__ import annotations

from typing import Any

import yaml

from .state import LabState


def inventory_data(state: LabState) -> dict[str, Any]:
    """The inventory as data. Paths are relative to the inventory file."""
    all_vars: dict[str, Any] = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": state.key_path.name,
        "ssh_known_hosts_file": state.known_hosts_path.name,
        "cluster": {"name": state.name, "network": state.subnet, "mtu": state.mtu},
    }
    if state.mirror is not None:
        all_vars["mirror"] = {"apt": state.mirror_apt_url, "pip": state.mirror_pip_url}
    head = [n for n in state.nodes if n.role == "head"]
    workers = [n for n in state.nodes if n.role != "head"]
    children: dict[str, Any] = {
        "head": {"hosts": {n.name: {"ansible_host": n.ip} for n in head}},
    }
    if workers:
        children["workers"] = {"hosts": {n.name: {"ansible_host": n.ip} for n in workers}}
    return {"all": {"vars": all_vars, "children": children}}


def render_inventory(state: LabState, *, when: str = "") -> str:
    """The inventory file's text: a comment header saying how it was made, then YAML."""
    shaping = "unshaped links" if state.link == "none" else f"links shaped to {state.link}"
    mirror = (f"apt and pip mirror served by the controller at {state.mirror_url}"
              if state.mirror else "no mirror (lab up --no-mirror)")
    header = [
        f"# Inventory of clusterctl lab {state.name!r}: {len(state.nodes)} systemd-nspawn "
        f"nodes on this machine,",
        f"# bridge {state.bridge} ({state.subnet}, controller {state.bridge_ip}), "
        f"MTU {state.mtu}, {shaping},",
        f"# {mirror}.",
        f"# Written by `clusterctl lab up --name {state.name}`" + (f" on {when}" if when else "")
        + "; rewritten by every `lab up`.",
        "# The key and known_hosts paths are relative to this file: copy all three together.",
        f"# Use it: clusterctl bootstrap -i {state.inventory_path}   "
        f"(or export CLUSTERCTL_INVENTORY=that path)",
    ]
    body = yaml.safe_dump(inventory_data(state), sort_keys=False, default_flow_style=False,
                          width=100)
    return "\n".join(header) + "\n" + body


def render_known_hosts(state: LabState, host_keys: dict[str, str]) -> str:
    """known_hosts lines `NAME,IP TYPE BASE64` from node name -> public key line."""
    lines = []
    for node in state.nodes:
        if node.name not in host_keys:
            continue
        key_type, key_b64 = host_keys[node.name].split()[:2]
        lines.append(f"{node.name},{node.ip} {key_type} {key_b64}")
    return "\n".join(lines) + ("\n" if lines else "")
