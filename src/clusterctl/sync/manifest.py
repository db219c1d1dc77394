"""Manifests (what a model is: size and sha256 per file) and the diff against what a node
holds (which files to send, and from which byte). Pure: no I/O.

A manifest is computed once, where the source is. A node's listing comes from the
node agent's `survey`. A file is identical on a node when size and mtime match (the cheap
check, like rsync's quick check) or, with verify, when its sha256 matches.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from . import node_agent


@dataclass(frozen=True)
class FileEntry:
    path: str                 # relative to the destination root, '/'-separated
    size: int
    mtime_ns: int
    sha256: str | None        # None until hashed (the sender hashes while streaming)

    @property
    def partial_key(self) -> str:
        """Name of this file version's partial file in the staging folder."""
        return node_agent.partial_key(self.path, self.size, self.mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns,
                "sha256": self.sha256}


@dataclass
class Manifest:
    """A source's files, sorted by path. kind "dir": paths inside the model folder; kind
    "file": one entry whose path is the model's name (the destination is a file)."""

    kind: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    @classmethod
    def from_scan(cls, scan: Mapping[str, Any], name: str) -> "Manifest":
        """From the agent's `scan` output; a single-file source is renamed to `name`."""
        kind = scan["kind"]
        entries = []
        for f in scan["files"]:
            path = name if kind == "file" else f["path"]
            entries.append(FileEntry(path, int(f["size"]), int(f["mtime_ns"]), f.get("sha256")))
        return cls(kind, {e.path: e for e in sorted(entries, key=lambda e: e.path)})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        return cls(data["kind"], {f["path"]: FileEntry(f["path"], int(f["size"]),
                                                       int(f["mtime_ns"]), f.get("sha256"))
                                  for f in data["files"]})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": [e.to_dict() for e in self.files.values()],
                "total_bytes": self.total_bytes}

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    @property
    def complete(self) -> bool:
        """Every file has its sha256."""
        return all(e.sha256 for e in self.files.values())

    def unhashed(self) -> list[str]:
        return [p for p, e in self.files.items() if not e.sha256]

    def with_digests(self, digests: Mapping[str, str]) -> tuple["Manifest", list[str]]:
        """Fill in sha256 values computed while sending. Returns the new manifest and the
        paths whose digest contradicts a value already known (the source changed)."""
        files, changed = dict(self.files), []
        for path, digest in digests.items():
            e = files.get(path)
            if e is None:
                continue
            if e.sha256 and e.sha256 != digest:
                changed.append(path)
                continue
            files[path] = replace(e, sha256=digest)
        return Manifest(self.kind, files), changed

    def survey_spec(self, root: str, staging: str, *, verify: bool) -> dict[str, Any]:
        """What the agent's `survey` needs to look at on a node."""
        files = []
        for e in self.files.values():
            f = {"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "key": e.partial_key}
            if verify:
                f["sha256"] = e.sha256
            files.append(f)
        return {"root": root, "staging": staging, "hash": verify, "files": files}


@dataclass(frozen=True)
class RemoteFile:
    """A file as found on a node."""
    size: int
    mtime_ns: int
    sha256: str | None = None


def parse_listing(survey: Mapping[str, Any]) -> dict[str, RemoteFile]:
    return {p: RemoteFile(int(v["size"]), int(v["mtime_ns"]), v.get("sha256"))
            for p, v in (survey.get("files") or {}).items()}


def same_mtime(a: int, b: int) -> bool:
    """mtimes compared to the microsecond (what every Linux filesystem we meet keeps)."""
    return a // 1000 == b // 1000


@dataclass
class NodeNeed:
    """What one node needs: files to send, each with the bytes its partial file already
    holds (the resume point), and why."""

    send: dict[str, int] = field(default_factory=dict)       # path -> partial bytes
    reasons: dict[str, str] = field(default_factory=dict)    # path -> why it is sent
    identical: list[str] = field(default_factory=list)
    needed_bytes: int = 0                                    # bytes still to write

    @property
    def complete(self) -> bool:
        return not self.send


def diff(manifest: Manifest, listing: Mapping[str, RemoteFile],
         partials: Mapping[str, int] | None = None, *, verify: bool = False) -> NodeNeed:
    """Which files a node needs. With verify, identical means same sha256 (the listing must
    carry sha256 for files of the right size, and the manifest must be complete)."""
    if verify and not manifest.complete:
        raise ValueError("verify needs a manifest with every sha256")
    partials = partials or {}
    need = NodeNeed()
    for path, e in manifest.files.items():
        have = listing.get(path)
        if have is None:
            reason = "missing"
        elif have.size != e.size:
            reason = "size differs"
        elif verify:
            reason = "" if have.sha256 == e.sha256 else "sha256 differs"
        elif not same_mtime(have.mtime_ns, e.mtime_ns):
            reason = "mtime differs"
        else:
            reason = ""
        if not reason:
            need.identical.append(path)
            continue
        partial = int(partials.get(e.partial_key, 0))
        if not 0 <= partial <= e.size:
            partial = 0
        need.send[path] = partial
        need.reasons[path] = reason
        need.needed_bytes += e.size - partial
    return need


def summarize_reasons(need: NodeNeed, limit: int = 3) -> str:
    """'2 missing, 1 size differs' — for progress lines and reports."""
    counts: dict[str, int] = {}
    for r in need.reasons.values():
        counts[r] = counts.get(r, 0) + 1
    parts = [f"{n} {r}" for r, n in sorted(counts.items(), key=lambda x: -x[1])]
    return ", ".join(parts[:limit])


def manifest_paths(entries: Iterable[FileEntry]) -> list[str]:
    return [e.path for e in entries]
