"""What netcheck measures and concludes: plain data, no I/O."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass
class IbPort:
    device: str              # mlx5_0
    port: int
    state: str               # Active, Down, Initializing, Armed
    physical_state: str      # LinkUp, Polling, Disabled
    rate_gbps: float | None  # 200 (HDR), 400 (NDR)
    sm_lid: int | None = None
    link_layer: str = "InfiniBand"


@dataclass
class NodeInfo:
    name: str
    address: str
    is_head: bool = False
    reachable: bool = True
    error: str | None = None           # why it is unreachable
    ssh_command: str | None = None     # how to try its SSH login by hand
    ssh_port: int = 22                 # its SSH port (inventory, else ssh_config)
    cluster_ip: str | None = None      # address inside cluster.network
    interface: str | None = None       # interface holding cluster_ip
    mtu: int | None = None             # that interface's MTU
    link_type: str | None = None       # "ether", "infiniband", ...
    route_interfaces: dict[str, str] = field(default_factory=dict)  # peer cluster IP -> dev
    route_sources: dict[str, str] = field(default_factory=dict)     # peer cluster IP -> src
    interfaces: dict[str, list[str]] = field(default_factory=dict)  # name -> addresses
    env: dict[str, str] = field(default_factory=dict)   # NCCL_SOCKET_IFNAME, GLOO_..., VLLM_HOST_IP
    env_source: dict[str, str] = field(default_factory=dict)  # key -> file it came from
    ray_node_ip: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    ib_ports: list[IbPort] = field(default_factory=list)
    sm_running: bool | None = None     # a subnet manager process/unit on this node
    gpus: int | None = None
    iperf3: bool | None = None         # iperf3 installed
    iperf3_version: str | None = None  # `iperf3 --version`, first line

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("route_sources")
        return d


@dataclass
class Link:
    """One direction between two nodes, src -> dst."""
    src: str
    dst: str
    gbps: float | None = None
    rtt_ms: float | None = None
    ping_ok: bool | None = None        # small ping over the cluster network
    jumbo_ok: bool | None = None       # don't-fragment ping at MTU-28
    jumbo_size: int | None = None      # the payload size tried (MTU-28)
    error: str | None = None           # why the bandwidth run failed
    streams: int | None = None         # parallel TCP streams behind `gbps` (iperf3 -P)
    bidir: bool | None = None          # measured while the reverse direction also ran
    single_stream_gbps: float | None = None   # one TCP stream (iperf3 -P 1), what a
    #                                           single-flow collective (NCCL/Gloo) can get
    stream_gbps: list[float] = field(default_factory=list)  # each stream of the `gbps` run

    def to_json(self) -> dict:
        r3 = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"src": self.src, "dst": self.dst, "gbps": r3(self.gbps),
                "streams": self.streams, "single_stream_gbps": r3(self.single_stream_gbps),
                "bidir": self.bidir, "rtt_ms": r3(self.rtt_ms), "jumbo_ok": self.jumbo_ok}


@dataclass
class PortCheck:
    src: str                 # the node that connects
    dst: str                 # the node it connects to
    port: int
    purpose: str             # "ray GCS", "ray worker port range", "llama.cpp RPC", "vLLM API"
    state: str               # "open" | "blocked" (timeout) | "refused" | "error"
    detail: str = ""


@dataclass
class Finding:
    code: str
    severity: str
    hosts: list[str]
    message: str
    fix: str

    def to_json(self) -> dict:
        return {"code": self.code, "severity": self.severity, "hosts": list(self.hosts),
                "message": self.message, "fix": self.fix}


@dataclass
class Settings:
    """What the inventory configures, as netcheck needs it."""
    network: str | None = None          # cluster.network CIDR
    mtu: int | None = None              # cluster.mtu, the target
    iperf_port: int = 5201
    ray_port: int | None = 6379
    ray_worker_ports: tuple[int, int] | None = None
    rpc_port: int | None = None
    vllm_port: int | None = None
    venv: str | None = None
    llama_prefix: str | None = None

    @classmethod
    def from_vars(cls, v: dict) -> "Settings":
        """From the head's resolved inventory vars (inventory.DEFAULTS fill the gaps)."""
        def sub(key: str) -> dict:
            x = v.get(key)
            return x if isinstance(x, dict) else {}
        cluster, ray, llama = sub("cluster"), sub("ray"), sub("llamacpp")
        lo, hi = ray.get("min_worker_port"), ray.get("max_worker_port")
        return cls(network=cluster.get("network"), mtu=cluster.get("mtu"),
                   iperf_port=int(sub("netcheck").get("iperf_port") or 5201),
                   ray_port=ray.get("port"),
                   ray_worker_ports=(int(lo), int(hi)) if lo and hi else None,
                   rpc_port=llama.get("rpc_port"), vllm_port=sub("vllm").get("port"),
                   venv=sub("python").get("venv"), llama_prefix=llama.get("prefix"))


@dataclass
class NetcheckResult:
    nodes: list[NodeInfo]
    links: list[Link]
    ports: list[PortCheck]
    findings: list[Finding]
    settings: Settings = field(default_factory=Settings)
    schedule: str = "tournament"
    rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    bidir: bool = False                # the bandwidth runs measured both directions at once
    phases: int = 0                    # iperf3 time slots (rounds, or 2x rounds one-way)
    streams: int = 1                   # iperf3 -P of the main figure
    single_stream: bool = False        # a one-stream run followed each multi-stream run
    collective: Any = None             # collective.CollectiveResult with --collective

    @property
    def exit_code(self) -> int:
        return 1 if any(f.severity == ERROR for f in self.findings) else 0

    def to_json(self) -> dict:
        out = {"nodes": [n.to_json() for n in self.nodes],
               "links": [ln.to_json() for ln in self.links],
               "findings": [f.to_json() for f in self.findings]}
        if self.collective is not None:
            out["collective"] = self.collective.to_json()
        return out

    def to_dict(self) -> dict:
        """The report as plain data (the capability convention; same as to_json)."""
        return self.to_json()
