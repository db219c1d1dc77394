"""The Ray cluster check: a task (`ray_cluster`) of the bootstrap playbook.

It runs as a cluster step: once, from the head, for every host of its play, so its
outcome is in the recap and in `--json` like any task, and the exit code agrees.

- After a run that changed something, `ray status` on the head (as an operator would).
- On a run that changed nothing, Ray's own HTTP state API on the head (one small
  `python3 -c` fetch over the cluster IP; Ray itself is not imported).
- Either way it polls until every expected node is ALIVE **and has registered its
  resources** (CPU > 0, GPUs as the inventory or the facts say) or the deadline
  passes. A node that has not joined fails in the recap, named, with the tail of its
  unit's journal; the others are ok with what Ray registered for them.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field

from ..errors import ClusterctlError, HostError
from ..facts import Facts
from ..ops import OPS
from ..ops.base import Noop, Op, Param
from ..session import failure_reason
from .results import TaskResult

FETCH_JSON = ("import json,sys,urllib.request;"
              "print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())")


@dataclass
class RayCheck:
    head: str
    expected: dict[str, str]              # host -> cluster ip
    alive: dict[str, dict] = field(default_factory=dict)   # ip -> node record
    gpus: dict[str, int] = field(default_factory=dict)     # host -> GPUs it must register
    total_gpus: float = 0.0
    total_cpus: float = 0.0
    status_text: str = ""

    #: host -> when (unix seconds, the node's clock) its Ray unit last started in this
    #: run: an ALIVE record registered before that is the previous raylet's, which Ray
    #: keeps until its own health checks expire (about 30 s); it must not count
    started: dict[str, float] = field(default_factory=dict)

    def accept(self, nodes: list[dict]) -> None:
        """Take the ALIVE records of a state API answer, newest per IP, leaving out
        those that predate their host's unit start."""
        by_ip: dict[str, dict] = {}
        after = {self.expected[h]: t for h, t in self.started.items() if h in self.expected}
        for n in nodes:
            ip = n.get("node_ip")
            if n.get("state") != "ALIVE" or not ip:
                continue
            start = _start_seconds(n)
            if ip in after and start is not None and start < after[ip] - CLOCK_SLACK:
                continue                          # the raylet from before the restart
            if ip not in by_ip or (start or 0) > (_start_seconds(by_ip[ip]) or 0):
                by_ip[ip] = n
        self.alive = by_ip

    @property
    def missing(self) -> list[str]:
        return [h for h, ip in self.expected.items() if ip not in self.alive]

    def unregistered(self) -> list[str]:
        """Alive nodes whose resources are not (yet) what they must be."""
        out = []
        for host, ip in self.expected.items():
            node = self.alive.get(ip)
            if node is None:
                continue
            res = node.get("resources_total") or {}
            if float(res.get("CPU", 0) or 0) <= 0 or \
                    float(res.get("GPU", 0) or 0) < self.gpus.get(host, 0):
                out.append(host)
        return out

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unregistered()


#: seconds of tolerance between a unit's start and its raylet's registration time (both
#: on the node's own clock; systemd stamps the start before `ray start` runs)
CLOCK_SLACK = 2.0


def _start_seconds(node: dict) -> float | None:
    try:
        value = float(node.get("start_time_ms"))
    except (TypeError, ValueError):
        return None
    return value / 1000 if value > 0 else None


def parse_active_enter(text: str) -> float | None:
    """The latest `@SECONDS` of `systemctl show --timestamp=unix -p ActiveEnterTimestamp
    --value UNIT...` (one line per unit; empty for a unit that is not active)."""
    best = None
    for line in text.split():
        if line.startswith("@"):
            try:
                value = float(line[1:])
            except ValueError:
                continue
            best = value if best is None else max(best, value)
    return best


def parse_state_nodes(text: str) -> list[dict]:
    """Nodes from Ray's state API (/api/v0/nodes) JSON."""
    data = json.loads(text)
    inner = data.get("data", {}).get("result", {})
    nodes = inner.get("result", inner) if isinstance(inner, dict) else inner
    return [n for n in nodes if isinstance(n, dict)]


def parse_ray_status_totals(text: str) -> dict[str, float]:
    """Totals from the `Usage:` block of `ray status`: '0.0/4.0 CPU' -> {'CPU': 4.0}."""
    totals = {}
    for m in re.finditer(r"^\s*[\d.]+[A-Za-z]*/([\d.]+)[A-Za-z]* (\S+)", text, re.M):
        totals[m.group(2)] = float(m.group(1))
    return totals


def check_ray(conn, expected: dict[str, str], *, head_ip: str, venv: str, ray_port: int,
              dashboard_port: int, wait: float = 90.0, run_status: bool = True,
              gpus: dict[str, int] | None = None,
              started: dict[str, float] | None = None) -> RayCheck:
    """Poll Ray's state API until every expected IP is alive with its resources
    registered, or `wait` passes; totals from `ray status` (run_status) or else from
    the state API."""
    check = RayCheck(conn.name, expected, gpus=dict(gpus or {}), started=dict(started or {}))
    url = f"http://{head_ip}:{dashboard_port}/api/v0/nodes?limit=10000&detail=1"
    deadline = time.monotonic() + wait
    last_error = ""
    while True:
        res = conn.run(["python3", "-c", FETCH_JSON, url], check=False, timeout=15)
        if res.ok:
            try:
                check.accept(parse_state_nodes(res.stdout))
                last_error = ""
            except (ValueError, AttributeError) as exc:
                last_error = f"unexpected answer from Ray's state API: {exc}"
        else:
            last_error = (res.stderr.strip().splitlines() or ["no answer"])[-1]
        if check.ok or time.monotonic() > deadline:
            break
        time.sleep(2)
    totals: dict[str, float] = {}
    for node in check.alive.values():
        for key, value in (node.get("resources_total") or {}).items():
            try:
                totals[key] = totals.get(key, 0.0) + float(value)
            except (TypeError, ValueError):
                continue
    if run_status or not check.ok:
        status = conn.run([f"{venv}/bin/ray", "status", f"--address={head_ip}:{ray_port}"],
                          check=False, timeout=60)
        check.status_text = status.stdout
        totals = parse_ray_status_totals(status.stdout) or totals
    check.total_gpus = totals.get("GPU", 0.0)
    check.total_cpus = totals.get("CPU", 0.0)
    if not check.alive and last_error:
        raise HostError(conn.name, f"Ray state API at {url} did not answer: {last_error}")
    return check


class RayClusterOp(Op):
    """Planned like any op (a Noop: it changes nothing); the engine runs it as a
    cluster step after the Ray units are in place."""

    name = "ray_cluster"
    params = {"wait": Param(int, default=90, help="seconds to wait for every node to join")}

    def normalize(self, args):
        if not 1 <= args["wait"] <= 3600:
            raise ValueError(f"wait: expected 1..3600 seconds, got {args['wait']}")
        return args

    def requests(self, args):
        return []

    def plan(self, facts: Facts, args):
        return Noop(self.name, "ray", "the Ray cluster is checked after its units")


OPS.setdefault("ray_cluster", RayClusterOp())


def _journal_tail(runner, name: str) -> str:
    host = runner.inventory.hosts[name]
    unit = "ray-head.service" if host.is_head else "ray-worker.service"
    try:
        tail = runner.session.connection(name).run(
            f"journalctl -u {shlex.quote(unit)} -n 15 --no-pager -o cat",
            check=False, timeout=15).stdout
    except ClusterctlError as exc:
        tail = str(exc)
    return f"last lines of {unit}:\n" + "\n".join("    " + ln for ln in
                                                  tail.rstrip().splitlines())


RAY_UNITS = ("ray-head.service", "ray-worker.service")


def _unit_starts(runner, states) -> dict[str, float]:
    """host -> when its Ray unit last became active (the node's clock), for hosts that
    answer; one small command per host, in parallel, only after a run that changed
    something (a restarted worker's old record is what could fool the check)."""
    argv = ["systemctl", "show", "--timestamp=unix", "-p", "ActiveEnterTimestamp",
            "--value", *RAY_UNITS]
    got = runner.map(states, lambda st: st.conn.run(argv, check=False, timeout=30).stdout,
                     step="ray unit start times", deadline=60)
    out = {}
    for name, text in got.items():
        when = parse_active_enter(text) if isinstance(text, str) else None
        if when is not None:
            out[name] = when
    return out


def execute(runner, play, role, task, planned_states) -> dict:
    """Cluster step for `ray_cluster`: one check from the head, a result per host."""
    results: dict[str, TaskResult] = {}
    todo = []
    for state, planned in planned_states:
        if planned.outcome is None:          # skipped by `when`
            results[state.host.name] = runner.outcome_result(state, planned)
        else:
            todo.append((state, planned))
    if not todo:
        return results
    inventory, view = runner.inventory, runner.view
    head = inventory.head
    head_ip = view.ip(head.name) if view is not None else None
    if runner.options.check:
        for state, _p in todo:
            results[state.host.name] = TaskResult(state.host.name, task, "skipped",
                                                  "--check: Ray is checked after a real run")
        return results
    if head_ip is None:
        why = (f"the head {head.name} is not in this run (--limit)" if head.name not in
               runner.states else f"no cluster IP for the head {head.name}")
        for state, _p in todo:
            results[state.host.name] = TaskResult(state.host.name, task, "skipped",
                                                  f"{why}: Ray not checked")
        return results
    wait = max(p.args.get("wait", 90) for _s, p in todo)
    expected = {s.host.name: view.ip(s.host.name) for s, _p in todo
                if view.ip(s.host.name)}
    expected.setdefault(head.name, head_ip)
    gpus = {name: view.hosts[name].gpus for name in expected if name in view.hosts}
    ray = head.vars["ray"]
    venv = head.vars["python"]["venv"]
    changed = any(r.changed for r in runner.recap.values())
    started = _unit_starts(runner, [s for s, _p in todo]) if changed else {}
    start = time.monotonic()
    try:
        check = check_ray(runner.session.connection(head.name), expected, head_ip=head_ip,
                          venv=venv, ray_port=ray["port"],
                          dashboard_port=ray["dashboard_port"], wait=wait,
                          run_status=changed, gpus=gpus, started=started)
    except ClusterctlError as exc:
        reason = failure_reason(exc)
        for state, _p in todo:
            if state.host.name == head.name:
                results[state.host.name] = TaskResult(head.name, task, "failed", reason)
            else:
                results[state.host.name] = TaskResult(state.host.name, task, "skipped",
                                                      f"Ray not checked: head failed: {reason}")
        return results
    elapsed = time.monotonic() - start
    missing, unregistered = set(check.missing), set(check.unregistered())
    summary = (f"{len(check.alive)} node(s) alive, {check.total_cpus:g} CPU, "
               f"{check.total_gpus:g} GPU (head {head.name} {head_ip}:{ray['port']})")
    for state, _p in todo:
        name = state.host.name
        ip = expected.get(name)
        if name in missing:
            message = (f"has not joined the Ray cluster at {head_ip}:{ray['port']} "
                       f"({ip or 'no cluster IP'}) within {wait}s; " + _journal_tail(runner, name))
            results[name] = TaskResult(name, task, "failed", message, elapsed=elapsed)
        elif name in unregistered:
            res = (check.alive.get(ip) or {}).get("resources_total") or {}
            results[name] = TaskResult(
                name, task, "failed",
                f"joined Ray but registered CPU={res.get('CPU', 0)} GPU={res.get('GPU', 0)} "
                f"(expected CPU > 0, GPU {gpus.get(name, 0)}) within {wait}s",
                elapsed=elapsed)
        else:
            results[name] = TaskResult(name, task, "ok", "ray: " + summary if name == head.name
                                       else f"in the Ray cluster as {ip}", elapsed=elapsed)
    return results
