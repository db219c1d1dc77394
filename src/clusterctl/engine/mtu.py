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
"""
from __future__ import annotations

import shlex
from collections import Counter

from ..errors import ClusterctlError
from ..session import failure_reason as _message
from .results import TaskResult

TIMER_UNIT = "clusterctl-mtu-rollback"


def jumbo_ping_argv(ip: str, mtu: int) -> list[str]:
    return ["ping", "-M", "do", "-s", str(mtu - 28), "-c", "2", "-i", "0.2", "-W", "1", ip]


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


def execute_safe_mtu(runner, play, role, task, planned_states) -> dict:
    """CLUSTER_EXECUTORS entry for `link_mtu`."""
    results: dict[str, TaskResult] = {}
    todo = []
    for state, planned in planned_states:
        outcome = planned.outcome
        if outcome is None or not hasattr(outcome, "steps") or \
                not (planned.args or {}).get("safe", True):
            results[state.host.name] = runner.outcome_result(state, planned)
            continue
        iface, target = planned.args["interface"], int(planned.args["mtu"])
        old = _current_mtu(state.facts, iface)
        todo.append((state, planned, iface, target, old))
    if not todo:
        return results
    targets = {t[0].host.name: t[3] for t in todo}

    def rollback_after(planned) -> int:
        return int(planned.args.get("rollback_after", 60))

    # 1. arm the dead man's switch (each host its own delay), then raise
    def arm_and_raise(item):
        state, planned, iface, target, old = item
        state.conn.run(arm_rollback_script(iface, old, rollback_after(planned)))
        runner.execute_change(state, planned.outcome)
    armed = runner.map([t[0] for t in todo],
                             lambda s: arm_and_raise(next(t for t in todo if t[0] is s)))

    # peers able to take jumbo frames after the raise (raised now, or already at the
    # MTU a raising host aims for), by cluster IP
    raised_now = {name for name in targets if armed.get(name) is None}
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

    # 2. verify: jumbo pings to peers, and a fresh controller connection with bulk data
    def verify(state):
        target = next(t[3] for t in todo if t[0] is state)
        failing = []
        for peer, ip in at_target(target).items():
            if peer == state.host.name:
                continue
            res = state.conn.run(jumbo_ping_argv(ip, target), check=False, timeout=15)
            if res.exit_code != 0:
                failing.append(peer)
        controller_ok = True
        try:
            with runner.session.fresh_connection(state.host, connect_timeout=8) as fresh:
                fresh.run("head -c 262144 /dev/zero | od -v | tail -n 1", timeout=10)
        except ClusterctlError:
            controller_ok = False
        return failing, controller_ok
    raised = [t[0] for t in todo if armed.get(t[0].host.name) is None]
    checks = runner.map(raised, verify)

    failing_pairs: set[tuple[str, str]] = set()
    controller_lost: set[str] = set()
    for name, res in checks.items():
        if isinstance(res, Exception):
            controller_lost.add(name)
            continue
        failing, controller_ok = res
        failing_pairs |= {(name, peer) for peer in failing}
        if not controller_ok:
            controller_lost.add(name)
    changing = {t[0].host.name for t in todo}
    bad = (blame(failing_pairs) & changing) | controller_lost

    # 3. roll back the bad, disarm everywhere
    def finish(item):
        state, planned, iface, target, old = item
        name = state.host.name
        if name in armed and armed[name] is not None:
            return TaskResult(name, task, "failed", _message(armed[name]))
        if name in bad:
            peers = sorted(p for pair in failing_pairs if name in pair for p in pair
                           if p != name)
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
                                lambda s: finish(next(t for t in todo if t[0] is s)))
    for name, res in finished.items():
        if isinstance(res, Exception):
            res = TaskResult(name, task, "failed", _message(res))
        if res.status == "failed":
            runner.states[name].failed = res.message
        results[name] = res
    return results

