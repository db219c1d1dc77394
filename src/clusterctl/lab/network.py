"""The lab's switch: a bridge with the controller on .1, one port per node, tc shaping on
both directions of each link, and the lab's nft tables (controller guard, faults)."""
from __future__ import annotations

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
