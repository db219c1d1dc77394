"""Plan and execute playbooks over hosts.

A run: connect to every host (parallel) -> gather facts (ONE round trip per host,
for every task of every play) -> plan every task from facts (pure ops) -> execute
changes task by task, hosts in parallel (a failing host stops alone) -> handlers
once per play -> recap. A play that changed a host refreshes its facts before the
next play is planned. Under --check nothing is executed: the plan is the report.
"""
from __future__ import annotations

import contextlib
import gc
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ClusterctlError, HostError, InputError
from ..facts import BASE_REQUESTS, FactRequest, Facts, build_script, parse_output
from ..ops import OPS, Change, Noop, Upload
from ..remote import Connection
from ..session import ClusterView, Session, failure_reason
from . import build, debs, mtu, raycheck, wheels
from .results import (HostRecap, Reporter, RunReport, TaskResult,  # noqa: F401 (re-exported)
                      _NullReporter)
from .roles import Play, Role, Task
from ..ops.base import mask_outcome
from .templating import (RenderCache, evaluate_condition, file_dependencies, find_template,
                         is_templated, render_cache_enabled, render_file, render_value,
                         revealed_any, text_dependencies, tracking_reveals,
                         value_dependencies)


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
    tags: set = field(default_factory=set)          # --tags
    skip_tags: set = field(default_factory=set)     # --skip-tags
    #: memoize renders across hosts (templating.RenderCache); None: unless the
    #: environment sets CLUSTERCTL_RENDER_CACHE=0
    render_cache: bool | None = None


@dataclass
class HostState:
    host: Any
    conn: Connection | None
    facts: Facts | None = None
    gathered: set = field(default_factory=set)
    failed: str | None = None
    changed_in_play: bool = False


#: seconds one host may take to answer the fact script: a node whose path stalls larger
#: packets (a jumbo-frame black hole) is cut and named instead of being waited on
FACTS_DEADLINE = 90.0


class NeedFacts(Exception):
    """Planning a task needs facts whose request depended on other facts."""

    def __init__(self, requests: set):
        super().__init__(", ".join(sorted(str(r) for r in requests)))
        self.requests = requests


@dataclass
class PlannedTask:
    task: Task
    outcome: Change | Noop | None     # None: skipped by `when`
    reason: str = ""                  # skip reason
    args: dict | None = None
    shown: list[str] | None = None    # the change's steps as shown (secrets ***)


# -- memoized plans -----------------------------------------------------------

class _RecordingFacts(Facts):
    """Facts that note every read (fact, exit code, presence) of one op's plan, so the
    plan can be reused for a host whose facts give the same answers to those reads."""

    def __init__(self, inner: Facts):      # noqa: D107 - no Facts.__init__: nothing copied
        self._inner = inner
        self.reads: list[tuple[str, FactRequest, Any]] = []
        self.opaque = False

    def get(self, req):
        value = self._inner.get(req)
        self.reads.append(("get", req, value))
        return value

    def exit_code(self, req):
        value = self._inner.exit_code(req)
        self.reads.append(("rc", req, value))
        return value

    def __contains__(self, req):
        value = req in self._inner
        self.reads.append(("in", req, value))
        return value

    @property
    def _values(self):                     # a read of everything: not replayable
        self.opaque = True
        return self._inner._values

    @property
    def _rcs(self):
        self.opaque = True
        return self._inner._rcs

    @property
    def requests(self):
        self.opaque = True
        return self._inner.requests

    def merged(self, other):
        self.opaque = True
        return self._inner.merged(other)


class PlanMemo:
    """op.plan(facts, args) once per task, args object and answers of the facts it read
    (ops are pure: what they return depends on the args and those reads only). Only the
    ops of clusterctl.ops, not the cluster steps; never a plan made while a secret was
    revealed. The outcome is then shared between hosts: read-only, as the args."""

    PROBATION = 64      # plans of a task after which one that keeps missing stops
    MAX_ARGS = 64       # args objects kept per task
    MAX_ENTRIES = 16    # plans kept per args object

    def __init__(self, cache: RenderCache):
        self.cache = cache
        self._sites: dict[int, list] = {}      # id(task) -> [hits, misses, off, {id(args):
        #                                          (args, [(reads, outcome)])}]
        self._kept: dict[int, tuple] = {}      # id(outcome) -> (outcome, shown or None)

    @staticmethod
    def _read(facts, kind: str, req):
        if kind == "get":
            return facts.get(req)
        if kind == "rc":
            return facts.exit_code(req)
        return req in facts

    def plan(self, task: Task, op, facts, args: dict):
        if not self.cache.enabled or not type(op).__module__.startswith("clusterctl.ops.") \
                or _op_name(task) in CLUSTER_STEPS or revealed_any():
            return op.plan(facts, args)
        site = self._sites.get(id(task))
        if site is None:
            site = self._sites[id(task)] = [0, 0, False, {}]
        if site[2]:
            return op.plan(facts, args)
        token = self.cache._token
        held = site[3].get(id(args))
        if held is not None and held[0] is args:
            for reads, outcome in held[1]:
                try:
                    same = all(token(self._read(facts, kind, req)) == tok
                               for kind, req, tok in reads)
                except Exception:  # noqa: BLE001 - not gathered here: plan it, let it say so
                    break
                if same:
                    site[0] += 1
                    return outcome
        recorder = _RecordingFacts(facts)
        outcome = op.plan(recorder, args)
        site[1] += 1
        if site[1] >= self.PROBATION and site[0] * 4 < site[1]:
            site[2] = True                          # keeps missing: plan afresh
            for _args, entries in site[3].values():
                for _reads, kept in entries:
                    self._kept.pop(id(kept), None)
            site[3].clear()
            return outcome
        if recorder.opaque:
            return outcome
        if held is None or held[0] is not args:
            if len(site[3]) >= self.MAX_ARGS:
                return outcome
            held = site[3][id(args)] = (args, [])
        if len(held[1]) < self.MAX_ENTRIES:
            held[1].append((tuple((kind, req, token(value))
                                  for kind, req, value in recorder.reads), outcome))
            self._kept[id(outcome)] = (outcome, None)
        return outcome

    def shown(self, outcome) -> list[str] | None:
        """The steps as shown of a plan shared between hosts, once made."""
        held = self._kept.get(id(outcome))
        return held[1] if held is not None and held[0] is outcome else None

    def keep_shown(self, outcome, shown: list[str]) -> None:
        """Keep the shown steps of a shared plan (made where no secret was revealed)."""
        held = self._kept.get(id(outcome))
        if held is not None and held[0] is outcome:
            self._kept[id(outcome)] = (outcome, shown)


# -- derived variables ------------------------------------------------------

def host_variables(state: HostState, view: ClusterView | None, inventory,
                   role: Role | None, play: Play | None, extra: dict, *,
                   cache: RenderCache | None = None) -> dict:
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
    own = view.hosts.get(host.name) if view is not None else None
    if state.facts is not None and own is not None:
        variables["facts"] = state.facts
        variables["cluster_iface"] = own.cluster_iface
        variables["cluster_ip"] = own.cluster_ip
        variables["gpu_count"] = own.gpus
        head = view.head_entry()
        if head is not None:
            variables["head"] = head
        variables["peers"] = view.peers(host.name)
    if role is not None:  # role defaults may refer to other variables (one level)
        for key, value in role.defaults.items():
            if variables.get(key) is value and isinstance(value, str) and "{{" in value:
                def render(value=value):
                    return render_value(value, variables, source=str(role.path / "defaults.yaml"))
                try:
                    # memoized, failures too: a failure only leaves the default unrendered
                    variables[key] = render() if cache is None else cache.memoized(
                        ("default", key, value), text_dependencies(value), variables,
                        render, failures=True)
                except InputError:
                    pass  # needs facts not gathered yet; the task using it will say so
    return variables


# -- the runner ---------------------------------------------------------------

class Runner:
    def __init__(self, inventory, plays: list[Play], options: RunOptions | None = None,
                 reporter: Reporter | None = None, session: Session | None = None):
        self.inventory = inventory
        self.plays = plays
        self.options = options or RunOptions()
        self.reporter = reporter or _NullReporter()
        self.session = session or Session(
            inventory, forks=self.options.forks,
            accept_new_host_keys=self.options.accept_new_host_keys,
            connect_timeout=self.options.connect_timeout)
        self._own_session = session is None
        self.view: ClusterView | None = None
        self._vars_cache: dict[tuple, tuple] = {}
        enabled = self.options.render_cache
        self.render_cache = RenderCache(render_cache_enabled() if enabled is None else enabled)
        self._task_deps: dict[tuple, Any] = {}
        self._group_deps: dict[tuple, Any] = {}
        self._plans = PlanMemo(self.render_cache)
        self._templates: dict[tuple, Path] = {}
        self._play_names: dict[int, set[str]] = {}
        self._deferred: dict[str, list] = {}
        self.results: list[TaskResult] = []
        self.recap: dict[str, HostRecap] = {}
        self.states: dict[str, HostState] = {}
        self.warnings: list[str] = []      # role variables close to declared names
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
    def _targets(self, play: Play) -> set[str]:
        """Names of a play's hosts, resolved once per run."""
        names = self._play_names.get(id(play))
        if names is None:
            names = self._play_names[id(play)] = {
                h.name for h in play_targets(self.inventory, play.hosts)}
        return names

    def _play_hosts(self, play: Play) -> list[HostState]:
        names = self._targets(play)
        return [s for n, s in self.states.items() if n in names]

    def _task_requests(self, state: HostState, play: Play, role: Role, task: Task,
                       variables: dict) -> list[FactRequest] | None:
        """The facts a task asks for on this host; None while they depend on facts not
        gathered yet (computed again after the first trip)."""
        try:
            return list(self._prepare(task, role, variables, content=False)[1])
        except (InputError, ValueError, KeyError, TypeError):
            return None

    def _variables(self, state: HostState, play: Play | None, role: Role | None) -> dict:
        """host_variables, computed once per host, play and role while its facts and
        the cluster view stay the same (planning is then linear in tasks x hosts)."""
        key = (state.host.name, id(play), id(role))
        stamp = (id(state.facts), id(self.view))
        hit = self._vars_cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        variables = host_variables(state, self.view, self.inventory, role, play,
                                   self.options.extra_vars, cache=self.render_cache)
        self._vars_cache[key] = (stamp, variables)
        return variables

    def plan_all(self, states: list[HostState], play: Play, role: Role, task: Task
                 ) -> dict[str, PlannedTask | Exception]:
        """Plan a task on every host. Planning is pure and runs here, in one thread (no
        pool: threads only add cost to CPU work); a host whose task asks for facts that
        depended on other facts gets them in one parallel round trip, then is planned."""
        out: dict[str, PlannedTask | Exception] = {}
        need: dict[str, set] = {}
        for s in states:
            try:
                out[s.host.name] = self.plan_task(s, play, role, task)
            except NeedFacts as more:
                need[s.host.name] = more.requests
            except Exception as exc:  # noqa: BLE001 - per-host isolation
                out[s.host.name] = exc
        if need:
            todo = [s for s in states if s.host.name in need]
            fetched = self.map(todo, lambda s: self._gather(s, need[s.host.name], merge=True),
                               step="facts")
            for s in todo:
                if isinstance(fetched[s.host.name], Exception):
                    out[s.host.name] = fetched[s.host.name]
                    continue
                try:
                    out[s.host.name] = self.plan_task(s, play, role, task)
                except Exception as exc:  # noqa: BLE001 - per-host isolation
                    out[s.host.name] = exc
        return {s.host.name: out[s.host.name] for s in states}

    def _requests_for(self, state: HostState, only: list | None = None) -> set[FactRequest]:
        """Requests of every task the host runs (or of the `only` (play, role, task)
        left over from the first pass); tasks that could not say yet are remembered."""
        reqs = set(BASE_REQUESTS)
        deferred = []
        if only is None:
            groups = [(play, role, self._role_tasks(role)) for play in self.plays
                      if state.host.name in self._targets(play) for role in play.roles]
        else:
            by_role: dict[tuple, tuple] = {}
            for play, role, task in only:
                group = by_role.setdefault((id(play), id(role)), (play, role, []))
                group[2].append(task)
            groups = [(play, role, tuple(tasks)) for play, role, tasks in by_role.values()]
        for play, role, tasks in groups:
            got, failed = self._group_requests(state, play, role, tasks)
            reqs.update(got)
            deferred.extend((play, role, task) for task in failed)
        self._deferred[state.host.name] = deferred
        return reqs

    def _role_tasks(self, role: Role) -> tuple:
        """A role's tasks and handlers, once per run."""
        key = (id(role), "tasks")
        tasks = self._templates.get(key)
        if tasks is None:
            tasks = self._templates[key] = tuple(role.tasks) + tuple(role.handlers.values())
        return tasks

    def _group_requests(self, state: HostState, play: Play, role: Role, tasks: tuple
                        ) -> tuple[frozenset, tuple]:
        """(requests, tasks that cannot say yet) of some tasks of one role on a host:
        once per distinct value of what all their arguments read (RenderCache)."""
        variables = self._variables(state, play, role)
        ids = tuple(id(t) for t in tasks)
        deps = self._group_deps.get(ids)
        if deps is None and ids not in self._group_deps:
            found: set = set()
            for task in tasks:
                more = self._dependencies(task, role, False)
                if more is None:
                    found = None
                    break
                found.update(more)
            deps = self._group_deps[ids] = None if found is None else tuple(sorted(found))

        def compute():
            got: set = set()
            failed = []
            for task in tasks:
                one = self._task_requests(state, play, role, task, variables)
                if one is None:
                    failed.append(task)
                else:
                    got.update(one)
            return frozenset(got), tuple(failed)
        return self.render_cache.memoized(("requests", id(play), ids), deps, variables,
                                          compute)

    def _gather(self, state: HostState, requests: set[FactRequest], *,
                merge: bool = False) -> None:
        """One round trip. merge=True asks only for `requests` and keeps the rest."""
        requests = set(requests) if merge else set(requests) | set(BASE_REQUESTS)
        ordered = sorted(requests, key=lambda r: (r.kind, r.arg))
        script = build_script(ordered)
        res = state.conn.run(["bash", "-c", script], check=False)
        if res.exit_code != 0 and not res.stdout:
            raise HostError(state.host.name, f"fact gathering failed (exit {res.exit_code}): "
                            + res.stderr.strip()[-500:])
        try:
            facts = parse_output(res.stdout, ordered)
        except ValueError as exc:
            raise HostError(state.host.name, f"cannot parse facts: {exc}") from None
        if merge and state.facts is not None:
            state.facts = state.facts.merged(facts)
            state.gathered |= requests
        else:
            state.facts = facts
            state.gathered = set(requests)

    def map(self, states: list[HostState], fn: Callable[[HostState], Any], *,
            step: str = "", deadline: float | None = None) -> dict:
        """fn over host states through the session's bounded map: name -> value, or the
        exception that host failed with."""
        group = self.session.map(fn, states, step=step, deadline=deadline)
        out = {}
        for s in states:
            name = s.host.name
            failure = group.failed.get(name)
            if failure is not None and failure.reason.startswith("timed out"):
                out[name] = HostError(name, failure.reason)   # cut: say what it was doing
            else:
                out[name] = group.outcome(name)
        return out

    def _refresh_view(self) -> None:
        self.view = ClusterView.build(
            self.inventory, {n: s.facts for n, s in self.states.items() if s.facts is not None})

    def gather_all(self, states: list[HostState], *, first: bool = True) -> None:
        """Facts of every host in one round trip each. On the first gathering, a host
        whose tasks ask for facts that depend on other facts (a file under the cluster
        NIC's networkd file, say) gets one more trip for just those."""
        live = [s for s in states if not s.failed]
        wanted = {s.host.name: self._requests_for(s) if first or not s.gathered
                  else s.gathered for s in live}          # pure: here, not in threads
        self._record_failures(self.map(live, lambda s: self._gather(s, wanted[s.host.name]),
                                       step="gathering facts", deadline=FACTS_DEADLINE),
                              status="unreachable")
        self._refresh_view()
        if not first:
            return
        needs_more = {}
        for s in live:
            if s.failed or s.facts is None:
                continue
            more = self._requests_for(s, self._deferred.get(s.host.name, [])) - s.gathered
            if more:
                needs_more[s.host.name] = more
        if needs_more:
            todo = [s for s in live if s.host.name in needs_more]
            self._record_failures(
                self.map(todo, lambda s: self._gather(s, needs_more[s.host.name], merge=True),
                         step="facts"), status="unreachable")
            self._refresh_view()

    def _record_failures(self, results: dict, *, status: str = "failed") -> None:
        for name, res in results.items():
            if isinstance(res, Exception):
                self._fail_host(self.states[name], None, _message(res), status=status)

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
        args = render_value(args, variables, source=task.file, line=task.line,
                            cache=self.render_cache)
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
                                          include_paths=self._template_folders(role),
                                          origin=task.where, cache=self.render_cache) \
                if content else ""
            if task.op == "template":
                args["path"] = args.pop("dest", args.get("path"))
        return args

    def _find_template(self, role: Role, src: str, task: Task) -> Path:
        """The template file, confined to the role's and the project's templates folders
        (looked up once per role and name in a run)."""
        key = (id(role), src)
        path = self._templates.get(key)
        if path is None:
            path = self._templates[key] = find_template(src, self._template_folders(role),
                                                        file=task.file, line=task.line)
        return path

    def _template_folders(self, role: Role) -> list[Path]:
        """role.template_folders, once per role in a run."""
        key = (id(role), "folders")
        folders = self._templates.get(key)
        if folders is None:
            folders = self._templates[key] = role.template_folders
        return folders

    def _dependencies(self, task: Task, role: Role, content: bool):
        """What a task's rendered and validated arguments depend on (templating's
        attribute paths), or None where they cannot be memoized."""
        key = (id(task), content)
        if key in self._task_deps:
            return self._task_deps[key]
        deps = value_dependencies(task.args)
        args = task.args
        if deps is not None and content and isinstance(args, dict) and (
                task.op == "template" or ("src" in args and task.op in ("file",
                                                                        "systemd_unit"))):
            src = args.get("src")
            if not isinstance(src, str) or not src or is_templated(src):
                deps = None                  # the file is known after rendering only
            else:
                try:
                    path = self._find_template(role, src, task)
                except InputError:
                    deps = None              # the fresh render reports it
                else:
                    more = file_dependencies(path, self._template_folders(role))
                    deps = None if more is None else tuple(sorted(set(deps) | set(more)))
        self._task_deps[key] = deps
        return deps

    def _prepare(self, task: Task, role: Role, variables: dict, *, content: bool = True
                 ) -> tuple[dict, tuple]:
        """(validated args, fact requests) of a task for these variables, computed once
        per distinct value of what its templates read (RenderCache). The args are
        shared between hosts: read-only."""
        def compute():
            args = self._render_args(task, role, variables, content=content)
            op = OPS[_op_name(task)]
            try:
                args = op.validate(args)
            except (ValueError, TypeError) as exc:
                raise InputError(f"{task.op}: {exc}", file=task.file, line=task.line) from None
            return args, tuple(op.requests(args))
        # without content, only for the fact requests: a failure (a variable that needs
        # facts not gathered yet) is kept too, the caller only asks whether it failed
        return self.render_cache.memoized(("task", id(task), content),
                                          self._dependencies(task, role, content),
                                          variables, compute, failures=not content)

    def plan_task(self, state: HostState, play: Play, role: Role, task: Task) -> PlannedTask:
        """Plan one task for one host. A secret its templates reveal reaches the host (the
        steps) but shows as *** in the diff, summary, reason and any error message."""
        with tracking_reveals() as masker:
            planned = self._plan_task(state, play, role, task)
        if isinstance(planned.outcome, Change):     # the exact commands, as shown (-vvv)
            shown = None if masker else self._plans.shown(planned.outcome)
            if shown is None:
                shown = [masker.mask(_show_step(step)) if masker else _show_step(step)
                         for step in planned.outcome.steps]
                if not masker:
                    self._plans.keep_shown(planned.outcome, shown)
            planned.shown = list(shown)
        if planned.outcome is not None:
            planned.outcome = mask_outcome(planned.outcome, masker)
        return planned

    def _plan_task(self, state: HostState, play: Play, role: Role, task: Task) -> PlannedTask:
        variables = self._variables(state, play, role)
        if task.when is not None and not evaluate_condition(task.when, variables,
                                                            source=task.file, line=task.line,
                                                            cache=self.render_cache):
            return PlannedTask(task, None, f"when: {task.when}")
        args, requests = self._prepare(task, role, variables)
        op = OPS[_op_name(task)]
        missing = set(requests) - state.gathered
        if missing:  # a request that depended on facts: one more round trip, rare
            raise NeedFacts(missing)
        try:
            outcome = self._plans.plan(task, op, state.facts, args)
        except ValueError as exc:  # ops.PlanError: the host's state cannot be planned
            raise HostError(state.host.name, f"{task.where}: {task.op}: {exc}") from None
        return PlannedTask(task, outcome, args=args)

    # execution -----------------------------------------------------------
    def execute_change(self, state: HostState, change: Change) -> None:
        for step in change.steps:
            if isinstance(step, Upload):
                state.conn.put(step.content, step.path, mode=step.mode, owner=step.owner,
                               group=step.group)
            else:
                state.conn.run(step)

    def outcome_result(self, state: HostState, planned: PlannedTask, *,
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
                self.execute_change(state, outcome)
            except ClusterctlError as exc:
                state.failed = str(exc)
                return TaskResult(state.host.name, task, "failed", _message(exc),
                                  outcome.diff, time.monotonic() - start, handler)
            state.changed_in_play = True
        elif not message.startswith("would "):
            message = "would " + message if message else "would change"
        return TaskResult(state.host.name, task, "changed", message,
                          outcome.diff if self.options.diff or self.options.check else None,
                          time.monotonic() - start, handler, commands=planned.shown)

    def results_of(self, states: list[HostState], planned: dict[str, PlannedTask]) -> dict:
        """Results of planned tasks: the hosts with changes to make (not --check) run
        them in parallel; skipped, unchanged and --check results need no I/O."""
        act = [s for s in states if isinstance(planned[s.host.name].outcome, Change)
               and not self.options.check]
        task = planned[act[0].host.name].task if act else None     # one task for all
        group = self.session.map(
            lambda s: self.outcome_result(s, planned[s.host.name]), act,
            step=f"{task.role} : {task.name} ({task.where})" if task else "",
            deadline=getattr(OPS.get(_op_name(task)), "deadline", None) if task else None)
        results: dict = {}
        for s in act:
            name = s.host.name
            res = group.outcome(name)
            cut = group.cut.get(name)
            if cut and isinstance(res, TaskResult) and res.status == "failed":
                res.message = f"{cut} ({res.message})"          # say what it was doing
                s.failed = res.message
            elif cut and isinstance(res, Exception):
                res = HostError(name, f"{cut} ({_message(res)})")
            results[name] = res
        for s in states:
            if s.host.name not in results:
                results[s.host.name] = self.outcome_result(s, planned[s.host.name])
        return {s.host.name: results[s.host.name] for s in states}

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
                if not task.selected(self.options.tags, self.options.skip_tags):
                    continue
                live = [s for s in states if not s.failed]
                if not live:
                    return
                planned: dict[str, PlannedTask] = {}
                for name, res in self.plan_all(live, play, role, task).items():
                    if isinstance(res, Exception):
                        self._fail_host(self.states[name], task, _message(res))
                    else:
                        planned[name] = res
                live = [s for s in live if not s.failed]
                step = CLUSTER_STEPS.get(_op_name(task))
                if step is not None and (task.op in ALWAYS_STEPS or (
                        any(isinstance(p.outcome, Change) for p in planned.values())
                        and not self.options.check)):
                    results = step(self, play, role, task,
                                   [(s, planned[s.host.name]) for s in live])
                    for name, res in results.items():   # a step may fail hosts it checked
                        if isinstance(res, TaskResult) and res.status == "failed":
                            self.states[name].failed = res.message
                else:
                    results = self.results_of(live, planned)
                for s in live:
                    res = results[s.host.name]
                    if isinstance(res, Exception):
                        state_msg = _message(res)
                        s.failed = state_msg
                        res = TaskResult(s.host.name, task, "failed", state_msg)
                    self._record(res)
                    if res.status == "changed":   # also under --check: the plan is exact
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
                    try:
                        planned = self.plan_task(s, play, role, handler)
                    except NeedFacts as more:      # this thread is the host's: fetch here
                        self._gather(s, more.requests, merge=True)
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
                out.append(self.outcome_result(s, planned, handler=True))
            return out
        todo = [s for s in states if not s.failed and notified[s.host.name]]
        for name, res in self.map(todo, one).items():
            if isinstance(res, Exception):
                self._fail_host(self.states[name], None, _message(res))
                continue
            for r in res:
                self._record(r)

    def run(self) -> RunReport:
        with _lighter_gc():
            return self._run()

    def _run(self) -> RunReport:
        start = time.monotonic()
        hosts = self.inventory.select(self.options.limit)
        # role variables against the roles' argument_specs.yaml, before any connection
        from .specs import check_plays
        self.warnings = check_plays(self.inventory, self.plays, hosts,
                                    extra_vars=self.options.extra_vars, targets=self._targets)
        for h in hosts:
            self.recap[h.name] = HostRecap()
        try:
            connected = self.session.connect(hosts)
            for h in hosts:
                self.states[h.name] = HostState(h, connected.succeeded.get(h.name))
                if h.name in connected.failed:
                    self._fail_host(self.states[h.name], None, connected.failed[h.name].reason,
                                    status="unreachable")
            # a jumbo-frame black hole stalls SSH on large packets: name it, not wait
            for name, why in mtu.check_paths(self, list(self.states.values())).items():
                self._fail_host(self.states[name], None, why)
            self.gather_all(list(self.states.values()), first=True)
            for i, play in enumerate(self.plays):
                if self._stop:
                    break
                if i > 0 and not self.options.check:
                    refresh = [s for s in self.states.values()
                               if s.changed_in_play and not s.failed]
                    if refresh:
                        self.gather_all(refresh, first=False)
                self.run_play(play)
        finally:
            if self._own_session:
                self.session.close()
        return RunReport(self.results, self.recap, self.options.check,
                         time.monotonic() - start,
                         {n: s.facts for n, s in self.states.items() if s.facts is not None},
                         view=self.view)


_GC_LOCK = threading.Lock()
_GC_RUNS = [0, None]         # runs in progress, thresholds before the first


@contextlib.contextmanager
def _lighter_gc():
    """During a run: what existed before it (inventory, roles, modules) is left out of
    the cyclic collector's full passes (gc.freeze) and young collections are rarer.
    Planning keeps many objects alive per host; with the default settings the collector
    took a quarter of the CPU of planning 3,000 simulated hosts (bench_scale). Nested or
    concurrent runs: the first sets, the last restores."""
    with _GC_LOCK:
        _GC_RUNS[0] += 1
        if _GC_RUNS[0] == 1:
            _GC_RUNS[1] = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_GC_RUNS[1][0], 20000), *(max(t, 50)
                                                          for t in _GC_RUNS[1][1:]))
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_RUNS[0] -= 1
            if _GC_RUNS[0] == 0:
                gc.set_threshold(*_GC_RUNS[1])
                gc.unfreeze()


def _show_step(step) -> str:
    """A step as a person reads it: the shell command, or what an upload writes."""
    if isinstance(step, Upload):
        mode = f", mode {step.mode:o}" if step.mode is not None else ""
        return f"write {step.path} ({len(step.content)} bytes{mode})"
    return shlex.join(str(a) for a in step)       # a Secret shows as ***


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


_message = failure_reason

#: ops executed for all hosts of a task together, by the engine: safe MTU (raise,
#: verify across peers, roll back), the llama.cpp build (once per node class, then
#: copied), the Ray cluster check, pip and package with fan_out (staged once on the
#: controller, sent through the relay chain). Each: (runner, play, role, task, [(state, planned)])
#: -> {host: TaskResult}.
CLUSTER_STEPS: dict[str, Callable] = {
    "link_mtu": mtu.execute_safe_mtu,
    "llamacpp_build": build.execute_llamacpp,
    "ray_cluster": raycheck.execute,
    "pip": wheels.execute_pip,
    "package": debs.execute_package,
}
#: cluster steps that run even when nothing changed (checks; jumbo frames of hosts
#: already at the target MTU)
ALWAYS_STEPS = {"ray_cluster", "link_mtu"}


def run_playbook(inventory, plays: list[Play], options: RunOptions | None = None,
                 reporter: Reporter | None = None, session: Session | None = None) -> RunReport:
    return Runner(inventory, plays, options, reporter, session).run()
