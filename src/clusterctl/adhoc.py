"""Ad hoc work on the inventory's hosts: `clusterctl exec` and `clusterctl task`.

- `exec`: one command on every selected host, in parallel through the session (like
  `ansible -a` or `pyinfra exec`), per-host output and a recap.
- `task`: a user's own step written as a Fabric/invoke `@task` function in a tasks file
  (a fabfile), run against every selected host with the session's connections. The
  function gets a Fabric `Connection` (`c.run`, `c.sudo`, `c.put`, `c.get`). Under
  `--check` a task runs only if it declares a `check` parameter (it is then called with
  check=True and must not change the host); otherwise `--check` refuses it.
"""
from __future__ import annotations

import importlib.util
import inspect
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .session import Session


@dataclass
class HostOutcome:
    host: str
    status: str                  # ok | failed | unreachable
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    value: Any = None

    def to_dict(self) -> dict:
        return {"host": self.host, "status": self.status, "exit_code": self.exit_code,
                "stdout": self.stdout, "stderr": self.stderr, "message": self.message,
                "value": self.value if isinstance(self.value, (str, int, float, bool,
                                                                 type(None))) else
                repr(self.value)}


@dataclass
class AdhocReport:
    what: str
    outcomes: list[HostOutcome] = field(default_factory=list)
    check: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if any(o.status != "ok" for o in self.outcomes) else 0

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return {"what": self.what, "check": self.check, "exit_code": self.exit_code,
                "recap": counts, "hosts": [o.to_dict() for o in self.outcomes]}


def command_text(argv: list[str]) -> str:
    """One argument is a shell command line as written (like `ansible -a`); several are
    an argv, quoted."""
    if not argv:
        raise InputError("exec: no command given (clusterctl exec -- CMD ...)", key="CMD")
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def run_exec(session: Session, hosts: list, argv: list[str], *, timeout: float | None = None,
             check: bool = False) -> AdhocReport:
    text = command_text(argv)
    report = AdhocReport(text, check=check)
    if check:           # --check never runs code on a host
        report.outcomes = [HostOutcome(h.name, "ok", message=f"would run: {text}")
                           for h in hosts]
        return report

    def one(host):
        return session.connection(host).run(text, check=False, timeout=timeout)
    group = session.map(one, hosts, step="exec")
    for h in hosts:
        if h.name in group.succeeded:
            res = group.succeeded[h.name]
            report.outcomes.append(HostOutcome(h.name, "ok" if res.exit_code == 0 else
                                               "failed", res.exit_code, res.stdout,
                                               res.stderr))
        else:
            failure = group.failed[h.name]
            status = "unreachable" if failure.reason.startswith(("cannot connect",
                                                                 "timed out")) or \
                type(failure.exception).__name__ == "UnreachableError" else "failed"
            report.outcomes.append(HostOutcome(h.name, status, message=failure.reason))
    return report


# -- tasks files ----------------------------------------------------------------------

DEFAULT_TASK_FILES = ("tasks.py", "fabfile.py")


def find_tasks_file(given: str | None) -> Path:
    tried = [Path(given)] if given else [Path(n) for n in DEFAULT_TASK_FILES]
    for path in tried:
        if path.is_file():
            return path
    raise InputError("no tasks file; tried: " + ", ".join(str(p.absolute()) for p in tried)
                     + " (write @task functions in tasks.py, or give --tasks-file)",
                     key="--tasks-file")


def load_tasks(path: Path) -> dict[str, Any]:
    """The tasks of a tasks file: invoke/Fabric `@task` objects (and functions marked
    `clusterctl_task = True`), by name (underscores or dashes)."""
    spec = importlib.util.spec_from_file_location(f"clusterctl_user_tasks_{abs(hash(path))}",
                                                  path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot load {path} as Python", file=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise InputError(f"syntax error: {exc.msg}", file=str(path), line=exc.lineno,
                         column=exc.offset) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise InputError(f"importing it failed: {type(exc).__name__}: {exc}",
                         file=str(path)) from None
    finally:
        sys.path.pop(0)
    from invoke.tasks import Task as InvokeTask
    tasks = {}
    for name, value in vars(module).items():
        if isinstance(value, InvokeTask) or getattr(value, "clusterctl_task", False):
            tasks[name] = value
            tasks[name.replace("_", "-")] = value
    return tasks


def _body(task):
    return getattr(task, "body", task)


def accepts_check(task) -> bool:
    try:
        return "check" in inspect.signature(_body(task)).parameters
    except (TypeError, ValueError):
        return False


def run_task(session: Session, hosts: list, path: Path, name: str, *, check: bool = False,
             kwargs: dict | None = None) -> AdhocReport:
    tasks = load_tasks(path)
    if name not in tasks:
        listed = ", ".join(sorted({n for n in tasks if "_" not in n})) or "none"
        raise InputError(f"no task {name!r} in it (tasks: {listed})", file=str(path),
                         key="NAME")
    task = tasks[name]
    args = dict(kwargs or {})
    if check:
        if not accepts_check(task):
            raise InputError(f"task {name!r} does not declare a `check` parameter, so it "
                             "cannot promise to change nothing: run it without --check",
                             file=str(path), key="--check")
        args["check"] = True
    report = AdhocReport(f"task {name} ({path})", check=check)

    def one(host):
        conn = session.connection(host)
        return _body(task)(conn.fabric, **args)
    group = session.map(one, hosts, step=f"task {name}")
    for h in hosts:
        if h.name in group.succeeded:
            report.outcomes.append(HostOutcome(h.name, "ok", value=group.succeeded[h.name]))
        else:
            failure = group.failed[h.name]
            exc = failure.exception
            message = failure.reason
            result = getattr(exc, "result", None)     # invoke's UnexpectedExit
            if result is not None and hasattr(result, "exited"):
                message = (f"command failed (exit {result.exited}): {result.command}\n"
                           + "\n".join("    " + ln for ln in
                                       (result.stderr or "").rstrip().splitlines()[-10:]))
            report.outcomes.append(HostOutcome(h.name, "failed", message=message))
    return report


def render(report: AdhocReport, out) -> None:
    """Per host, Ansible's ad hoc style: `host | STATUS | rc=N >>` and the output."""
    from rich.markup import escape
    styles = {"ok": "green", "failed": "red", "unreachable": "bold red"}
    for o in report.outcomes:
        st = styles.get(o.status, "")
        rc = f" | rc={o.exit_code}" if o.exit_code is not None else ""
        out.print(f"[{st}]{o.host} | {o.status.upper()}{rc}[/{st}] >>")
        for text in (o.stdout, o.stderr, o.message,
                     "" if o.value is None else repr(o.value)):
            if text:
                out.print(escape(text.rstrip("\n")))
    counts = report.to_dict()["recap"]
    out.print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no hosts")


__all__ = ["run_exec", "run_task", "render", "AdhocReport", "HostOutcome", "load_tasks",
           "find_tasks_file", "command_text"]
