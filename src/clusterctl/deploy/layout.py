"""Where every process of a deployment runs, with which command: pure, no I/O.

A *deployment* is a name, a model and one or more *serving groups*. A group is one
OpenAI-compatible endpoint: a llama-server with its RPC servers, or a vLLM server (with
its headless ranks when the multiprocessing executor spans nodes). With several groups
(replicas), an nginx load balancer (least_conn) on one host fronts them.

Every process is a systemd unit (`UnitSpec`); `phase` orders them: RPC servers and
headless vLLM ranks (phase 0) before the servers that use them (phase 1). Every address
is a node's cluster IP. The whole `Deployment` is also the record kept on the head
(/etc/clusterctl/deployments/NAME.json) so that `status` and `undeploy` work from any
controller.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import InputError
from .commands import (exposure_warning, llama_server_argv, nginx_upstream, rpc_server_argv,
                       systemd_env, systemd_exec, unit_name, vllm_server_argv)
from .planner import Plan, SecondCopy, llamacpp_second_copy, vllm_second_copy

RECORD_DIR = "/etc/clusterctl/deployments"
RECORD_VERSION = 1
NCCL_ENV_FILE = "/etc/clusterctl/nccl.env"
RPC_CACHE_DIR = "/var/cache/clusterctl/llama.cpp"     # rpc-server caches in $LLAMA_CACHE/rpc
NGINX_CONF_DIR = "/etc/nginx/conf.d"
NGINX_SECRET_DIR = "/etc/nginx/clusterctl"            # 0700: API key maps, TLS files
KEY_DIR = "/etc/clusterctl/keys"                      # 0700: the servers' key files (0600)
WATCH_SCRIPT = "/usr/local/lib/clusterctl/rpcwatch.py"  # deploy/rpcwatch.py on the node
WATCH_STATE_DIR = "/run/clusterctl/deployments"        # the watchdogs' state files
DEFAULT_MASTER_PORT = 29501
# A single replica redeployed beside the old one alternates between two slots: "" (the
# first deploy's unit names and ports) and "b" (unit names with -b, the group one port
# higher, RPC servers and vLLM's master port SLOT_PORT_OFFSET higher).
SLOTS = ("", "b")
SLOT_PORT_OFFSET = 100


@dataclass
class HostInfo:
    """What the layout needs of one host (head first in every list)."""

    name: str
    cluster_ip: str
    is_head: bool = False
    gpus: int = 0
    gpu_memory_mib: int | None = None
    ram_mib: int | None = None
    cpus: int | None = None
    venv: str = "/opt/clusterctl/venv"
    llamacpp_prefix: str = "/opt/clusterctl/llama.cpp"


@dataclass
class UnitSpec:
    host: str
    name: str                          # unit file name
    kind: str                          # rpc | llama-server | vllm | vllm-headless
    argv: list[str]
    phase: int = 1
    group: int = 0
    env: dict[str, str] = field(default_factory=dict)
    env_files: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)     # local units to start after
    bind: str = ""                     # IP:PORT it listens on
    description: str = ""
    depends: list[str] = field(default_factory=list)   # lines that restart it when changed
    cache_dir: str | None = None       # folder the unit needs (RPC cache)
    device: str = ""                   # vLLM: cuda | cpu (the role installs CPU needs)
    key_file: str | None = None        # 0600 file with the API keys (llama-server
                                       # --api-key-file; vLLM: an EnvironmentFile)

    @property
    def exec_start(self) -> str:
        return systemd_exec(self.argv)

    @property
    def fingerprint(self) -> str:
        """Short hash of what the process runs with: a peer's unit lists it, so a
        changed RPC server also changes (and restarts) the llama-server using it."""
        blob = json.dumps([self.argv, self.env, self.env_files], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def template_vars(self) -> dict:
        return {"name": self.name, "kind": self.kind, "exec_start": self.exec_start,
                "env": dict(sorted(self.env.items())),
                "environment": [systemd_env(k, v) for k, v in sorted(self.env.items())],
                "env_files": list(self.env_files),
                "after": list(self.after), "description": self.description,
                "depends": list(self.depends), "cache_dir": self.cache_dir,
                "bind": self.bind, "host": self.host, "device": self.device,
                "secret_env_files": [self.key_file] if self.key_file and
                self.kind.startswith("vllm") else []}


@dataclass
class Group:
    index: int
    host: str                          # serves the API
    ip: str
    port: int
    hosts: list[str]                   # every host taking part, server first
    units: list[str]                   # unit names, start order

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}/v1"


@dataclass
class LoadBalancer:
    host: str
    ip: str
    port: int
    servers: list[str]
    config_path: str
    config: str
    auth_path: str | None = None       # 0600 nginx include with the key map
    tls_cert: str | None = None        # on the LB host
    tls_key: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.ip}:{self.port}/v1"

    @property
    def secret_files(self) -> list[str]:
        return [p for p in (self.auth_path, self.tls_cert, self.tls_key) if p]


@dataclass
class Deployment:
    name: str
    backend: str                       # llamacpp | vllm
    model: str                         # as given on the command line
    model_path: str                    # on the nodes
    served_name: str
    head: str                          # where the record lives
    groups: list[Group]
    units: list[UnitSpec]
    lb: LoadBalancer | None = None
    executor: str | None = None        # vLLM: ray | mp | None (one process)
    plan: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = ""
    ready_seconds: float | None = None
    api_key_secrets: list[str] = field(default_factory=list)   # names under secrets:
    slot: str = ""                     # "" | "b": see SLOTS (one replica only)

    @property
    def endpoint(self) -> str:
        return self.lb.endpoint if self.lb else self.groups[0].endpoint

    @property
    def hosts(self) -> list[str]:
        seen: list[str] = []
        for u in self.units:
            if u.host not in seen:
                seen.append(u.host)
        if self.lb and self.lb.host not in seen:
            seen.append(self.lb.host)
        return seen

    def units_on(self, host: str) -> list[UnitSpec]:
        return [u for u in self.units if u.host == host]

    def metrics_targets(self) -> list[dict]:
        """Where a Prometheus on the cluster network scrapes this deployment: each
        serving process's own address (`/metrics`; llama-server runs with --metrics,
        vLLM always serves it). `needs_key`: llama-server checks the API key on
        /metrics; vLLM (0.32) only under /v1, /v2, /inference, /cohere. Through the
        gateway every path needs the key and reaches one replica at a time, so scrape
        the backends."""
        return [{"deployment": self.name, "backend": self.backend, "group": u.group,
                 "host": u.host, "address": u.bind, "kind": u.kind,
                 "needs_key": bool(self.api_key_secrets) and u.kind == "llama-server",
                 "api_key_secrets": list(self.api_key_secrets)}
                for u in self.units if u.kind in ("llama-server", "vllm")]

    def to_record(self) -> dict:
        data = asdict(self)
        data["version"] = RECORD_VERSION
        data["endpoint"] = self.endpoint
        return data

    @classmethod
    def from_record(cls, data: dict) -> Deployment:
        data = dict(data)
        data.pop("version", None)
        data.pop("endpoint", None)
        groups = [Group(**g) for g in data.pop("groups", [])]
        units = [UnitSpec(**u) for u in data.pop("units", [])]
        lb = data.pop("lb", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(groups=groups, units=units, lb=LoadBalancer(**lb) if lb else None, **known)

    def record_path(self) -> str:
        return posixpath.join(RECORD_DIR, f"{self.name}.json")


# --------------------------------------------------------------------------- helpers


def _split(hosts: list[HostInfo], groups: int) -> list[list[HostInfo]]:
    """`hosts` in `groups` contiguous chunks, sizes as even as possible, order kept."""
    if groups < 1:
        raise InputError(f"--replicas must be >= 1, got {groups}", key="--replicas")
    if groups > len(hosts):
        raise InputError(f"--replicas {groups}: only {len(hosts)} hosts (each replica needs "
                         f"at least one)", key="--replicas")
    base, extra = divmod(len(hosts), groups)
    out, i = [], 0
    for g in range(groups):
        n = base + (1 if g < extra else 0)
        out.append(hosts[i:i + n])
        i += n
    return out


def _group_port(port: int, index: int, gateway: bool, slot: str = "") -> int:
    """With a load balancer (gateway) on `port`, group i serves on port+1+i; a single
    replica in slot "b" on port+2 (beside slot "" on port+1)."""
    if slot and not gateway:
        raise ValueError("a replica in slot b is always behind the gateway")
    return port + 1 + index + (1 if slot else 0) if gateway else port


def other_slot(slot: str) -> str:
    """The slot a single replica's new version starts in, beside the old one."""
    return SLOTS[1 - SLOTS.index(slot)] if slot in SLOTS else SLOTS[0]


def _check_slot(slot: str, replicas: int) -> None:
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r} (one of {SLOTS})")
    if slot and replicas != 1:
        raise ValueError("slots are for a single replica")


@dataclass
class Access:
    """Who may use the endpoint: the names of the inventory secrets holding API keys
    (none: open on the cluster network) and the gateway's TLS files (controller paths
    are read by launch; here only whether there is TLS)."""

    api_key_secrets: list[str] = field(default_factory=list)
    tls: bool = False
    keep_gateway: bool = False        # the deployment already has one: keep it

    @property
    def gateway(self) -> bool:
        """A key (or TLS) puts the nginx gateway in front, also of one replica; a
        single replica that has a gateway (since a redeploy beside the old one)
        keeps it, so its endpoint and next redeploys stay the same."""
        return bool(self.api_key_secrets) or self.tls or self.keep_gateway


def key_file_path(name: str, kind: str, slot: str = "") -> str:
    """The servers' 0600 key file; each slot has its own, so the old version keeps
    its keys while the new one starts beside it."""
    stem = f"{name}-{slot}" if slot else name
    return posixpath.join(KEY_DIR, f"{stem}.{'env' if kind.startswith('vllm') else 'keys'}")


def _lb(name: str, groups: list[Group], hosts: dict[str, HostInfo], lb_host: str | None,
        port: int, first: str, access: Access | None = None) -> LoadBalancer | None:
    """nginx on `lb_host`, default the first selected host (the head when selected)."""
    access = access or Access()
    if len(groups) < 2 and not access.gateway:
        return None
    where = lb_host or first
    if where not in hosts:
        raise InputError(f"--lb-host {where!r} is not a host of this deployment's inventory",
                         key="--lb-host")
    ip = hosts[where].cluster_ip
    servers = [f"{g.ip}:{g.port}" for g in groups]
    listen = f"{ip}:{port}"
    auth = posixpath.join(NGINX_SECRET_DIR, f"{name}.auth.conf") \
        if access.api_key_secrets else None
    cert = posixpath.join(NGINX_SECRET_DIR, f"{name}.crt") if access.tls else None
    key = posixpath.join(NGINX_SECRET_DIR, f"{name}.key") if access.tls else None
    return LoadBalancer(host=where, ip=ip, port=port, servers=servers,
                        config_path=posixpath.join(NGINX_CONF_DIR, f"clusterctl-{name}.conf"),
                        config=nginx_upstream(name, servers, listen, auth_include=auth,
                                              tls_cert=cert, tls_key=key),
                        auth_path=auth, tls_cert=cert, tls_key=key)


def lb_config(dep: Deployment, down: list[str] | tuple[str, ...] = ()) -> str:
    """The gateway's nginx config with `down` servers out of rotation (rolling)."""
    lb = dep.lb
    assert lb is not None
    return nginx_upstream(dep.name, lb.servers, f"{lb.ip}:{lb.port}",
                          auth_include=lb.auth_path, tls_cert=lb.tls_cert,
                          tls_key=lb.tls_key, down=down)


def _warnings(hosts: list[HostInfo], network: str | None) -> list[str]:
    w = exposure_warning({h.name: h.cluster_ip for h in hosts}, network)
    return [w] if w else []


def _check_ips(hosts: list[HostInfo]) -> None:
    missing = [h.name for h in hosts if not h.cluster_ip]
    if missing:
        raise InputError("no cluster IP found on " + ", ".join(missing) + " (check "
                         "cluster.network in the inventory: the servers bind to it)",
                         key="cluster.network")


# --------------------------------------------------------------------------- llama.cpp


def layout_llamacpp(name: str, model: str, model_path: str, served_name: str,
                    hosts: list[HostInfo], *, port: int, rpc_port: int, replicas: int = 1,
                    tensor_split: list[float] | None = None, ctx_size: int | None = None,
                    rpc_on_head: bool = False, rpc_cache: bool = True,
                    lb_host: str | None = None, network: str | None = None,
                    plan: dict | None = None, record_host: str | None = None,
                    access: Access | None = None, slot: str = "") -> Deployment:
    """llama.cpp RPC: per group, rpc-server units on the group's other hosts (bound to
    their cluster IPs, local cache on) and llama-server on the group's first host with
    --rpc listing them and every layer offloaded. Only the first host needs the GGUF.
    `slot` "b": the units of a single replica started beside slot "" (see SLOTS)."""
    if not hosts:
        raise InputError("no hosts to deploy on")
    _check_ips(hosts)
    _check_slot(slot, replicas)
    access = access or Access()
    if slot:                           # slot b is always behind the gateway
        access = replace(access, keep_gateway=True)
        rpc_port += SLOT_PORT_OFFSET
    gateway = replicas > 1 or access.gateway
    by_name = {h.name: h for h in hosts}
    head = record_host or next((h.name for h in hosts if h.is_head), hosts[0].name)
    groups: list[Group] = []
    units: list[UnitSpec] = []
    for gi, members in enumerate(_split(hosts, replicas)):
        server = members[0]
        rpc_hosts = members[1:] + ([server] if rpc_on_head else [])
        suffix = gi if replicas > 1 else (slot or None)
        rpc_units = []
        for h in rpc_hosts:
            binary = posixpath.join(h.llamacpp_prefix, "bin", "rpc-server")
            u = UnitSpec(host=h.name, name=unit_name(name, "rpc", suffix), kind="rpc",
                         argv=rpc_server_argv(binary, h.cluster_ip, rpc_port, cache=rpc_cache),
                         phase=0, group=gi, env={"LLAMA_CACHE": RPC_CACHE_DIR},
                         bind=f"{h.cluster_ip}:{rpc_port}",
                         description=f"llama.cpp RPC server for {name}",
                         cache_dir=RPC_CACHE_DIR if rpc_cache else None)
            rpc_units.append(u)
        n_devices = len(rpc_units)
        if tensor_split and len(tensor_split) > max(1, n_devices):
            raise InputError(f"--tensor-split has {len(tensor_split)} proportions but group "
                             f"{gi} has {n_devices} RPC devices", key="--tensor-split")
        gport = _group_port(port, gi, gateway, slot)
        binary = posixpath.join(server.llamacpp_prefix, "bin", "llama-server")
        key_file = key_file_path(name, "llama-server", slot) if access.api_key_secrets \
            else None
        argv = llama_server_argv(binary, model_path, server.cluster_ip, gport,
                                 rpc=[u.bind for u in rpc_units], n_gpu_layers=999,
                                 tensor_split=tensor_split, alias=served_name,
                                 ctx_size=ctx_size, api_key_file=key_file)
        su = UnitSpec(host=server.name, name=unit_name(name, "llama-server", suffix),
                      kind="llama-server", argv=argv, phase=1, group=gi,
                      bind=f"{server.cluster_ip}:{gport}",
                      after=[u.name for u in rpc_units if u.host == server.name],
                      description=f"llama.cpp server for {name}", key_file=key_file,
                      depends=[f"rpc {u.host} {u.bind} {u.fingerprint}" for u in rpc_units])
        watch = [rpc_watch_unit(name, su, rpc_units, gi, suffix)] if rpc_units else []
        units += rpc_units + [su] + watch
        groups.append(Group(index=gi, host=server.name, ip=server.cluster_ip, port=gport,
                            hosts=[m.name for m in members],
                            units=[u.name for u in rpc_units + [su] + watch]))
    lb = _lb(name, groups, by_name, lb_host, port, hosts[0].name, access)
    dep = Deployment(name=name, backend="llamacpp", model=model, model_path=model_path,
                     served_name=served_name, head=head, groups=groups, units=units, lb=lb,
                     plan=plan or {}, warnings=_warnings(hosts, network),
                     api_key_secrets=list(access.api_key_secrets), slot=slot)
    return dep


def watch_state_path(unit: str) -> str:
    """The state file a watchdog unit writes (read by `status`)."""
    return posixpath.join(WATCH_STATE_DIR, unit.removesuffix(".service") + ".json")


def rpc_watch_unit(name: str, server: UnitSpec, rpc_units: list[UnitSpec], group: int,
                   suffix: int | str | None) -> UnitSpec:
    """The watchdog beside a llama-server that uses RPC workers (deploy/rpcwatch.py): it
    stops llama-server within seconds of losing a worker, so requests fail fast instead
    of hanging in llama.cpp's RPC client, and starts it again when every worker is back."""
    uname = unit_name(name, "rpc-watch", suffix)
    argv = ["/usr/bin/python3", WATCH_SCRIPT, "--unit", server.name,
            "--state", watch_state_path(uname)]
    for u in rpc_units:
        argv += ["--worker", f"{u.host}={u.bind}"]
    return UnitSpec(host=server.host, name=uname, kind="rpc-watch", argv=argv, phase=2,
                    group=group, after=[server.name],
                    description=f"RPC worker watchdog for {name}",
                    depends=[f"server {server.name} {server.fingerprint}"])


# --------------------------------------------------------------------------- vLLM


def choose_executor(plan: Plan, requested: str | None) -> str | None:
    """None (one process), mp or ray, from the plan and what the user asked."""
    devices = plan.tensor_parallel_size * plan.pipeline_parallel_size
    multi_node = len(plan.nodes) > 1
    if plan.device == "cpu":
        if requested == "ray":
            raise InputError("the Ray executor does not run on CPU (vLLM: \"current "
                             "platform cpu does not support ray\"); use --executor mp",
                             key="--executor")
        return "mp" if devices > 1 else None
    if requested:
        if requested == "mp" or multi_node or devices > 1:
            return requested
        return None
    if multi_node:
        return "ray"
    return "mp" if devices > 1 else None


def layout_vllm(name: str, model: str, model_path: str, served_name: str, plan: Plan,
                hosts: list[HostInfo], *, port: int, replicas: int = 1,
                executor: str | None = None, ray_port: int = 6379,
                master_port: int = DEFAULT_MASTER_PORT, lb_host: str | None = None,
                network: str | None = None, enforce_eager: bool = False,
                cpu_kvcache_gb: int | None = None, extra_args: list[str] | None = None,
                record_host: str | None = None, ray_head_ip: str | None = None,
                access: Access | None = None, slot: str = "",
                gpu_ids: list[int] | None = None) -> Deployment:
    """vLLM groups from a plan.

    * GPU plan on one node using some of its GPUs: each replica gets its own GPUs
      (CUDA_VISIBLE_DEVICES) on the first host that has them free, its own port.
    * GPU plan over several nodes: with Ray (default), one `vllm` unit on the plan's first
      node uses the bootstrap Ray cluster (RAY_ADDRESS = the Ray head); with mp, one unit
      per node (rank 0 serves, the others --headless).
    * CPU plan: mp executor; PP > 1 spans PP nodes with --nnodes (one rank per node).

    `slot` "b": the units of a single replica started beside slot "" (see SLOTS);
    `gpu_ids`: the GPUs of a single replica on one node (CUDA_VISIBLE_DEVICES), instead
    of the first ones.
    """
    _check_ips(hosts)
    _check_slot(slot, replicas)
    access = access or Access()
    if slot:                           # slot b is always behind the gateway
        access = replace(access, keep_gateway=True)
        master_port += SLOT_PORT_OFFSET
    gateway = replicas > 1 or access.gateway
    key_file = key_file_path(name, "vllm", slot) if access.api_key_secrets else None
    by_name = {h.name: h for h in hosts}
    head_host = next((h for h in hosts if h.is_head), hosts[0])
    for n in plan.nodes:
        if n not in by_name:
            raise InputError(f"the plan uses {n}, which is not among the selected hosts")
    exe = choose_executor(plan, executor)
    tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
    per_group_nodes = len(plan.nodes)
    vargs = plan.vllm_args() + list(extra_args or [])
    groups: list[Group] = []
    units: list[UnitSpec] = []

    def base_env(h: HostInfo) -> dict[str, str]:
        env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_HOST_IP": h.cluster_ip}
        if plan.device == "cpu":
            env["VLLM_TARGET_DEVICE"] = "cpu"
            need = max(1, int(-(-plan.kv_cache_gb_per_gpu * 1e9 // 2**30)))
            env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kvcache_gb or need)
        return env

    placements: list[tuple[list[HostInfo], list[int] | None]] = []
    if per_group_nodes == 1 and plan.device == "cuda":
        need = tp * pp
        order = [by_name[plan.nodes[0]]] + [h for h in hosts if h.name != plan.nodes[0]]
        free = {h.name: list(range(h.gpus)) for h in order}
        if gpu_ids is not None:
            first = by_name[plan.nodes[0]]
            if replicas != 1 or len(gpu_ids) != need or len(set(gpu_ids)) != need or \
                    any(not 0 <= i < first.gpus for i in gpu_ids):
                raise ValueError(f"GPUs {gpu_ids} for one replica of {need} GPUs on "
                                 f"{first.name} ({first.gpus} GPUs)")
            free = {first.name: list(gpu_ids)}
            order = [first]
        for _ in range(replicas):
            for h in order:
                if len(free[h.name]) >= need and (h.gpu_memory_mib or 0) >= \
                        (by_name[plan.nodes[0]].gpu_memory_mib or 0):
                    placements.append(([h], free[h.name][:need]))
                    free[h.name] = free[h.name][need:]
                    break
            else:
                total = sum(h.gpus for h in hosts)
                raise InputError(f"--replicas {replicas}: each replica needs {need} GPUs "
                                 f"(TP={tp} x PP={pp}); the selected hosts have {total} "
                                 f"({len(placements)} replicas fit)", key="--replicas")
    else:
        pool = [by_name[n] for n in plan.nodes] + [h for h in hosts if h.name not in plan.nodes]
        if replicas > 1 and exe == "ray":
            raise InputError("replicas of a multi-node model with the Ray executor would share "
                             "one Ray cluster: use --executor mp (each replica pins its own "
                             "nodes)", key="--replicas")
        if replicas * per_group_nodes > len(pool):
            raise InputError(f"--replicas {replicas}: each replica needs {per_group_nodes} "
                             f"node(s); {len(pool)} selected", key="--replicas")
        for r in range(replicas):
            placements.append((pool[r * per_group_nodes:(r + 1) * per_group_nodes], None))

    for gi, (members, gpu_ids) in enumerate(placements):
        server = members[0]
        suffix = gi if replicas > 1 else (slot or None)
        gport = _group_port(port, gi, gateway, slot)
        vllm_bin = posixpath.join(server.venv, "bin", "vllm")
        group_units: list[UnitSpec] = []
        multi = len(members) > 1
        if multi and exe == "mp":
            mport = master_port + gi
            for rank, h in enumerate(members):
                argv = vllm_server_argv(posixpath.join(h.venv, "bin", "vllm"), model_path,
                                        h.cluster_ip, gport, served_model_name=served_name,
                                        vllm_args=vargs, executor="mp", nnodes=len(members),
                                        node_rank=rank, master_addr=server.cluster_ip,
                                        master_port=mport, enforce_eager=enforce_eager)
                group_units.append(UnitSpec(
                    host=h.name, name=unit_name(name, "vllm" if rank == 0 else "vllm-rank",
                                                suffix),
                    kind="vllm" if rank == 0 else "vllm-headless", argv=argv,
                    phase=1 if rank == 0 else 0, group=gi, env=base_env(h),
                    device=plan.device,
                    env_files=[NCCL_ENV_FILE], key_file=key_file if rank == 0 else None,
                    bind=f"{h.cluster_ip}:{gport}" if rank == 0 else f"{h.cluster_ip}:-",
                    description=f"vLLM {'server' if rank == 0 else f'rank {rank}'} for {name}"))
        else:
            env = base_env(server)
            after: list[str] = []
            if exe == "ray":
                env["RAY_ADDRESS"] = f"{ray_head_ip or head_host.cluster_ip}:{ray_port}"
                after = ["ray-head.service" if server.is_head else "ray-worker.service"]
            if gpu_ids is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
            argv = vllm_server_argv(vllm_bin, model_path, server.cluster_ip, gport,
                                    served_model_name=served_name, vllm_args=vargs,
                                    executor=exe, enforce_eager=enforce_eager)
            group_units.append(UnitSpec(
                host=server.name, name=unit_name(name, "vllm", suffix), kind="vllm",
                argv=argv, phase=1, group=gi, env=env, env_files=[NCCL_ENV_FILE], after=after,
                device=plan.device, key_file=key_file,
                bind=f"{server.cluster_ip}:{gport}",
                description=f"vLLM server for {name}"))
        units += group_units
        groups.append(Group(index=gi, host=server.name, ip=server.cluster_ip, port=gport,
                            hosts=[m.name for m in members],
                            units=[u.name for u in sorted(group_units, key=lambda u: u.phase)]))
    _check_unique_binds(units)
    lb = _lb(name, groups, by_name, lb_host, port, hosts[0].name, access)
    plan_dict = {"tensor_parallel_size": tp, "pipeline_parallel_size": pp,
                 "nodes": list(plan.nodes), "device": plan.device,
                 "max_model_len": plan.max_model_len,
                 "gpus_per_node": dict(plan.gpus_per_node)}
    return Deployment(name=name, backend="vllm", model=model, model_path=model_path,
                      served_name=served_name, head=record_host or head_host.name,
                      groups=groups,
                      units=units, lb=lb, executor=exe, plan=plan_dict,
                      warnings=_warnings(hosts, network),
                      api_key_secrets=list(access.api_key_secrets), slot=slot)


def _check_unique_binds(units: list[UnitSpec]) -> None:
    seen: dict[str, str] = {}
    for u in units:
        if not u.bind or u.bind.endswith(":-"):
            continue
        if u.bind in seen:
            raise InputError(f"{u.name} and {seen[u.bind]} would both listen on {u.bind}")
        seen[u.bind] = u.name


# --------------------------------------------------------------------------- conflicts


def port_conflicts(new: Deployment, others: list[Deployment]) -> list[tuple[str, str, str]]:
    """(address, what of `new` listens there: "rpc" | "api", who already uses it) for each
    address `new` would listen on that another deployment already uses."""
    taken: dict[str, str] = {}
    for d in others:
        if d.name == new.name:
            continue
        for u in d.units:
            if u.bind and not u.bind.endswith(":-"):
                taken[u.bind] = f"{d.name} ({u.name} on {u.host})"
        if d.lb:
            taken[f"{d.lb.ip}:{d.lb.port}"] = f"{d.name} (load balancer on {d.lb.host})"
    mine = [(u.bind, "rpc" if u.kind == "rpc" else "api") for u in new.units
            if u.bind and not u.bind.endswith(":-")]
    if new.lb:
        mine.append((f"{new.lb.ip}:{new.lb.port}", "api"))
    return [(b, kind, taken[b]) for b, kind in mine if b in taken]


# --------------------------------------------------------------------------- beside


def public_address(dep: Deployment) -> str:
    """IP:PORT of the deployment's endpoint (its gateway, or its one group)."""
    if dep.lb is not None:
        return f"{dep.lb.ip}:{dep.lb.port}"
    return f"{dep.groups[0].ip}:{dep.groups[0].port}"


def beside_obstacle(previous: Deployment, beside: Deployment) -> str | None:
    """Why `beside` (the new version of a single-replica deployment, laid out in the
    other slot with a gateway) cannot start next to `previous` and then take over its
    endpoint through the gateway; None when it can (free memory is checked apart:
    planner.llamacpp_second_copy / vllm_second_copy)."""
    if len(previous.groups) != 1 or len(beside.groups) != 1:
        return "it has more than one replica"
    if beside.lb is None or beside.slot == previous.slot:
        return "the new version has no slot of its own"
    if public_address(previous) != public_address(beside):
        return (f"the endpoint moves ({public_address(previous)} -> "
                f"{public_address(beside)})")
    if previous.lb is not None and previous.lb.host != beside.lb.host:
        return f"the gateway moves ({previous.lb.host} -> {beside.lb.host})"
    if beside.backend == "vllm":
        if beside.executor == "ray":
            return "vLLM's Ray executor would run both copies on one Ray cluster"
        if len(beside.units) != 1:
            return "its vLLM replica spans several nodes"
    old = {u.bind: u for u in previous.units if u.bind and not u.bind.endswith(":-")}
    for u in beside.units:
        if u.bind in old:
            return f"{u.bind} is in use by the running {old[u.bind].name}"
    old_names = {(u.host, u.name) for u in previous.units}
    for u in beside.units:
        if (u.host, u.name) in old_names:
            return f"{u.name} on {u.host} is a unit of the running version"
    return None


def beside_probe_hosts(beside: Deployment) -> list[str]:
    """Hosts whose free memory decides whether the second copy fits (those that load
    weights or take layers), then the gateway's host (nginx)."""
    out = [h for h in beside.groups[0].hosts]
    if beside.lb is not None and beside.lb.host not in out:
        out.append(beside.lb.host)
    return out


def beside_fit(beside: Deployment, free: dict, *, info, plan: Plan,
               gpu_memory_utilization: float = 0.90, kv_cache_dtype: str = "auto",
               rpc_on_head: bool = False, tensor_split: list[float] | None = None,
               cpu_kvcache_gb: int | None = None) -> SecondCopy:
    """Whether the new version (`beside`, one group) fits in what its hosts have free
    while the old one runs. `free`: host -> commands.FreeMemory; `info`: the model's
    ModelInfo; `plan`: the deployment's plan."""
    g = beside.groups[0]
    if beside.backend == "llamacpp":
        return llamacpp_second_copy(info, list(g.hosts), free,
                                    max_model_len=plan.max_model_len or None,
                                    gpu_memory_utilization=gpu_memory_utilization,
                                    kv_cache_dtype=kv_cache_dtype, rpc_on_head=rpc_on_head,
                                    tensor_split=tensor_split)
    return vllm_second_copy(plan, g.host, free, cpu_kvcache_gib=cpu_kvcache_gb)


def record_json(dep: Deployment) -> str:
    return json.dumps(dep.to_record(), indent=2, sort_keys=True) + "\n"


def parse_record(text: str, where: str = "record") -> Deployment:
    try:
        data: Any = json.loads(text)
        return Deployment.from_record(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"unreadable deployment record: {exc}", file=where) from None
