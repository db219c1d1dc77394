"""deploy-model, undeploy, status: the steps that touch hosts.

deploy_model: connect -> facts (one round trip per host) -> resolve and size the model ->
plan (planner.plan_model) -> layout (layout.py, pure) -> sync the model to the hosts that
load it -> units through the engine (roles llamacpp_serve / vllm_serve, nginx for
replicas; so --check and idempotence come from the ops) -> record on the head -> ready =
/v1/models lists the model AND a chat completion returns text, on every group and through
the load balancer. A failure shows the journal tail of the unit that failed.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import EXIT_CHANGES_PENDING, ClusterctlError, HostError, InputError
from ..facts import BASE_REQUESTS, FactRequest, Facts, build_script, parse_output
from ..remote import Connection
from ..session import Session, failure_reason, parallel_map
from ..secret import Secret
from .commands import (FREE_MEMORY_SCRIPT, FreeMemory, api_key_env_text, api_key_file_text,
                       api_key_problem, chat_request, curl_config, judge_chat, judge_models,
                       nginx_auth_text, parse_free_memory)
from .layout import (RECORD_DIR, Access, Deployment, HostInfo, beside_fit, beside_obstacle,
                     beside_probe_hosts, layout_llamacpp, layout_vllm, lb_config, other_slot,
                     parse_record, port_conflicts, public_address, record_json,
                     watch_state_path)
from .models import (ModelRef, default_deployment_name, models_dir_of, remote_model_info,
                     resolve_model, sync_to)
from .modelinfo import ModelInfo, read_model_info
from ..monitoring import (SCRAPE_KEY_FILE, monitoring_enabled, register_deployment,
                          unregister_deployment)
from .planner import NodeGPUs, Plan, plan_model

Log = Callable[[str], None]


class DeployFailed(ClusterctlError):
    """The units started but the model never answered (or a unit failed)."""


@dataclass
class DeployOptions:
    backend: str | None = None               # llamacpp | vllm | None (from the format)
    name: str | None = None
    port: int | None = None
    rpc_port: int | None = None
    replicas: int = 1
    lb_host: str | None = None
    served_name: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.90
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    executor: str | None = None
    tensor_split: list[float] | None = None
    rpc_on_head: bool = False
    rpc_cache: bool = True
    enforce_eager: bool = False
    cpu_kvcache_gb: int | None = None
    extra_args: list[str] = field(default_factory=list)
    timeout: float = 900.0
    restart: bool = False
    check: bool = False
    diff: bool = False
    limit: list[str] | None = None
    forks: int = 20
    accept_new_host_keys: bool = False
    sync: bool = True
    force: bool = False                      # deploy on GPU hosts that fail the GPU check
    break_lock: bool = False                 # take the deployment's lock from a dead run
    api_key_secrets: list[str] = field(default_factory=list)   # names under secrets:
    tls_cert: str | None = None              # controller-side PEM files for the gateway
    tls_key: str | None = None


@dataclass
class DeployResult:
    deployment: Deployment
    plan: Plan | None
    check: bool
    changed: int = 0
    sync_seconds: float = 0.0
    launch_seconds: float = 0.0
    ready_seconds: float | None = None
    reply: str | None = None
    report: object = None

    @property
    def exit_code(self) -> int:
        """0; 3 under --check when something would change (failures raise)."""
        return EXIT_CHANGES_PENDING if self.check and self.changed else 0

    def to_dict(self) -> dict:
        d = self.deployment
        return {"name": d.name, "backend": d.backend, "endpoint": d.endpoint,
                "served_model_name": d.served_name, "model": d.model,
                "model_path": d.model_path, "check": self.check, "changed": self.changed,
                "sync_seconds": round(self.sync_seconds, 2),
                "launch_seconds": round(self.launch_seconds, 2),
                "ready_seconds": None if self.ready_seconds is None
                else round(self.ready_seconds, 2),
                "reply": self.reply, "warnings": d.warnings,
                "api_key_secrets": d.api_key_secrets,
                "groups": [{"endpoint": g.endpoint, "hosts": g.hosts, "units": g.units}
                           for g in d.groups],
                "load_balancer": None if d.lb is None else
                {"host": d.lb.host, "endpoint": d.lb.endpoint, "servers": d.lb.servers},
                "units": [{"host": u.host, "name": u.name, "kind": u.kind, "bind": u.bind,
                           "argv": u.argv} for u in d.units]}


# --------------------------------------------------------------------------- hosts


def gather_facts(conns: dict[str, Connection], forks: int = 20) -> dict[str, Facts]:
    """Base facts (interfaces, GPUs, memory, CPUs) of every host, one round trip each."""
    requests = sorted(set(BASE_REQUESTS), key=lambda r: (r.kind, r.arg))
    script = build_script(requests)

    def one(conn: Connection) -> Facts:
        res = conn.run(["bash", "-c", script], check=False)
        if res.exit_code != 0 and not res.stdout:
            raise HostError(conn.name, f"fact gathering failed: {res.stderr.strip()[-300:]}")
        return parse_output(res.stdout, requests)

    return _parallel(conns, one, forks)


def _parallel(conns: dict[str, Connection], fn, forks: int = 20) -> dict:
    """fn(conn) for every connection through the session's bounded map; the first
    failure (in the given order) is raised once all have finished."""
    group = parallel_map(fn, list(conns.values()), forks=forks, name=lambda c: c.name)
    for name in conns:
        if name in group.failed:
            raise group.outcome(name)
    return dict(group.succeeded)


def open_session(inventory, opts_or_forks, accept_new_host_keys: bool = False) -> Session:
    forks = getattr(opts_or_forks, "forks", opts_or_forks)
    accept = getattr(opts_or_forks, "accept_new_host_keys", accept_new_host_keys)
    return Session(inventory, forks=forks, accept_new_host_keys=accept)


def connect_all(session: Session, hosts: list, what: str = "cannot reach") -> dict:
    """The session's connections to `hosts`; an unreachable host is a ClusterctlError
    naming every one that failed."""
    connected = session.connect(hosts)
    if connected.failed:
        raise ClusterctlError(what + " " + "; ".join(
            f"{n}: {f.reason}" for n, f in connected.failed.items()))
    return dict(connected.succeeded)


def host_infos(hosts: list, facts: dict[str, Facts]) -> list[HostInfo]:
    """HostInfo of each host (head first), from inventory vars and facts."""
    from ..session import cluster_address
    out = []
    for h in sorted(hosts, key=lambda h: not h.is_head):
        f = facts[h.name]
        _iface, ip = cluster_address(h, f)
        detected = list(f.gpus or [])
        count = h.gpus if h.gpus is not None else len(detected)
        mem = h.vars.get("gpu_memory_mib")
        if mem is None:
            mems = [g.memory_mib for g in detected if g.memory_mib]
            mem = min(mems) if mems else None
        out.append(HostInfo(name=h.name, cluster_ip=ip or "", is_head=h.is_head, gpus=count,
                            gpu_memory_mib=int(mem) if mem else None, ram_mib=f.memory_mib,
                            cpus=f.cpus, venv=(h.vars.get("python") or {}).get(
                                "venv", "/opt/clusterctl/venv"),
                            llamacpp_prefix=(h.vars.get("llamacpp") or {}).get(
                                "prefix", "/opt/clusterctl/llama.cpp")))
    return out


def node_gpus(infos: list[HostInfo]) -> list[NodeGPUs]:
    out = []
    for h in infos:
        if h.gpus and not h.gpu_memory_mib:
            raise InputError(f"{h.name}: {h.gpus} GPUs but their memory is unknown (nvidia-smi "
                             f"did not answer): set gpu_memory_mib for this host in the "
                             f"inventory", key="gpu_memory_mib")
        out.append(NodeGPUs(h.name, h.gpus, h.gpu_memory_mib or 0, ram_mib=h.ram_mib))
    return out


def override_plan(plan: Plan, infos: list[HostInfo], tp: int | None, pp: int | None) -> Plan:
    """The plan with tensor/pipeline parallel sizes set by hand (placement recomputed,
    fit not re-checked: a warning says so)."""
    if tp is None and pp is None:
        return plan
    tp = tp or plan.tensor_parallel_size
    pp = pp or plan.pipeline_parallel_size
    if tp < 1 or pp < 1:
        raise InputError("parallel sizes must be >= 1")
    if plan.device == "cpu":
        if tp != 1 and pp > 1:
            raise InputError("on CPU, --tensor-parallel-size > 1 runs on one node; "
                             "pipeline stages go one per node")
        n_nodes = pp if tp == 1 else 1
        if n_nodes > len(infos):
            raise InputError(f"--pipeline-parallel-size {pp} needs {pp} nodes on CPU; "
                             f"{len(infos)} selected")
        nodes = [h.name for h in infos[:n_nodes]]
        per = {n: 0 for n in nodes}
    else:
        gpu_hosts = [h for h in infos if h.gpus]
        need = tp * pp
        nodes, per, left = [], {}, need
        for h in gpu_hosts:
            if left <= 0:
                break
            take = min(h.gpus, left) if pp == 1 else min(h.gpus, tp)
            nodes.append(h.name)
            per[h.name] = take
            left -= take
        if left > 0:
            raise InputError(f"TP={tp} x PP={pp} needs {need} GPUs; the selected hosts have "
                             f"{sum(h.gpus for h in gpu_hosts)}")
    return replace(plan, tensor_parallel_size=tp, pipeline_parallel_size=pp, nodes=nodes,
                   gpus_per_node=per, warnings=plan.warnings + [
                       f"parallel sizes set by hand (TP={tp}, PP={pp}): the fit was checked "
                       f"for the planner's layout, not this one"])


# --------------------------------------------------------------------------- GPU gate


def check_gpu_health(targets: list, facts: dict[str, Facts], conns: dict[str, Connection],
                     opts: DeployOptions, log: Log = lambda s: None) -> list:
    """The GPU readiness gate (gpu_health.py): the `gpu_health` fact of the targets that
    have or should have GPUs (one more round trip, those hosts only). A host with an
    error finding (ECC errors, fatal XID, GPU missing, ...) stops the deployment, naming
    host, reason and fix, unless opts.force (then it is logged as a WARNING, like the
    warnings). Returns the findings."""
    from ..gpu_health import ERROR, INFO, assess, gpu_gate, host_input
    gpu_hosts = [h for h in targets if facts[h.name].gpus or h.gpus]
    if not gpu_hosts:
        return []
    requests = [FactRequest("gpu_health")]
    script = build_script(requests)

    def one(conn: Connection) -> Facts:
        res = conn.run(["bash", "-c", script], check=False)
        try:
            return parse_output(res.stdout, requests)
        except ValueError as exc:
            raise HostError(conn.name, f"GPU health check failed: {exc}; "
                            f"{res.stderr.strip()[-300:]}") from None

    health = _parallel({h.name: conns[h.name] for h in gpu_hosts}, one, opts.forks)
    findings, _passing, _failing = assess(
        {h.name: host_input(h, facts[h.name].merged(health[h.name])) for h in gpu_hosts})
    _allowed, refused = gpu_gate(findings, [h.name for h in gpu_hosts], force=False)
    for f in findings:
        if f.severity != ERROR or opts.force:
            label = "note" if f.severity == INFO else "WARNING"
            log(f"{label}: {f.host}: {f.message} (fix: {f.fix})")
    if refused and not opts.force:
        lines = [f"{f.host}: {f.message}\n    fix: {f.fix}" for f in findings
                 if f.severity == ERROR]
        names = ",".join(f"!{h}" for h in refused)
        raise ClusterctlError(
            f"GPU check: {len(refused)} host(s) not fit to serve ({', '.join(refused)}):\n  "
            + "\n  ".join(lines) + f"\nfix them, leave them out (--limit '{names}'), or "
            "deploy anyway with --force")
    return findings


# --------------------------------------------------------------------------- access

MAX_TLS_FILE = 1 << 20


def resolve_api_keys(inventory, names: list[str]) -> list[Secret]:
    """The keys named by --api-key-secret, from the inventory's `secrets:` (the head's
    vars). An unknown name, an empty one or a key unfit for a header is an InputError
    naming the secret, never showing its value."""
    secrets = inventory.head.vars.get("secrets") or {}
    keys: list[Secret] = []
    for name in dict.fromkeys(names):              # a name given twice counts once
        value = secrets.get(name) if isinstance(secrets, dict) else None
        if value is None:
            known = sorted(k for k, v in secrets.items() if v is not None) \
                if isinstance(secrets, dict) else []
            raise InputError(f"--api-key-secret {name}: no secret named {name!r} under "
                             f"secrets: in the inventory (known: "
                             f"{', '.join(known) or 'none'}); add it there, e.g. "
                             f"secrets: {{{name}: <output of openssl rand -hex 32>}}",
                             file=str(inventory.path), key=f"secrets.{name}")
        if not isinstance(value, Secret):
            raise InputError(f"--api-key-secret {name}: secrets.{name} must be one text "
                             f"value", file=str(inventory.path), key=f"secrets.{name}")
        problem = api_key_problem(value.reveal())
        if problem:
            raise InputError(f"--api-key-secret {name}: the key {problem}",
                             file=str(inventory.path), key=f"secrets.{name}")
        keys.append(value)
    return keys


def read_tls_files(cert: str | None, key: str | None) -> tuple[bytes, bytes] | None:
    """The gateway's certificate and key from this machine (bounded, PEM checked)."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise InputError("TLS needs both --tls-cert and --tls-key",
                         key="--tls-cert" if not cert else "--tls-key")
    out = []
    for path, opt, marker in ((cert, "--tls-cert", b"-----BEGIN CERTIFICATE-----"),
                              (key, "--tls-key", b"PRIVATE KEY-----")):
        p = Path(path).expanduser()
        try:
            if not p.is_file():
                raise InputError(f"{path}: not a regular file", file=path, key=opt)
            if p.stat().st_size > MAX_TLS_FILE:
                raise InputError(f"{path}: larger than {MAX_TLS_FILE} bytes", file=path,
                                 key=opt)
            data = p.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}", file=path,
                             key=opt) from None
        if marker not in data:
            raise InputError(f"{path}: not a PEM file (no {marker.decode()!r} line)",
                             file=path, key=opt)
        out.append(data)
    return out[0], out[1]


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _remote_sums(conn: Connection, paths: list[str]) -> dict[str, str]:
    res = conn.run(["sha256sum", "--", *paths], check=False)
    sums = {}
    for line in res.stdout.splitlines():
        digest, _, path = line.partition("  ")
        sums[path] = digest
    return sums


def secret_files(dep: Deployment, keys: list[Secret], tls: tuple[bytes, bytes] | None
                 ) -> dict[str, dict[str, bytes]]:
    """host -> {path: content} of every 0600 file the deployment's access needs: the
    servers' key files and, on the gateway, the key map and the TLS files."""
    plain = [k.reveal() for k in keys]
    out: dict[str, dict[str, bytes]] = {}
    if plain:
        for u in dep.units:
            if u.key_file:
                text = api_key_env_text(plain) if u.kind.startswith("vllm") \
                    else api_key_file_text(plain)
                out.setdefault(u.host, {})[u.key_file] = text.encode()
    if dep.lb is not None:
        files = out.setdefault(dep.lb.host, {})
        if dep.lb.auth_path and plain:
            files[dep.lb.auth_path] = nginx_auth_text(dep.name, plain).encode()
        if dep.lb.tls_cert and tls:
            files[dep.lb.tls_cert], files[dep.lb.tls_key] = tls
    return {h: f for h, f in out.items() if f}


def install_secret_files(dep: Deployment, keys: list[Secret],
                         tls: tuple[bytes, bytes] | None, conns: dict[str, Connection], *,
                         check: bool = False, forks: int = 20) -> dict[str, dict[str, str]]:
    """Write the access files (0600 in 0700 folders) where their content differs.
    Returns host -> {path: "new" | "changed"} of the files written (or that would be,
    with check). Their values never reach argv or output: only sha256 sums are
    compared."""
    wanted = secret_files(dep, keys, tls)

    def one(conn: Connection) -> dict[str, str]:
        files = wanted[conn.name]
        sums = _remote_sums(conn, sorted(files))
        changed = {p: "changed" if p in sums else "new" for p, data in sorted(files.items())
                   if sums.get(p) != _sha256(data)}
        if changed and not check:
            folders = sorted({p.rsplit("/", 1)[0] for p in changed})
            conn.run(["mkdir", "-p", "-m", "0700", *folders])
            conn.run(["chmod", "0700", *folders])
            for p in changed:
                conn.put(files[p], p, mode=0o600)
        return changed

    if not wanted:
        return {}
    return {h: c for h, c in _parallel({h: conns[h] for h in wanted}, one, forks).items()
            if c}


def apply_secret_changes(dep: Deployment, changes: dict[str, dict[str, str]], conns,
                         log: Log) -> None:
    """After the units are installed: servers whose key file changed restart (their unit
    file did not change), a changed key map or TLS file reloads nginx. New files need
    neither: the unit or site that reads them is new or changed too (the engine
    started, restarted or reloaded it)."""
    for host, files in changes.items():
        paths = [p for p, how in files.items() if how == "changed"]
        units = [u.name for u in dep.units_on(host) if u.key_file in paths]
        if units:
            log(f"API keys changed: restarting {', '.join(units)} on {host}")
            conns[host].run(["systemctl", "try-restart", *units])
        if dep.lb is not None and host == dep.lb.host and \
                set(paths) & set(dep.lb.secret_files):
            log(f"API keys or TLS files of the gateway changed: reloading nginx on {host}")
            conns[host].run("nginx -t -q && systemctl reload-or-restart nginx.service")


def _changed_hosts(changes: dict[str, dict[str, str]]) -> set[str]:
    return {h for h, files in changes.items() if "changed" in files.values()}


def _remove_key_files(units, conns) -> None:
    by_host: dict[str, set[str]] = {}
    for u in units:
        if u.key_file and u.host in conns:
            by_host.setdefault(u.host, set()).add(u.key_file)
    for host, paths in by_host.items():
        conns[host].run(["rm", "-f", *sorted(paths)], check=False)


def deployment_key(inventory, dep: Deployment) -> Secret | None:
    """The key the tool itself uses for a recorded deployment (readiness, status): the
    first of its secrets that this inventory has; None when it has no key."""
    if not dep.api_key_secrets:
        return None
    secrets = inventory.head.vars.get("secrets") or {}
    for name in dep.api_key_secrets:
        value = secrets.get(name) if isinstance(secrets, dict) else None
        if isinstance(value, Secret) and value:
            return value
    return None


# --------------------------------------------------------------------------- records


def read_record_files(conn: Connection, folder: str) -> list[tuple[str, Deployment]]:
    """(path, deployment) of every record in `folder` on this host; unreadable ones are
    left out."""
    script = (f"for f in {shlex.quote(folder)}/*.json; do [ -f \"$f\" ] || continue; "
              f"printf '%s\\0' \"$f\"; cat \"$f\"; printf '\\0'; done")
    parts = conn.run(script, check=False).stdout.split("\0")
    out = []
    for i in range(0, len(parts) - 1, 2):
        try:
            out.append((parts[i], parse_record(parts[i + 1], f"{conn.name}:{parts[i]}")))
        except InputError:
            continue
    return out


def read_records(conn: Connection) -> list[Deployment]:
    """Every deployment recorded on this host (the head)."""
    return sorted((d for _p, d in read_record_files(conn, RECORD_DIR)), key=lambda d: d.name)


def write_record(conn: Connection, dep: Deployment) -> None:
    conn.run(["mkdir", "-p", RECORD_DIR])
    conn.put(record_json(dep), dep.record_path(), mode=0o644)


# --------------------------------------------------------------------------- playbook


def unit_was_active(facts, name: str) -> bool:
    """For handlers: was the unit running when the play started (from gathered facts)."""
    try:
        fact = facts.get(FactRequest("unit", name))
    except KeyError:
        return False
    return fact.get("active_state") in ("active", "activating", "reloading")


def build_plays(dep: Deployment, roles_paths: list[Path] | None = None) -> list:
    """Plays for the deployment: per phase (RPC servers and headless ranks first), one play
    per "slot" (the k-th unit of each host), then the load balancer."""
    from ..engine.roles import Play, default_roles_paths, load_role
    paths = roles_paths or default_roles_paths()
    role = load_role("llamacpp_serve" if dep.backend == "llamacpp" else "vllm_serve", paths)
    plays = []
    for phase in sorted({u.phase for u in dep.units}):
        slots: list[dict] = []
        for u in (u for u in dep.units if u.phase == phase):
            for slot in slots:
                if u.host not in slot:
                    slot[u.host] = u
                    break
            else:
                slots.append({u.host: u})
        for slot in slots:
            kinds = sorted({u.kind for u in slot.values()})
            plays.append(Play(
                name=f"{dep.name}: {', '.join(kinds)}", hosts=",".join(slot), roles=[role],
                file="<deploy-model>", line=0,
                vars={"deploy_units": {h: u.template_vars() for h, u in slot.items()},
                      "unit_was_active": unit_was_active,
                      "rpc_watch_script": _rpc_watch_script()}))
    if dep.lb is not None:
        plays.append(Play(name=f"{dep.name}: load balancer", hosts=dep.lb.host,
                          roles=[loadbalancer_role()], file="<deploy-model>", line=0,
                          vars={"lb": {"config_path": dep.lb.config_path,
                                       "config": dep.lb.config}}))
    return plays


def _rpc_watch_script() -> str:
    """The watchdog program the llama.cpp role installs beside a llama-server with RPC
    workers (stdlib only: the node's /usr/bin/python3 runs it)."""
    return (Path(__file__).with_name("rpcwatch.py")).read_text()


def loadbalancer_role():
    """The nginx tasks of templates/deploy/loadbalancer.yaml as a role."""
    from ..engine.roles import Role, parse_task, project_root
    from ..engine.yamlfile import line_of, load_yaml
    from ..ops import OPS
    from ..engine.roles import ENGINE_OPS
    base = project_root() / "templates" / "deploy"
    known = set(OPS) | ENGINE_OPS

    def tasks(path: Path):
        data = load_yaml(path, default=[])
        return [parse_task(item, role="deploy_lb", file=str(path),
                           line=line_of(data, i) or 1, known_ops=known)
                for i, item in enumerate(data)]
    handlers = {t.name: t for t in tasks(base / "loadbalancer.handlers.yaml")}
    return Role(name="deploy_lb", path=base, tasks=tasks(base / "loadbalancer.yaml"),
                handlers=handlers, defaults={})


def run_units(inventory, dep: Deployment, opts: DeployOptions, reporter=None,
              session: Session | None = None):
    from ..engine.runner import RunOptions, run_playbook
    plays = build_plays(dep)
    options = RunOptions(check=opts.check, diff=opts.diff, forks=opts.forks,
                         accept_new_host_keys=opts.accept_new_host_keys,
                         limit=list(dep.hosts))
    return run_playbook(inventory, plays, options, reporter, session)


# --------------------------------------------------------------------------- unit state


_SHOW_KEYS = ("Id", "ActiveState", "SubState", "NRestarts", "Result", "LoadState")


def unit_states(conn: Connection, units: list[str]) -> dict[str, dict]:
    if not units:
        return {}
    res = conn.run(["systemctl", "show", "-p", ",".join(_SHOW_KEYS), "--", *units],
                   check=False)
    out: dict[str, dict] = {}
    blocks = [b for b in res.stdout.strip().split("\n\n") if b.strip()]
    for name, block in zip(units, blocks):
        info = {}
        for line in block.splitlines():
            k, _, v = line.partition("=")
            info[k] = v
        out[name] = info
    for name in units:
        out.setdefault(name, {"ActiveState": "unknown"})
    return out


_NOTABLE = re.compile(r"(Error|ERROR|error:|Failed|failed to|No such file|cannot |Killed|"
                      r"Out of memory|out of memory|denied)")


def journal_tail(conn: Connection, unit: str, lines: int = 30, scan: int = 400) -> str:
    """The unit's last `lines` journal lines, preceded by the error-looking lines among
    the `scan` before them (servers often print the cause long before they exit: vLLM's
    "See root cause above")."""
    res = conn.run(["journalctl", "-u", unit, "-n", str(scan), "--no-pager", "-o", "cat"],
                   check=False)
    text = res.stdout.rstrip() or res.stderr.rstrip()
    all_lines = text.splitlines()
    tail = all_lines[-lines:]
    earlier = [ln for ln in all_lines[:-lines] if _NOTABLE.search(ln)]
    seen: set[str] = set()
    notable = [ln for ln in earlier if not (ln in seen or seen.add(ln))][-12:]
    if notable:
        return "\n".join(["(earlier, error-looking lines:)", *notable, "(last lines:)", *tail])
    return "\n".join(tail)


def _tail_block(host: str, unit: str, text: str) -> str:
    body = "\n".join("    " + ln for ln in text.splitlines()) or "    (journal empty)"
    return f"journal of {unit} on {host}:\n{body}"


# --------------------------------------------------------------------------- readiness


def _curl(conn: Connection, url: str, *, body: str | None, timeout: float,
          key: Secret | None) -> tuple[int, str]:
    """One HTTP request from `conn`'s host. With a key, the headers (and the body) go
    in a curl config on stdin, never in argv. https is the gateway's own certificate on
    a cluster address: not verified (it proves the server answers, not who it is)."""
    argv = ["curl", "-sS", "-m", str(int(timeout))]
    if url.startswith("https:"):
        argv.append("-k")
    stdin = None
    if key is not None:
        headers = [f"Authorization: Bearer {key.reveal()}"]
        if body is not None:
            headers.append("Content-Type: application/json")
        argv += ["-K", "-"]
        stdin = curl_config(headers, body)
    elif body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        stdin = body
    res = conn.run(argv + ["-o", "-", "-w", "\n%{http_code}", url], check=False, stdin=stdin)
    text, _, code = res.stdout.rpartition("\n")
    try:
        return int(code), text
    except ValueError:
        return 0, res.stderr.strip() or res.stdout


def http_get(conn: Connection, url: str, timeout: float = 5, key: Secret | None = None
             ) -> tuple[int, str]:
    return _curl(conn, url, body=None, timeout=timeout, key=key)


def http_post_json(conn: Connection, url: str, body: str, timeout: float = 120,
                   key: Secret | None = None) -> tuple[int, str]:
    return _curl(conn, url, body=body, timeout=timeout, key=key)


def wait_ready(dep: Deployment, conns: dict[str, Connection], *, timeout: float,
               log: Log = lambda s: None, poll: float = 1.0, clock=time.monotonic,
               sleep=time.sleep, key: Secret | None = None) -> tuple[float, str]:
    """Until every group lists the model on /v1/models and answers a chat completion with
    text (and the load balancer does too). Returns (seconds, a reply). Raises DeployFailed
    with the journal tail of the failing unit, or of the servers on timeout."""
    start = clock()
    via = conns[dep.head]
    baseline: dict[tuple[str, str], int] = {}
    for host in dep.hosts:
        names = [u.name for u in dep.units_on(host)]
        for name, st in unit_states(conns[host], names).items():
            baseline[(host, name)] = _int(st.get("NRestarts"))
    targets = [(f"group {g.index} ({g.host})", g.endpoint) for g in dep.groups]
    if dep.lb is not None:
        targets.append((f"load balancer ({dep.lb.host})", dep.lb.endpoint))
    listed: set[str] = set()
    answered: dict[str, str] = {}
    last_detail: dict[str, str] = {}
    last_unit_check = -1e9
    said: set[str] = set()
    while True:
        now = clock()
        if now - last_unit_check >= 3 * poll:
            last_unit_check = now
            _check_units(dep, conns, baseline)
        for label, endpoint in targets:
            if endpoint in answered:
                continue
            if endpoint not in listed:
                code, body = http_get(via, endpoint + "/models", key=key)
                verdict = judge_models(body, dep.served_name) if code == 200 else None
                if verdict is not None and verdict.ok:
                    listed.add(endpoint)
                    if label not in said:
                        log(f"{label}: {verdict.detail} after {clock() - start:.1f}s")
                        said.add(label)
                else:
                    last_detail[endpoint] = (verdict.detail if verdict else
                                             f"/v1/models: HTTP {code or 'no answer'}")
                    continue
            code, body = http_post_json(via, endpoint + "/chat/completions",
                                        chat_request(dep.served_name), key=key)
            verdict = judge_chat(body)
            if code == 200 and verdict.ok:
                answered[endpoint] = verdict.text or ""
                log(f"{label}: chat completion answered after {clock() - start:.1f}s: "
                    f"{(verdict.text or '')[:60]!r}")
            else:
                last_detail[endpoint] = (f"chat completion: HTTP {code}: {verdict.detail}"
                                         if code else "chat completion: no answer")
        if len(answered) == len(targets):
            reply = answered[targets[-1][1]]
            return clock() - start, reply
        if clock() - start > timeout:
            tails = []
            for g in dep.groups:
                server = next(u for u in dep.units if u.group == g.index and u.phase == 1)
                tails.append(_tail_block(server.host, server.name,
                                         journal_tail(conns[server.host], server.name)))
            waiting = "; ".join(f"{e}: {last_detail.get(e, 'waiting')}"
                                for _l, e in targets if e not in answered)
            raise DeployFailed(f"{dep.name}: not ready after {timeout:.0f}s ({waiting})\n"
                               + "\n".join(tails))
        sleep(poll)


def _int(text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def _check_units(dep: Deployment, conns: dict[str, Connection], baseline) -> None:
    with_units = {h: conns[h] for h in dep.hosts if dep.units_on(h)}
    results = _parallel(with_units, lambda c: unit_states(c, [u.name for u in
                                                             dep.units_on(c.name)]),
                        max(1, len(with_units)))
    for host, states in results.items():
        for name, st in states.items():
            active, sub = st.get("ActiveState"), st.get("SubState")
            restarts = _int(st.get("NRestarts")) - baseline.get((host, name), 0)
            bad = active == "failed" or sub == "auto-restart" or restarts > 0 \
                or active in ("inactive", "unknown") or st.get("LoadState") == "not-found"
            if bad:
                why = (f"{active}/{sub}" + (f", restarted {restarts} times" if restarts > 0
                                            else ""))
                raise DeployFailed(f"{dep.name}: {name} on {host} is not running ({why})\n"
                                   + _tail_block(host, name, journal_tail(conns[host], name)))


# --------------------------------------------------------------------------- rolling


def _group_shape(dep: Deployment) -> list[tuple]:
    return [(g.index, g.host, g.ip, g.port, tuple(g.units), tuple(g.hosts))
            for g in dep.groups]


def rolling_groups(previous: Deployment | None, dep: Deployment, *, restart: bool = False,
                   changed_hosts: set[str] | None = None) -> list[int] | None:
    """The groups a redeploy changes, to be rolled one at a time, or None when the
    change cannot roll: no previous deployment, fewer than two groups, no gateway on
    the same host in both, or another shape of groups (other hosts, ports, units).
    `changed_hosts`: hosts whose key files changed (their servers restart)."""
    if previous is None or dep.lb is None or previous.lb is None or len(dep.groups) < 2:
        return None
    if (previous.lb.host, previous.lb.ip, previous.lb.port, previous.lb.servers) != \
            (dep.lb.host, dep.lb.ip, dep.lb.port, dep.lb.servers):
        return None
    if _group_shape(previous) != _group_shape(dep):
        return None
    old = {(u.host, u.name): u for u in previous.units}
    if set(old) != {(u.host, u.name) for u in dep.units}:
        return None
    out = []
    for g in dep.groups:
        units = [u for u in dep.units if u.group == g.index]
        if restart or any(old[(u.host, u.name)].template_vars() != u.template_vars()
                          for u in units) or \
                any(u.key_file and u.host in (changed_hosts or set()) for u in units):
            out.append(g.index)
    return out


def group_deployment(dep: Deployment, index: int) -> Deployment:
    """One group of `dep` as a deployment of its own, without the gateway: its plays
    install just that group, and readiness asks that group directly."""
    g = dep.groups[index]
    return replace(dep, groups=[g], units=[u for u in dep.units if u.group == index],
                   lb=None)


def _put_gateway(dep: Deployment, conns, down: list[str]) -> None:
    """The gateway's config with `down` out of rotation, reloaded gracefully."""
    lb = dep.lb
    assert lb is not None
    c = conns[lb.host]
    c.put(lb_config(dep, down=down), lb.config_path, mode=0o644)
    c.run("nginx -t -q && systemctl reload nginx.service")   # graceful: old workers finish


def _drain(dep: Deployment, index: int, conns, key: Secret | None, log: Log, *,
           timeout: float = 120.0, clock=time.monotonic, sleep=time.sleep) -> None:
    """Wait until the group's server has no request in flight (its /metrics gauges), at
    most `timeout`; a server without those gauges gets a short grace period."""
    from .commands import in_flight_from_metrics
    g = dep.groups[index]
    url = g.endpoint[:-len("/v1")] + "/metrics"
    start = clock()
    while True:
        code, body = http_get(conns[dep.head], url, timeout=5, key=key)
        busy = in_flight_from_metrics(body) if code == 200 else None
        if busy is None:
            sleep(2.0)
            return
        if busy == 0:
            return
        if clock() - start > timeout:
            log(f"rolling: group {index} ({g.host}) still has {busy} request(s) after "
                f"{timeout:.0f}s; restarting it anyway")
            return
        sleep(0.5)


class RollingFailed(DeployFailed):
    """A replica of a rolling redeploy never became ready; the others keep serving."""


def roll(inventory, dep: Deployment, previous: Deployment, groups: list[int], conns,
         opts: DeployOptions, key: Secret | None, log: Log, reporter=None,
         session: Session | None = None, restart_hosts: set[str] | None = None):
    """Redeploy `groups` one at a time behind the gateway: take the group out of the
    nginx upstream (graceful reload), let its requests drain, install and restart it
    with the new config, wait for a real completion sent to it directly, put it back.
    A group that never becomes ready stays out of the gateway, the rolling stops, and
    RollingFailed names it and why; the other groups keep serving (the untouched
    ones with their old config). Returns the engine reports."""
    head = conns[dep.head]
    record = replace(previous, lb=replace(dep.lb))      # what runs, group by group
    reports = []
    for index in groups:
        g = dep.groups[index]
        server = f"{g.ip}:{g.port}"
        log(f"rolling: group {index} ({g.host}, {server}) out of the gateway")
        _put_gateway(dep, conns, [server])
        _drain(dep, index, conns, key, log)
        one = group_deployment(dep, index)
        report = run_units(inventory, one, opts, reporter, session)
        reports.append(report)
        if report.failed_hosts:
            raise RollingFailed(f"{dep.name}: rolling stopped at group {index} ({g.host}): "
                                "units could not be installed on " + ", ".join(
                                    f"{h} ({report.recap[h].error})"
                                    for h in report.failed_hosts)
                                + "; the other groups keep serving")
        if opts.restart or (restart_hosts or set()) & set(g.hosts):
            _restart_units(one, conns, log)
        record.units = [u for u in record.units if u.group != index] + one.units
        try:
            seconds, _reply = wait_ready(one, conns, timeout=opts.timeout, log=log, key=key)
        except DeployFailed as exc:
            record.lb = replace(dep.lb, config=lb_config(dep, down=[server]))
            write_record(head, record)
            raise RollingFailed(
                f"{dep.name}: rolling stopped: group {index} ({g.host}, {server}) did not "
                f"become ready with the new config; it stays out of the gateway and the "
                f"other {len(dep.groups) - 1} group(s) keep serving (those not reached yet "
                f"with their old config). Fix and run deploy-model again.\n{exc}") from None
        log(f"rolling: group {index} ({g.host}) answers with the new config after "
            f"{seconds:.1f}s; back in the gateway")
        _put_gateway(dep, conns, [])
        write_record(head, record)
    return reports


# --------------------------------------------------------------------------- deploy


def deploy_model(inventory, model: str, opts: DeployOptions, *, reporter=None,
                 log: Log = lambda s: None, progress=None,
                 session: Session | None = None) -> DeployResult:
    """Plan, place and launch a model, and wait for a real completion. Every step
    works over one session: one SSH connection per host for the whole command."""
    if opts.backend not in (None, "llamacpp", "vllm"):
        raise InputError(f"--backend must be vllm or llamacpp, got {opts.backend!r}",
                         key="--backend")
    if session is None:
        with open_session(inventory, opts) as own:
            return deploy_model(inventory, model, opts, reporter=reporter, log=log,
                                progress=progress, session=own)
    targets = inventory.select(opts.limit)
    head = inventory.head
    wanted = list(targets) + ([head] if head not in targets else [])
    conns = connect_all(session, wanted)
    facts = gather_facts(conns, opts.forks)
    check_gpu_health(targets, facts, conns, opts, log)
    infos = host_infos(targets, facts)
    models_dir = models_dir_of(inventory)
    ref = resolve_model(model, models_dir, lambda p: _exists(conns[head.name], p))
    info, sync_seconds, ref = _model_info(inventory, ref, conns[head.name], head.name,
                                          opts, log, progress, session)
    backend = opts.backend or ("llamacpp" if info.format == "gguf" else "vllm")
    if backend == "llamacpp" and info.format != "gguf":
        raise InputError(f"{model}: llama.cpp serves GGUF files; this is a Hugging Face "
                         f"folder (convert it with llama.cpp's convert_hf_to_gguf.py, or "
                         f"use --backend vllm)", key="--backend")
    name = opts.name or default_deployment_name(model)
    keys = resolve_api_keys(inventory, opts.api_key_secrets)
    tls = read_tls_files(opts.tls_cert, opts.tls_key)
    if not opts.check:          # one change of a deployment at a time
        session.lock(f"deploy-{name}", f"deploy-model {model} --name {name}",
                     break_stale=opts.break_lock)
    plan = plan_model(info, node_gpus(infos), max_model_len=opts.max_model_len,
                      gpu_memory_utilization=opts.gpu_memory_utilization,
                      kv_cache_dtype=opts.kv_cache_dtype)
    plan = override_plan(plan, infos, opts.tensor_parallel_size,
                         opts.pipeline_parallel_size)
    others = read_records(conns[head.name])
    previous = next((d for d in others if d.name == name), None)
    if previous is not None:
        _connect_more(inventory, conns, previous.hosts, session, log)
    head_ip = host_infos([head], {head.name: facts[head.name]})[0].cluster_ip
    single = previous is not None and len(previous.groups) == 1 and opts.replicas == 1
    access = Access(api_key_secrets=list(dict.fromkeys(opts.api_key_secrets)),
                    tls=tls is not None,
                    keep_gateway=previous is not None and previous.lb is not None
                    and opts.replicas == 1)
    leftovers: list = []
    if single:      # units of an interrupted redeploy beside this one: not the old version
        leftovers = [u for u in previous.units if u.name not in previous.groups[0].units]
        previous = replace(previous, units=[u for u in previous.units if u not in leftovers])
    if access.keep_gateway and opts.lb_host is None and \
            previous.lb.host in {h.name for h in infos}:    # the gateway stays where it is
        opts = replace(opts, lb_host=previous.lb.host)
    dep = _layout(name, model, ref, info, plan, infos, inventory, opts, backend, others,
                  previous, head_ip, access, slot=previous.slot if single else "",
                  gpu_ids=_recorded_gpu_ids(previous) if single else None)
    for w in dep.warnings:
        log(w)
    if not keys and dep.lb is not None:
        log(f"note: no API key: anyone on the cluster network can use {dep.endpoint} "
            "(--api-key-secret NAME puts a key on every route)")

    if opts.check:
        secret_changes = install_secret_files(dep, keys, tls, conns, check=True,
                                              forks=opts.forks)
        for host, paths in secret_changes.items():
            log(f"would write {', '.join(paths)} on {host} (0600)")
        report = run_units(inventory, dep, opts, reporter, session)
        return DeployResult(dep, plan, True, changed=report.changed + sum(
            len(p) for p in secret_changes.values()), report=report)

    need_model = _hosts_needing_model(dep)
    if (opts.sync and ref.sync_source is not None) or _needs_spread(ref, need_model,
                                                                      head.name):
        t = time.monotonic()
        _sync(inventory, ref, need_model, head.name, opts, log, progress, session)
        sync_seconds += time.monotonic() - t
    else:
        _check_present(conns, need_model, dep.model_path)

    finish_pending_removals(session, inventory, conns[head.name], log)
    if leftovers:
        log("removing units of an earlier redeploy that did not finish: "
            + ", ".join(f"{u.name}@{u.host}" for u in leftovers))
        _stop_units(leftovers, conns)
        _remove_key_files([u for u in leftovers if u.key_file not in
                           {p.key_file for p in previous.units}], conns)
        write_record(conns[head.name], previous)
    not_beside = None
    if single and len(dep.groups) == 1:
        would = install_secret_files(dep, keys, tls, conns, check=True, forks=opts.forks)
        if _one_group_changes(previous, dep, opts.restart, _changed_hosts(would)):
            beside, not_beside = choose_beside(
                previous, lambda slot, gpu_ids=None: _layout(
                    name, model, ref, info, plan, infos, inventory,
                    replace(opts, port=int(public_address(previous).rsplit(":", 1)[1]),
                            rpc_port=_base_rpc_port(dep),
                            lb_host=opts.lb_host or (previous.lb.host if previous.lb
                                                     else previous.groups[0].host)),
                    backend, others, previous, head_ip,
                    replace(access, keep_gateway=True), slot=slot, gpu_ids=gpu_ids),
                lambda hosts: probe_free_memory({h: conns[h] for h in hosts}, opts.forks),
                info=info, plan=plan, opts=opts)
            if beside is not None:
                log(f"one replica: {not_beside}: the new version starts beside the old one")
                beside.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                return deploy_beside(inventory, previous, beside, conns, opts, keys, tls,
                                     log, reporter, session, plan=plan,
                                     sync_seconds=sync_seconds)
    if previous is not None:
        _remove_stale(previous, dep, conns, log, conns[head.name])
    start = time.monotonic()
    dep.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    secret_changes = install_secret_files(dep, keys, tls, conns, forks=opts.forks)
    if previous is not None and not keys:
        _remove_key_files(previous.units, conns)
    key = keys[0] if keys else None
    rolling = rolling_groups(previous, dep, restart=opts.restart,
                             changed_hosts=_changed_hosts(secret_changes))
    if rolling:
        log(f"rolling redeploy of {len(rolling)} of {len(dep.groups)} groups, one at a "
            f"time behind the gateway on {dep.lb.host}")
        roll(inventory, dep, previous, rolling, conns, opts, key, log, reporter, session,
             restart_hosts=_changed_hosts(secret_changes))
        opts = replace(opts, restart=False)
        secret_changes = {h: {p: how for p, how in files.items()   # servers: done
                              if p in dep.lb.secret_files}
                          for h, files in secret_changes.items() if h == dep.lb.host}
    elif previous is not None and len(dep.groups) == 1 and _one_group_changes(
            previous, dep, opts.restart, _changed_hosts(secret_changes)):
        took = previous.ready_seconds
        log(f"note: one replica: {dep.endpoint} does not answer while {dep.name} restarts"
            + (f" (about {took:.0f}s, its last time to ready)" if took else "")
            + (f"; not started beside the old one: {not_beside}" if not_beside else "")
            + "; with --replicas 2 or more a redeploy rolls one replica at a time")
    write_record(conns[head.name], dep)
    report = run_units(inventory, dep, opts, reporter, session)
    if report.failed_hosts:
        raise ClusterctlError("units could not be installed on "
                              + ", ".join(f"{h} ({report.recap[h].error})"
                                          for h in report.failed_hosts))
    if opts.restart:
        _restart_units(dep, conns, log)
    else:
        apply_secret_changes(dep, secret_changes, conns, log)
    launch_seconds = time.monotonic() - start
    _seconds, reply = wait_ready(dep, conns, timeout=opts.timeout, log=log, key=key)
    dep.ready_seconds = round(time.monotonic() - start, 2)
    write_record(conns[head.name], dep)
    register_metrics(inventory, conns[head.name], dep, log)
    return DeployResult(dep, plan, False, changed=report.changed, sync_seconds=sync_seconds,
                        launch_seconds=launch_seconds, ready_seconds=time.monotonic() - start,
                        reply=reply, report=report)


def _one_group_changes(previous: Deployment, dep: Deployment, restart: bool,
                       changed_hosts: set[str]) -> bool:
    """Whether the one serving group of `dep` restarts in this redeploy."""
    if restart:
        return True
    old = {(u.host, u.name): u.template_vars() for u in previous.units}
    return any(old.get((u.host, u.name)) != u.template_vars() or
               (u.key_file and u.host in changed_hosts) for u in dep.units)


# --------------------------------------------------------------------------- beside


def _recorded_gpu_ids(previous: Deployment | None) -> list[int] | None:
    """The GPUs (CUDA_VISIBLE_DEVICES) of a recorded one-unit vLLM replica, so that a
    redeploy lays it out on the same ones (they may not be the first after a
    redeploy beside the old one)."""
    if previous is None or len(previous.units) != 1 or previous.units[0].kind != "vllm":
        return None
    text = previous.units[0].env.get("CUDA_VISIBLE_DEVICES", "")
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        return None


def _usable_gpu_ids(gpu_ids: list[int] | None, plan: Plan, infos: list[HostInfo]
                    ) -> list[int] | None:
    """`gpu_ids` when they still suit the plan (one GPU node, as many as it uses, on
    that host), else None (the layout picks the first GPUs)."""
    if gpu_ids is None or plan.device != "cuda" or len(plan.nodes) != 1:
        return None
    host = next((h for h in infos if h.name == plan.nodes[0]), None)
    need = plan.tensor_parallel_size * plan.pipeline_parallel_size
    if host is None or len(gpu_ids) != need or len(set(gpu_ids)) != need or \
            any(not 0 <= i < host.gpus for i in gpu_ids):
        return None
    return list(gpu_ids)


def _base_rpc_port(dep: Deployment) -> int | None:
    """The --rpc-port a layout used (its slot's offset taken off); None without RPC."""
    from .layout import SLOT_PORT_OFFSET
    for u in dep.units:
        if u.kind == "rpc":
            return int(u.bind.rsplit(":", 1)[1]) - (SLOT_PORT_OFFSET if dep.slot else 0)
    return None


def probe_free_memory(conns: dict[str, Connection], forks: int = 20) -> dict[str, FreeMemory]:
    """MemAvailable, each GPU's free memory and whether nginx is there (or installable),
    one round trip per host."""
    def one(conn: Connection) -> FreeMemory:
        res = conn.run(["bash", "-c", FREE_MEMORY_SCRIPT], check=False, timeout=60)
        return parse_free_memory(res.stdout)
    return _parallel(conns, one, forks)


def choose_beside(previous: Deployment, make_layout, probe, *, info, plan: Plan,
                  opts: DeployOptions) -> tuple[Deployment | None, str]:
    """The new version of a single-replica deployment laid out in the other slot, to be
    started beside `previous`, or None with why not (then the redeploy restarts it in
    place, with the warned downtime). `make_layout(slot, gpu_ids=None)` lays it out
    with the same endpoint (InputError: its ports are taken); `probe(hosts)` reads
    their free memory (probe_free_memory). Returns (deployment, why it fits) or
    (None, why not)."""
    slot = other_slot(previous.slot)
    try:
        beside = make_layout(slot)
    except InputError as exc:
        return None, f"it cannot be laid out beside the old one: {exc}"
    why = beside_obstacle(previous, beside)
    if why:
        return None, why
    assert beside.lb is not None
    try:
        free = probe(beside_probe_hosts(beside))
    except ClusterctlError as exc:
        return None, f"free memory unknown ({failure_reason(exc)})"
    gateway = free.get(beside.lb.host)
    if gateway is not None and gateway.nginx == "none":
        return None, (f"nginx is not installed on {beside.lb.host} and apt has no "
                      f"candidate for it (the gateway that switches versions)")
    fit = beside_fit(beside, free, info=info, plan=plan,
                     gpu_memory_utilization=opts.gpu_memory_utilization,
                     kv_cache_dtype=opts.kv_cache_dtype, rpc_on_head=opts.rpc_on_head,
                     tensor_split=opts.tensor_split, cpu_kvcache_gb=opts.cpu_kvcache_gb)
    if not fit.fits:
        return None, fit.why
    if fit.gpu_ids is not None:
        try:
            beside = make_layout(slot, fit.gpu_ids)
        except (InputError, ValueError) as exc:
            return None, f"GPUs {fit.gpu_ids}: {exc}"
    return beside, fit.why


def gateway_package_play(dep: Deployment):
    """The nginx package task of the gateway's role alone, for a deployment that moves
    behind a gateway: installed before anything stops."""
    from ..engine.roles import Play
    role = loadbalancer_role()
    role = replace(role, tasks=[t for t in role.tasks if t.name == "nginx"], handlers={})
    assert dep.lb is not None
    return Play(name=f"{dep.name}: nginx for the gateway", hosts=dep.lb.host, roles=[role],
                file="<deploy-model>", line=0, vars={})


def _halt_units(units, conns) -> None:
    """Stop units (servers before their RPC servers), leaving them installed."""
    by_host: dict[str, list[str]] = {}
    for u in sorted(units, key=lambda u: -u.phase):
        by_host.setdefault(u.host, []).append(u.name)
    _parallel({h: conns[h] for h in by_host if h in conns},
              lambda c: c.run(["systemctl", "stop", *by_host[c.name]], check=False))


def _start_units(units, conns) -> None:
    """Start installed units again (RPC servers before their servers)."""
    for phase in sorted({u.phase for u in units}):
        by_host: dict[str, list[str]] = {}
        for u in units:
            if u.phase == phase:
                by_host.setdefault(u.host, []).append(u.name)
        _parallel({h: conns[h] for h in by_host if h in conns},
                  lambda c: c.run(["systemctl", "start", *by_host[c.name]], check=False))


def _workers_shutting_down(conn: Connection) -> int:
    res = conn.run("pgrep -c -f '^nginx: worker process is shutting down' || true",
                   check=False, timeout=30)
    return _int(res.stdout.strip())


def drain_after_switch(previous: Deployment, gateway: Connection, via: Connection,
                       key: Secret | None, log: Log, *, timeout: float = 120.0,
                       clock=time.monotonic, sleep=time.sleep) -> None:
    """After the gateway's graceful reload: until the old version has no request left,
    at most `timeout`. Done when nginx has no old worker left (they exit once their
    requests end) or, when old workers linger for other sites' long requests, when the
    old server's /metrics shows nothing in flight twice in a row."""
    from .commands import in_flight_from_metrics
    url = previous.groups[0].endpoint[:-len("/v1")] + "/metrics"
    start, idle = clock(), 0
    sleep(0.5)
    while True:
        if _workers_shutting_down(gateway) == 0:
            return
        code, body = http_get(via, url, timeout=5, key=key)
        busy = in_flight_from_metrics(body) if code == 200 else None
        idle = idle + 1 if busy == 0 else 0
        if idle >= 2:
            return
        if clock() - start > timeout:
            log(f"{previous.name}: the old version still has requests after {timeout:.0f}s;"
                " stopping it anyway")
            return
        sleep(1.0)


class BesideFailed(DeployFailed):
    """The new version of a single replica never became ready beside the old one,
    which keeps serving."""


def _undo_beside(previous: Deployment, beside: Deployment, conns, head: Connection) -> None:
    _stop_units(beside.units, conns)
    keep = {(u.host, u.key_file) for u in previous.units}
    _remove_key_files([u for u in beside.units if (u.host, u.key_file) not in keep], conns)
    write_record(head, previous)


def deploy_beside(inventory, previous: Deployment, beside: Deployment, conns,
                  opts: DeployOptions, keys: list[Secret], tls, log: Log, reporter=None,
                  session: Session | None = None, *, plan: Plan | None = None,
                  sync_seconds: float = 0.0) -> DeployResult:
    """Redeploy a single replica without stopping it first: the new version's units
    (the other slot: own unit names and ports) start beside the old ones, a real chat
    completion sent to the new server directly must return text, then the gateway's
    upstream switches to it (graceful nginx reload: requests in flight finish on the
    old one), the old version drains and stops. A deployment without a gateway yet
    gets one on its endpoint's address: the old server has that port, so it stops
    just before nginx takes the port (a few seconds without an answer, once).

    A new version that never becomes ready (or whose units cannot be installed) is
    removed; the old one keeps serving and BesideFailed says why. The record names
    the units of both while both run, so undeploy and status know them."""
    head = conns[beside.head]
    assert beside.lb is not None
    convert = previous.lb is None
    key = keys[0] if keys else None
    start = time.monotonic()
    servers = replace(beside, lb=None)              # the new version alone, no gateway
    old_text = f"the old one keeps serving {previous.endpoint}"
    if convert:
        log(f"note: {previous.name} has no gateway yet: its new version starts beside the "
            f"old one, then nginx on {beside.lb.host} takes {public_address(previous)} "
            "from the old server: a few seconds without an answer this once; later "
            "redeploys switch without any")
        from ..engine.runner import RunOptions, run_playbook
        prep = run_playbook(inventory, [gateway_package_play(beside)], RunOptions(
            forks=opts.forks, accept_new_host_keys=opts.accept_new_host_keys,
            limit=[beside.lb.host]), reporter, session)
        if prep.failed_hosts:
            raise BesideFailed(f"{beside.name}: nginx could not be installed on "
                               f"{beside.lb.host} ({prep.recap[beside.lb.host].error}); "
                               f"nothing was changed and {old_text}")
    write_record(head, replace(previous, units=previous.units + beside.units))
    install_secret_files(servers, keys, tls, conns, forks=opts.forks)
    log("starting the new version beside the old one: "
        + ", ".join(f"{u.name}@{u.host}" for u in beside.units)
        + f" ({beside.groups[0].endpoint})")
    try:
        report = run_units(inventory, servers, opts, reporter, session)
        if report.failed_hosts:
            raise DeployFailed("units could not be installed on " + ", ".join(
                f"{h} ({report.recap[h].error})" for h in report.failed_hosts))
        seconds, _reply = wait_ready(servers, conns, timeout=opts.timeout, log=log, key=key)
    except ClusterctlError as exc:
        _undo_beside(previous, beside, conns, head)
        raise BesideFailed(f"{beside.name}: the new version did not become ready beside the "
                           f"old one; it was removed and {old_text}. Fix and run "
                           f"deploy-model again.\n{exc}") from None
    log(f"the new version answers after {seconds:.1f}s; switching the gateway on "
        f"{beside.lb.host} to it")
    if convert:                       # nginx takes the port: the old server lets it go
        _halt_units(previous.units, conns)
    install_secret_files(beside, keys, tls, conns, forks=opts.forks)
    gate = run_units(inventory, replace(beside, units=[]), opts, reporter, session)
    if gate.failed_hosts:
        error = gate.recap[beside.lb.host].error
        if convert:
            _undo_beside(previous, beside, conns, head)
            _start_units(previous.units, conns)
            raise BesideFailed(f"{beside.name}: the gateway on {beside.lb.host} could not "
                               f"start ({error}); the new version was removed and the old "
                               f"one was started again")
        conns[beside.lb.host].put(previous.lb.config, previous.lb.config_path, mode=0o644)
        conns[beside.lb.host].run("nginx -t -q && systemctl reload nginx.service",
                                  check=False)
        _undo_beside(previous, beside, conns, head)
        raise BesideFailed(f"{beside.name}: the gateway on {beside.lb.host} could not switch "
                           f"({error}); the new version was removed and {old_text}")
    if not convert:
        drain_after_switch(previous, conns[beside.lb.host], head, key, log)
    _stop_units(previous.units, conns)
    log("the old version stopped: " + ", ".join(f"{u.name}@{u.host}"
                                                 for u in previous.units if u.host in conns))
    gone = [u for u in previous.units if u.host not in conns]
    if gone:
        record_pending_removal(head, previous, gone)
    still = {(u.host, u.key_file) for u in beside.units}
    _remove_key_files([u for u in previous.units if (u.host, u.key_file) not in still], conns)
    write_record(head, beside)
    launch_seconds = time.monotonic() - start
    _seconds, reply = wait_ready(beside, conns, timeout=opts.timeout, log=log, key=key)
    beside.ready_seconds = round(time.monotonic() - start, 2)
    write_record(head, beside)
    register_metrics(inventory, head, beside, log)
    return DeployResult(beside, plan, False, changed=report.changed + gate.changed,
                        sync_seconds=sync_seconds, launch_seconds=launch_seconds,
                        ready_seconds=time.monotonic() - start, reply=reply, report=report)


def _connect_more(inventory, conns: dict[str, Connection], names: list[str],
                  session: Session, log: Log = lambda s: None) -> dict[str, str]:
    """Also connect to hosts of the previous layout (its stale units must go). A host
    that cannot be reached does not block the new layout: its units are recorded as
    pending removal (finished by a later deploy-model or undeploy). Returns the
    unreachable hosts with why."""
    more = [inventory.hosts[n] for n in names if n not in conns and n in inventory.hosts]
    if not more:
        return {}
    connected = session.connect(more)
    conns.update(connected.succeeded)
    lost = {n: f.reason for n, f in connected.failed.items()}
    for name, why in lost.items():
        log(f"WARNING: {name} (a host of the previous deployment) cannot be reached: {why}; "
            "its units are recorded for removal when it is back")
    return lost


def _exists(conn: Connection, path: str) -> bool:
    return conn.run(["test", "-e", path], check=False).exit_code == 0


def _model_info(inventory, ref: ModelRef, head_conn: Connection, head: str,
                opts: DeployOptions, log: Log, progress,
                session: Session | None = None) -> tuple[ModelInfo, float, ModelRef]:
    """The model's size and shape; a Hugging Face model is downloaded to the head first
    (and from then on spread from there, like a model that was on the head)."""
    if ref.kind == "local":
        return read_model_info(ref.local_path), 0.0, ref
    seconds = 0.0
    if ref.kind == "hf":
        if opts.check:
            if not _exists(head_conn, ref.remote_path):
                raise InputError(f"{ref.given}: not downloaded yet, and --check does not "
                                 f"download (run without --check, or `clusterctl sync-model "
                                 f"{ref.given}`)", key="MODEL")
        else:
            log(f"downloading {ref.sync_source} to {head}:{ref.remote_path}")
            t = time.monotonic()
            sync_to(inventory, ref, [head], progress=progress,
                    accept_new_host_keys=opts.accept_new_host_keys, session=session)
            seconds = time.monotonic() - t
        ref = ModelRef(ref.given, "head", ref.remote_path, None, None)
    return remote_model_info(head_conn, ref.remote_path), seconds, ref


def _layout(name, model, ref, info, plan, infos, inventory, opts, backend, others, previous,
            head_ip, access: Access | None = None, slot: str = "",
            gpu_ids: list[int] | None = None):
    network = (inventory.head.vars.get("cluster") or {}).get("network")
    head_vars = inventory.head.vars
    plan_summary = {"tensor_parallel_size": plan.tensor_parallel_size,
                    "pipeline_parallel_size": plan.pipeline_parallel_size,
                    "device": plan.device, "max_model_len": plan.max_model_len}
    explicit_port = opts.port is not None
    port = opts.port or (previous.groups[0].port if previous and previous.lb is None else
                         previous.lb.port if previous and previous.lb else
                         (head_vars.get("vllm") or {}).get("port", 8000))
    rpc_port = opts.rpc_port or (head_vars.get("llamacpp") or {}).get("rpc_port", 50052)
    served = opts.served_name or name
    for _attempt in range(50):
        if backend == "llamacpp":
            dep = layout_llamacpp(name, model, ref.remote_path, served, infos, port=port,
                                  rpc_port=rpc_port, replicas=opts.replicas,
                                  tensor_split=opts.tensor_split,
                                  ctx_size=plan.max_model_len or None,
                                  rpc_on_head=opts.rpc_on_head, rpc_cache=opts.rpc_cache,
                                  lb_host=opts.lb_host, network=network, plan=plan_summary,
                                  record_host=inventory.head.name, access=access, slot=slot)
        else:
            ray_port = (head_vars.get("ray") or {}).get("port", 6379)
            dep = layout_vllm(name, model, ref.remote_path, served, plan, infos, port=port,
                              replicas=opts.replicas, executor=opts.executor,
                              ray_port=ray_port, lb_host=opts.lb_host, network=network,
                              enforce_eager=opts.enforce_eager,
                              cpu_kvcache_gb=opts.cpu_kvcache_gb, extra_args=opts.extra_args,
                              record_host=inventory.head.name, ray_head_ip=head_ip,
                              access=access, slot=slot, gpu_ids=_usable_gpu_ids(
                                  gpu_ids, plan, infos))
        conflicts = port_conflicts(dep, others)
        if not conflicts:
            planner_warnings = [w for w in plan.warnings if backend == "vllm"
                                or not w.startswith("GGUF in vLLM")]
            dep.warnings = planner_warnings + dep.warnings
            return dep
        text = "; ".join(f"{b} is used by deployment {who}" for b, _k, who in conflicts)
        if any(k == "rpc" for _b, k, _w in conflicts):
            if opts.rpc_port is not None:
                raise InputError(text + " (choose another --rpc-port)", key="--rpc-port")
            rpc_port += 1
        if any(k == "api" for _b, k, _w in conflicts):
            if explicit_port:
                raise InputError(text + " (choose another --port)", key="--port")
            port += 10
    raise InputError("no free ports found for this deployment: " + text)


def _hosts_needing_model(dep: Deployment) -> list[str]:
    """Hosts that read the weights: llama-server hosts (RPC servers get tensors over the
    network) or every vLLM rank."""
    kinds = ("llama-server",) if dep.backend == "llamacpp" else ("vllm", "vllm-headless")
    out: list[str] = []
    for u in dep.units:
        if u.kind in kinds and u.host not in out:
            out.append(u.host)
    if dep.backend == "vllm" and dep.executor == "ray":
        for h in dep.plan.get("nodes", []):       # Ray workers load on their own nodes
            if h not in out:
                out.append(h)
    return out


def _needs_spread(ref: ModelRef, hosts: list[str], head: str) -> bool:
    return ref.kind == "head" and any(h != head for h in hosts)


def _sync(inventory, ref: ModelRef, hosts: list[str], head: str, opts: DeployOptions,
          log: Log, progress, session: Session | None = None) -> None:
    if ref.kind == "head":
        import posixpath
        src = ModelRef(ref.given, "head", ref.remote_path, f"{head}:{ref.remote_path}",
                       posixpath.basename(ref.remote_path.rstrip("/")))
        models_dir = models_dir_of(inventory)
        if posixpath.dirname(ref.remote_path.rstrip("/")) != models_dir:
            raise InputError(f"{ref.remote_path} is outside models_dir ({models_dir}) and "
                             f"other nodes need it: put it in models_dir", key="MODEL")
        ref = src
    log(f"model: syncing {ref.sync_source} to {', '.join(hosts)}:{ref.remote_path}")
    sync_to(inventory, ref, hosts, progress=progress,
            accept_new_host_keys=opts.accept_new_host_keys, session=session)


def _check_present(conns, hosts: list[str], path: str) -> None:
    missing = [h for h in hosts if not _exists(conns[h], path)]
    if missing:
        raise InputError(f"{path} is not on {', '.join(missing)}", key="MODEL")


def _remove_stale(previous: Deployment, dep: Deployment, conns, log: Log,
                  head_conn: Connection | None = None) -> None:
    keep = {(u.host, u.name) for u in dep.units}
    stale = [u for u in previous.units if (u.host, u.name) not in keep]
    gone = [u for u in stale if u.host not in conns]
    stale = [u for u in stale if u.host in conns]
    if stale:
        log("removing units of the previous layout: "
            + ", ".join(f"{u.name}@{u.host}" for u in stale))
        _stop_units(stale, conns)
        still = {(u.host, u.key_file) for u in dep.units}
        _remove_key_files([u for u in stale if (u.host, u.key_file) not in still], conns)
    if gone and head_conn is not None:
        record_pending_removal(head_conn, previous, gone)
    if previous.lb and (dep.lb is None or dep.lb.host != previous.lb.host
                        or dep.lb.config_path != previous.lb.config_path):
        _remove_lb(previous, conns)


def _restart_units(dep: Deployment, conns, log: Log) -> None:
    for phase in sorted({u.phase for u in dep.units}):
        units = [u for u in dep.units if u.phase == phase]
        log("restarting " + ", ".join(f"{u.name}@{u.host}" for u in units))
        by_host: dict[str, list[str]] = {}
        for u in units:
            by_host.setdefault(u.host, []).append(u.name)
        _parallel({h: conns[h] for h in by_host},
                  lambda c: c.run(["systemctl", "restart", *by_host[c.name]]))


# --------------------------------------------------------------------------- undeploy

PENDING_DIR = RECORD_DIR + "/pending-removal"


def record_pending_removal(head_conn: Connection, dep: Deployment, units: list) -> None:
    """Units that could not be removed (their host was unreachable): recorded on the head
    under pending-removal/, so a later deploy-model or undeploy finishes the job."""
    from dataclasses import replace as _replace
    pending = _replace(dep, units=list(units), lb=None, groups=dep.groups[:1])
    head_conn.run(["mkdir", "-p", PENDING_DIR])
    path = f"{PENDING_DIR}/{dep.name}-{int(time.time() * 1000)}.json"
    head_conn.put(record_json(pending), path, mode=0o644)


def finish_pending_removals(session: Session, inventory, head_conn: Connection,
                            log: Log = lambda s: None) -> list[str]:
    """Remove the recorded leftovers whose hosts answer now; keep the rest recorded.
    Returns the units removed."""
    removed = []
    for path, dep in read_record_files(head_conn, PENDING_DIR):
        hosts = [inventory.hosts[h] for h in dep.hosts if h in inventory.hosts]
        connected = session.connect(hosts)
        conns = dict(connected.succeeded)
        done = [u for u in dep.units if u.host in conns]
        left = [u for u in dep.units if u.host not in conns]
        if done:
            log("finishing an earlier removal: " + ", ".join(f"{u.name}@{u.host}"
                                                             for u in done))
            _stop_units(done, conns)
            removed += [f"{u.name}@{u.host}" for u in done]
        if not left:
            head_conn.run(["rm", "-f", path])
        elif done:
            from dataclasses import replace as _replace
            head_conn.put(record_json(_replace(dep, units=left)), path, mode=0o644)
    if removed:
        head_conn.run(["rmdir", "--ignore-fail-on-non-empty", PENDING_DIR], check=False)
    return removed



def _stop_units(units, conns) -> None:
    by_host: dict[str, list[str]] = {}
    for u in sorted(units, key=lambda u: -u.phase):       # servers before their RPC servers
        by_host.setdefault(u.host, []).append(u.name)

    def one(conn):
        names = by_host[conn.name]
        files = [f"/etc/systemd/system/{n}" for n in names]
        conn.run(["systemctl", "disable", "--now", *names], check=False)
        conn.run(["rm", "-f", *files])
        conn.run(["systemctl", "daemon-reload"])
        conn.run(["systemctl", "reset-failed", *names], check=False)
    _parallel({h: conns[h] for h in by_host if h in conns}, one)


def _remove_lb(dep: Deployment, conns) -> None:
    if dep.lb is None or dep.lb.host not in conns:
        return
    c = conns[dep.lb.host]
    c.run(["rm", "-f", dep.lb.config_path, *dep.lb.secret_files])
    c.run("command -v nginx >/dev/null && nginx -t -q && systemctl reload-or-restart "
          "nginx.service || true", check=False)


def undeploy(inventory, name: str | None, *, all_: bool = False, forks: int = 20,
             accept_new_host_keys: bool = False, log: Log = lambda s: None,
             session: Session | None = None) -> list[str]:
    """Stop and remove a deployment's units, load balancer and record. Returns the names
    removed. NAME may be omitted when exactly one deployment exists."""
    if session is None:
        with open_session(inventory, forks, accept_new_host_keys) as own:
            return undeploy(inventory, name, all_=all_, log=log, session=own)
    head = inventory.head
    records = read_records(connect_all(session, [head])[head.name])
    if not records:
        raise InputError("nothing is deployed (no records in "
                         f"{head.name}:{RECORD_DIR})", key="NAME")
    if all_:
        chosen = records
    elif name is None:
        if len(records) > 1:
            raise InputError("several deployments: name one (" + ", ".join(
                d.name for d in records) + ") or use --all", key="NAME")
        chosen = records
    else:
        chosen = [d for d in records if d.name == name]
        if not chosen:
            raise InputError(f"no deployment named {name!r} (deployed: "
                             + ", ".join(d.name for d in records) + ")", key="NAME")
    for d in chosen:
        session.lock(f"deploy-{d.name}", f"undeploy {d.name}")
    hosts = {h for d in chosen for h in d.hosts} | {head.name}
    missing = [h for h in hosts if h not in inventory.hosts]
    if missing:
        raise InputError("the record names hosts this inventory does not have: "
                         + ", ".join(sorted(missing)))
    head_conn = connect_all(session, [head])[head.name]
    finish_pending_removals(session, inventory, head_conn, log)
    connected = session.connect([inventory.hosts[h] for h in sorted(hosts)])
    conns = dict(connected.succeeded)
    for d in chosen:
        reachable = [u for u in d.units if u.host in conns]
        gone = [u for u in d.units if u.host not in conns]
        log(f"undeploy {d.name}: stopping {len(reachable)} units on "
            f"{', '.join(sorted({u.host for u in reachable})) or 'no host'}")
        _remove_lb(d, conns)
        _stop_units(reachable, conns)
        _remove_key_files(reachable, conns)
        if gone:
            record_pending_removal(head_conn, d, gone)
            for h in sorted({u.host for u in gone}):
                log(f"WARNING: {h} cannot be reached ({connected.failed[h].reason}): "
                    f"{', '.join(u.name for u in gone if u.host == h)} recorded for "
                    "removal when it is back (the next deploy-model or undeploy)")
        head_conn.run(["rm", "-f", d.record_path()])
        if monitoring_enabled(inventory):
            unregister_deployment(head_conn, d.name)
    return [d.name for d in chosen]


def register_metrics(inventory, head_conn: Connection, dep: Deployment, log: Log) -> None:
    """With monitoring on, tell Prometheus (on the head) where the deployment's metrics
    are. Serving does not depend on it: a failure is a warning."""
    if not monitoring_enabled(inventory):
        return
    try:
        path = register_deployment(head_conn, dep)
        key = deployment_key(inventory, dep) if dep.backend == "llamacpp" else None
        if key is not None:       # llama-server's /metrics needs the key (vLLM's does not)
            head_conn.put(key.reveal().encode(), SCRAPE_KEY_FILE, mode=0o640, owner="root",
                          group="prometheus")
        log(f"metrics: Prometheus scrapes {dep.name} (targets in {path}"
            + (f", with the key of {dep.name} in {SCRAPE_KEY_FILE}" if key else "") + ")")
    except ClusterctlError as exc:
        log(f"WARNING: metrics of {dep.name} not registered with Prometheus: "
            f"{failure_reason(exc)}")


def deployment_metrics(inventory, session: Session, names: list[str],
                       window: str = "1m") -> dict | None:
    """One refresh of every deployment's serving metrics from Prometheus on the head
    (requests/s, tokens/s, time to first token, queue); None when monitoring is off."""
    if not monitoring_enabled(inventory):
        return None
    from ..monitoring import PrometheusClient, metrics_rows, ssh_transport
    head = inventory.head
    conn = connect_all(session, [head])[head.name]
    return metrics_rows(PrometheusClient(ssh_transport(conn)), names, window=window)


# --------------------------------------------------------------------------- status


@dataclass
class Status:
    deployment: Deployment
    units: dict[str, dict[str, str]]           # "unit@host" -> {active, sub, restarts}
    endpoints: dict[str, str]                  # endpoint -> "ok" | problem
    health: str                                # ready | degraded | down
    lost: list[dict] = field(default_factory=list)   # RPC workers a watchdog lost

    def to_dict(self) -> dict:
        d = self.deployment
        return {"name": d.name, "backend": d.backend, "model": d.model,
                "served_model_name": d.served_name, "endpoint": d.endpoint,
                "health": self.health, "hosts": d.hosts, "created": d.created,
                "ready_seconds": d.ready_seconds, "executor": d.executor,
                "groups": [{"endpoint": g.endpoint, "hosts": g.hosts} for g in d.groups],
                "load_balancer": d.lb.endpoint if d.lb else None,
                "api_key_secrets": d.api_key_secrets,
                "units": self.units, "endpoints": self.endpoints,
                "lost_workers": self.lost}


def read_watch_states(conn: Connection, units: list) -> dict[str, dict]:
    """unit name -> the state its RPC watchdog wrote (missing or unreadable: left out)."""
    marker = "--clusterctl-watch--"
    script = "; ".join(f"echo {marker}; cat {shlex.quote(watch_state_path(u.name))} "
                       f"2>/dev/null" for u in units)
    res = conn.run(script, check=False, timeout=30)
    out = {}
    for u, chunk in zip(units, res.stdout.split(marker + "\n")[1:]):
        try:
            data = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(data, dict):
            out[u.name] = data
    return out


def lost_workers(watch_states: dict[str, dict]) -> list[dict]:
    """The workers every degraded watchdog names: host, why, since (unix seconds)."""
    lost = []
    for state in watch_states.values():
        if state.get("state") != "degraded":
            continue
        for item in state.get("lost") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                lost.append({"host": item["name"], "why": str(item.get("why", ""))[:300],
                             "since": state.get("since")})
    return lost


def status(inventory, *, forks: int = 20, accept_new_host_keys: bool = False,
           session: Session | None = None) -> list[Status]:
    """Every recorded deployment with its units' state and its endpoints' health."""
    if session is None:
        with open_session(inventory, forks, accept_new_host_keys) as own:
            return status(inventory, session=own)
    head = inventory.head
    hc = connect_all(session, [head])[head.name]
    records = read_records(hc)
    if not records:
        return []
    hosts = sorted({h for d in records for h in d.hosts if h in inventory.hosts})
    connected = session.connect([inventory.hosts[h] for h in hosts if h != head.name])
    errors = connected.failed
    conns = dict(connected.succeeded)
    conns[head.name] = hc
    units_by_host: dict[str, list[str]] = {}
    for d in records:
        for u in d.units:
            units_by_host.setdefault(u.host, []).append(u.name)
    states = _parallel({h: c for h, c in conns.items() if h in units_by_host},
                       lambda c: unit_states(c, units_by_host[c.name]), session.forks)
    watchers: dict[str, list] = {}
    for d in records:
        for u in d.units:
            if u.kind == "rpc-watch" and u.host in conns:
                watchers.setdefault(u.host, []).append(u)
    watch_states = _parallel({h: conns[h] for h in watchers},
                             lambda c: read_watch_states(c, watchers[c.name]), session.forks)
    out = []
    for d in records:
        units = {}
        for u in d.units:
            if u.host in errors or u.host not in inventory.hosts:
                units[f"{u.name}@{u.host}"] = {"active": "unreachable"}
                continue
            st = states.get(u.host, {}).get(u.name, {})
            units[f"{u.name}@{u.host}"] = {"active": st.get("ActiveState", "?"),
                                           "sub": st.get("SubState", "?"),
                                           "restarts": st.get("NRestarts", "?")}
        endpoints = {}
        key = deployment_key(inventory, d)
        for e in [g.endpoint for g in d.groups] + ([d.lb.endpoint] if d.lb else []):
            if d.api_key_secrets and key is None:
                endpoints[e] = ("needs an API key: none of its secrets ("
                                + ", ".join(d.api_key_secrets) + ") is in this inventory")
                continue
            code, body = http_get(hc, e + "/models", timeout=3, key=key)
            verdict = judge_models(body, d.served_name) if code == 200 else None
            endpoints[e] = "ok" if verdict and verdict.ok else (
                verdict.detail if verdict else f"HTTP {code or 'no answer'}")
        all_units = all(v.get("active") == "active" for v in units.values())
        main = d.endpoint
        if endpoints.get(main) == "ok" and all_units and all(
                v == "ok" for v in endpoints.values()):
            health = "ready"
        elif endpoints.get(main) == "ok":
            health = "degraded"
        else:
            health = "down"
        mine = {u.name: watch_states.get(u.host, {}).get(u.name) for u in d.units
                if u.kind == "rpc-watch" and isinstance(watch_states.get(u.host), dict)}
        out.append(Status(d, units, endpoints, health,
                          lost_workers({k: v for k, v in mine.items() if v})))
    return out


__all__ = ["DeployOptions", "DeployResult", "DeployFailed", "deploy_model", "undeploy",
           "status", "wait_ready", "build_plays", "host_infos", "node_gpus", "gather_facts",
           "override_plan", "read_records", "unit_was_active"]
