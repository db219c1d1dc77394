"""A lab's recorded state: everything `lab up` created, so `lab down` can remove exactly
that (and nothing else), also after a crash.

Layout, under $CLUSTERCTL_LAB_ROOT (default /var/lib/clusterctl/labs):

    NAME/state.json        this record (written atomically after every step)
    NAME/inventory.yaml    the lab's inventory, for users and tests
    NAME/id_ed25519(.pub)  the controller's SSH key for this lab
    NAME/known_hosts       the nodes' host keys (generated here before boot)
    NAME/nodes/nodeK/upper each node's writable layer over the shared image
    NAME/nodes/nodeK/console.log
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..mirror import ServedMirror

STATE_VERSION = 1
DEFAULT_LAB_ROOT = "/var/lib/clusterctl/labs"
DEFAULT_CACHE_ROOT = "/var/cache/clusterctl"


def lab_root() -> Path:
    return Path(os.environ.get("CLUSTERCTL_LAB_ROOT") or DEFAULT_LAB_ROOT)


def cache_root() -> Path:
    return Path(os.environ.get("CLUSTERCTL_CACHE") or DEFAULT_CACHE_ROOT)


def lab_dir(name: str) -> Path:
    return lab_root() / name


@dataclass
class NodeState:
    name: str                    # NAME-nodeK: machine name, hostname, inventory name
    index: int
    ip: str
    port: str                    # host-side veth: the node's switch port
    pid: int | None = None       # the node's PID 1 (systemd) as seen from the host
    pid_start: int | None = None         # its start time (clock ticks), guards PID reuse
    nspawn_pid: int | None = None
    nspawn_start: int | None = None
    machine_id: str = ""
    role: str = "worker"         # head | worker
    cgroups: list[str] = field(default_factory=list)     # created for this node

    @property
    def short(self) -> str:
        return f"node{self.index}"


@dataclass
class FaultState:
    node: str
    kind: str
    arg: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.arg}" if self.arg else self.kind


@dataclass
class LabState:
    name: str
    subnet: str
    bridge: str
    bridge_ip: str
    link: str
    mtu: int                     # switch port MTU (and the bridge's)
    node_mtu: int                # MTU the nodes configure on eth0 at boot
    image: str
    nft_table: str
    phase: str = "starting"      # starting | up | failed
    created: str = ""
    nodes: list[NodeState] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)     # created by us, in order
    nft_tables: list[str] = field(default_factory=list)     # "FAMILY TABLE" created by us
    faults: list[FaultState] = field(default_factory=list)
    # controller folders bound read-only into every node: [[SOURCE, DEST], ...]
    # (`lab up --bind-ro`, e.g. a CUDA toolkit for a GPU-less build node)
    binds: list[list[str]] = field(default_factory=list)
    mirror: ServedMirror | None = None
    owner_pid: int | None = None     # the process that ran `up` (a test session, the CLI)
    owner_start: int | None = None
    version: int = STATE_VERSION

    # -- paths
    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def inventory_path(self) -> Path:
        return self.dir / "inventory.yaml"

    @property
    def key_path(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    def node_dir(self, node: NodeState) -> Path:
        return self.dir / "nodes" / node.short

    # -- mirror
    @property
    def mirror_url(self) -> str | None:
        """Base URL of the mirror the controller serves to this lab (None: no mirror)."""
        if self.mirror is None:
            return None
        return f"http://{self.mirror.address}:{self.mirror.port}"

    @property
    def mirror_apt_url(self) -> str | None:
        return f"{self.mirror_url}/apt" if self.mirror else None

    @property
    def mirror_pip_url(self) -> str | None:
        return f"{self.mirror_url}/pip/" if self.mirror else None

    # -- lookups
    def node(self, index: int) -> NodeState:
        return self.nodes[index - 1]

    def node_by_name(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def faults_of(self, node: str) -> list[FaultState]:
        return [f for f in self.faults if f.node == node]

    # -- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inventory_path"] = str(self.inventory_path)
        data["mirror_url"] = self.mirror_url
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabState":
        data = dict(data)
        data.pop("inventory_path", None)
        data.pop("mirror_url", None)
        nodes = [NodeState(**n) for n in data.pop("nodes", [])]
        faults = [FaultState(**f) for f in data.pop("faults", [])]
        mirror = data.pop("mirror", None)
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        for key in extra:          # written by a newer clusterctl: keep what we know
            data.pop(key)
        data["binds"] = [list(b) for b in data.get("binds") or []]
        return cls(nodes=nodes, faults=faults,
                   mirror=ServedMirror(**mirror) if mirror else None, **data)

    def save(self) -> None:
        """Atomic write: a crash never leaves a half-written state file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".state.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)             # readable: `lab status` works without root
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_state(name: str) -> LabState | None:
    """The recorded state of lab `name`, or None when there is none."""
    path = lab_dir(name) / "state.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return LabState.from_dict(json.loads(text))


def list_labs() -> list[str]:
    root = lab_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "state.json").is_file())
