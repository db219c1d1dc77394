"""The lab's switch: a bridge with the controller on .1, one port per node, tc shaping on
both directions of each link, the lab's nft tables (controller guard, faults), and the
check that healed paths answer again."""
from __future__ import annotations

import time

from ..errors import ClusterctlError
from . import host, netplan
from .naming import interface_alias
from .state import LabState, NodeState


def create_bridge(state: LabState) -> None:
    """Create the bridge (recorded in the state before it exists)."""
    alias = interface_alias(state.name)
    existing = host.link(state.bridge)
    if existing is not None:
        owner = existing.get("ifalias") or "not a clusterctl lab"
        raise ClusterctlError(f"interface {state.bridge} already exists ({owner}); "
                              "clusterctl lab does not touch interfaces it did not create")
    if state.bridge not in state.interfaces:
        state.interfaces.append(state.bridge)
        state.save()
    prefix = state.subnet.split("/")[1]
    # no mtu here: only a later MTU *change* marks it as set by the user, which keeps the
    # kernel from lowering the bridge to its smallest port (a port-mtu fault must not)
    host.run(["ip", "link", "add", "name", state.bridge, "type", "bridge", "stp_state", "0"])
    host.run(["ip", "link", "set", "dev", state.bridge, "alias", alias])
    host.write_sysctl(f"net/ipv6/conf/{state.bridge}/disable_ipv6", "1")
    host.run(["ip", "link", "set", "dev", state.bridge, "mtu", str(state.mtu)])
    host.run(["ip", "addr", "add", f"{state.bridge_ip}/{prefix}", "dev", state.bridge])
    host.run(["ip", "link", "set", "dev", state.bridge, "up"])


def attach_port(state: LabState, node: NodeState) -> None:
    """Plug the node's port into the switch: alias, MTU, bridge, up, shaping."""
    alias = interface_alias(state.name)
    host.run(["ip", "link", "set", "dev", node.port, "alias", alias])
    host.write_sysctl(f"net/ipv6/conf/{node.port}/disable_ipv6", "1")
    host.run(["ip", "link", "set", "dev", node.port, "mtu", str(state.mtu),
              "master", state.bridge, "up"])
    apply_port(state, node)


def apply_port(state: LabState, node: NodeState) -> netplan.PortConfig:
    """Bring a port and its link to what the lab's baseline and the node's faults say."""
    faults = [(f.kind, f.arg) for f in state.faults_of(node.name)]
    want = netplan.desired_port(state.mtu, netplan.link_rate(state.link), faults)
    host.run(["ip", "link", "set", "dev", node.port, "mtu", str(want.mtu)])
    shape(node, want.rate_bps, want.mtu)
    host.run(["ip", "link", "set", "dev", node.port, "up" if want.up else "down"])
    return want


def shape(node: NodeState, bps: int | None, mtu: int) -> None:
    """Traffic to the node: tbf on the port's egress. Traffic from the node: tbf on the
    node's eth0 egress, set from the host in the node's network namespace."""
    for argv in (netplan.shape_command(node.port, bps, mtu),
                 host.nsenter_net(node.pid, netplan.shape_command("eth0", bps, mtu))):
        host.run(argv, check=bps is not None)   # deleting absent shaping is fine


def ports(state: LabState) -> dict[str, str]:
    return {n.name: n.port for n in state.nodes}


def apply_ruleset(state: LabState, mirror_port: int | None) -> None:
    """(Re)write the lab's nft tables from the state, in one atomic transaction."""
    for fam in ("inet", "bridge"):
        rec = f"{fam} {state.nft_table}"
        if rec not in state.nft_tables:
            state.nft_tables.append(rec)
    state.save()
    script = netplan.render_ruleset(
        state.nft_table, state.bridge, state.bridge_ip, mirror_port, ports(state),
        [(f.node, f.kind, f.arg) for f in state.faults if f.kind in ("partition", "block-port")])
    host.run(["nft", "-f", "-"], input=script)


def delete_ruleset(state: LabState) -> None:
    families = [rec.split()[0] for rec in state.nft_tables]
    if families:
        host.run(["nft", "-f", "-"], input=netplan.delete_ruleset(state.nft_table, families))


def remove_interfaces(state: LabState) -> list[str]:
    """Delete the interfaces we created that still exist and are still ours (ports first,
    the bridge last). Ours = carries the lab's alias; or, for a recorded name, carries no
    alias yet and is of the kind we create (a crash between `ip link add` and setting
    the alias). Returns what was deleted."""
    alias = interface_alias(state.name)
    deleted = []
    for ifname in sorted(state.interfaces, key=lambda i: i == state.bridge):
        rec = host.link(ifname)
        if rec is None:
            continue
        kind = (rec.get("linkinfo") or {}).get("info_kind")
        expected = "bridge" if ifname == state.bridge else "veth"
        if rec.get("ifalias") == alias or (not rec.get("ifalias") and kind == expected):
            host.run(["ip", "link", "del", "dev", ifname])
            deleted.append(ifname)
    return deleted


# ----------------------------------------------------------------------------- after heal

HEAL_TIMEOUT = 15.0
PROBE_SIZE = 16          # ICMP payload: 44-byte packets pass even a port-mtu 68 fault
_BLOCKING = ("down", "partition")


def paths_to_check(state: LabState, healed: list[str]) -> list[tuple[NodeState, str, str]]:
    """The paths that must work once the faults of the `healed` nodes are gone, as
    (node to ping from, address, name of what answers): each healed node to the
    controller, and each healed node to and from every node that has no blocking fault
    (`down`, `partition`) left."""
    blocked = {f.node for f in state.faults if f.kind in _BLOCKING}
    names = set(healed) - blocked
    open_nodes = [n for n in state.nodes if n.name not in blocked]
    out: list[tuple[NodeState, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for h in (n for n in state.nodes if n.name in names):
        out.append((h, state.bridge_ip, "the controller"))
        for p in open_nodes:
            for src, dst in ((h, p), (p, h)):
                if src is not dst and (src.name, dst.name) not in seen:
                    seen.add((src.name, dst.name))
                    out.append((src, dst.ip, dst.name))
    return out


def ping_from(node: NodeState, ip: str) -> bool:
    """One small ping from inside the node (its own ping, in its own namespaces)."""
    argv = ["nsenter", "-t", str(node.pid), "-m", "-n", "--",
            "ping", "-n", "-q", "-c", "1", "-W", "1", "-s", str(PROBE_SIZE), ip]
    return host.run(argv, check=False, timeout=10).returncode == 0


def wait_paths(state: LabState, healed: list[str], timeout: float = HEAL_TIMEOUT,
               probe=ping_from, parallel=None) -> None:
    """Return once every path of `paths_to_check` answers. Right after the faults are
    gone a path can still fail for a moment: a neighbour (ARP) lookup that started while
    the node was cut off runs out its probes and drops what waited for it. A path that
    fails is tried again until `timeout`; then the ones that never answered are named."""
    pending = paths_to_check(state, healed)
    deadline = time.monotonic() + timeout
    run_all = parallel or (lambda fn, items: [fn(i) for i in items])
    while pending:
        answered = run_all(lambda path: probe(path[0], path[1]), pending)
        pending = [p for p, ok in zip(pending, answered) if not ok]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ClusterctlError(
                f"lab {state.name}: the faults are removed, but after {timeout:g}s these "
                "paths still do not answer ping: "
                + ", ".join(f"{src.name} -> {what} ({ip})" for src, ip, what in pending))
        time.sleep(0.2)
