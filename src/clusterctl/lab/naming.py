"""Names of everything a lab creates: nodes, interfaces, nft tables. Pure.

Linux interface names are at most 15 characters (IFNAMSIZ - 1). A lab called NAME gets
a bridge `cc-TAG` and one switch port per node `cc-TAG-K`, where TAG is NAME itself when
it is at most 8 characters, else its first 4 characters plus 4 hex digits of its SHA-1
(so two long names that share a prefix still get different interfaces).
"""
from __future__ import annotations

import hashlib
import re

from ..errors import InputError

MAX_NODES = 200
IFNAME_MAX = 15
_LAB_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_TAG_MAX = 8


def validate_lab_name(name: str) -> str:
    """Lab names become host names and interface names: lowercase letters, digits, '-'."""
    if not isinstance(name, str) or not _LAB_NAME_RE.match(name):
        raise InputError(
            f"bad lab name {name!r}: use 1-32 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit", key="name")
    return name


def lab_tag(name: str) -> str:
    """Short, stable form of a lab name for interface names (<= 8 characters)."""
    if len(name) <= _TAG_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:4]
    return name[:4].rstrip("-") + digest


def bridge_name(name: str) -> str:
    return f"cc-{lab_tag(name)}"


def port_name(name: str, index: int) -> str:
    """Host side of node `index`'s veth: its port on the lab's switch."""
    if not 1 <= index <= MAX_NODES:
        raise InputError(f"node index {index} out of range 1..{MAX_NODES}")
    ifname = f"cc-{lab_tag(name)}-{index}"
    assert len(ifname) <= IFNAME_MAX, ifname
    return ifname


def node_name(name: str, index: int) -> str:
    """Machine name, host name and inventory name of a node: NAME-nodeK."""
    return f"{name}-node{index}"


def nft_table(name: str) -> str:
    """Name of the lab's nft tables (one `bridge`, one `inet`); '-' is not allowed in
    nft identifiers and lab names have no '_', so the mapping is one-to-one."""
    return "clusterctl_lab_" + name.replace("-", "_")


def interface_alias(name: str) -> str:
    """Written into every interface the lab creates (`ip link set ... alias`), so that
    `lab down` can tell its own interfaces from anyone else's."""
    return f"clusterctl-lab:{name}"


def node_index(lab: str, node: str, count: int) -> int:
    """Resolve what users type for a node: `2`, `node2` or `LAB-node2` -> 2."""
    text = str(node).strip()
    for prefix in (f"{lab}-node", "node", ""):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            index = int(text[len(prefix):])
            if 1 <= index <= count:
                return index
            break
    known = ", ".join(node_name(lab, k) for k in range(1, count + 1))
    raise InputError(f"unknown node {node!r} in lab {lab!r}; nodes are: {known}", key="node")
