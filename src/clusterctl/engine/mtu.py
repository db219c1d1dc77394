"""Raising the MTU safely, for all hosts of a play together.

A node whose switch port does not carry jumbo frames black-holes large packets
after an MTU raise: ping works, SSH hangs. So a `link_mtu` task with `safe: true`
(the default) is executed as one coordinated step:

1. on every host that changes: arm a dead man's switch (a systemd timer that puts
   the old MTU back after `rollback_after` seconds), then set the new MTU;
2. from each such host, ping every peer already at the target MTU with
   don't-fragment at MTU-28; the controller opens a NEW connection to the host and
   pulls bulk data through it;
3. hosts whose paths fail are rolled back now (the timer does it if even that
   fails); the failure names the host and the peers it cannot reach with jumbo
   frames. The others disarm their timer.

Persisting the MTU is the role's next task, so a rolled-back host is never
persisted at a bad MTU (it fails this task and stops).

Hosts already at the target MTU are checked too (the step runs every time, also under
--check): each pings its peers at the target with don't-fragment, all peers at once, so
a node at 9000 behind a switch port that carries only 1500 is named, not trusted. Such a
host fails the task; its MTU is left alone (the old value is not known).

A jumbo-frame black hole on the CONTROLLER's path stalls SSH itself on the first large
packet (TCP between two ends at 9000 uses ~9000-byte packets; the port drops them, and
which ones get through in the lab varies), so before facts are gathered `check_paths`
asks every host whose path from the controller is above 1500 at both ends for a
don't-fragment ping of that size to the controller (small command, small answer); if it
is lost while small packets pass, the host fails by name as a jumbo-frame black hole
instead of being waited on. Nothing is sent where the controller's MTU is 1500.
"""
from __future__ import annotations

import ipaddress
import shlex
import socket
from collections import Counter

from ..errors import ClusterctlError, HostError
from ..session import failure_reason as _message
from .results import TaskResult

TIMER_UNIT = "clusterctl-mtu-rollback"


def jumbo_ping_argv(ip: str, mtu: int) -> list[str]:
    return ["ping", "-M", "do", "-s", str(mtu - 28), "-c", "2", "-i", "0.2", "-W", "1", ip]


#: one ping round (every peer at once) ends within this; the command's own timeout
PING_ROUND_TIMEOUT = 20.0


#: the MTU whose don't-fragment pings (56-byte payload) tell "unreachable" from "drops
#: large frames"
SMALL_PING_MTU = 84


def jumbo_ping_script(ips: list[str], mtu: int) -> str:
    """Don't-fragment pings at MTU-28 to every IP at once (one round trip, bounded by
    ping's own -W); prints the IPs that did not answer, one per line. One reply of
    three is enough (a loaded host may drop one)."""
    q = shlex.quote
    jobs = [f"(ping -M do -s {int(mtu) - 28} -c 3 -i 0.2 -W 2 {q(ip)} >/dev/null 2>&1 "
            f"|| echo {q(ip)}) &" for ip in ips]
    return "\n".join(jobs + ["wait"])


# -- the controller's path ---------------------------------------------------------

#: bytes sent to and pulled from a freshly raised host: more than one 1500-byte frame
PATH_PROBE_BYTES = 16384
#: seconds the check of the controller's path (a few pings, bounded by ping's -W) may take
PATH_CHECK_TIMEOUT = 25.0
#: Linux's IP_MTU socket option (<netinet/in.h>): the MTU of a connected socket's route
IP_MTU = getattr(socket, "IP_MTU", 14)


def path_probe_command(size: int = PATH_PROBE_BYTES) -> str:
    """A command `size` bytes long (large packets to the host: the command text is
    one SSH message) that answers `size` bytes (large packets back). (Not stdin: the
    SSH library feeds stdin a byte at a time.)"""
    pad = "x" * int(size)
    return f": {pad}; head -c {int(size)} /dev/zero | tr '\\0' x"


def probe_path(conn, timeout: float) -> None:
    """The path probe on `conn`; HostError (timed out) when it stalls."""
    res = conn.run(path_probe_command(), timeout=timeout)
    if len(res.stdout) < PATH_PROBE_BYTES:
        raise HostError(conn.name, f"path probe: short answer ({len(res.stdout)} bytes)")


def path_check_script(controller: str, controller_mtu: int) -> str:
    """Small (one small packet each way). Prints `dev IFACE MTU SIZE`: the interface
    toward the controller, its MTU, and SIZE, the largest packet SSH between the two
    uses (the smaller MTU); where SIZE > 1500 a don't-fragment ping of SIZE, and only
    if it is lost a small one and one of 1500, as `to IP SMALL AT1500 ATSIZE` (1 =
    answered; one reply of three is enough)."""
    c = shlex.quote(controller)
    return (f"c={c}\n"
            "d=$(ip -o route get \"$c\" 2>/dev/null | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')\n"
            "m=$(cat /sys/class/net/$d/mtu 2>/dev/null || echo 0)\n"
            f"s=$m; [ \"$s\" -gt {int(controller_mtu)} ] && s={int(controller_mtu)}\n"
            "echo dev $d $m $s\n"
            "[ \"$s\" -gt 1500 ] || exit 0\n"
            "p() { ping -c 3 -i 0.2 -W 2 \"$@\" >/dev/null 2>&1 && echo 1 || echo 0; }\n"
            "if [ \"$(p -M do -s $((s-28)) $c)\" = 1 ]; then echo to $c 1 1 1; else "
            "echo to $c $(p -s 16 $c) $(p -M do -s 1472 $c) 0; fi")


def parse_path_check(text: str) -> tuple[str | None, int | None, int | None,
                                          dict[str, tuple[bool, ...]]]:
    """(interface, its MTU, the packet size checked, {ip: (small, at 1500, at size)})."""
    iface, mtu_now, size, paths = None, None, None, {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "dev" and parts[2].isdigit() and \
                parts[3].isdigit():
            iface = parts[1] or None
            mtu_now, size = int(parts[2]) or None, int(parts[3]) or None
        elif len(parts) == 5 and parts[0] == "to" and all(p in "01" for p in parts[2:]):
            paths[parts[1]] = tuple(p == "1" for p in parts[2:])
    return iface, mtu_now, size, paths


def black_hole_message(name: str, iface: str | None, mtu_now: int | None, size: int | None,
                       paths: dict[str, tuple[bool, ...]], controller: str | None
                       ) -> str | None:
    """The failure of a host whose small packets reach the controller where its
    SSH-sized ones do not (a jumbo-frame black hole), or None."""
    if not size or size <= 1500:
        return None
    holes = sorted(ip for ip, (small, _, big) in paths.items() if small and not big)
    if not holes:
        return None

    def who(ip):
        return f"{ip} (the controller)" if ip == controller else ip
    fits = [ip for ip in holes if paths[ip][1]]
    passes = "small and 1500-byte packets pass" if len(fits) == len(holes) else \
        "small packets pass"
    return (f"jumbo-frame black hole: {name}'s {iface or 'interface'} is at mtu {mtu_now} "
            f"but {size}-byte packets do not reach " + ", ".join(who(ip) for ip in holes)
            + f" ({passes}), so SSH to it stalls on large packets. Check the MTU of the "
            "switch port(s) on that path, or set cluster.mtu to what the switch carries.")


def arm_rollback_script(iface: str, old_mtu: int, seconds: int) -> str:
    q = shlex.quote
    restore = f"ip link set dev {q(iface)} mtu {int(old_mtu)}"
    return (
        f"systemctl stop {TIMER_UNIT}.timer {TIMER_UNIT}.service >/dev/null 2>&1; "
        f"systemctl reset-failed {TIMER_UNIT}.timer {TIMER_UNIT}.service >/dev/null 2>&1; "
        f"systemd-run --quiet --unit={TIMER_UNIT} --on-active={int(seconds)} "
        f"--timer-property=AccuracySec=1s /bin/sh -c {q(restore)}"
    )


DISARM_SCRIPT = (f"systemctl stop {TIMER_UNIT}.timer >/dev/null 2>&1; "
                 f"systemctl reset-failed {TIMER_UNIT}.timer {TIMER_UNIT}.service "
                 ">/dev/null 2>&1; true")


def blame(failing_pairs: set[tuple[str, str]]) -> set[str]:
    """Hosts to roll back, from the (src, dst) pairs whose jumbo ping failed.

    Repeatedly take the host in the most failing pairs (ties: all of them), drop its
    pairs, until none is left. One bad switch port fails every pair of its host, so
    that host (and only it) is blamed; a two-node failure blames both.
    """
    pairs = {frozenset(p) for p in failing_pairs if p[0] != p[1]}
    bad: set[str] = set()
    while pairs:
        counts = Counter(h for p in pairs for h in p)
        top = max(counts.values())
        worst = {h for h, c in counts.items() if c == top}
        bad |= worst
        pairs = {p for p in pairs if not (p & worst)}
    return bad


def _current_mtu(facts, iface: str) -> int | None:
    for i in facts.interfaces:
        if i.name == iface:
            return int(i.mtu)
    return None


def controller_path(address: str) -> tuple[str, int] | None:
    """(this machine's IPv4 address toward `address`, the MTU of that route): the
    kernel's choice, no packet is sent. None for loopback or when unknown."""
    try:
        infos = socket.getaddrinfo(address, 22, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(infos[0][4])
            ip = s.getsockname()[0]
            mtu = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except (OSError, IndexError):
        return None
    return None if ipaddress.ip_address(ip).is_loopback else (ip, int(mtu))


def check_path(state) -> str | None:
    """The controller's own path to a host, where both ends are above 1500 (so SSH's
    TCP uses packets a 1500 switch port would drop): a don't-fragment ping of that
    size from the host. The failure message of a black hole, else None."""
    target = getattr(state.conn, "target", None)
    if target is None or target.hops or target.proxy_command:
        return None                      # through a jump host: not this path
    found = controller_path(target.hostname)
    if found is None or found[1] <= 1500:
        return None
    ctrl, ctrl_mtu = found
    res = state.conn.run(path_check_script(ctrl, ctrl_mtu), check=False,
                         timeout=PATH_CHECK_TIMEOUT)
    return black_hole_message(state.host.name, *parse_path_check(res.stdout), ctrl)


def check_paths(runner, states) -> dict[str, str]:
    """Before facts (the first large packets): {host: message} for the hosts whose
    path from the controller is a jumbo-frame black hole. A few small packets each way
    per host, one round trip; nothing at all where the controller's MTU is 1500."""
    live = [s for s in states if not s.failed and s.conn is not None]
    found = runner.map(live, check_path, step="checking the controller's path")
    return {name: msg for name, msg in found.items() if isinstance(msg, str)}


def execute_safe_mtu(runner, play, role, task, planned_states) -> dict:
    """CLUSTER_EXECUTORS entry for `link_mtu`: raise (armed, verified, rolled back on
    failure) where the MTU changes, verify jumbo frames where it is already at target.
    Under --check only the read-only part runs (the pings of hosts at target)."""
    results: dict[str, TaskResult] = {}
    todo = []      # (state, planned, iface, target, old): to raise
    steady = []    # (state, planned, iface, target): already at target, to verify
    for state, planned in planned_states:
        outcome, args = planned.outcome, planned.args or {}
        changes = hasattr(outcome, "steps")
        if outcome is None or not args.get("safe", True) or (changes and runner.options.check):
            results[state.host.name] = runner.outcome_result(state, planned)
            continue
        iface, target = args["interface"], int(args["mtu"])
        if not changes:
            steady.append((state, planned, iface, target))
            continue
        old = _current_mtu(state.facts, iface)
        todo.append((state, planned, iface, target, old))
    if not todo and not steady:
        return results
    targets = {t[0].host.name: t[3] for t in todo}
    targets.update({t[0].host.name: t[3] for t in steady})

    def rollback_after(planned) -> int:
        return int(planned.args.get("rollback_after", 60))

    # 1. arm the dead man's switch (each host its own delay), then raise
    def arm_and_raise(item):
        state, planned, iface, target, old = item
        state.conn.run(arm_rollback_script(iface, old, rollback_after(planned)))
        runner.execute_change(state, planned.outcome)
    armed = runner.map([t[0] for t in todo],
                       lambda s: arm_and_raise(next(t for t in todo if t[0] is s))) \
        if todo else {}

    # peers able to take jumbo frames after the raise (raised now, or already at the
    # MTU a raising host aims for), by cluster IP
    raised_now = {t[0].host.name for t in todo if armed.get(t[0].host.name) is None}
    peers_mtu: dict[str, tuple[str, int | None]] = {}
    for name, st in runner.states.items():
        view = runner.view.hosts.get(name) if runner.view is not None else None
        if st.facts is None or st.failed or view is None or not view.cluster_ip:
            continue
        mtu_now = targets[name] if name in raised_now else \
            _current_mtu(st.facts, view.cluster_iface)
        peers_mtu[name] = (view.cluster_ip, mtu_now)

    def at_target(target: int) -> dict[str, str]:
        return {n: ip for n, (ip, m) in peers_mtu.items() if m is not None and m >= target}

    # 2. verify: jumbo pings to peers (all at once); a raised host also gets a fresh
    # controller connection pulling bulk data
    def verify(state):
        name = state.host.name
        peers = {ip: peer for peer, ip in at_target(targets[name]).items() if peer != name}
        failing = []
        if peers:
            res = state.conn.run(jumbo_ping_script(sorted(peers), targets[name]),
                                 check=False, timeout=PING_ROUND_TIMEOUT)
            failing = sorted(peers[ip] for ip in res.stdout.split() if ip in peers)
        if name not in raised_now:
            if failing:
                # a peer that small packets do not reach either is cut off (a partition,
                # a dead node), not a jumbo-frame black hole: not this step's to blame
                ips = {peer: ip for ip, peer in peers.items()}
                small = state.conn.run(jumbo_ping_script(sorted(ips[p] for p in failing),
                                                         SMALL_PING_MTU),
                                       check=False, timeout=PING_ROUND_TIMEOUT)
                cut_off = {peers[ip] for ip in small.stdout.split() if ip in peers}
                failing = [p for p in failing if p not in cut_off]
            return failing, True
        controller_ok = True
        try:
            with runner.session.fresh_connection(state.host, connect_timeout=8) as fresh:
                probe_path(fresh, 10)
        except ClusterctlError:
            controller_ok = False
        return failing, controller_ok
    raised = [t[0] for t in todo if t[0].host.name in raised_now]
    checks = runner.map(raised + [t[0] for t in steady], verify)

    failing_pairs: set[tuple[str, str]] = set()
    controller_lost: set[str] = set()
    steady_lost: dict[str, Exception] = {}
    for name, res in checks.items():
        if isinstance(res, Exception):
            if name in raised_now:
                controller_lost.add(name)
            else:
                steady_lost[name] = res
            continue
        failing, controller_ok = res
        failing_pairs |= {(name, peer) for peer in failing}
        if not controller_ok:
            controller_lost.add(name)
    changing = {t[0].host.name for t in todo}
    bad_changing = blame(failing_pairs) & changing
    # a host at target is blamed only for pairs no host raised now explains
    rest = {p for p in failing_pairs if not (set(p) & bad_changing)}
    bad_steady = blame(rest) & {t[0].host.name for t in steady}
    bad = bad_changing | controller_lost

    def peers_of(name, pairs):
        return sorted({p for pair in pairs if name in pair for p in pair if p != name})

    # 3. roll back the bad, disarm everywhere
    def finish(item):
        state, planned, iface, target, old = item
        name = state.host.name
        if name in armed and armed[name] is not None:
            return TaskResult(name, task, "failed", _message(armed[name]))
        if name in bad:
            peers = peers_of(name, failing_pairs)
            why = []
            if peers:
                why.append(f"jumbo frames ({target}) do not pass between {name} and "
                           + ", ".join(peers))
            if name in controller_lost:
                why.append("the controller lost SSH to it at the new MTU")
            try:
                state.conn.run(f"ip link set dev {shlex.quote(iface)} mtu {int(old)}; "
                               + DISARM_SCRIPT, timeout=15)
                rolled = f"rolled back to mtu {old} on {iface}"
            except ClusterctlError:
                rolled = (f"rollback timer restores mtu {old} on {iface} within "
                          f"{rollback_after(planned)}s")
            return TaskResult(name, task, "failed",
                              "; ".join(why) + f": {rolled}. Check the MTU of the switch "
                              "port(s) on that path, or set cluster.mtu to what the switch "
                              "carries.")
        state.conn.run(DISARM_SCRIPT)
        state.changed_in_play = True
        n = len([p for p in at_target(target) if p != name])
        return TaskResult(name, task, "changed",
                          f"mtu {old} -> {target} on {iface}; jumbo frames verified to "
                          f"{n} peer(s) and the controller")
    finished = runner.map([t[0] for t in todo],
                          lambda s: finish(next(t for t in todo if t[0] is s))) \
        if todo else {}
    for state, planned, iface, target in steady:
        name = state.host.name
        if name in steady_lost:
            finished[name] = steady_lost[name]
        elif name in bad_steady:
            finished[name] = TaskResult(
                name, task, "failed",
                f"jumbo frames ({target}) do not pass between {name} and "
                + ", ".join(peers_of(name, rest)) + f": {name} is already at mtu {target} on "
                f"{iface}, so its path is a jumbo-frame black hole (left as it is). Check "
                "the MTU of the switch port(s) on that path, or set cluster.mtu to what the "
                "switch carries.")
        else:
            n = len([p for p in at_target(target) if p != name])
            finished[name] = TaskResult(name, task, "ok", f"{planned.outcome.reason}; jumbo "
                                        f"frames verified to {n} peer(s)")
    for name, res in finished.items():
        if isinstance(res, Exception):
            res = TaskResult(name, task, "failed", _message(res))
        if res.status == "failed":
            runner.states[name].failed = res.message
        results[name] = res
    return results
