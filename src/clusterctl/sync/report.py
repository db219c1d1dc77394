"""The result of a sync (per node: state, what travelled, how it was checked), its JSON
form and its terminal rendering; and the progress snapshots a sync reports while it runs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EXIT_HOST_FAILED, EXIT_OK
from ..secret import to_jsonable
from .manifest import Manifest
from .plan import human_bytes

# node states
PENDING, UNCHANGED, SYNCED, FAILED = "pending", "unchanged", "synced", "failed"


@dataclass
class NodeReport:
    name: str
    state: str = PENDING               # unchanged | synced | failed
    files: int = 0                     # files in the manifest
    files_sent: int = 0                # files written and verified in this run
    bytes_received: int = 0            # bytes written to disk in this run
    bytes_resumed: int = 0             # bytes kept from partial files of an earlier run
    check: str = "size+mtime"          # how files not sent were found identical
    needed_bytes: int | None = None    # disk space the first round needed
    available_bytes: int | None = None
    error: str | None = None
    attempts: int = 0                  # rounds this node took part in
    cpu_seconds: float = 0.0           # CPU time of this node's relay (hash, write, forward)
    relay_bytes: int = 0               # stream bytes its relay received (and forwarded)

    @property
    def cpu_seconds_per_gb(self) -> float | None:
        """The relay's CPU cost per GB (10^9 bytes) of stream it handled."""
        if self.relay_bytes < 1_000_000:
            return None
        return round(self.cpu_seconds / (self.relay_bytes / 1e9), 3)

    @property
    def ok(self) -> bool:
        return self.state in (UNCHANGED, SYNCED)


@dataclass
class RoundReport:
    number: int
    chain: str                         # "controller -> a -> b"
    files: int
    stream_bytes: int
    seconds: float
    feeder_error: str | None = None


@dataclass
class SyncReport:
    source: str
    name: str
    destination: str                   # the same absolute path on every node
    manifest: Manifest
    nodes: dict[str, NodeReport] = field(default_factory=dict)
    rounds: list[RoundReport] = field(default_factory=list)
    controller_bytes: int = 0          # bytes the controller itself sent
    seconds: float = 0.0
    verify: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes.values())

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.nodes.items() if not r.ok]

    def lost(self, name: str) -> str | None:
        """Why node `name` does not hold the files after this sync; None when it does."""
        r = self.nodes.get(name)
        if r is None:
            return "not reached"
        return None if r.ok else (r.error or r.state)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_HOST_FAILED

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "ok": self.ok,
            "source": self.source,
            "name": self.name,
            "destination": self.destination,
            "verify": self.verify,
            "files": len(self.manifest.files),
            "total_bytes": self.manifest.total_bytes,
            "seconds": round(self.seconds, 3),
            "controller_bytes": self.controller_bytes,
            "failed": self.failed,
            "nodes": {n: dict(asdict(r), cpu_seconds_per_gb=r.cpu_seconds_per_gb)
                      for n, r in self.nodes.items()},
            "rounds": [asdict(r) for r in self.rounds],
            "warnings": self.warnings,
            "manifest": self.manifest.to_dict(),
        })


def to_json(report: SyncReport) -> str:
    return json.dumps(report.to_dict(), indent=2)


def render(report: SyncReport, out) -> None:
    """A table per node and one line per failure (rich Console `out`)."""
    from rich.table import Table

    total = report.manifest.total_bytes
    out.print(f"[bold]{report.name}[/bold]: {len(report.manifest.files)} files, "
              f"{human_bytes(total)} from {_esc(report.source)} to {report.destination} "
              f"in {report.seconds:.1f}s")
    for r in report.rounds:
        rate = r.stream_bytes / r.seconds if r.seconds > 0 else 0
        out.print(f"  round {r.number}: {_esc(r.chain)}: {r.files} files, "
                  f"{human_bytes(r.stream_bytes)} at {human_bytes(rate)}/s"
                  + (f" [red](feeder: {_esc(r.feeder_error)})[/red]" if r.feeder_error else ""))
    table = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("node", "state", "sent", "received", "resumed", "relay CPU-s/GB",
                "checked by"):
        table.add_column(col, justify="left" if col in ("node", "state", "checked by")
                         else "right")
    style = {SYNCED: "green", UNCHANGED: "cyan", FAILED: "bold red", PENDING: "yellow"}
    for name, n in report.nodes.items():
        st = style.get(n.state, "")
        table.add_row(name, f"[{st}]{n.state}[/{st}]", f"{n.files_sent}/{n.files}",
                      human_bytes(n.bytes_received), human_bytes(n.bytes_resumed),
                      "-" if n.cpu_seconds_per_gb is None else f"{n.cpu_seconds_per_gb:.2f}",
                      "sha256" if n.check == "sha256" else "size+mtime")
    out.print(table)
    for name, n in report.nodes.items():
        if n.error:
            out.print(f"[red]{name}[/red]: {_esc(n.error)}")
    for w in report.warnings:
        out.print(f"[yellow]warning:[/yellow] {_esc(w)}")


def _esc(text: str) -> str:
    return str(text).replace("[", "\\[")


@dataclass
class SyncProgress:
    """A snapshot passed to the `progress` callback of sync_model (about twice a second
    while data moves). done/total are stream bytes of the current round: done counts what
    the slowest receiver still in the chain has received."""

    phase: str          # connecting scanning downloading surveying hashing transferring done
    total: int = 0
    done: int = 0
    round: int = 0
    nodes: dict[str, str] = field(default_factory=dict)   # node -> short state
    message: str = ""
