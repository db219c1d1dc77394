"""Software fans out like weights: the wheels of a `pip` task with `fan_out` leave the
controller once.

For each class of nodes that need them (same Python version, CPU architecture and glibc,
same requirements and source) the cluster step

1. stages the wheels on the controller (~/.cache/clusterctl/wheels/KEY): `pip download`
   of the whole closure for the nodes' interpreter and platform (binary wheels only,
   from `find_links`/`index_url`, or pip's configured index when neither is given). A
   staged set is a snapshot: the next run with the same requirements, target and source
   reuses it, so every node of a cluster gets the same files, also the nodes added later;
2. sends the set through the relay chain of clusterctl.sync to WHEELHOUSE/SET on the nodes
   that need it (SET is named by the content: names and sha256 of its files). The
   controller's link carries one copy whatever the node count; every file is checked
   against its sha256 before it is renamed into place, an interrupted copy resumes, and a
   node that fails is named while the others go on;
3. has each node install from its local copy only (`pip install --no-index
   --find-links WHEELHOUSE/SET`), in parallel.

Source URLs reach pip through its environment (PIP_INDEX_URL ...), never its argv.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterctlError
from ..ops import OPS
from ..ops.base import Change, plural
from ..session import failure_reason as _message
from ..sync.node_agent import sha256_file
from .build import cache_dir
from .results import TaskResult

STAGED = "WHEELS.json"          # in a staged set: what it was staged from, file -> sha256
STAGE_TIMEOUT = 3600.0
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


@dataclass(frozen=True)
class Target:
    """What decides which wheels a node can install."""
    python: str        # "3.11"
    arch: str          # "x86_64"
    glibc: str | None  # "2.36"; None: not glibc (only pure-Python and linux_ wheels)

    @classmethod
    def of(cls, facts) -> "Target":
        version = str(facts.python or "")
        m = re.match(r"^(\d+)\.(\d+)", version)
        if not m:
            raise ClusterctlError(f"cannot tell the node's Python version from {version!r}")
        return cls(f"{m.group(1)}.{m.group(2)}", str(facts.arch or "").strip(),
                   facts.libc)

    def __str__(self) -> str:
        libc = f"glibc {self.glibc}" if self.glibc else "no glibc"
        return f"Python {self.python}, {self.arch}, {libc}"


def platform_tags(arch: str, glibc: str | None) -> list[str]:
    """The platform tags pip accepts on a Linux node, newest first: manylinux_2_N down to
    2_5 for its glibc (with the legacy manylinux2014/2010/1 names), then linux_ARCH."""
    if not re.match(r"^[A-Za-z0-9_]+$", arch or ""):
        raise ClusterctlError(f"cannot stage wheels for the CPU architecture {arch!r}")
    tags = []
    m = re.match(r"^2\.(\d+)$", glibc or "")
    if m:
        for minor in range(int(m.group(1)), 4, -1):
            tags.append(f"manylinux_2_{minor}_{arch}")
            legacy = _LEGACY.get(minor)
            if legacy and (minor == 17 or arch in ("x86_64", "i686")):
                tags.append(f"{legacy}_{arch}")
    tags.append(f"linux_{arch}")
    return tags


def source_of(args: dict) -> dict:
    """Where the controller gets the wheels (the pip task's source arguments)."""
    return {"find_links": args.get("find_links"), "index_url": args.get("index_url"),
            "no_index": bool(args.get("no_index")), "trusted_host": args.get("trusted_host")}


def _source_fingerprint(source: dict) -> str:
    """What the source holds, as far as it can be told cheaply: a find-links page or
    folder listing is hashed (so the lab's mirror at another address is the same source);
    an index is known by its URL only (a staged set is then a snapshot of it)."""
    links = source.get("find_links")
    if not links:
        return ""
    try:
        if re.match(r"^https?://", links):
            with urllib.request.urlopen(links, timeout=30) as resp:      # noqa: S310
                return hashlib.sha256(resp.read()).hexdigest()
        path = Path(links[7:] if links.startswith("file://") else links)
        listing = sorted(f"{p.name} {p.stat().st_size}" for p in path.iterdir() if p.is_file())
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()
    except (OSError, ValueError) as exc:
        raise ClusterctlError(f"cannot read the wheel source {_redact(links)}: {exc}") from None


def _redact(url: str | None) -> str:
    return re.sub(r"//[^/@\s]*@", "//***@", url or "")


def staging_key(packages: list[str], source: dict, fingerprint: str, target: Target) -> str:
    blob = json.dumps({"packages": sorted(packages), "no_index": source.get("no_index"),
                       "index": _redact(source.get("index_url")) if not fingerprint else "",
                       "links": fingerprint or _redact(source.get("find_links")),
                       "target": dataclasses.asdict(target)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def download_command(dest: str, packages: list[str], target: Target) -> list[str]:
    """`pip download` of the closure for the target (binary wheels only: the nodes build
    nothing, and pip needs that to resolve for another platform)."""
    major, minor = target.python.split(".")
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "--dest", dest, "--only-binary=:all:",
            "--python-version", target.python, "--implementation", "cp",
            "--abi", f"cp{major}{minor}"]
    for tag in platform_tags(target.arch, target.glibc):
        argv += ["--platform", tag]
    return argv + list(packages)


def download_env(source: dict) -> dict:
    """pip's environment for the source (URLs may carry credentials: not in argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")
           or k in ("PIP_CONFIG_FILE", "PIP_CERT", "PIP_CLIENT_CERT")}
    if source.get("no_index"):
        env["PIP_NO_INDEX"] = "1"
    if source.get("index_url"):
        env["PIP_INDEX_URL"] = source["index_url"]
    if source.get("find_links"):
        env["PIP_FIND_LINKS"] = source["find_links"]
    if source.get("trusted_host"):
        env["PIP_TRUSTED_HOST"] = source["trusted_host"]
    return env


def set_id(files: dict[str, str]) -> str:
    """A wheel set's name: the hash of its file names and sha256 values."""
    blob = "\n".join(f"{name} {digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StagedSet:
    path: Path
    id: str
    files: dict[str, str]
    bytes: int
    reused: bool
    seconds: float = 0.0


def read_staged(path: Path) -> StagedSet | None:
    """A complete staged set at `path` (its record written last), else None."""
    try:
        record = json.loads((path / STAGED).read_text())
        files = dict(record["files"])
        if all((path / f).is_file() for f in files):
            return StagedSet(path, record["set"], files,
                             sum((path / f).stat().st_size for f in files), True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def stage(packages: list[str], source: dict, target: Target, *, root: Path | None = None,
          run=subprocess.run) -> StagedSet:
    """The staged wheel set for the requirements and target (reused when it exists)."""
    start = time.monotonic()
    fingerprint = _source_fingerprint(source)
    root = root or cache_dir() / "wheels"
    final = root / staging_key(packages, source, fingerprint, target)
    found = read_staged(final)
    if found is not None:
        return found
    if final.exists():                   # incomplete (a file removed by hand): stage again
        shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        try:
            proc = run(download_command(str(tmp), packages, target), env=download_env(source),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=STAGE_TIMEOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ClusterctlError(f"cannot run pip on the controller: {exc}") from None
        except subprocess.TimeoutExpired:
            raise ClusterctlError(f"staging wheels for {target} took more than "
                                  f"{STAGE_TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            raise ClusterctlError(stage_failure(proc.stdout, packages, target))
        wheels = sorted(p for p in tmp.iterdir() if p.is_file() and p.name.endswith(".whl"))
        if not wheels:
            raise ClusterctlError(f"pip downloaded no wheels for {' '.join(packages)}")
        files = {p.name: sha256_file(p).hexdigest() for p in wheels}
        record = {"set": set_id(files), "packages": list(packages), "target":
                  dataclasses.asdict(target), "source": {k: _redact(v) if isinstance(v, str)
                                                         else v for k, v in source.items()},
                  "files": files, "staged_at": int(time.time())}
        (tmp / STAGED).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        try:
            tmp.rename(final)
        except OSError:                      # another run staged it meanwhile
            found = read_staged(final)
            if found is None:
                raise
            return found
        tmp = None
        out = read_staged(final)
        out.reused, out.seconds = False, time.monotonic() - start
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def stage_failure(output: str, packages: list[str], target: Target) -> str:
    """One clear message from pip's failed download."""
    lines = [ln for ln in (output or "").strip().splitlines() if ln.strip()]
    tail = "\n".join("    " + _redact(ln) for ln in lines[-8:])
    hint = ("a package may have no binary wheel for the nodes' platform (the nodes build "
            "nothing), or the source lacks a version: check the requirements and "
            "mirror.pip, or set fan_out: false to have every node install from the "
            "index itself")
    return (f"staging wheels for {' '.join(packages)} ({target}) on the controller failed; "
            f"{hint}:\n{tail}")


# ----------------------------------------------------------------------------- the step

def execute_pip(runner, play, role, task, planned_states) -> dict:
    """CLUSTER_STEPS entry for `pip`: tasks with fan_out stage, fan out and install from
    the local copy; the others run as any task."""
    from ..sync import sync_path

    planned = {s.host.name: p for s, p in planned_states}
    states = [s for s, _ in planned_states]
    op = OPS["pip"]
    groups: dict[tuple, list] = {}
    results: dict[str, TaskResult] = {}
    for state, p in planned_states:
        if not isinstance(p.outcome, Change) or not p.args.get("fan_out"):
            continue
        try:
            target = Target.of(state.facts)
        except ClusterctlError as exc:
            results[state.host.name] = TaskResult(state.host.name, task, "failed", str(exc))
            continue
        key = (tuple(p.args["packages"]), json.dumps(source_of(p.args), sort_keys=True),
               target, p.args["wheelhouse"].rstrip("/") or "/")
        groups.setdefault(key, []).append(state)
    notes: dict[str, str] = {}
    progress = getattr(runner.reporter, "progress", None)
    for (packages, source, target, wheelhouse), members in groups.items():
        names = [s.host.name for s in members]
        try:
            for n in names:
                if progress:
                    progress(n, f"staging wheels on the controller ({target})")
            staged = stage(list(packages), json.loads(source), target)
            report = sync_path(runner.inventory, staged.path, wheelhouse, staged.id,
                               hosts=names, session=runner.session,
                               progress=_sync_progress(progress, names))
        except ClusterctlError as exc:
            for n in names:
                results[n] = TaskResult(n, task, "failed", _message(exc))
            continue
        folder = f"{wheelhouse}/{staged.id}"
        staged_how = ("reused" if staged.reused
                      else f"staged in {staged.seconds:.0f}s")
        sent = (f"{len(staged.files)} wheels, {staged.bytes / 1e6:.0f} MB, {staged_how}; "
                f"the controller sent {report.controller_bytes / 1e6:.0f} MB for "
                f"{plural(len(names), 'node')}")
        for n in names:
            why = report.lost(n)
            if why is not None:
                results[n] = TaskResult(n, task, "failed",
                                        f"the wheel set {staged.id} did not arrive: {why}")
                continue
            p = planned[n]
            args = op.local_args(p.args, folder)
            command = op.install_command(args, op.missing(runner.states[n].facts, p.args))
            outcome = dataclasses.replace(p.outcome, steps=[command])
            planned[n] = dataclasses.replace(p, outcome=outcome,
                                             shown=[" ".join(command)])
            notes[n] = f" (wheel set {staged.id} at {folder}: {sent})"
    todo = [s for s in states if s.host.name not in results]
    for name, res in runner.results_of(todo, planned).items():
        if isinstance(res, TaskResult) and name in notes and res.status == "changed":
            res.message += notes[name]
        results[name] = res
    return results


def _sync_progress(progress, names: list[str]):
    if not progress:
        return None
    last: dict[str, str] = {}

    def show(snap) -> None:
        for n in names:
            phase = snap.nodes.get(n, snap.phase)
            line = f"wheels: {phase}"
            if snap.phase == "transferring" and snap.total:
                line += f" ({snap.done / 1e6:.0f} of {snap.total / 1e6:.0f} MB)"
            if last.get(n) != line:
                last[n] = line
                progress(n, line)
    return show
