"""From measurements and per-node facts to findings, each with its fix (pure).

Every finding names the hosts to look at. When one bad switch port or one bad
node spoils every link it takes part in, the culprit is the node common to the
bad links, not every node at their far ends: `culprits()` picks the fewest
nodes that touch all bad links (greedy cover; ties are all named, because two
nodes that share one bad link cannot be told apart).
"""
from __future__ import annotations

import ipaddress
import statistics
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .classify import ANY_MIN_GBPS, TP_MIN_GBPS, LinkClass, classify, recommend
from .model import (ERROR, INFO, SEVERITY_ORDER, WARNING, Finding, Link, NodeInfo, PortCheck,
                    Settings)

ASYMMETRY_RATIO = 0.5     # slower direction below this share of the faster one
OUTLIER_RATIO = 0.5       # a link below this share of the median link is slow for its cluster
SINGLE_STREAM_RATIO = 0.5  # one TCP stream below this share of the multi-stream figure
PLAIN_PING_PAYLOAD = 1472  # 1500 - 20 (IP) - 8 (ICMP)

# component -> (label, severity when it differs across nodes)
VERSION_COMPONENTS: dict[str, tuple[str, str]] = {
    "python": ("Python", ERROR),
    "ray": ("ray", ERROR),
    "vllm": ("vllm", ERROR),
    "torch": ("torch", ERROR),
    "nccl": ("NCCL", ERROR),
    "cuda": ("CUDA", ERROR),
    "nvidia_driver": ("NVIDIA driver", WARNING),
    "llama_cpp": ("llama.cpp build", ERROR),
    "os": ("OS", WARNING),
    "kernel": ("kernel", INFO),
}

# components installed with pip into the venv: the fix is a pinned pip install
PIP_NAMES = {"ray": "ray", "vllm": "vllm", "torch": "torch", "nccl": "nvidia-nccl-cu12"}


def culprits(bad: Iterable[tuple[str, str]],
             good: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The fewest nodes that touch every bad link (directed or not); ties all named.

    `good` links break ties: of two nodes on one bad link, the one whose other links
    are fine is not the culprit (w3 cannot reach head:6379 while w1 and w2 can: w3).
    """
    remaining = {tuple(p) for p in bad}
    fine: Counter[str] = Counter()
    for a, b in good:
        fine[a] += 1
        fine[b] += 1
    chosen: list[str] = []
    while remaining:
        count: Counter[str] = Counter()
        for a, b in remaining:
            count[a] += 1
            if b != a:
                count[b] += 1

        def score(n: str) -> tuple[int, float]:
            return count[n], count[n] / (count[n] + fine[n])

        top = max(score(n) for n in count)
        tied = sorted(n for n in count if score(n) == top)
        chosen.extend(tied)
        remaining = {(a, b) for a, b in remaining if a not in tied and b not in tied}
    return chosen


def _ordered(hosts: Iterable[str], order: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    return sorted(set(hosts), key=lambda n: (rank.get(n, len(rank)), n))


def _names(hosts: Iterable[str]) -> str:
    return ", ".join(hosts)


def _fmt_gbps(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def analyze(nodes: Sequence[NodeInfo], links: Sequence[Link], ports: Sequence[PortCheck],
            settings: Settings) -> list[Finding]:
    """All findings, errors first, then warnings, then info."""
    order = [n.name for n in nodes]
    out: list[Finding] = []
    out += _unreachable(nodes, links, order)
    out += _wrong_interface(nodes, settings)
    out += _mtu(nodes, links, settings, order)
    out += _bandwidth(nodes, links, order)
    out += _ports(ports, nodes, order)
    out += _versions(nodes, settings, order)
    out += _infiniband(nodes, order)
    out += _tools(nodes, order)
    out += _parallelism(nodes, links)
    out.sort(key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
    return out


# -- reachability -----------------------------------------------------------------
def _unreachable(nodes, links, order) -> list[Finding]:
    out = []
    down = {n.name for n in nodes if not n.reachable}
    for n in nodes:
        if n.reachable:
            continue
        to_it = [ln for ln in links if ln.dst == n.name and ln.ping_ok is not None]
        seen = ""
        login = n.ssh_command or f"ssh {n.address}"
        fix = (f"check that {n.name} is powered on and sshd runs (`{login}`), that "
               f"{n.address} is its management address, and that no firewall drops port "
               f"{n.ssh_port}; or leave it out with --limit")
        if to_it and not any(ln.ping_ok for ln in to_it):
            seen = "; its peers cannot ping it either (down, or cut off from the network)"
            fix = (f"check power, the cluster NIC link and the switch port of {n.name} "
                   f"(`ip link` on the switch side, console of {n.name})")
        elif to_it and any(ln.ping_ok for ln in to_it):
            jumbo_lost = any(ln.ping_ok and ln.jumbo_ok is False for ln in to_it)
            seen = "; it answers ping from its peers, so it is up"
            if jumbo_lost:
                seen += (", but large frames to it are dropped: SSH stalls once a packet "
                         "is bigger than the path carries (see mtu-blackhole)")
                fix = (f"fix the MTU of the path to {n.name} (switch port MTU) as the "
                       f"mtu-blackhole finding says; SSH recovers with it")
        out.append(Finding(
            "unreachable", ERROR, [n.name],
            f"{n.name} ({n.address}) cannot be reached over SSH: {n.error or 'no answer'}{seen}",
            fix))
    bad = [(ln.src, ln.dst) for ln in links
           if ln.ping_ok is False and ln.src not in down and ln.dst not in down]
    if bad:
        good = [(ln.src, ln.dst) for ln in links if ln.ping_ok]
        hosts = _ordered(culprits(bad, good), order)
        pairs = _names(f"{a}->{b}" for a, b in bad)
        out.append(Finding(
            "unreachable", ERROR, hosts,
            f"no ping over the cluster network: {pairs}",
            f"check the cluster NIC link, address and switch port of {_names(hosts)} "
            f"(`ip -br addr`, `ip route get PEER_IP`), and that no firewall drops ICMP "
            f"between cluster addresses"))
    return out


# -- the right NIC ----------------------------------------------------------------
def _ifname_matches(spec: str, iface: str) -> bool:
    """NCCL/GLOO interface spec: comma list of prefixes, `=name` exact, `^` excludes."""
    spec = spec.strip()
    if not spec:
        return True
    exclude = spec.startswith("^")
    if exclude:
        spec = spec[1:]
    exact = spec.startswith("=")
    if exact:
        spec = spec[1:]
    hit = any((iface == p) if exact else iface.startswith(p)
              for p in (s.strip() for s in spec.split(",")) if p)
    return not hit if exclude else hit


def _wrong_interface(nodes: Sequence[NodeInfo], settings: Settings) -> list[Finding]:
    out = []
    net = settings.network or "cluster.network"
    for n in nodes:
        if not n.reachable:
            continue
        if n.cluster_ip is None:
            have = "; ".join(f"{i} {', '.join(a)}" for i, a in n.interfaces.items() if a) or "none"
            out.append(Finding(
                "wrong-interface", ERROR, [n.name],
                f"{n.name} has no address in {net} (addresses: {have})",
                f"give the cluster NIC of {n.name} an address in {net} (run the network "
                f"playbook), or fix cluster.network in the inventory"))
            continue
        iface, ip = n.interface, n.cluster_ip
        problems: list[str] = []
        fixes: list[str] = []
        wrong_routes = sorted({dev for dev in n.route_interfaces.values() if dev != iface})
        if wrong_routes:
            peers = [p for p, dev in n.route_interfaces.items() if dev != iface]
            problems.append(f"traffic to peers ({', '.join(peers)}) leaves via "
                            f"{', '.join(wrong_routes)}, not the cluster NIC {iface}")
            fixes.append(f"route {net} via {iface} on {n.name} (remove the overlapping "
                         f"address/route on {', '.join(wrong_routes)})")
        for key in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            spec = n.env.get(key)
            if spec is None or not iface:
                continue
            ok = (_ifname_matches(spec, iface) if key == "NCCL_SOCKET_IFNAME"
                  else iface in [s.strip() for s in spec.split(",")])
            if not ok:
                src = n.env_source.get(key, "the environment")
                problems.append(f"{key}={spec} (in {src}) does not select the cluster NIC {iface}")
                fixes.append(f"set {key}={iface} in {src} on {n.name}")
        host_ip = n.env.get("VLLM_HOST_IP")
        if host_ip is not None and host_ip != ip:
            src = n.env_source.get("VLLM_HOST_IP", "the environment")
            problems.append(f"VLLM_HOST_IP={host_ip} (in {src}) is not the cluster address {ip}")
            fixes.append(f"set VLLM_HOST_IP={ip} in {src} on {n.name}")
        if n.ray_node_ip is not None and n.ray_node_ip != ip:
            problems.append(f"Ray runs with node IP {n.ray_node_ip}, not the cluster address {ip}")
            fixes.append(f"restart Ray on {n.name} with --node-ip-address={ip}")
        if problems:
            out.append(Finding("wrong-interface", ERROR, [n.name],
                               f"{n.name}: " + "; ".join(problems), "; ".join(fixes)))
        elif "NCCL_SOCKET_IFNAME" not in n.env and n.gpus:
            others = [i for i, a in n.interfaces.items() if a and i not in ("lo", iface)]
            if others:
                out.append(Finding(
                    "wrong-interface", INFO, [n.name],
                    f"{n.name}: NCCL_SOCKET_IFNAME is not set and {n.name} has other interfaces "
                    f"({', '.join(others)}); NCCL may pick one of them",
                    f"set NCCL_SOCKET_IFNAME={iface} and GLOO_SOCKET_IFNAME={iface} in "
                    f"/etc/clusterctl/nccl.env on {n.name}"))
    return out


# -- MTU --------------------------------------------------------------------------
def _mtu(nodes, links, settings: Settings, order) -> list[Finding]:
    out = []
    up = {n.name: n for n in nodes if n.reachable and n.mtu is not None}
    mtus = Counter(n.mtu for n in up.values())
    if len(mtus) == 1 and settings.mtu is not None and settings.mtu not in mtus:
        (have,) = mtus
        hosts = _ordered(up, order)
        out.append(Finding(
            "mtu-mismatch", WARNING, hosts,
            f"every cluster NIC has MTU {have}, but cluster.mtu is {settings.mtu}: the "
            f"network settings were not applied (consistent, so nothing is dropped)",
            f"run `clusterctl bootstrap` (network role) to set MTU {settings.mtu} on the nodes "
            f"and their switch ports, or set cluster.mtu: {have} in the inventory"))
    elif len(mtus) > 1:
        ranked = mtus.most_common()
        top_count = ranked[0][1]
        leaders = [m for m, c in ranked if c == top_count]
        if len(leaders) == 1:
            target, why = leaders[0], f"most nodes use {leaders[0]}"
        elif settings.mtu in leaders:
            target, why = settings.mtu, f"cluster.mtu is {settings.mtu}"
        else:
            target, why = None, "the nodes disagree"
        odd = [n for n in up.values() if target is None or n.mtu != target]
        want = target or settings.mtu or max(mtus)
        hosts = _ordered((n.name for n in odd), order)
        have = "; ".join(f"{n.name} {n.interface} {n.mtu}" for n in odd)
        target_note = (f", cluster.mtu is {settings.mtu}"
                       if settings.mtu is not None and settings.mtu != target else "")
        out.append(Finding(
            "mtu-mismatch", ERROR, hosts,
            f"cluster NIC MTU differs: {have} ({why}{target_note}). Frames larger than the "
            f"smaller MTU are dropped between these nodes",
            f"set one MTU on every cluster NIC and its switch port: MTU {want} on "
            f"{_names(hosts)} (`ip link set dev IFACE mtu {want}` and in the network "
            f"config), or set cluster.mtu to the MTU all nodes can carry"))
    mtu_of = {n.name: n.mtu for n in nodes}

    def path_drops(ln: Link) -> bool:
        # the receiver's own MTU would take the frame, so something on the way drops it;
        # frames larger than the receiver's MTU are the mismatch reported above
        dst_mtu = mtu_of.get(ln.dst)
        return dst_mtu is None or (ln.jumbo_size or 0) + 28 <= dst_mtu

    bad = [ln for ln in links if ln.jumbo_ok is False and ln.ping_ok is not False
           and path_drops(ln)]
    if bad:
        good = [(ln.src, ln.dst) for ln in links if ln.jumbo_ok]
        hosts = _ordered(culprits(((ln.src, ln.dst) for ln in bad), good), order)
        size = max(ln.jumbo_size or 0 for ln in bad)
        mtu = size + 28
        pairs = _names(f"{ln.src}->{ln.dst}" for ln in bad)
        if size > PLAIN_PING_PAYLOAD:
            fix = (f"the switch port or peer path of {_names(hosts)} carries only 1500: set MTU "
                   f"{mtu} on the switch ports for {_names(hosts)}, or set cluster.mtu: 1500 "
                   f"and re-run the network playbook")
        else:
            fix = (f"the path from {_names(hosts)} carries less than 1500 bytes (a tunnel or "
                   f"VPN?): lower cluster.mtu to the path MTU, or fix the path")
        out.append(Finding(
            "mtu-blackhole", ERROR, hosts,
            f"don't-fragment ping of {size} bytes (MTU {mtu}) is dropped though the interfaces "
            f"allow it: {pairs}. Small packets pass, so SSH and ping work while large "
            f"transfers (NCCL, model sync) hang",
            fix))
    return out


# -- bandwidth --------------------------------------------------------------------
def _link_class(ln: Link, by_name: dict[str, NodeInfo]) -> LinkClass | None:
    a, b = by_name.get(ln.src), by_name.get(ln.dst)
    if a and b and a.link_type == "infiniband" and b.link_type == "infiniband":
        rates = [p.rate_gbps for n in (a, b) for p in n.ib_ports
                 if p.rate_gbps and p.state == "Active"]
        if rates:
            return classify(min(rates), "infiniband")
    return classify(ln.gbps)


def _bandwidth(nodes, links, order) -> list[Finding]:
    by_name = {n.name: n for n in nodes}
    measured = [ln for ln in links if ln.gbps is not None]
    out = []
    unfit = [ln for ln in measured if not _link_class(ln, by_name).fit_for_any]
    no_tp = [ln for ln in measured
             if ln not in unfit and not _link_class(ln, by_name).fit_for_tp]
    flagged = {id(ln) for ln in unfit + no_tp}
    for group, sev, what, threshold in (
            (unfit, ERROR, "unfit for any distributed inference", ANY_MIN_GBPS),
            (no_tp, WARNING, "too slow for tensor parallel across nodes", TP_MIN_GBPS)):
        if not group:
            continue
        ids = {id(ln) for ln in group}
        good = [(ln.src, ln.dst) for ln in measured if id(ln) not in ids]
        hosts = _ordered(culprits(((ln.src, ln.dst) for ln in group), good), order)
        detail = _names(f"{ln.src}->{ln.dst} {_fmt_gbps(ln.gbps)}" for ln in group)
        cls = _link_class(group[0], by_name)
        fix = (f"check the negotiated speed and duplex of the cluster NIC of {_names(hosts)} "
               f"(`ethtool IFACE`), its cable/transceiver and switch port, and any traffic "
               f"shaping (`tc qdisc show`)")
        if sev == WARNING:
            fix += ("; or keep tensor parallel inside each node and use pipeline parallel "
                    "across nodes")
        out.append(Finding(
            "slow-link", sev, hosts,
            f"links below {threshold:g} Gbit/s ({cls.name if cls else '?'} class), {what}: "
            f"{detail} Gbit/s", fix))
    # a link far below the rest of the cluster, though fit in absolute terms
    if len(measured) >= 4:
        median = statistics.median(ln.gbps for ln in measured)
        slow = [ln for ln in measured
                if id(ln) not in flagged and ln.gbps < OUTLIER_RATIO * median]
        if slow:
            ids = {id(ln) for ln in slow}
            good = [(ln.src, ln.dst) for ln in measured if id(ln) not in ids]
            hosts = _ordered(culprits(((ln.src, ln.dst) for ln in slow), good), order)
            detail = _names(f"{ln.src}->{ln.dst} {_fmt_gbps(ln.gbps)}" for ln in slow)
            out.append(Finding(
                "slow-link", WARNING, hosts,
                f"links well below the cluster median of {_fmt_gbps(median)} Gbit/s: "
                f"{detail} Gbit/s; the slowest link paces every collective",
                f"check the NIC speed (`ethtool IFACE`), cable and switch port of "
                f"{_names(hosts)}, and any traffic shaping (`tc qdisc show`)"))
    # one direction much slower than the other
    rate = {(ln.src, ln.dst): ln.gbps for ln in measured}
    asym = []
    for (a, b), fwd in rate.items():
        back = rate.get((b, a))
        if back is None or (b, a) < (a, b):
            continue
        lo, hi = sorted((fwd, back))
        if hi > 0 and lo < ASYMMETRY_RATIO * hi:
            asym.append((a, b, fwd, back))
    if asym:
        bad_pairs = {(a, b) for a, b, _, _ in asym}
        good = [(a, b) for (a, b) in rate if (a, b) not in bad_pairs and (b, a) not in bad_pairs]
        hosts = _ordered(culprits(bad_pairs, good), order)
        detail = _names(f"{a}->{b} {_fmt_gbps(f)} vs {b}->{a} {_fmt_gbps(r)}"
                        for a, b, f, r in asym)
        out.append(Finding(
            "asymmetric-link", WARNING, hosts,
            f"one direction much slower than the other (Gbit/s): {detail}",
            f"look for shaping or policing in one direction (`tc qdisc show` on "
            f"{_names(hosts)} and its switch port), a duplex mismatch (`ethtool IFACE`), "
            f"or errors on one side (`ip -s link show IFACE`)"))
    out += _single_stream(measured, order)
    failed = [ln for ln in links if ln.gbps is None and ln.error]
    if failed:
        hosts = _ordered(culprits((ln.src, ln.dst) for ln in failed), order)
        detail = "; ".join(f"{ln.src}->{ln.dst}: {ln.error}" for ln in failed[:6])
        out.append(Finding(
            "bandwidth-failed", WARNING, hosts,
            f"bandwidth not measured: {detail}",
            f"check that iperf3 is installed on {_names(hosts)} and that the iperf3 port is "
            f"open between cluster addresses"))
    return out


def _single_stream(measured: Sequence[Link], order) -> list[Finding]:
    """One TCP stream far below what several parallel streams reach on the same link.

    NCCL over sockets and Gloo move each peer-to-peer transfer over few TCP flows, so a
    per-flow limit (one CPU core busy with a NIC queue, missing offloads, small TCP
    buffers, per-flow policing) paces them even when the link itself is fast.
    """
    slow = [ln for ln in measured
            if (ln.streams or 1) > 1 and ln.single_stream_gbps is not None and ln.gbps
            and ln.single_stream_gbps < SINGLE_STREAM_RATIO * ln.gbps]
    if not slow:
        return []
    ids = {id(ln) for ln in slow}
    good = [(ln.src, ln.dst) for ln in measured
            if id(ln) not in ids and ln.single_stream_gbps is not None]
    hosts = _ordered(culprits(((ln.src, ln.dst) for ln in slow), good), order)
    detail = _names(f"{ln.src}->{ln.dst} {_fmt_gbps(ln.single_stream_gbps)} vs "
                    f"{_fmt_gbps(ln.gbps)} with {ln.streams}" for ln in slow)
    return [Finding(
        "single-stream-slow", WARNING, hosts,
        f"one TCP stream gets less than {SINGLE_STREAM_RATIO:.0%} of what parallel streams "
        f"get (Gbit/s, one stream vs streams): {detail}. NCCL over sockets and Gloo use few "
        f"flows per peer, so they see the single-stream figure",
        f"for NCCL over sockets spread each connection over more flows: "
        f"NCCL_SOCKET_NTHREADS=4 and NCCL_NSOCKS_PERTHREAD=2 (their product at most 64) in "
        f"/etc/clusterctl/nccl.env; and look for the per-flow limit on {_names(hosts)}: one "
        f"core saturated by the NIC's interrupts (`mpstat -P ALL 1` during a transfer, IRQ "
        f"affinity), offloads off (`ethtool -k IFACE`: tso/gso/gro), small TCP buffers "
        f"(`sysctl net.ipv4.tcp_rmem net.ipv4.tcp_wmem`), per-flow policing on the switch")]


# -- ports ------------------------------------------------------------------------
def _ports(ports: Sequence[PortCheck], nodes, order) -> list[Finding]:
    out = []
    by_name = {n.name: n for n in nodes}
    groups: dict[tuple[str, int], list[PortCheck]] = defaultdict(list)
    opened: dict[tuple[str, int], list[PortCheck]] = defaultdict(list)
    for pc in ports:
        if pc.state in ("blocked", "refused"):
            groups[(pc.purpose, pc.port)].append(pc)
        elif pc.state == "open":
            opened[(pc.purpose, pc.port)].append(pc)
    for (purpose, port), bad in sorted(groups.items(), key=lambda kv: kv[0][1]):
        good = [(pc.src, pc.dst) for pc in opened.get((purpose, port), [])]
        hosts = _ordered(culprits(((pc.src, pc.dst) for pc in bad), good), order)
        dsts = _ordered({pc.dst for pc in bad}, order)
        srcs = _ordered({pc.src for pc in bad}, order)
        how = ("timed out: a firewall drops it" if all(pc.state == "blocked" for pc in bad)
               else "refused or rejected")
        where = _names(f"{d} ({by_name[d].cluster_ip})" if d in by_name and by_name[d].cluster_ip
                       else d for d in dsts)
        src_net = "the cluster network"
        out.append(Finding(
            "port-blocked", ERROR, hosts,
            f"{purpose} port {port} on {where} is not reachable from {_names(srcs)} ({how})",
            f"open TCP {port} on {_names(dsts)} for {src_net}, e.g. "
            f"`nft insert rule inet filter input tcp dport {port} accept` or "
            f"`ufw allow {port}/tcp`; and check no rule on {_names(srcs)} drops outgoing "
            f"{port}"))
    return out


# -- versions ---------------------------------------------------------------------
def _minor(v: str | None) -> str | None:
    if v is None:
        return None
    return ".".join(v.split(".")[:2])


def _versions(nodes, settings: Settings, order) -> list[Finding]:
    out = []
    up = [n for n in nodes if n.reachable]
    if len(up) < 2:
        return out
    for comp, (label, severity) in VERSION_COMPONENTS.items():
        have = {n.name: n.versions.get(comp) for n in up if comp in n.versions}
        if not have or all(v is None for v in have.values()):
            continue
        values = Counter(have.values())
        if len(values) < 2:
            continue
        ranked = values.most_common()
        top_value, top_count = ranked[0]
        if top_value is None and len(ranked) > 1 and ranked[1][1] == top_count:
            top_value = ranked[1][0]     # prefer an installed version on a tie
        tie = sum(1 for _, c in ranked if c == top_count) > 1
        odd = [name for name, v in have.items() if tie or v != top_value]
        sev = severity
        if comp == "python" and len({_minor(v) for v in have.values()}) == 1:
            sev = WARNING                # same minor: wheels still match
        groups: dict[str | None, list[str]] = defaultdict(list)
        for name, v in have.items():
            groups[v].append(name)
        detail = "; ".join(f"{v or 'not installed'} on {_names(_ordered(ns, order))}"
                           for v, ns in sorted(groups.items(), key=lambda kv: -len(kv[1])))
        hosts = _ordered(odd, order)
        want = top_value if not tie else "one version"
        if comp in PIP_NAMES:
            venv = settings.venv or "VENV"
            pin = f"=={top_value}" if not tie and top_value else "==VERSION"
            fix = (f"install the same {label} everywhere: `{venv}/bin/pip install "
                   f"{PIP_NAMES[comp]}{pin}` on {_names(hosts)} (or re-run the bootstrap "
                   f"playbook); every node must run identical packages")
        elif comp == "python":
            fix = (f"recreate the venv on {_names(hosts)} with Python {want} "
                   f"(same OS release everywhere is the simple way)")
        elif comp in ("nvidia_driver", "cuda"):
            fix = f"install NVIDIA driver/CUDA {want} on {_names(hosts)} and reboot"
        elif comp == "llama_cpp":
            fix = (f"build llama.cpp from the same commit on every node ({want}); the RPC "
                   f"protocol differs between builds")
        else:
            fix = f"upgrade {_names(hosts)} to {want} (`apt full-upgrade`) so every node matches"
        out.append(Finding("version-skew", sev, hosts,
                           f"{label} differs across nodes: {detail}", fix))
    return out


# -- InfiniBand -------------------------------------------------------------------
def _infiniband(nodes, order) -> list[Finding]:
    out = []
    no_sm: list[str] = []
    for n in nodes:
        if not n.reachable:
            continue
        for p in n.ib_ports:
            if p.link_layer.lower() != "infiniband":
                continue
            if p.physical_state != "LinkUp" or p.state == "Down":
                out.append(Finding(
                    "ib-port-down", ERROR, [n.name],
                    f"{n.name} {p.device} port {p.port} is {p.state} "
                    f"(physical state {p.physical_state})",
                    f"check the cable/transceiver and switch port of {n.name} {p.device} port "
                    f"{p.port} (`ibstat {p.device}`, `ibstatus`); a port that stays Polling has "
                    f"no link partner"))
            elif p.state in ("Initializing", "Init") or (p.state != "Active" and not p.sm_lid):
                no_sm.append(n.name)
    if no_sm and not any(n.sm_running for n in nodes if n.reachable):
        hosts = _ordered(no_sm, order)
        out.append(Finding(
            "no-subnet-manager", ERROR, hosts,
            f"InfiniBand ports on {_names(hosts)} have link but stay Initializing: no subnet "
            f"manager is running on the fabric",
            "run one subnet manager: `apt install opensm && systemctl enable --now opensm` on "
            "one node, or enable the SM on the InfiniBand switch"))
    return out


def _tools(nodes, order) -> list[Finding]:
    missing = [n.name for n in nodes if n.reachable and n.iperf3 is False]
    if not missing:
        return []
    hosts = _ordered(missing, order)
    return [Finding("iperf3-missing", WARNING, hosts,
                    f"iperf3 is not installed on {_names(hosts)}: bandwidth to and from these "
                    f"nodes is not measured",
                    f"`apt-get install iperf3` on {_names(hosts)}")]


# -- recommendation ---------------------------------------------------------------
def _parallelism(nodes, links) -> list[Finding]:
    up = [n for n in nodes if n.reachable]
    by_name = {n.name: n for n in nodes}
    classes = [c for c in (_link_class(ln, by_name) for ln in links if ln.gbps is not None) if c]
    if len(up) < 2 or not classes:
        return []
    worst = min(classes, key=lambda c: c.nominal_gbps)
    gpus = {n.gpus for n in up if n.gpus}
    per_node = gpus.pop() if len(gpus) == 1 else None
    return [Finding("parallelism", INFO, [n.name for n in up],
                    recommend(worst, nodes=len(up), gpus_per_node=per_node),
                    "tensor parallel inside a node, pipeline parallel across nodes")]


def in_network(ip: str, network: str | None) -> bool:
    if not network:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False
