"""sync_model: put a model at models_dir/NAME on every node, verified, at link speed.

A run, in rounds (at most MAX_ROUNDS transfers):
  connect (parallel) -> upload the agent, find cluster IPs -> source manifest (HF: download
  on one node first) -> per round: survey every node not yet done (one agent call each),
  diff against the manifest, check disk space, plan the chain, start one relay per
  receiver, start the feeder (the controller, the source node, or a node that already
  holds the model), poll the relays' status files until the stream ends -> collect.
A node that fails (disk, unreachable, broken link) is named in the report; the others go
on. Nodes after a broken link are retried in the next round.
"""
from __future__ import annotations

import json
import os
import posixpath
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ClusterctlError, HostError, InputError
from ..inventory import Inventory, load_inventory
from ..session import Session, held_locks_script
from . import node_agent
from .manifest import Manifest, NodeNeed, diff, parse_listing, summarize_reasons
from .nodes import FINAL_STATES, SyncNode, agent_source, guess_cluster_ip
from .plan import (CONTROLLER, Chain, choose_seed, human_bytes, node_stream_bytes,
                   plan_chain, relay_want, space_message, space_problem, stream_files)
from .report import FAILED, SYNCED, UNCHANGED, NodeReport, RoundReport, SyncProgress, SyncReport
from .source import (HF_NO_HUB_EXIT, HF_NO_SPACE_EXIT, HFSource, LocalSource, NodeSource,
                     check_name, hf_download_command, hf_env, hf_python, hf_token,
                     parse_source)

MAX_ROUNDS = 3
POLL_INTERVAL = 1.0            # node status reads while the stream flows
TICK = 0.25                    # progress updates; status reads near the end
FALLBACK_INTERVAL = 5.0        # SSH status reads of nodes whose records do not arrive
STALL_TIMEOUT = 600.0          # no byte moved anywhere for this long: the round is over
                               # (resuming a file hashes its first part first: ~1 GB/s)
ACCEPT_TIMEOUT = 300           # a relay nobody connects to gives up after this
SILENT_S = 5.0                 # a node whose status records stop this long is probed
PROBE_TIMEOUT = 10.0           # ... over SSH, with this deadline (the connection is cut)
PROBE_EVERY = 5.0              # at most this often per node
PROBE_MISSES = 2               # failed probes in a row: the node is dead
FROZEN_S = 15.0                # a live relay whose status file is this old is frozen
STEP_DEADLINE = 60.0           # SSH steps that take no time on a healthy node
HF_TIMEOUT = 24 * 3600

ProgressFn = Callable[[SyncProgress], None]


def local_hash_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "clusterctl", "sync-sha256.json")


def sync_model(inventory: Inventory | str | os.PathLike, source: str, name: str | None = None,
               *, hosts: Iterable | None = None, verify: bool = False,
               progress: ProgressFn | None = None, bwlimit: int | None = None,
               accept_new_host_keys: bool = False, session: Session | None = None
               ) -> SyncReport:
    """Copy SOURCE to models_dir/NAME on `hosts` (default: every inventory host).

    SOURCE: a folder or file on the controller, NODE:/path, or a Hugging Face repo id
    ([hf:]ORG/NAME[@REVISION], downloaded on one node with huggingface_hub from its
    python.venv). Returns the report; nodes that failed are in report.failed. Raises
    InputError for bad input and ClusterctlError when the source cannot be read.
    `progress` gets a SyncProgress snapshot about twice a second; if it raises, the sync
    stops (partial files stay and the next run resumes them) and the exception propagates.
    `bwlimit` caps the stream at that many bytes per second (None: link speed).
    `session`: the command's session (its connections are reused); by default one is
    made for this sync and closed at its end.
    """
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(Path(inventory))
    targets = _select(inv, hosts)
    src = parse_source(source, list(inv.hosts))
    name = check_name(name or src.default_name)
    dirs = {h.vars.get("models_dir") for h in targets}
    if len(dirs) != 1:
        listed = ", ".join(f"{h.name}={h.vars.get('models_dir')}" for h in targets)
        raise InputError(f"models_dir must be the same on every node (the model has to be at "
                         f"the same path everywhere); got {listed}", key="models_dir")
    if bwlimit is not None and int(bwlimit) <= 0:
        raise InputError(f"bwlimit must be a positive number of bytes per second (got "
                         f"{bwlimit})", key="bwlimit")
    if session is None:
        with Session(inv, accept_new_host_keys=accept_new_host_keys) as own:
            return _run_locked(inv, targets, src, name, dirs.pop(), verify, progress, own,
                               bwlimit)
    return _run_locked(inv, targets, src, name, dirs.pop(), verify, progress, session,
                       bwlimit)


def sync_path(inventory: Inventory, path: str | os.PathLike, dest_dir: str, name: str, *,
              hosts: Iterable, session: Session, progress: ProgressFn | None = None,
              verify: bool = False) -> SyncReport:
    """Copy a file or folder on the controller to DEST_DIR/NAME on `hosts` through the same
    relay chain as the weights: the controller's link carries one copy whatever the node
    count, every file is checked against its sha256 before it is renamed into place, and
    an interrupted copy resumes. For software the engine fans out (staged wheels, a
    llama.cpp build); `sync_model` is the command's entry for models."""
    targets = _select(inventory, hosts)
    local = Path(path)
    if not local.is_absolute() or not local.exists():
        raise InputError(f"{local}: no such file or folder on the controller", key="path")
    if not posixpath.isabs(dest_dir):
        raise InputError(f"{dest_dir}: expected an absolute folder on the nodes", key="dest")
    name = check_name(name)
    return _run_locked(inventory, targets, LocalSource(local), name, dest_dir, verify,
                       progress, session, None)


def _run_locked(inv, targets, src, name, models_dir, verify, progress, session, bwlimit):
    """One sync of a name at a time: a second one is refused naming the first (two would
    send everything twice and race on the same partial files)."""
    session.lock(f"sync-{name}", f"sync-model {src} {name}")
    return _SyncJob(inv, targets, src, name, models_dir, verify=verify, progress=progress,
                    session=session, bwlimit=bwlimit).run()


def _select(inv: Inventory, hosts) -> list:
    if hosts is None:
        return list(inv.hosts.values())
    out = []
    for h in hosts:
        key = h if isinstance(h, str) else h.name
        if key not in inv.hosts:
            raise InputError(f"{key!r} is not a host of the inventory", key="hosts")
        if inv.hosts[key] not in out:
            out.append(inv.hosts[key])
    if not out:
        raise InputError("no hosts to sync to", key="hosts")
    return out


class _SyncJob:
    def __init__(self, inv, targets, src, name, models_dir, *, verify, progress,
                 session: Session, bwlimit=None):
        self.bwlimit = int(bwlimit) if bwlimit else None
        self.inv, self.targets, self.src, self.name = inv, targets, src, name
        self.models_dir = models_dir.rstrip("/") or "/"
        self.dest = posixpath.join(self.models_dir, name)
        self.verify, self.progress_fn = verify, progress
        self.session = session
        self.run_id = uuid.uuid4().hex[:12]
        self.nodes: dict[str, SyncNode] = {}
        self.reports = {h.name: NodeReport(h.name) for h in targets}
        self.order = [h.name for h in targets]
        self.forks = max(4, min(32, len(targets) + 2))
        self.source_node: str | None = None       # feeds the stream (NodeSource / HF)
        self.source_path: str | None = None
        self.manifest: Manifest | None = None
        self.controller_bytes = 0
        self.warnings: list[str] = []
        self.phase_nodes: dict[str, str] = {n: "connecting" for n in self.order}
        self.errors: dict[str, str] = {}          # node -> first error (targets or not)
        self.tokens = {h.name: secrets.token_hex(16) for h in targets}
        self.ready: dict[str, int] = {}           # node -> port of a relay started early
        self.stop_reason: dict[str, str] = {}     # node -> why we stopped its relay
        self.dead: dict[str, str] = {}            # node -> why: it stopped answering

    # ------------------------------------------------------------------ plumbing
    def emit(self, phase: str, *, total: int = 0, done: int = 0, rnd: int = 0,
             message: str = "") -> None:
        if self.progress_fn is not None:
            self.progress_fn(SyncProgress(phase=phase, total=total, done=done, round=rnd,
                                          nodes=dict(self.phase_nodes), message=message))

    def fail(self, node: str, error: str) -> None:
        self.errors.setdefault(node, error)
        r = self.reports.get(node)
        if r is not None and r.state != FAILED:
            r.state, r.error = FAILED, error
            self.phase_nodes[node] = "failed"

    def alive(self) -> list[str]:
        return [n for n in self.order if self.reports[n].state != FAILED and n in self.nodes]

    def parallel(self, fn, names: list[str], deadline: float | None = None
                 ) -> dict[str, object]:
        """fn(name) for every name in parallel (the session's map; `deadline` cuts a
        node that does not answer in time); values are results or exceptions. Nodes
        found dead are skipped (their error stands in for the result)."""
        dead = {n: HostError(n, self.dead[n]) for n in names if n in self.dead}
        todo = [n for n in names if n not in dead]
        group = self.session.map(fn, todo, forks=self.forks, deadline=deadline)
        return {n: dead[n] if n in dead else group.outcome(n) for n in names}

    @property
    def root(self) -> str:
        """Folder the manifest's paths are relative to, on every node."""
        return self.dest if self.manifest.kind == "dir" else self.models_dir

    @property
    def staging(self) -> str:
        return posixpath.join(self.root, node_agent.STAGING)

    # ------------------------------------------------------------------ the run
    def run(self) -> SyncReport:
        started = time.monotonic()
        if isinstance(self.src, LocalSource):
            self.scan_local()          # first: its manifest lets the first survey ride along
        self.emit("connecting")
        hosts = list(self.targets)
        if isinstance(self.src, NodeSource) and self.src.host not in self.reports:
            hosts.append(self.inv.hosts[self.src.host])
        connected = self.session.connect(hosts)
        report = None
        try:
            for name, failure in connected.failed.items():
                self.fail(name, failure.reason)
            agent = agent_source()
            for name, conn in connected.succeeded.items():
                self.nodes[name] = SyncNode(self.inv.hosts[name], conn, self.run_id,
                                            self.name)
            spec = None
            if self.manifest is not None:
                spec = self.manifest.survey_spec(self.root, self.staging, verify=self.verify)

            def prepare(n: str):
                # with the manifest known, the survey and a relay ride along (one round trip)
                if spec is None or n not in self.reports:
                    return self.nodes[n].prepare(agent)
                guess = guess_cluster_ip(self.nodes[n].host)
                return self.nodes[n].prepare(agent, spec, self.relay_cfg(n, guess)
                                             if guess else None)

            prepared = self.parallel(prepare, list(self.nodes))
            first_surveys = {}
            for name, res in prepared.items():
                if isinstance(res, Exception):
                    self.fail(name, _msg(name, res))      # kept in self.nodes for cleanup
                    continue
                survey, port = res
                if survey is not None:
                    first_surveys[name] = survey
                if port is not None:
                    self.ready[name] = port
            if self.manifest is None:
                self.resolve_remote_source()
            report = SyncReport(source=str(self.src), name=self.name, destination=self.dest,
                                manifest=self.manifest, nodes=self.reports, verify=self.verify,
                                warnings=self.warnings)
            for r in self.reports.values():
                r.files = len(self.manifest.files)
            self.rounds(report, first_surveys)
        finally:
            self.shutdown()
        report.manifest = self.manifest
        report.controller_bytes = self.controller_bytes
        report.seconds = time.monotonic() - started
        self.emit("done")
        return report

    # ------------------------------------------------------------------ source
    def scan_local(self) -> None:
        """The manifest of a source on the controller (sha256 from the cache; all of them
        with verify)."""
        self.emit("scanning", message=f"listing {self.src.path}")
        try:
            scan = node_agent.scan(str(self.src.path), want_hash=self.verify,
                                   cache_path=local_hash_cache())
        except SystemExit:
            raise InputError(f"cannot read {self.src.path}", key="SOURCE") from None
        self.source_path = scan["root"]
        self.set_manifest(scan)

    def resolve_remote_source(self) -> None:
        """NODE:/path or a Hugging Face repo (downloaded on one node first): list it there."""
        if isinstance(self.src, HFSource):
            self.download_hf(self.src)
        src = self.src
        self.emit("scanning", message=f"listing {src}")
        node = self.nodes.get(src.host)
        if node is None or src.host in self.errors:
            raise HostError(src.host, "the source node is not usable: "
                            + self.errors.get(src.host, "unreachable"))
        scan = node.scan(src.path, want_hash=self.verify, timeout=None)
        self.source_node, self.source_path = src.host, scan["root"]
        self.set_manifest(scan)
        if (self.source_node in self.reports and self.manifest.kind == "dir"
                and posixpath.normpath(self.source_path) == self.dest):
            # the source is the destination on that node: nothing to do there
            r = self.reports[self.source_node]
            r.state, r.check = UNCHANGED, "source"
            self.phase_nodes[self.source_node] = "source"

    def set_manifest(self, scan: dict) -> None:
        for skipped in scan.get("skipped") or []:
            self.warnings.append(f"not synced: {skipped}")
        self.manifest = Manifest.from_scan(scan, self.name)
        if not self.manifest.files:
            raise InputError(f"{self.src} holds no files to sync", key="SOURCE")

    def download_hf(self, src: HFSource) -> None:
        """snapshot_download on one node (the head if it takes part) into models_dir/NAME;
        that node then is the source of the fan-out."""
        usable = self.alive()
        head = self.inv.head.name
        candidates = ([head] if head in usable else []) + [n for n in usable if n != head]
        if not candidates:
            raise HostError(self.order[0], "no reachable node to download "
                            f"{src.repo_id} on")
        name = candidates[0]
        node = self.nodes[name]
        venv = (node.host.vars.get("python") or {}).get("venv") or "/opt/clusterctl/venv"
        self.emit("downloading", message=f"{src} on {name}")
        self.phase_nodes[name] = "downloading"
        has_venv = node.conn.run(["test", "-x", hf_python(venv)], check=False).exit_code == 0
        if not has_venv:
            raise HostError(name, f"no python venv at {venv} (python.venv) to download "
                            f"{src.repo_id} with: run `clusterctl bootstrap` first, or create "
                            f"it and `{venv}/bin/pip install huggingface_hub`")
        token = hf_token(os.environ, node.host.vars)
        res = node.conn.run(hf_download_command(venv, src, self.dest), env=hf_env(token),
                            check=False, timeout=HF_TIMEOUT)
        if res.exit_code == HF_NO_HUB_EXIT:
            raise HostError(name, f"huggingface_hub is not installed in {venv} (python.venv): "
                            f"run `{venv}/bin/pip install huggingface_hub` there")
        if res.exit_code == HF_NO_SPACE_EXIT:
            data = _last_json(res.stdout) or {}
            raise HostError(name, space_message(name, data.get("path", self.models_dir),
                                                int(data.get("needed", 0)),
                                                int(data.get("available", 0))))
        if res.exit_code != 0:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
            raise HostError(name, f"downloading {src} failed (exit {res.exit_code}):\n{tail}")
        self.phase_nodes[name] = "downloaded"
        self.src = NodeSource(name, self.dest)

    # ------------------------------------------------------------------ rounds
    def rounds(self, report: SyncReport, first_surveys: dict[str, dict]) -> None:
        done: set[str] = {n for n, r in self.reports.items() if r.state == UNCHANGED}
        last_error: dict[str, str] = {}
        for rnd in range(1, MAX_ROUNDS + 2):
            todo_nodes = [n for n in self.alive() if n not in done]
            if not todo_nodes:
                return
            if self.source_node is not None and self.source_node in self.dead:
                for n in todo_nodes:
                    self.fail(n, f"the source node {self.source_node} stopped answering")
                return
            self.emit("surveying", rnd=rnd)
            spec = self.manifest.survey_spec(self.root, self.staging,
                                             verify=self.verify and rnd == 1)
            if self.verify and rnd == 1 and not self.manifest.complete:
                self.hash_source()
                spec = self.manifest.survey_spec(self.root, self.staging, verify=True)
            if rnd == 1 and first_surveys:
                surveys = {n: first_surveys.get(n) or self.nodes[n].survey(spec)
                           for n in todo_nodes}
            else:
                surveys = self.parallel(lambda n: self.nodes[n].survey(spec), todo_nodes,
                                        deadline=None if spec.get("hash") else STEP_DEADLINE)
            needs: dict[str, NodeNeed] = {}
            complete: list[str] = []
            for n, res in surveys.items():
                if isinstance(res, Exception):
                    self.fail(n, _msg(n, res))
                    continue
                need = diff(self.manifest, parse_listing(res), res.get("partials"),
                            verify=self.verify and rnd == 1)
                r = self.reports[n]
                if need.complete:
                    done.add(n)
                    complete.append(n)
                    if rnd == 1:
                        r.state = UNCHANGED
                        r.check = "sha256" if self.verify else "size+mtime"
                        self.phase_nodes[n] = "unchanged"
                    else:
                        r.state = SYNCED
                        self.phase_nodes[n] = "synced"
                    continue
                avail = res.get("avail")
                if rnd == 1:
                    r.needed_bytes, r.available_bytes = need.needed_bytes, avail
                if space_problem(need.needed_bytes, avail):
                    self.fail(n, space_message(n, res.get("space_path", self.root),
                                               need.needed_bytes, int(avail)))
                    continue
                needs[n] = need
                self.phase_nodes[n] = f"needs {summarize_reasons(need)}"
            if not needs:
                return
            if rnd > MAX_ROUNDS:
                for n in needs:
                    self.fail(n, f"still not in sync after {MAX_ROUNDS} rounds: "
                              + last_error.get(n, summarize_reasons(needs[n])))
                return
            chain = self.plan(needs, complete if rnd == 1 else [])
            outcome = self.transfer(chain, needs, rnd, report)
            for n, (ok, err, fatal) in outcome.items():
                if ok:
                    done.add(n)
                    self.reports[n].state = SYNCED
                    self.phase_nodes[n] = "synced"
                elif fatal:
                    self.fail(n, err)
                else:
                    last_error[n] = err
                    self.phase_nodes[n] = "retrying"

    def plan(self, needs: dict[str, NodeNeed], complete: list[str]) -> Chain:
        """Who feeds this round: the source node; else a node that already holds every
        file (first round only; spares the controller's link, and receivers check sha256
        against the manifest, so the source is hashed first); else the controller."""
        if self.source_node is not None:
            return plan_chain(self.manifest, needs, self.order, feeder=self.source_node,
                              first=self.source_node)
        seed = choose_seed({n: NodeNeed() for n in complete}, [n for n in self.order
                                                               if n in complete])
        if seed is not None:
            self.hash_source()
            return plan_chain(self.manifest, needs, self.order, feeder=seed)
        return plan_chain(self.manifest, needs, self.order, feeder=CONTROLLER)

    def hash_source(self) -> None:
        """Complete the manifest's sha256 values at the source (cached across runs)."""
        if self.manifest.complete:
            return
        self.emit("hashing", message=f"sha256 of {len(self.manifest.unhashed())} files")
        if self.source_node is not None:
            scan = self.nodes[self.source_node].scan(self.src.path, want_hash=True)
        else:
            scan = node_agent.scan(str(self.src.path), want_hash=True,
                                   cache_path=local_hash_cache())
        fresh = Manifest.from_scan(scan, self.name)
        digests = {p: e.sha256 for p, e in fresh.files.items() if e.sha256}
        self.manifest, changed = self.manifest.with_digests(digests)
        for p in changed:
            self.warnings.append(f"{p} changed at the source during the sync")

    def relay_cfg(self, n: str, listen: str) -> dict:
        """A relay's start-up settings; what it writes comes in the stream's header."""
        return {"name": n, "listen": listen, "token": self.tokens[n], "root": self.root,
                "staging": self.staging, "accept_timeout": ACCEPT_TIMEOUT,
                "idle_timeout": STALL_TIMEOUT}

    def sources(self, chain: Chain) -> dict[str, str]:
        """Stream path -> file to read, on the feeder."""
        if chain.feeder not in (CONTROLLER, self.source_node):       # a seed node
            return {f.path: posixpath.join(self.root, f.path) for f in chain.files}
        if self.manifest.kind == "file":
            return {f.path: self.source_path for f in chain.files}
        join = posixpath.join if chain.feeder != CONTROLLER else os.path.join
        return {f.path: join(self.source_path, f.path) for f in chain.files}

    # ------------------------------------------------------------------ one round
    def transfer(self, chain: Chain, needs: dict[str, NodeNeed], rnd: int,
                 report: SyncReport) -> dict[str, tuple[bool, str, bool]]:
        """Run one chain. Returns node -> (in sync, error, error is final)."""
        started = time.monotonic()
        outcome: dict[str, tuple[bool, str, bool]] = {}
        self.emit("starting relays", rnd=rnd)

        def start(n: str) -> int:
            self.reports[n].attempts += 1
            if n in self.ready:                  # started with the first survey
                return self.ready.pop(n)
            self.tokens[n] = secrets.token_hex(16)
            return self.nodes[n].start_relay(self.relay_cfg(n, self.nodes[n].cluster_ip))

        ports = self.parallel(start, chain.nodes, deadline=STEP_DEADLINE + 30)
        for n, res in ports.items():
            if isinstance(res, Exception):
                outcome[n] = (False, f"cannot start the relay: {_msg(n, res)}", False)
        chain.nodes = [n for n in chain.nodes if n not in outcome]
        if not chain.nodes:
            return outcome
        chain.files = stream_files(self.manifest, needs, chain.nodes)
        hops = [{"name": n, "ip": self.nodes[n].cluster_ip, "port": ports[n],
                 "token": self.tokens[n]} for n in chain.nodes]
        want = {n: relay_want(self.manifest, needs[n]) for n in chain.nodes}
        node_bytes = {n: node_stream_bytes(chain, needs[n]) for n in chain.nodes}
        for n in chain.nodes:
            self.phase_nodes[n] = "waiting"

        feeder = None
        if chain.feeder == CONTROLLER:
            feeder = _ControllerFeeder(self.nodes[chain.nodes[0]], hops, chain,
                                       self.sources(chain), want, self.bwlimit)
            feeder.start()
        else:
            node = self.nodes[chain.feeder]
            try:
                node.start_sender({"chain": hops, "files": [f.to_dict() for f in chain.files],
                                   "want": want,
                                   "sources": self.sources(chain), "kind": self.manifest.kind,
                                   "cache": "/var/cache/clusterctl/sync-sha256.json"
                                   if chain.feeder == self.source_node else None,
                                   "cache_root": self.source_path,
                                   "idle_timeout": STALL_TIMEOUT, "bwlimit": self.bwlimit})
            except ClusterctlError as exc:
                for n in chain.nodes:
                    outcome[n] = (False, f"the feeder {chain.feeder} failed: "
                                  f"{_msg(chain.feeder, exc)}", False)
                self.parallel(lambda n: self.nodes[n].stop(), chain.nodes,
                                  deadline=STEP_DEADLINE)
                return outcome

        if chain.feeder in self.phase_nodes and chain.feeder not in chain.nodes:
            self.phase_nodes[chain.feeder] = "sending"
        try:
            statuses, feeder_state = self.poll(chain, feeder, node_bytes, rnd)
        finally:
            if feeder is not None:
                feeder.stop.set()
        if chain.feeder in self.phase_nodes and chain.feeder not in chain.nodes:
            r = self.reports.get(chain.feeder)
            self.phase_nodes[chain.feeder] = r.state if r else ""

        # the feeder's digests complete the manifest
        digests, feeder_error = {}, None
        if feeder is not None:
            feeder.cut()
            feeder.join(timeout=30)
            digests, feeder_error = feeder.digests, feeder.error
            self.controller_bytes += feeder.sent
        else:
            digests = feeder_state.get("digests") or {}
            if feeder_state.get("state") != "done":
                feeder_error = feeder_state.get("error") or "the sender stopped"
        self.manifest, changed = self.manifest.with_digests(digests)
        for p in changed:
            self.warnings.append(f"{p} changed at the source during the sync")
        if feeder is not None and digests:
            cache = node_agent.HashCache(local_hash_cache())
            for p, d in digests.items():
                src = self.sources(chain)[p]
                try:
                    cache.put(src, os.stat(src), d)
                except OSError:
                    pass
            cache.save()

        for n in chain.nodes:
            if n in self.dead:
                outcome[n] = (False, self.dead[n], True)
                continue
            outcome[n] = self.collect(n, statuses.get(n) or {}, needs[n], feeder_error)
        report.rounds.append(RoundReport(rnd, chain.describe(), len(chain.files),
                                         chain.stream_bytes, time.monotonic() - started,
                                         feeder_error))
        return outcome

    def poll(self, chain: Chain, feeder, node_bytes: dict[str, int], rnd: int):
        """Wait for the round to end, reporting progress. Returns (each relay's final
        status, the remote sender's status).

        Progress and results come back up the chain as status records (to the controller's
        feeder, or into a remote sender's status file). A node whose record never arrives
        (its relay died, or never got a connection) is read over SSH: every
        FALLBACK_INTERVAL while the stream flows, and once the chain is over.

        Liveness: every relay sends a record four times a second. A node silent for
        SILENT_S is probed over SSH (PROBE_TIMEOUT); PROBE_MISSES failed probes in a row
        make it dead: the round ends at once (the relays still reachable are stopped,
        keeping their partial files) and the next round's chain leaves it out. A relay
        whose process is alive but frozen is stopped (its node goes again next round)."""
        ssh: dict[str, dict] = {n: {"state": "listening", "alive": True} for n in chain.nodes}
        sender: dict = {}
        last_moved, last_total = time.monotonic(), -1
        stopped: set[str] = set()
        next_ssh = time.monotonic() + FALLBACK_INTERVAL
        next_sender = 0.0
        live = _Liveness(chain.nodes, time.monotonic())
        while True:
            now = time.monotonic()
            if feeder is None and now >= next_sender:
                try:
                    sender = self.nodes[chain.feeder].status("send", timeout=PROBE_TIMEOUT)
                    sender["read_at"] = time.monotonic()
                    live.answered(chain.feeder)
                except ClusterctlError as exc:
                    if live.missed(chain.feeder, _msg(chain.feeder, exc)) >= PROBE_MISSES:
                        self.dead.setdefault(chain.feeder, self.dead_message(
                            chain.feeder, rnd, {"state": "sending"}, None, live))
                        self.warnings.append(f"the feeder {chain.feeder} "
                                             f"{self.dead[chain.feeder]}")
                        return self.end_round(chain, feeder, ssh, sender, {}), sender
                sent_all = sender.get("state") in ("sent", "done", "failed")
                next_sender = now + (TICK if sent_all else POLL_INTERVAL)
            records = feeder.snapshot() if feeder is not None else dict(sender.get("chain") or {})
            chain_over = feeder.chain_over if feeder is not None else _final(sender)
            if chain_over or now >= next_ssh:
                missing = [n for n in chain.nodes
                           if not records.get(n, {}).get("final") and not _final(ssh[n])]
                if missing:
                    self.read_statuses(chain, ssh, missing, live)
                next_ssh = now + FALLBACK_INTERVAL
            view = {n: records[n] if records.get(n, {}).get("final") or
                    (n in records and not _final(ssh[n])) else ssh[n] for n in chain.nodes}
            self.show_progress(chain, view, feeder, node_bytes, rnd)
            finished = {n for n in chain.nodes if _over(view[n])}
            if len(finished) == len(chain.nodes):
                break
            if not chain_over:
                seen = feeder.seen_at() if feeder is not None else _sender_seen(sender)
                self.check_liveness(chain, view, finished, seen, live)
            dead = [n for n in chain.nodes if n not in finished
                    and live.misses.get(n, 0) >= PROBE_MISSES]
            if dead:
                for n in dead:
                    idx = chain.nodes.index(n)
                    nxt = chain.nodes[idx + 1] if idx + 1 < len(chain.nodes) else None
                    self.dead[n] = self.dead_message(n, rnd, view.get(n) or {}, nxt, live,
                                                     node_bytes.get(n))
                return self.end_round(chain, feeder, ssh, sender, records), sender
            if chain_over:
                # nothing more will come: stop relays still waiting for a connection
                self.stop_orphans(chain, view, feeder, sender, finished, stopped)
            moved = sum(int(st.get("bytes_in", 0)) for st in view.values()) + (
                feeder.sent if feeder is not None else int(sender.get("bytes_sent", 0)))
            if moved != last_total:
                last_total, last_moved = moved, now
            elif now - last_moved > STALL_TIMEOUT:
                self.warnings.append(f"round {rnd}: no progress for {STALL_TIMEOUT:.0f}s; "
                                     "stopped it")
                view = self.end_round(chain, feeder, ssh, sender, records)
                break
            time.sleep(TICK)
        if feeder is None:
            self.nodes[chain.feeder].stop()
        return view, sender

    def check_liveness(self, chain: Chain, view: dict, finished: set,
                       seen: dict[str, float], live: "_Liveness") -> None:
        """Probe the nodes whose records stopped (see poll)."""
        now = time.monotonic()
        suspects = [n for n in chain.nodes
                    if n not in finished and live.silent(n, seen.get(n), now) >= SILENT_S
                    and live.due(n, now)]
        if suspects:
            self.read_statuses(chain, {}, suspects, live)

    def judge(self, n: str, st: dict) -> None:
        """A relay whose process lives but no longer writes its status is frozen: stop
        it (the node before it sees a reset and goes on; the node goes again next
        round)."""
        if st.get("alive") and st.get("state") not in FINAL_STATES and \
                float(st.get("age", 0)) >= FROZEN_S and n not in self.stop_reason:
            self.stop_reason[n] = (f"its relay stalled (no status for "
                                   f"{float(st['age']):.0f}s while {st.get('state')}); "
                                   "stopped it")
            self.nodes[n].stop()

    def dead_message(self, n: str, rnd: int, st: dict, nxt: str | None,
                     live: "_Liveness", expected: int | None = None) -> str:
        """What a node that stopped answering was doing, for its report."""
        state = st.get("state") or "waiting for the stream"
        doing = state
        if state == "receiving":
            got = int(st.get("bytes_in", 0))
            doing = f"receiving {st['current']}" if st.get("current") else "receiving"
            doing += f" ({human_bytes(got)}" + (f" of {human_bytes(expected)}"
                                                if expected else "") + " in"
            doing += f", forwarding to {nxt})" if nxt and st.get("forwarding") else ")"
        return (f"stopped answering in round {rnd} while {doing}: "
                f"{live.last_error.get(n) or 'no answer'}; the other nodes went on without "
                "it (run again when it is back: it resumes)")

    def end_round(self, chain: Chain, feeder, ssh: dict, sender: dict, records: dict
                  ) -> dict:
        """Stop a round now: the relays and the feeder still reachable are stopped
        (partial files stay), their last status read. Returns each node's view."""
        reachable = [n for n in chain.nodes if n not in self.dead]
        self.parallel(lambda n: self.nodes[n].stop(), reachable, deadline=STEP_DEADLINE)
        if feeder is not None:
            feeder.stop.set()
            feeder.cut()
        elif chain.feeder not in self.dead:
            self.parallel(lambda n: self.nodes[n].stop(), [chain.feeder],
                          deadline=STEP_DEADLINE)
        self.read_statuses(chain, ssh, reachable)
        return {n: records[n] if records.get(n, {}).get("final") else ssh[n]
                for n in chain.nodes}

    def show_progress(self, chain: Chain, view: dict, feeder, node_bytes: dict, rnd: int):
        ins = [int(view[n].get("bytes_in", 0)) for n in chain.nodes
               if view[n].get("state") != "failed"]
        done_bytes = feeder.sent if feeder is not None else (min(ins) if ins else 0)
        for n in chain.nodes:
            st = view[n]
            state = st.get("state")
            if state == "done":
                self.phase_nodes[n] = "verified"
            elif state == "failed" or st.get("lost"):
                self.phase_nodes[n] = "failed"
            elif state == "receiving":
                pct = 100 * int(st.get("bytes_written", 0)) / max(1, node_bytes[n])
                self.phase_nodes[n] = f"{min(pct, 100):.0f}%"
            else:
                self.phase_nodes[n] = "waiting"
        total = chain.stream_bytes
        self.emit("transferring", total=total, done=min(done_bytes, total), rnd=rnd)

    def read_statuses(self, chain: Chain, statuses: dict, names: list[str] | None = None,
                      live: "_Liveness | None" = None) -> None:
        """Read relays' status files over SSH (PROBE_TIMEOUT). With `live`, a node that
        does not answer counts a missed probe (its status stays as it was); without, it
        reads as failed."""
        names = [n for n in (chain.nodes if names is None else names) if n not in self.dead]
        if live is not None:
            names = [n for n in names if live.due(n, time.monotonic())]
            for n in names:
                live.probed(n, time.monotonic())
        got = self.parallel(lambda n: self.nodes[n].status("relay", timeout=PROBE_TIMEOUT),
                            names, deadline=PROBE_TIMEOUT + 5)
        for n, st in got.items():
            if isinstance(st, Exception):
                if live is not None:
                    live.missed(n, _msg(n, st))
                    continue
                st = {"state": "failed", "error": _msg(n, st), "alive": False}
            elif live is not None:
                live.answered(n)
                self.judge(n, st)
            if st:
                statuses[n] = st

    def stop_orphans(self, chain: Chain, statuses: dict, feeder, sender: dict,
                     finished: set, stopped: set) -> None:
        """Stop a relay nobody will connect to: its upstream ended without forwarding."""
        for i, n in enumerate(chain.nodes):
            if n in finished or n in stopped or statuses[n].get("state") != "listening":
                continue
            if i == 0:
                up_over = (feeder is not None and not feeder.is_alive()
                           and not feeder.connected) or \
                          (feeder is None and _final(sender) and sender.get("state") != "done"
                           and not sender.get("bytes_sent"))
                up_err = feeder.error if feeder is not None else sender.get("error")
            else:
                up = statuses[chain.nodes[i - 1]]
                up_over = (_over(up) or up.get("lost")) and not up.get("forwarding")
                up_err = up.get("forward_error") or up.get("error")
            if up_over:
                up_name = chain.feeder if i == 0 else chain.nodes[i - 1]
                self.stop_reason[n] = f"{up_name} before it in the chain did not forward " \
                    "the stream" + (f" ({up_err})" if up_err else "")
                stopped.add(n)
                self.nodes[n].stop()

    def collect(self, n: str, st: dict, need: NodeNeed, feeder_error: str | None
                ) -> tuple[bool, str, bool]:
        """Judge one receiver from its final status: every wanted file written and its
        sha256 equal to the manifest's."""
        r = self.reports[n]
        r.bytes_received += int(st.get("bytes_written", 0))
        r.bytes_resumed += int(st.get("bytes_resumed", 0))
        r.cpu_seconds = round(r.cpu_seconds + float(st.get("cpu_seconds") or 0), 3)
        r.relay_bytes += int(st.get("bytes_in", 0))
        files = st.get("files") or {}
        missing, errors = [], []
        for path in need.send:
            f = files.get(path)
            if not f or not f.get("ok"):
                missing.append(path)
                if f and f.get("error"):
                    errors.append(f"{path}: {f['error']}")
                continue
            want = self.manifest.files[path].sha256
            if want and f.get("sha256") != want:
                # cannot happen unless the feeder lied: remove it so the next round resends
                self.nodes[n].remove_file(posixpath.join(self.root, path))
                missing.append(path)
                errors.append(f"{path}: sha256 {f.get('sha256')} != manifest {want}")
                continue
            r.files_sent += 1
        if not missing:
            if r.files_sent == len(self.manifest.files) or self.verify:
                r.check = "sha256"         # every file was hashed on this node in this run
            return True, "", False
        if st.get("disk_error"):
            return False, f"cannot write: {st['disk_error']}", True
        why = self.stop_reason.pop(n, None) or (errors[0] if errors else None) \
            or st.get("error") or feeder_error or "incomplete"
        if st.get("state") not in FINAL_STATES and not st.get("alive") and st:
            why = "the relay process died" + (f" ({why})" if why else "")
        detail = f"{len(missing)} of {len(need.send)} files not written ({why})"
        return False, detail, False

    # ------------------------------------------------------------------ end
    def shutdown(self) -> None:
        """Stop whatever of this sync still runs on the nodes, remove its run folder (and
        those of runs that are over); a node that is in sync loses its staging folder
        (partial files of versions nobody wants any more). Nodes that stopped answering
        are left alone: the next sync cleans up there."""
        staging = self.staging if self.manifest is not None else None
        own_staging = self.manifest is not None and self.manifest.kind == "dir"
        try:
            stale = self.stale_runs()
        except Exception:  # noqa: BLE001 - cleanup of old runs is best effort
            stale = {}

        def finish(n: str) -> None:
            r = self.reports.get(n)
            in_sync = own_staging and r is not None and r.state in (SYNCED, UNCHANGED)
            self.nodes[n].finish(staging, in_sync=in_sync, stale=stale.get(n))

        self.parallel(finish, list(self.nodes), deadline=STEP_DEADLINE)
        for n in self.dead:
            self.warnings.append(f"{n}: not cleaned up (it stopped answering); the next "
                                 "sync removes this run's folder and stops its relay there")

    def stale_runs(self) -> dict[str, list[str]]:
        """Run folders of other syncs that are over, per node: their sync-NAME lock is
        not held on the head (the lock lives as long as its controller's connection), or
        (no name: an older clusterctl) untouched for an hour."""
        listed = {n: node.other_runs for n, node in self.nodes.items()
                  if node.other_runs and n not in self.dead}
        names = sorted({name for runs in listed.values() for name, _ in runs.values()
                        if name})
        held: set[str] | None = set()
        if names:
            try:
                res = self.session.connection(self.inv.head).run(
                    held_locks_script([f"sync-{x}" for x in names]), check=False,
                    timeout=PROBE_TIMEOUT)
                held = {ln[5:] for ln in res.stdout.splitlines() if ln.startswith("HELD ")}
            except ClusterctlError:
                held = None                   # unknown: keep every named folder
        out: dict[str, list[str]] = {}
        for n, runs in listed.items():
            for folder, (name, old) in runs.items():
                gone = old if not name else (held is not None and f"sync-{name}" not in held)
                if gone:
                    out.setdefault(n, []).append(folder)
        return out


class _ControllerFeeder(threading.Thread):
    """The controller streams its local files to the first relay (one copy) and reads the
    chain's status records coming back on the same connection."""

    def __init__(self, first: SyncNode, hops: list[dict], chain: Chain, sources: dict[str, str],
                 want: dict, bwlimit: int | None = None):
        super().__init__(daemon=True, name="sync-feeder")
        self.first, self.hops, self.chain, self.sources = first, hops, chain, sources
        self.want = want
        self.bwlimit = bwlimit
        self.sent = 0
        self.digests: dict[str, str] = {}
        self.error: str | None = None
        self.connected = False
        self.chain_over = False              # every relay has reported and closed
        self.records: dict[str, dict] = {}
        self.seen: dict[str, float] = {}     # node -> when its last record came
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stream = None

    def _count(self, n: int) -> None:
        self.sent += n

    def _on_line(self, line: bytes) -> None:
        try:
            rec = json.loads(line.decode())
        except ValueError:
            return
        with self.lock:
            node_agent.merge_record(self.records, rec)
            if rec.get("node"):
                self.seen[rec["node"]] = time.monotonic()

    def seen_at(self) -> dict[str, float]:
        with self.lock:
            return dict(self.seen)

    def cut(self) -> None:
        """Wake the thread where it blocks (a send to a node that stopped answering)."""
        stream = self.stream
        if stream is None:
            return
        try:
            if isinstance(stream, socket.socket):
                stream.shutdown(socket.SHUT_RDWR)
            else:
                stream.close()
        except OSError:
            pass

    def _on_lost(self, name: str, error: str) -> None:
        with self.lock:
            node_agent.merge_record(self.records, {"node": name, "lost": True, "error": error})

    def snapshot(self) -> dict[str, dict]:
        with self.lock:
            return dict(self.records)

    def run(self) -> None:
        stream = pump = None
        try:
            hop = self.hops[0]
            stream = self.first.open_stream(hop["ip"], int(hop["port"]), STALL_TIMEOUT)
            self.stream = stream
            if self.stop.is_set():
                raise node_agent.StreamError("stopped")
            self.connected = True
            pump = node_agent._RecordPump(stream, hop["name"], self._on_line, self._on_lost)
            pump.start()
            self.digests = node_agent.send_stream(
                stream, [f.to_dict() for f in self.chain.files], hop, self.hops[1:],
                self.sources, on_bytes=self._count, stop=self.stop, bwlimit=self.bwlimit,
                want=self.want)
            stream.shutdown(socket.SHUT_WR)
            while pump.is_alive() and not self.stop.is_set():
                pump.join(timeout=TICK)
        except Exception as exc:  # noqa: BLE001 - reported in the round
            self.error = str(exc) or type(exc).__name__
        finally:
            self.chain_over = True
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class _Liveness:
    """When each node of a round was last heard from, and its failed probes."""

    def __init__(self, nodes: list[str], started: float):
        self.started = started
        self.next_probe: dict[str, float] = {}
        self.misses: dict[str, int] = {}
        self.last_error: dict[str, str] = {}

    def silent(self, n: str, seen: float | None, now: float) -> float:
        return now - max(self.started, seen or 0.0)

    def due(self, n: str, now: float) -> bool:
        return now >= self.next_probe.get(n, 0.0)

    def probed(self, n: str, now: float) -> None:
        self.next_probe[n] = now + PROBE_EVERY

    def missed(self, n: str, error: str) -> int:
        self.misses[n] = self.misses.get(n, 0) + 1
        self.last_error[n] = error
        return self.misses[n]

    def answered(self, n: str) -> None:
        self.misses.pop(n, None)


def _sender_seen(sender: dict) -> dict[str, float]:
    """A remote sender's "seen" times (its node's clock) as this machine's monotonic
    times, using the node's clock at the moment its status was read."""
    seen, node_now, read_at = sender.get("seen") or {}, sender.get("node_time"), \
        sender.get("read_at")
    if not seen or node_now is None or read_at is None:
        return {}
    return {n: read_at - max(0.0, float(node_now) - float(t)) for n, t in seen.items()}


def _final(st: dict) -> bool:
    """An SSH-read status (it has "alive"): the process ended or is gone."""
    return bool(st) and (st.get("state") in FINAL_STATES or not st.get("alive"))


def _over(st: dict) -> bool:
    """A node's view (a record from the chain, or an SSH-read status) says it is over."""
    if st.get("final"):
        return True
    return "alive" in st and _final(st)


def _msg(name: str, exc) -> str:
    text = str(exc)
    return text.removeprefix(f"{name}: ")


def _last_json(text: str):
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


__all__ = ["sync_model", "MAX_ROUNDS", "human_bytes"]
