"""Pure planning for the lab network: subnets, link rates, tc and nft commands.

Nothing here runs a command; `network.py` runs what these functions return.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import ClusterctlError, InputError

LAB_SUPERNET = ipaddress.IPv4Network("198.18.0.0/15")   # RFC 2544 benchmark range
FIRST_NODE_HOST = 11                                     # node K is .(10+K)
BRIDGE_HOST = 1                                          # the controller is .1

LINK_CLASSES: dict[str, int | None] = {
    "100mbit": 100_000_000,
    "1gbit": 1_000_000_000,
    "10gbit": 10_000_000_000,
    "25gbit": 25_000_000_000,
    "100gbit": 100_000_000_000,
    "none": None,
}
DEFAULT_LINK = "10gbit"
DEFAULT_MTU = 9000
TBF_LATENCY = "20ms"
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)$", re.I)
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


# ----------------------------------------------------------------------------- subnets

def lab_subnets() -> Iterable[ipaddress.IPv4Network]:
    """Every /24 of 198.18.0.0/15 in order, skipping 198.18.0.0/24."""
    for net in LAB_SUPERNET.subnets(new_prefix=24):
        if net.network_address != LAB_SUPERNET.network_address:
            yield net


def allocate_subnet(used: Iterable[ipaddress.IPv4Network],
                    requested: str | None = None) -> ipaddress.IPv4Network:
    """A /24 from 198.18.0.0/15 overlapping nothing in `used` (addresses and routes on the
    host, subnets of other labs). A requested subnet that is taken is refused."""
    used = [u for u in used if u.prefixlen > 0]          # a default route overlaps all
    if requested is not None:
        try:
            net = ipaddress.IPv4Network(requested, strict=True)
        except ValueError as exc:
            raise InputError(f"bad subnet {requested!r}: {exc}", key="subnet") from None
        if net.prefixlen != 24 or not net.subnet_of(LAB_SUPERNET):
            raise InputError(f"subnet {net} must be a /24 inside {LAB_SUPERNET}", key="subnet")
        clash = next((u for u in used if u.overlaps(net)), None)
        if clash is not None:
            raise InputError(f"subnet {net} is taken: it overlaps {clash} already on this "
                             "host (an address, a route or another lab)", key="subnet")
        return net
    for net in lab_subnets():
        if not any(u.overlaps(net) for u in used):
            return net
    raise ClusterctlError(f"no free /24 left in {LAB_SUPERNET}: every one overlaps an "
                          "address, a route or another lab on this host")


def bridge_address(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + BRIDGE_HOST


def node_address(subnet: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    return subnet.network_address + FIRST_NODE_HOST - 1 + index


# ----------------------------------------------------------------------------- rates

def parse_rate(text: str) -> int:
    """`1gbit`, `250mbit`, `1.5gbit` -> bits per second (tc's decimal units)."""
    m = _RATE_RE.match(str(text).strip())
    if not m:
        raise InputError(f"bad rate {text!r}: use e.g. 100mbit, 1gbit, 2.5gbit", key="rate")
    bps = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bps < 8_000:
        raise InputError(f"rate {text!r} is too low (minimum 8kbit)", key="rate")
    return bps


def link_rate(link: str) -> int | None:
    """Bits per second of a link class; None = unshaped."""
    if link not in LINK_CLASSES:
        raise InputError(f"unknown link class {link!r}; choose one of "
                         + ", ".join(LINK_CLASSES), key="link")
    return LINK_CLASSES[link]


def format_rate(bps: int | None) -> str:
    if bps is None:
        return "unshaped"
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= size and bps % (size // 1000 or 1) == 0:
            value = bps / size
            return f"{value:g}{unit}"
    return f"{bps}bit"


def tbf_burst(bps: int, mtu: int) -> int:
    """Token bucket size in bytes: 4 ms at the rate, at least 128 KiB and 2 frames.
    (At 1gbit that is 500 kB: iperf3 measures ~0.99 Gbit/s through it.)"""
    return max(bps // 8 * 4 // 1000, 128 * 1024, 2 * (mtu + 100))


def shape_command(dev: str, bps: int | None, mtu: int) -> list[str]:
    """tc argv that shapes egress of `dev` to `bps` (or removes shaping for None)."""
    if bps is None:
        return ["tc", "qdisc", "del", "dev", dev, "root"]
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bps}bit",
            "burst", str(tbf_burst(bps, mtu)), "latency", TBF_LATENCY]


# ----------------------------------------------------------------------------- faults

FAULT_KINDS = ("slow-link", "port-mtu", "block-port", "down", "partition")


@dataclass(frozen=True)
class PortConfig:
    """What a node's switch port and link should look like right now."""
    mtu: int
    rate_bps: int | None
    up: bool


def check_fault(kind: str, arg: str | None) -> str | None:
    """Validate a fault and normalize its argument (None for kinds without one)."""
    if kind not in FAULT_KINDS:
        raise InputError(f"unknown fault {kind!r}; choose one of {', '.join(FAULT_KINDS)}",
                         key="fault")
    if kind in ("down", "partition"):
        if arg not in (None, ""):
            raise InputError(f"fault {kind} takes no argument (got {arg!r})", key="fault")
        return None
    if arg in (None, ""):
        what = {"slow-link": "a RATE like 100mbit", "port-mtu": "an MTU like 1500",
                "block-port": "a PORT number"}[kind]
        raise InputError(f"fault {kind} needs {what}", key="fault")
    if kind == "slow-link":
        return format_rate(parse_rate(arg))
    number = str(arg).strip()
    if not number.isdigit():
        raise InputError(f"fault {kind}: {arg!r} is not a number", key="fault")
    value = int(number)
    if kind == "port-mtu" and not 68 <= value <= 65535:
        raise InputError(f"fault port-mtu: {value} is outside 68..65535", key="fault")
    if kind == "block-port" and not 1 <= value <= 65535:
        raise InputError(f"fault block-port: {value} is outside 1..65535", key="fault")
    return str(value)


def desired_port(base_mtu: int, base_rate: int | None,
                 faults: Iterable[tuple[str, str | None]]) -> PortConfig:
    """The port of a node given the lab's baseline and that node's faults (last wins)."""
    mtu, rate, up = base_mtu, base_rate, True
    for kind, arg in faults:
        if kind == "slow-link":
            rate = parse_rate(arg)
        elif kind == "port-mtu":
            mtu = int(arg)
        elif kind == "down":
            up = False
    return PortConfig(mtu=mtu, rate_bps=rate, up=up)


def render_ruleset(table: str, bridge: str, bridge_ip: str, mirror_port: int | None,
                   ports: dict[str, str], faults: Iterable[tuple[str, str, str | None]]) -> str:
    """The lab's whole nft ruleset as one atomic `nft -f` script.

    - `inet TABLE` guards the controller: from the lab bridge, only replies to the
      controller's own connections, ping, and the mirror port are accepted.
    - `bridge TABLE` holds the switch faults: `partition` drops everything forwarded to or
      from the node's port (the controller is not forwarded to, so it stays reachable);
      `block-port P` drops TCP and UDP to port P on frames going out of the node's port,
      whether they come from another node (forward) or from the controller (output).
    `ports` maps node name -> port ifname; `faults` is (node, kind, arg).
    """
    fwd: list[str] = []
    out: list[str] = []
    for node, kind, arg in faults:
        port = ports[node]
        if kind == "partition":
            fwd.append(f'iifname "{port}" drop comment "{node} partition"')
            fwd.append(f'oifname "{port}" drop comment "{node} partition"')
        elif kind == "block-port":
            rule = (f'oifname "{port}" meta l4proto {{ tcp, udp }} th dport {int(arg)} drop '
                    f'comment "{node} block-port {int(arg)}"')
            fwd.append(rule)
            out.append(rule)
    guard = [f'iifname "{bridge}" ct state established,related accept',
             f'iifname "{bridge}" ip protocol icmp accept']
    if mirror_port:
        guard.append(f'iifname "{bridge}" ip daddr {bridge_ip} tcp dport {int(mirror_port)} '
                     'accept comment "mirror"')
    guard.append(f'iifname "{bridge}" drop comment "nodes reach nothing else on the controller"')

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"\t\t{r}\n" for r in rules)
        return (f"\tchain {name} {{\n\t\ttype filter hook {hook} priority 0; policy accept;\n"
                f"{body}\t}}\n")

    return (
        f"table inet {table}\ndelete table inet {table}\n"
        f"table inet {table} {{\n" + chain("lab_input", "input", guard) + "}\n"
        f"table bridge {table}\ndelete table bridge {table}\n"
        f"table bridge {table} {{\n" + chain("lab_forward", "forward", fwd)
        + chain("lab_output", "output", out) + "}\n")


def delete_ruleset(table: str, families: Iterable[str] = ("inet", "bridge")) -> str:
    """nft script deleting the lab's tables (creating them first makes it idempotent)."""
    return "".join(f"table {fam} {table}\ndelete table {fam} {table}\n" for fam in families)
