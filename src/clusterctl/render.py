"""Terminal and JSON output of runs: plain lines off a terminal, rich on one."""
from __future__ import annotations

import json
import math
import sys
import threading

from rich.console import Console
from rich.table import Table

from .secret import to_jsonable

STATUS_STYLE = {"ok": "green", "changed": "yellow", "skipped": "cyan", "failed": "bold red",
                "unreachable": "bold red"}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class LineReporter:
    """One line per host and task; rich colours when on a terminal.

    verbosity 0 shows changed/failed/unreachable lines and one line per play;
    1 adds ok/skipped lines; 2 adds diffs even without --diff; 3 adds the exact
    commands of each change (also under --check; secrets as ***).
    """

    def __init__(self, out: Console | None = None, *, verbosity: int = 0, diff: bool = False,
                 quiet: bool = False):
        self.out = out or console()
        self.verbosity, self.diff, self.quiet = verbosity, diff, quiet
        self._lock = threading.Lock()

    def play_start(self, play, hosts):
        if self.quiet:
            return
        with self._lock:
            self.out.print(f"[bold]PLAY {play.name}[/bold] [dim]({len(hosts)} hosts)[/dim]")

    def progress(self, host: str, text: str) -> None:
        """A long step's progress (e.g. a build); shown unless quiet."""
        if self.quiet:
            return
        with self._lock:
            self.out.print(f"  [dim]…         {host:<16} {_esc(text)}[/dim]")

    def task_result(self, result):
        if self.quiet:
            return
        if result.status in ("ok", "skipped") and self.verbosity < 1:
            return
        style = STATUS_STYLE.get(result.status, "")
        label = "handler " if result.handler else ""
        text = f"  [{style}]{result.status:<9}[/{style}] {result.host:<16} {label}{result.title}"
        if result.message:
            first, *rest = result.message.splitlines()
            text += f" [dim]—[/dim] {_esc(first)}"
            if rest:
                text += "\n" + "\n".join("      " + _esc(r) for r in rest)
        with self._lock:
            self.out.print(text)
            if result.commands and self.verbosity >= 3:
                for cmd in result.commands:
                    self.out.print(f"      [cyan]$[/cyan] {_esc(cmd)}")
            if result.diff and (self.diff or self.verbosity >= 2):
                for line in result.diff.rstrip().splitlines():
                    st = "green" if line.startswith("+") else "red" if line.startswith("-") \
                        else "dim"
                    self.out.print(f"      [{st}]{_esc(line)}[/{st}]")


def _esc(text: str) -> str:
    return text.replace("[", "\\[")


def print_recap(report, out: Console | None = None) -> None:
    out = out or console()
    table = Table(title="RECAP" + (" (check mode: nothing was changed)" if report.check else ""),
                  title_justify="left", show_edge=False, pad_edge=False)
    for col in ("host", "ok", "changed", "failed", "skipped", "unreachable"):
        table.add_column(col, justify="left" if col == "host" else "right")
    for host, r in report.recap.items():
        table.add_row(host, f"[green]{r.ok}[/green]",
                      f"[yellow]{r.changed}[/yellow]" if r.changed else "0",
                      f"[red]{r.failed}[/red]" if r.failed else "0", str(r.skipped),
                      "[red]yes[/red]" if r.unreachable else "no")
    out.print(table)
    for host, r in report.recap.items():
        if r.error:
            out.print(f"[red]{host}[/red]: {_esc(r.error)}")
    out.print(f"[dim]{report.elapsed:.2f}s[/dim]")


JSON_SCHEMA_VERSION = 1


def _strict(value):
    """NaN and +-inf (not JSON) -> null; containers walked without recursion limits
    mattering for real reports (depth is bounded by the data the program built)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def print_json(data, file=None) -> None:
    """Strict JSON on stdout: Secrets masked, NaN/inf as null, and a dict payload
    carries "schema_version" (added first when the report does not set its own)."""
    data = to_jsonable(data)
    if isinstance(data, dict) and "schema_version" not in data:
        data = {"schema_version": JSON_SCHEMA_VERSION, **data}
    text = json.dumps(_strict(data), indent=2, default=str, allow_nan=False)
    out = file or sys.stdout
    out.write(text + "\n")
