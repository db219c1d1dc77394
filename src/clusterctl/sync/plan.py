"""Planning a sync round: disk space, who feeds the stream, the chain order, and what the
stream carries. Pure: no I/O.

Why a pipelined chain: the feeder sends one copy to the first node, which writes it and
forwards the same bytes to the next, and so on. Every link carries the data once in
each direction at most, so the time is about size / link rate plus a per-hop delay of
a few buffers, whatever the number of nodes. A tree with fan-out k would need k times
the data on each inner node's uplink. A broken link only stops the nodes after it; they
are retried in the next round (fed from the source again).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .manifest import Manifest, NodeNeed

CONTROLLER = "controller"


@dataclass(frozen=True)
class StreamFile:
    """One file as it travels: bytes [offset, size), then its 32-byte sha256."""
    path: str
    size: int
    offset: int
    sha256: str | None
    mtime_ns: int

    @property
    def stream_bytes(self) -> int:
        return self.size - self.offset

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "offset": self.offset,
                "sha256": self.sha256, "mtime_ns": self.mtime_ns}


@dataclass
class Chain:
    feeder: str                       # CONTROLLER or the name of a source/seed node
    nodes: list[str]                  # receivers, in stream order
    files: list[StreamFile] = field(default_factory=list)

    @property
    def stream_bytes(self) -> int:
        return sum(f.stream_bytes for f in self.files)

    def upstream_of(self, node: str) -> str:
        i = self.nodes.index(node)
        return self.feeder if i == 0 else self.nodes[i - 1]

    def describe(self) -> str:
        return " -> ".join([self.feeder] + self.nodes)


def space_problem(needed: int, available: int | None) -> bool:
    """True when a node cannot take `needed` more bytes."""
    return available is not None and needed > available


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def space_message(node: str, path: str, needed: int, available: int) -> str:
    return (f"not enough disk space on {node} in {path}: the sync needs "
            f"{human_bytes(needed)} ({needed} bytes), {human_bytes(available)} "
            f"({available} bytes) available")


def choose_seed(needs: Mapping[str, NodeNeed], candidates: Sequence[str]) -> str | None:
    """A node that already holds every file (so the controller's link is spared), or None.
    Candidates are in preference order (e.g. inventory order, reachable nodes only)."""
    for name in candidates:
        need = needs.get(name)
        if need is not None and need.complete:
            return name
    return None


def chain_order(receivers: Sequence[str], order: Sequence[str], first: str | None = None
                ) -> list[str]:
    """Receivers in inventory order; `first` (a source node that also receives, its
    stream is local) goes first."""
    rank = {n: i for i, n in enumerate(order)}
    nodes = sorted(receivers, key=lambda n: rank.get(n, len(rank)))
    if first is not None and first in nodes:
        nodes.remove(first)
        nodes.insert(0, first)
    return nodes


def stream_files(manifest: Manifest, needs: Mapping[str, NodeNeed],
                 receivers: Sequence[str]) -> list[StreamFile]:
    """Every file some receiver needs, in manifest order. A file starts at the smallest
    resume point among the receivers that need it: each of them already holds at least
    that many bytes of it."""
    out = []
    for path, e in manifest.files.items():
        points = [needs[n].send[path] for n in receivers if path in needs[n].send]
        if not points:
            continue
        out.append(StreamFile(path, e.size, min(points), e.sha256, e.mtime_ns))
    return out


def plan_chain(manifest: Manifest, needs: Mapping[str, NodeNeed], order: Sequence[str],
               feeder: str = CONTROLLER, first: str | None = None) -> Chain | None:
    """The round's chain: every node that needs something, fed by `feeder` (which may
    itself receive: a source node whose model goes to another path). None when no node
    needs anything."""
    receivers = [n for n, need in needs.items() if not need.complete]
    if not receivers:
        return None
    nodes = chain_order(receivers, order, first)
    return Chain(feeder, nodes, stream_files(manifest, needs, nodes))


def node_stream_bytes(chain: Chain, need: NodeNeed) -> int:
    """Bytes a receiver writes in this round (from the stream's resume points)."""
    by_path = {f.path: f for f in chain.files}
    return sum(by_path[p].stream_bytes for p in need.send if p in by_path)


def relay_want(manifest: Manifest, need: NodeNeed) -> dict[str, dict]:
    """The relay's list of files to write: path -> partial file key."""
    return {p: {"key": manifest.files[p].partial_key} for p in need.send}
