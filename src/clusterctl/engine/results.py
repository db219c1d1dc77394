"""What a run produced: per-task results, the per-host recap, the run report.

Kept apart from the runner so cluster steps (safe MTU, llama.cpp build, Ray check)
build results without importing the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .roles import Play, Task


@dataclass
class TaskResult:
    host: str
    task: Task | None
    status: str                     # ok | changed | skipped | failed | unreachable
    message: str = ""
    diff: str | None = None
    elapsed: float = 0.0
    handler: bool = False
    commands: list[str] | None = None     # the change's exact steps, secrets *** (-vvv, JSON)

    @property
    def title(self) -> str:
        if self.task is None:
            return "connect"
        return f"{self.task.role} : {self.task.name}"

    def to_dict(self) -> dict:
        return {"host": self.host, "task": self.title, "status": self.status,
                "message": self.message, "diff": self.diff, "handler": self.handler,
                "elapsed": round(self.elapsed, 3),
                "where": self.task.where if self.task else None,
                "commands": self.commands}


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
    view: object = None                            # the session's ClusterView (last gathering)

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in self.recap.items() if r.failed or r.unreachable]

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.recap.values())

    @property
    def exit_code(self) -> int:
        """1 when a host failed, 3 when --check found changes pending, else 0."""
        if self.failed_hosts:
            return 1
        if self.check and self.changed:
            return 3
        return 0

    def to_dict(self) -> dict:
        return {"check": self.check, "exit_code": self.exit_code,
                "elapsed": round(self.elapsed, 3),
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
