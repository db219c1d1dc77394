"""Debian packages fan out like wheels: a `package` task with `fan_out` has each node that
installs something ask apt which archives it would fetch (`apt-get install --print-uris`:
URL, file name, size, hash), the controller fetches the union once (checked against
apt's size and hash, kept in a pool at ~/.cache/clusterctl/debs), the set travels the
relay chain of clusterctl.sync to /var/cache/clusterctl/debs/SET on those nodes, and each
node links it into apt's own archive cache before `apt-get install`, which then has
nothing left to download.

It never changes what apt installs or from where apt would fetch it: an archive the
controller cannot fetch (no route to the node's mirror) is simply not sent, and apt on the
node fetches it as without fan-out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterctlError
from ..ops.base import Change, plural
from ..session import failure_reason as _message
from .build import cache_dir
from .results import TaskResult

REMOTE_DIR = "/var/cache/clusterctl/debs"
APT_ARCHIVES = "/var/cache/apt/archives"
FETCH_TIMEOUT = 300.0
_URI_RE = re.compile(r"^'([^']+)' (\S+) (\d+) ?(\S*)$")
_HASHES = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~%_-]*\.deb$")


@dataclass(frozen=True)
class Deb:
    uri: str
    name: str          # the file name apt keeps it under in its archive cache
    size: int
    hash: str          # "SHA256:hex" (or another kind apt named), "" when apt gave none


def parse_print_uris(text: str) -> dict[str, Deb]:
    """`apt-get install --print-uris -qq` lines -> file name -> Deb (other lines ignored;
    a file name that is not a plain .deb name is refused: it becomes a path)."""
    out = {}
    for line in text.splitlines():
        m = _URI_RE.match(line.strip())
        if not m:
            continue
        uri, name, size, digest = m.groups()
        if not _NAME_RE.match(name) or not re.match(r"^https?://", uri):
            continue
        out[name] = Deb(uri, name, int(size), digest)
    return out


def print_uris_command(install: list[str]) -> list[str]:
    """The `apt-get install` step with --print-uris: what it would fetch, nothing done."""
    i = install.index("install") + 1
    return [*install[:i], "--print-uris", "-qq", *install[i:]]


def _hash_ok(path: Path, deb: Deb) -> bool:
    if path.stat().st_size != deb.size:
        return False
    kind, _, want = deb.hash.partition(":")
    algo = _HASHES.get(kind)
    if not algo or not want:
        return True                      # apt gave no hash it knows: size only
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == want.lower()


def fetch(deb: Deb, pool: Path) -> bool:
    """The archive in the controller's pool, fetched if needed and checked against apt's
    size and hash. False when the controller cannot get it (the node will)."""
    path = pool / deb.name
    if path.exists() and _hash_ok(path, deb):
        return True
    tmp = pool / f".{deb.name}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(deb.uri, timeout=FETCH_TIMEOUT) as resp, \
                open(tmp, "wb") as out:                                  # noqa: S310
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                out.write(block)
        if not _hash_ok(tmp, deb):
            return False
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        return False
    finally:
        tmp.unlink(missing_ok=True)


def set_id(debs: list[Deb]) -> str:
    blob = "\n".join(f"{d.name} {d.size} {d.hash}" for d in sorted(debs, key=lambda d: d.name))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StagedDebs:
    path: Path | None      # None: nothing the controller could fetch
    id: str
    sent: list[Deb]
    missed: list[Deb]

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.sent)


def stage(debs: dict[str, Deb], root: Path | None = None) -> StagedDebs:
    """The union of the nodes' archives as one set folder (hard links into the pool)."""
    root = root or cache_dir() / "debs"
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    items = sorted(debs.values(), key=lambda d: d.name)
    with ThreadPoolExecutor(max_workers=4) as ex:
        ok = list(ex.map(lambda d: fetch(d, pool), items))
    sent = [d for d, good in zip(items, ok) if good]
    missed = [d for d, good in zip(items, ok) if not good]
    sid = set_id(sent)
    if not sent:
        return StagedDebs(None, sid, sent, missed)
    final = root / "sets" / sid
    if not final.exists():
        tmp = root / "sets" / f".{sid}.{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for d in sent:
            os.link(pool / d.name, tmp / d.name)
        (tmp / "DEBS.json").write_text(json.dumps(
            {"set": sid, "files": {d.name: d.hash or f"size:{d.size}" for d in sent}},
            indent=1, sort_keys=True) + "\n")
        try:
            tmp.rename(final)
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return StagedDebs(final, sid, sent, missed)


def link_command(folder: str, names: list[str]) -> str:
    """Put the node's archives into apt's cache (hard links; a copy across filesystems)."""
    files = " ".join(shlex.quote(n) for n in names)
    return (f"cd {shlex.quote(folder)} && for f in {files}; do "
            f"ln -f \"$f\" {APT_ARCHIVES}/ 2>/dev/null || cp -f \"$f\" {APT_ARCHIVES}/; done")


# ----------------------------------------------------------------------------- the step

def execute_package(runner, play, role, task, planned_states) -> dict:
    """CLUSTER_STEPS entry for `package`: with fan_out, the archives leave the controller
    once; the others (and removals) run as any task."""
    from ..sync import sync_path

    planned = {s.host.name: p for s, p in planned_states}
    states = [s for s, _ in planned_states]
    fan = [s for s, p in planned_states if isinstance(p.outcome, Change)
           and p.args.get("fan_out") and p.args.get("state") == "present"]
    if not fan:
        return runner.results_of(states, planned)
    results: dict[str, TaskResult] = {}
    started = time.monotonic()

    def ask(state):
        steps = planned[state.host.name].outcome.steps
        for step in steps[:-1]:                   # apt-get update
            state.conn.run(step)
        res = state.conn.run(print_uris_command(steps[-1]), check=False)
        if res.exit_code != 0:
            raise ClusterctlError("apt-get cannot plan the install: "
                                  + (res.stderr or res.stdout).strip()[-1500:])
        return parse_print_uris(res.stdout)

    group = runner.session.map(ask, fan, step=f"{task.role} : {task.name} (apt --print-uris)",
                               deadline=900)
    wanted: dict[str, dict[str, Deb]] = {}
    for state in fan:
        out = group.outcome(state.host.name)
        if isinstance(out, Exception):
            results[state.host.name] = TaskResult(state.host.name, task, "failed",
                                                  _message(out))
        else:
            wanted[state.host.name] = out
    union: dict[str, Deb] = {}
    for debs in wanted.values():
        union.update(debs)
    note = ""
    receivers = [n for n, debs in wanted.items() if debs]
    if union and receivers:
        staged = stage(union)
        if staged.path is not None:
            try:
                report = sync_path(runner.inventory, staged.path, REMOTE_DIR, staged.id,
                                   hosts=receivers, session=runner.session)
            except ClusterctlError as exc:
                report = None
                note = f" (not fanned out: {_message(exc)}; apt fetched the archives)"
            if report is not None:
                folder = f"{REMOTE_DIR}/{staged.id}"
                for n in receivers:
                    mine = [d for d in staged.sent if d.name in wanted[n]]
                    if report.lost(n) is not None or not mine:
                        continue               # apt on the node fetches them itself
                    try:
                        runner.states[n].conn.run(link_command(folder, [d.name for d in mine]))
                    except ClusterctlError:
                        continue
                missed = (f", {len(staged.missed)} the controller could not fetch "
                          f"(the nodes did)" if staged.missed else "")
                note = (f" ({len(staged.sent)} archives, {staged.bytes / 1e6:.0f} MB "
                        f"fanned out as set {staged.id}{missed}; the controller sent "
                        f"{report.controller_bytes / 1e6:.0f} MB for "
                        f"{plural(len(receivers), 'node')}; "
                        f"{time.monotonic() - started:.0f}s)")
    install = {}
    fanned = {s.host.name for s in fan}
    for state in states:
        p = planned[state.host.name]
        if state.host.name in fanned and state.host.name not in results:
            outcome = dataclasses.replace(p.outcome, steps=[p.outcome.steps[-1]])
            install[state.host.name] = dataclasses.replace(p, outcome=outcome)
        else:
            install[state.host.name] = p
    todo = [s for s in states if s.host.name not in results]
    for name, res in runner.results_of(todo, install).items():
        if isinstance(res, TaskResult) and res.status == "changed" and name in wanted:
            res.message += note
        results[name] = res
    return results
