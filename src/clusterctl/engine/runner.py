"""Plan and execute playbooks over hosts.

A run: connect to every host (parallel) -> gather facts (ONE round trip per host,
for every task of every play) -> plan every task from facts (pure ops) -> execute
changes task by task, hosts in parallel (a failing host stops alone) -> handlers
once per play -> recap. A play that changed a host refreshes its facts before the
next play is planned. Under --check nothing is executed: the plan is the report.
"""
from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import ClusterctlError, HostError, InputError
from ..facts import BASE_REQUESTS, FactRequest, Facts, build_script, parse_output
from ..ops import OPS, Change, Noop, Upload
from ..remote import Connection, close_all, connect_all
from .roles import Play, Role, Task, project_root
from .templating import evaluate_condition, render_file, render_value


@dataclass
class RunOptions:
    check: bool = False
    diff: bool = False
    forks: int = 20
    keep_going: bool = True
    accept_new_host_keys: bool = False
    limit: list[str] | None = None
    extra_vars: dict = field(default_factory=dict)
    connect_timeout: float = 10.0


@dataclass
class TaskResult:
    host: str
    task: Task | None
    status: str                     # ok | changed | skipped | failed | unreachable
    message: str = ""
    diff: str | None = None
    elapsed: float = 0.0
    handler: bool = False

    @property
    def title(self) -> str:
        if self.task is None:
            return "connect"
        return f"{self.task.role} : {self.task.name}"

    def to_dict(self) -> dict:
        return {"host": self.host, "task": self.title, "status": self.status,
                "message": self.message, "diff": self.diff, "handler": self.handler,
                "elapsed": round(self.elapsed, 3),
                "where": self.task.where if self.task else None}


@dataclass
class HostRecap:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RunReport:
    results: list[TaskResult]
    recap: dict[str, HostRecap]
    check: bool
    elapsed: float = 0.0
    facts: dict = field(default_factory=dict)      # host name -> Facts (last gathered)

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in self.recap.items() if r.failed or r.unreachable]

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.recap.values())

    def to_dict(self) -> dict:
        return {"check": self.check, "elapsed": round(self.elapsed, 3),
                "recap": {h: r.to_dict() for h, r in self.recap.items()},
                "results": [r.to_dict() for r in self.results]}


class Reporter(Protocol):
    def play_start(self, play: Play, hosts: list[str]) -> None: ...
    def task_result(self, result: TaskResult) -> None: ...


class _NullReporter:
    def play_start(self, play, hosts):
        pass

    def task_result(self, result):
        pass


@dataclass
class HostState:
    host: Any
    conn: Connection | None
    facts: Facts | None = None
    gathered: set = field(default_factory=set)
    failed: str | None = None
    changed_in_play: bool = False


@dataclass
class PlannedTask:
    task: Task
    outcome: Change | Noop | None     # None: skipped by `when`
    reason: str = ""                  # skip reason
    args: dict | None = None


# -- derived variables ------------------------------------------------------

def cluster_address(host, facts: Facts) -> tuple[str | None, str | None]:
    """(cluster interface name, cluster IPv4) of a host from its facts."""
    network = (host.vars.get("cluster") or {}).get("network")
    iface = facts.interface_for(network, host.address)
    if iface is None:
        return None, None
    net = None
    if network and "/" in str(network):
        net = ipaddress.ip_network(str(network), strict=False)
    for addr, _prefix in iface.addresses:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if ip.version == 4 and (net is None or ip in net):
            return iface.name, addr
    return iface.name, None


def host_variables(state: HostState, states: dict[str, HostState], inventory,
                   role: Role | None, play: Play | None, extra: dict) -> dict:
    host = state.host
    variables: dict[str, Any] = {}
    if role is not None:
        variables.update(role.defaults)
    variables.update(host.vars)
    if play is not None:
        variables.update(play.vars)
    variables.update(extra)
    variables["inventory_hostname"] = host.name
    variables["inventory_host"] = host
    variables["is_head"] = host.is_head
    variables["groups"] = inventory.groups
    if state.facts is not None:
        facts = state.facts
        variables["facts"] = facts
        iface, ip = cluster_address(host, facts)
        variables["cluster_iface"] = iface
        variables["cluster_ip"] = ip
        detected = len(facts.gpus or [])
        variables["gpu_count"] = host.gpus if host.gpus is not None else detected
        peers = []
        for name, other in states.items():
            if other.facts is None:
                continue
            o_iface, o_ip = cluster_address(other.host, other.facts)
            entry = {"name": name, "cluster_ip": o_ip, "cluster_iface": o_iface,
                     "is_head": other.host.is_head}
            if other.host.is_head:
                variables["head"] = entry
            if name != host.name:
                peers.append(entry)
        variables["peers"] = peers
    if role is not None:  # role defaults may refer to other variables (one level)
        for key, value in role.defaults.items():
            if variables.get(key) is value and isinstance(value, str) and "{{" in value:
                try:
                    variables[key] = render_value(value, variables,
                                                  source=str(role.path / "defaults.yaml"))
                except InputError:
                    pass  # needs facts not gathered yet; the task using it will say so
    return variables


# -- the runner ---------------------------------------------------------------

class Runner:
    def __init__(self, inventory, plays: list[Play], options: RunOptions | None = None,
                 reporter: Reporter | None = None):
        self.inventory = inventory
        self.plays = plays
        self.options = options or RunOptions()
        self.reporter = reporter or _NullReporter()
        self.results: list[TaskResult] = []
        self.recap: dict[str, HostRecap] = {}
        self.states: dict[str, HostState] = {}
        self._stop = False

    # results -------------------------------------------------------------
    def _record(self, result: TaskResult) -> None:
        self.results.append(result)
        recap = self.recap.setdefault(result.host, HostRecap())
        if result.status == "unreachable":
            recap.unreachable = True
            recap.error = result.message
        elif result.status == "failed":
            recap.failed += 1
            recap.error = result.message
            if not self.options.keep_going:
                self._stop = True
        elif result.status == "changed":
            recap.changed += 1
        elif result.status == "skipped":
            recap.skipped += 1
        else:
            recap.ok += 1
        self.reporter.task_result(result)

    def _fail_host(self, state: HostState, task: Task | None, message: str,
                   status: str = "failed") -> None:
        state.failed = message
        self._record(TaskResult(state.host.name, task, status, message))

    # facts ---------------------------------------------------------------
    def _play_hosts(self, play: Play) -> list[HostState]:
        names = {h.name for h in play_targets(self.inventory, play.hosts)}
        return [s for n, s in self.states.items() if n in names]

    def _task_requests(self, state: HostState, play: Play, role: Role, task: Task,
                       variables: dict) -> list[FactRequest]:
        try:
            args = self._render_args(task, role, variables, content=False)
            op = OPS[_op_name(task)]
            return list(op.requests(op.validate(args)))
        except (InputError, ValueError, KeyError, TypeError):
            return []  # depends on facts not gathered yet; planned after the first trip

    def _requests_for(self, state: HostState) -> set[FactRequest]:
        reqs = set(BASE_REQUESTS)
        for play in self.plays:
            if state.host.name not in {h.name for h in play_targets(self.inventory, play.hosts)}:
                continue
            for role in play.roles:
                variables = host_variables(state, self.states, self.inventory, role, play,
                                           self.options.extra_vars)
                for task in list(role.tasks) + list(role.handlers.values()):
                    reqs.update(self._task_requests(state, play, role, task, variables))
        return reqs

    def _gather(self, state: HostState, requests: set[FactRequest]) -> None:
        requests = set(requests) | set(BASE_REQUESTS)
        ordered = sorted(requests, key=lambda r: (r.kind, r.arg))
        script = build_script(ordered)
        res = state.conn.run(["bash", "-c", script], check=False)
        if res.exit_code != 0 and not res.stdout:
            raise HostError(state.host.name, f"fact gathering failed (exit {res.exit_code}): "
                            + res.stderr.strip()[-500:])
        try:
            state.facts = parse_output(res.stdout, ordered)
        except ValueError as exc:
            raise HostError(state.host.name, f"cannot parse facts: {exc}") from None
        state.gathered = set(requests)

    def _parallel(self, states: list[HostState], fn: Callable[[HostState], Any]) -> dict:
        out: dict[str, Any] = {}
        if not states:
            return out
        with ThreadPoolExecutor(max_workers=max(1, min(self.options.forks, len(states)))) as pool:
            futs = {s.host.name: pool.submit(fn, s) for s in states}
            for name, fut in futs.items():
                try:
                    out[name] = fut.result()
                except Exception as exc:  # noqa: BLE001 - per-host isolation
                    out[name] = exc
        return out

    def gather_all(self, states: list[HostState], *, first: bool = True) -> None:
        def one(state: HostState):
            reqs = self._requests_for(state) if first or not state.gathered else state.gathered
            self._gather(state, reqs)
            if first:  # facts a task needs that depend on other facts (a second trip, rare)
                more = self._requests_for(state) - state.gathered
                if more:
                    self._gather(state, state.gathered | more)
        for name, res in self._parallel([s for s in states if not s.failed], one).items():
            if isinstance(res, Exception):
                self._fail_host(self.states[name], None, _message(res),
                                status="unreachable")

    # planning ------------------------------------------------------------
    def _render_args(self, task: Task, role: Role, variables: dict, *,
                     content: bool = True) -> dict:
        """Task args rendered for this host. content=False leaves templates unrendered
        (what facts a task needs never depends on a template's text)."""
        args = task.args
        if args is None:
            args = {}
        if isinstance(args, str) and task.op in ("command",):
            args = {"argv": args}
        args = render_value(args, variables, source=task.file, line=task.line)
        if not isinstance(args, dict):
            raise InputError(f"{task.op}: arguments must be a mapping", file=task.file,
                             line=task.line)
        args = dict(args)
        if task.op == "template" or ("src" in args and task.op in ("file", "systemd_unit")):
            src = args.pop("src", None)
            if not src:
                raise InputError(f"{task.op}: `src` (a template) is required", file=task.file,
                                 line=task.line)
            args["content"] = render_file(self._find_template(role, str(src), task), variables,
                                          include_paths=[project_root() / "templates"]) \
                if content else ""
            if task.op == "template":
                args["path"] = args.pop("dest", args.get("path"))
        return args

    def _find_template(self, role: Role, src: str, task: Task) -> Path:
        for base in (role.templates_dir, project_root() / "templates"):
            if (base / src).is_file():
                return base / src
        raise InputError(f"template {src!r} not found in {role.templates_dir} or "
                         f"{project_root() / 'templates'}", file=task.file, line=task.line)

    def plan_task(self, state: HostState, play: Play, role: Role, task: Task) -> PlannedTask:
        variables = host_variables(state, self.states, self.inventory, role, play,
                                   self.options.extra_vars)
        if task.when is not None and not evaluate_condition(task.when, variables,
                                                            source=task.file, line=task.line):
            return PlannedTask(task, None, f"when: {task.when}")
        args = self._render_args(task, role, variables)
        op = OPS[_op_name(task)]
        try:
            args = op.validate(args)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{task.op}: {exc}", file=task.file, line=task.line) from None
        missing = set(op.requests(args)) - state.gathered
        if missing:  # a request that depended on facts: one more round trip, rare
            self._gather(state, state.gathered | missing)
        try:
            outcome = op.plan(state.facts, args)
        except ValueError as exc:  # ops.PlanError: the host's state cannot be planned
            raise HostError(state.host.name, f"{task.where}: {task.op}: {exc}") from None
        return PlannedTask(task, outcome, args=args)

    # execution -----------------------------------------------------------
    def _execute(self, state: HostState, change: Change) -> None:
        for step in change.steps:
            if isinstance(step, Upload):
                state.conn.put(step.content, step.path, mode=step.mode, owner=step.owner,
                               group=step.group)
            else:
                state.conn.run(step)

    def _outcome_result(self, state: HostState, planned: PlannedTask, *,
                        handler: bool = False) -> TaskResult:
        task, outcome = planned.task, planned.outcome
        start = time.monotonic()
        if outcome is None:
            return TaskResult(state.host.name, task, "skipped", planned.reason, handler=handler)
        if isinstance(outcome, Noop):
            return TaskResult(state.host.name, task, "ok", outcome.reason, handler=handler)
        message = outcome.summary
        if not self.options.check:
            try:
                self._execute(state, outcome)
            except ClusterctlError as exc:
                state.failed = str(exc)
                return TaskResult(state.host.name, task, "failed", _message(exc),
                                  outcome.diff, time.monotonic() - start, handler)
            state.changed_in_play = True
        elif not message.startswith("would "):
            message = "would " + message if message else "would change"
        return TaskResult(state.host.name, task, "changed", message,
                          outcome.diff if self.options.diff or self.options.check else None,
                          time.monotonic() - start, handler)

    def run_play(self, play: Play) -> None:
        states = [s for s in self._play_hosts(play) if not s.failed]
        self.reporter.play_start(play, [s.host.name for s in states])
        if not states:
            return
        for s in states:
            s.changed_in_play = False
        notified: dict[str, list[tuple[Role, Task]]] = {s.host.name: [] for s in states}
        started: dict[str, set[str]] = {s.host.name: set() for s in states}
        for role in play.roles:
            for task in role.tasks:
                if self._stop:
                    return
                live = [s for s in states if not s.failed]
                if not live:
                    return
                planned: dict[str, PlannedTask] = {}
                for name, res in self._parallel(
                        live, lambda s: self.plan_task(s, play, role, task)).items():
                    if isinstance(res, Exception):
                        self._fail_host(self.states[name], task, _message(res))
                    else:
                        planned[name] = res
                live = [s for s in live if not s.failed]
                executor = CLUSTER_EXECUTORS.get(_op_name(task))
                if executor and any(isinstance(p.outcome, Change) for p in planned.values()) \
                        and not self.options.check:
                    results = executor(self, play, role, task,
                                       [(s, planned[s.host.name]) for s in live])
                else:
                    results = self._parallel(
                        live, lambda s: self._outcome_result(s, planned[s.host.name]))
                for s in live:
                    res = results[s.host.name]
                    if isinstance(res, Exception):
                        state_msg = _message(res)
                        s.failed = state_msg
                        res = TaskResult(s.host.name, task, "failed", state_msg)
                    self._record(res)
                    if res.status == "changed" and not self.options.check:
                        started[s.host.name] |= _units_started(planned[s.host.name])
                    if res.status == "changed":
                        for h in task.notify:
                            entry = (role, role.handlers[h])
                            if entry not in notified[s.host.name]:
                                notified[s.host.name].append(entry)
        self._run_handlers(play, states, notified, started)

    def _run_handlers(self, play: Play, states: list[HostState],
                      notified: dict[str, list[tuple[Role, Task]]],
                      started: dict[str, set[str]]) -> None:
        def one(s: HostState):
            out = []
            for role, handler in notified[s.host.name]:
                if s.failed:
                    break
                try:
                    planned = self.plan_task(s, play, role, handler)
                except ClusterctlError as exc:
                    s.failed = _message(exc)
                    out.append(TaskResult(s.host.name, handler, "failed", s.failed,
                                          handler=True))
                    break
                outcome = planned.outcome
                if handler.op == "service" and isinstance(outcome, Change) and \
                        outcome.target in started[s.host.name]:
                    planned.outcome = Noop("service", outcome.target,
                                           f"{outcome.target} was started in this run with "
                                           "its current configuration")
                out.append(self._outcome_result(s, planned, handler=True))
            return out
        todo = [s for s in states if not s.failed and notified[s.host.name]]
        for name, res in self._parallel(todo, one).items():
            if isinstance(res, Exception):
                self._fail_host(self.states[name], None, _message(res))
                continue
            for r in res:
                self._record(r)

    def run(self) -> RunReport:
        start = time.monotonic()
        hosts = self.inventory.select(self.options.limit)
        for h in hosts:
            self.recap[h.name] = HostRecap()
        conns, errors = connect_all(hosts, accept_new_host_keys=self.options.accept_new_host_keys,
                                    forks=self.options.forks,
                                    connect_timeout=self.options.connect_timeout)
        try:
            for h in hosts:
                self.states[h.name] = HostState(h, conns.get(h.name))
                if h.name in errors:
                    self._fail_host(self.states[h.name], None, _message(errors[h.name]),
                                    status="unreachable")
            self.gather_all(list(self.states.values()), first=True)
            for i, play in enumerate(self.plays):
                if self._stop:
                    break
                if i > 0 and not self.options.check:
                    refresh = [s for s in self.states.values()
                               if s.changed_in_play and not s.failed]
                    self.gather_all(refresh, first=False)
                self.run_play(play)
        finally:
            close_all(conns)
        return RunReport(self.results, self.recap, self.options.check,
                         time.monotonic() - start,
                         {n: s.facts for n, s in self.states.items() if s.facts is not None})


def _units_started(planned: PlannedTask | None) -> set[str]:
    """Units a `service` change starts (so a restart handler right after is redundant)."""
    if planned is None or planned.task.op != "service" or not isinstance(planned.outcome, Change):
        return set()
    units = set()
    for step in planned.outcome.steps:
        if isinstance(step, list) and step[:1] == ["systemctl"] and \
                ("start" in step or "--now" in step):
            units.add(step[-1])
    return units


def play_targets(inventory, pattern: str) -> list:
    """Hosts of a play. `head` and `workers` always exist: the inventory's head and the
    other hosts, unless the inventory defines groups of those names itself."""
    if pattern not in inventory.groups and pattern not in inventory.hosts:
        if pattern == "head":
            return [inventory.head]
        if pattern == "workers":
            return list(inventory.workers)
    return inventory.select([pattern])


def _op_name(task: Task) -> str:
    return "file" if task.op == "template" else task.op


def _message(exc: BaseException) -> str:
    if isinstance(exc, HostError):
        # HostError prefixes the host name; the recap shows the host already
        prefix = f"{exc.host}: "
        text = str(exc)
        return text[len(prefix):] if text.startswith(prefix) else text
    if isinstance(exc, ClusterctlError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


#: ops whose changes are executed for all hosts together (e.g. safe MTU change with
#: verification across peers and rollback). Filled by engine modules.
CLUSTER_EXECUTORS: dict[str, Callable] = {}


def run_playbook(inventory, plays: list[Play], options: RunOptions | None = None,
                 reporter: Reporter | None = None) -> RunReport:
    return Runner(inventory, plays, options, reporter).run()
