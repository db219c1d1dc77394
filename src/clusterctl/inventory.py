"""Inventory: parse and validate an Ansible inventory (pure, layer 1): YAML or INI
(clusterctl.inventory_ini), with host_vars/ and group_vars/ beside it
(clusterctl.inventory_sources), every file read bounded (clusterctl.yamlread).

Files are read as node graphs (YAML's *compose*; INI converted to the same structure), so
every node keeps its position and every problem can be reported as
``file:line:col: key: what was expected, got what``.
All problems in a file are collected and raised together as one ``InputError``
(the first one in the header line), so a user fixes everything in one go.

Structure (Ansible's)::

    all:
      vars: {...}                 # variables for every host
      hosts:
        node1: {ansible_host: 192.0.2.10, role: head}
      children:
        gpu:                      # a group; groups nest through children:
          hosts: {node2: , node3: }
          vars: {gpus: 8}
    other_group: {...}            # top-level groups beside `all` are children of all

Variable precedence, lowest first (Ansible's)::

    DEFAULTS < all vars < group_vars/all < group vars (by depth, then name)
      < group_vars/<group> (same order) < host vars < host_vars/<host> < extra vars

with dict values deep-merged. See docs/inventory.md.
"""
from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import yamlread
from .errors import InputError
from .secret import Secret

__all__ = [
    "DEFAULTS",
    "KNOWN_VARS",
    "VarSpec",
    "Host",
    "Inventory",
    "load_inventory",
    "validate_vars",
    "parse_extra_vars",
    "resolve_inventory_path",
    "INVENTORY_ENV",
]

INVENTORY_ENV = "CLUSTERCTL_INVENTORY"

# --------------------------------------------------------------------------------------
# Defaults and schema
# --------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "cluster": {"name": "clusterctl", "network": None, "mtu": 9000},
    "role": None,
    "gpus": None,
    "gpu_memory_mib": None,
    "infiniband": {"sm_host": None},
    "ray": {
        "version": "2.60.0",
        "port": 6379,
        "dashboard_port": 8265,
        "node_manager_port": 6380,
        "object_manager_port": 6381,
        "client_server_port": 10001,
        "min_worker_port": 10002,
        "max_worker_port": 10100,
        "metrics_export_port": 8090,
    },
    "python": {
        "venv": "/opt/clusterctl/venv",
        "ray": None,
        "vllm": None,
        "vllm_package": "vllm",
        "torch": None,
        "extra": [],
        "wheelhouse": "/var/cache/clusterctl/wheels",
    },
    "nccl": {"debug": "WARN", "ib_hca": None},
    "llamacpp": {
        "source": "llama-cpp-python==0.3.36",
        "ref": None,
        "prefix": "/opt/clusterctl/llama.cpp",
        "rpc_port": 50052,
        "cuda": "auto",
        "cuda_architectures": None,
    },
    "vllm": {"port": 8000},
    "netcheck": {"iperf_port": 5201},
    "monitoring": {
        "enabled": False,
        "prometheus_port": 9090,
        "node_exporter_port": 9100,
        "scrape_interval": "15s",
        "retention": "15d",
        "retention_size": "2GB",
        "dcgm_exporter_port": None,
    },
    "models_dir": "/opt/models",
    "fan_out": True,
    "mirror": {"apt": None, "pip": None},
    "ssh_known_hosts_file": None,
    "secrets": {"hf_token": None},
}


class _Invalid(ValueError):
    """Raised by a VarSpec check: the message says what was expected (and a hint)."""

    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected, self.hint = expected, hint


@dataclass(frozen=True)
class VarSpec:
    """One known variable: what it must be, what it means, and how it is checked.

    ``check(value, raw)`` gets the constructed YAML value and, for scalars, the raw text
    as written (so ``version: 2.60`` can stay ``"2.60"``); it returns the normalized
    value or raises a ValueError subclass whose first argument says what was expected.
    """

    expected: str
    doc: str
    check: Callable[[Any, str | None], Any] = field(repr=False, compare=False)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")
_LOOKS_LIKE_IPV4 = re.compile(r"^[0-9.]+$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


_PLAIN_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")


def _as_int(value: Any, raw: str | None = None) -> int | None:
    """A plain decimal integer, as written: `22` or `"22"`; not `0022` (YAML reads it as
    octal 18), `0x16`, `2_2`, `22.0` or a boolean."""
    if isinstance(value, bool):
        return None
    if raw is not None:
        if not isinstance(value, (int, str)) or not _PLAIN_INT_RE.fullmatch(raw):
            return None
        return int(raw)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _PLAIN_INT_RE.fullmatch(value):
        return int(value)
    return None


def _int_hint(raw: str | None) -> str:
    if raw is not None and re.fullmatch(r"[+-]?0[0-9_]+", raw.strip()):
        return "write it without leading zeros: YAML reads a leading 0 as octal"
    return ""


def _as_text(value: Any, raw: str | None) -> str | None:
    """A string, or the raw text of a number scalar (`2.60` stays "2.60")."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and raw is not None:
        return raw
    return None


def _int_check(lo: int, hi: int | None, nullable: bool = False):
    rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    expected = f"an integer {rng}" + (" or null" if nullable else "")

    def check(value, raw):
        if value is None and nullable:
            return None
        n = _as_int(value, raw)
        if n is None or n < lo or (hi is not None and n > hi):
            raise _Invalid(expected, _int_hint(raw))
        return n

    return expected, check


def _port():
    return _int_check(1, 65535)


def _text_check(expected: str, *, nullable: bool = False, pattern: re.Pattern | None = None,
                predicate: Callable[[str], str | None] | None = None):
    """A string check; `predicate(s)` may return a hint string to reject s."""

    def check(value, raw):
        if value is None and nullable:
            return None
        s = _as_text(value, raw)
        if s is None or s == "" or (pattern is not None and not pattern.match(s)):
            raise _Invalid(expected)
        if predicate is not None:
            hint = predicate(s)
            if hint:
                raise _Invalid(expected, hint)
        return s

    return expected, check


def _choice_check(choices: tuple[str, ...], *, nullable: bool, upper: bool = False):
    names = ", ".join(choices)
    expected = f"one of {names}" + (" or null" if nullable else "")

    def check(value, raw):
        if value is None and nullable:
            return None
        if isinstance(value, str):
            v = value.upper() if upper else value
            if v in choices:
                return v
        raise _Invalid(expected)

    return expected, check


def _abs_path_check():
    def pred(s):
        return None if s.startswith("/") else "an absolute path starts with '/'"

    return _text_check("an absolute path", predicate=pred)


def _network_check():
    expected = "a CIDR network (e.g. 10.0.0.0/24), an interface name, or null"

    def check(value, raw):
        if value is None:
            return None
        s = _as_text(value, raw)
        if not s:
            raise _Invalid(expected)
        if "/" in s:
            try:
                return str(ipaddress.ip_network(s, strict=True))
            except ValueError:
                try:
                    net = ipaddress.ip_network(s, strict=False)
                except ValueError:
                    raise _Invalid(expected) from None
                raise _Invalid(expected, f"host bits are set; did you mean '{net}'?") from None
        if not _IFACE_RE.match(s):
            raise _Invalid(expected, "an interface name is 1-15 of [A-Za-z0-9_.:-]")
        return s

    return expected, check


def _address_check():
    expected = "an IP address or a host name"

    def check(value, raw):
        s = _as_text(value, raw)
        if not s:
            raise _Invalid(expected)
        problem = _address_problem(s)
        if problem:
            raise _Invalid(expected, problem)
        return s

    return expected, check


def _address_problem(s: str) -> str | None:
    """None if `s` is a usable SSH address, else why not."""
    if _LOOKS_LIKE_IPV4.match(s):
        if _IPV4_RE.match(s):
            return None
        return "not a valid IPv4 address"
    if ":" in s:
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return "not a valid IPv6 address"
        return None
    if len(s) > 253 or ".." in s or not _HOSTNAME_RE.match(s):
        return "not a valid host name"
    return None


def _version_check(*, nullable: bool, allow_false: bool = False):
    expected = "a version string (e.g. '2.60.0')"
    if allow_false:
        expected += ", false or null"
    elif nullable:
        expected += " or null"

    def check(value, raw):
        if value is None and nullable:
            return None
        if value is False and allow_false:
            return False
        s = _as_text(value, raw)
        if s is None or not _VERSION_RE.match(s):
            raise _Invalid(expected)
        return s

    return expected, check


def _url_check():
    expected = "a URL (http://, https:// or file://) or null"

    def check(value, raw):
        if value is None:
            return None
        if isinstance(value, str) and re.match(r"^(https?|file)://\S+$", value):
            return value
        raise _Invalid(expected)

    return expected, check


def _str_list_check():
    expected = "a list of strings"

    def check(value, raw):
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return list(value)
        raise _Invalid(expected)

    return expected, check


def _cuda_arch_check():
    expected = 'null or a list of CUDA architectures such as ["90"]'

    def check(value, raw):
        if value is None:
            return None
        if isinstance(value, list) and value and all(
                isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip()
                for v in value):
            return list(value)          # each entry is checked when the build is planned
        raise _Invalid(expected)

    return expected, check


def _cuda_check():
    expected = "auto, true or false"

    def check(value, raw):
        if isinstance(value, bool):
            return value
        if value == "auto":
            return "auto"
        raise _Invalid(expected)

    return expected, check


def _bool_check():
    expected = "true or false"

    def check(value, raw):
        if isinstance(value, bool):
            return value
        raise _Invalid(expected)

    return expected, check


def _duration_check(units: str):
    expected = f"a duration like 15s, 5m or 15d (units: {units})"
    pattern = re.compile(rf"^[1-9][0-9]{{0,5}}({'|'.join(units.split(', '))})$")
    return _text_check(expected, pattern=pattern)


def _secret_check():
    expected = "a string or null"

    def check(value, raw):
        if value is None:
            return None
        if isinstance(value, Secret):
            return value
        s = _as_text(value, raw)
        if s is None:
            raise _Invalid(expected)
        return Secret(s)

    return expected, check


def _spec(pair: tuple[str, Callable], doc: str) -> VarSpec:
    expected, check = pair
    return VarSpec(expected=expected, doc=doc, check=check)


KNOWN_VARS: dict[str, Any] = {
    # nested dicts are dict-valued variables; leaves are VarSpec
    "cluster": {
        "name": _spec(_text_check("a name of [A-Za-z0-9_.-] (at most 63 characters)",
                                  pattern=_NAME_RE),
                      "name of the cluster (used in unit and file names)"),
        "network": _spec(_network_check(),
                         "cluster network: a CIDR, or an interface name; null = the "
                         "interface holding the host's address"),
        "mtu": _spec(_int_check(68, 9216), "MTU to set on the cluster interface"),
    },
    "role": _spec(_choice_check(("head", "worker"), nullable=True),
                  "head or worker; exactly one head per inventory"),
    "gpus": _spec(_int_check(0, None, nullable=True),
                  "number of GPUs on the host; null = detect with nvidia-smi"),
    "gpu_memory_mib": _spec(_int_check(1, None, nullable=True),
                            "memory of each GPU in MiB; null = detect with nvidia-smi"),
    "infiniband": {
        "sm_host": _spec(_text_check("a host name of this inventory or null", nullable=True),
                         "host that runs the InfiniBand subnet manager; null = the head"),
    },
    "ray": {
        "version": _spec(_version_check(nullable=False), "Ray version"),
        "port": _spec(_port(), "GCS port of the Ray head"),
        "dashboard_port": _spec(_port(), "Ray dashboard port"),
        "node_manager_port": _spec(_port(), "raylet port"),
        "object_manager_port": _spec(_port(), "object manager port"),
        "client_server_port": _spec(_port(), "Ray client server port"),
        "min_worker_port": _spec(_port(), "lowest port of the worker range"),
        "max_worker_port": _spec(_port(), "highest port of the worker range"),
        "metrics_export_port": _spec(_port(), "port of each node's Ray metrics agent "
                                     "(Prometheus scrapes it when monitoring is enabled)"),
    },
    "python": {
        "venv": _spec(_abs_path_check(), "virtualenv for Ray/vLLM on every host"),
        "ray": _spec(_version_check(nullable=True),
                     "Ray version to pip-install; null = ray.version"),
        "vllm": _spec(_version_check(nullable=True, allow_false=True),
                      "vLLM version to install; null/false = no vLLM"),
        "vllm_package": _spec(_text_check("a pip requirement name or URL"),
                              "pip name (or wheel URL) of vLLM"),
        "torch": _spec(_version_check(nullable=True),
                       "torch version to pin; null = what vLLM requires"),
        "extra": _spec(_str_list_check(), "extra pip requirements"),
        "wheelhouse": _spec(_abs_path_check(), "folder on every host for the fanned-out "
                            "wheel sets"),
    },
    "nccl": {
        "debug": _spec(_choice_check(("VERSION", "WARN", "INFO", "TRACE"), nullable=False,
                                     upper=True), "NCCL_DEBUG"),
        "ib_hca": _spec(_text_check("a string or null", nullable=True),
                        "NCCL_IB_HCA; null = let NCCL choose"),
    },
    "llamacpp": {
        "source": _spec(_text_check("a pip requirement or a git URL"),
                        "what to build llama.cpp RPC from"),
        "ref": _spec(_text_check("a git ref or null", nullable=True),
                     "git ref when source is a git URL"),
        "prefix": _spec(_abs_path_check(), "install prefix of llama.cpp"),
        "rpc_port": _spec(_port(), "port of rpc-server on workers"),
        "cuda": _spec(_cuda_check(), "build with CUDA: auto = if GPUs are present"),
        "cuda_architectures": _spec(_cuda_arch_check(), "CUDA architectures to build for; "
                                    "null = those of the node's GPUs"),
    },
    "vllm": {
        "port": _spec(_port(), "OpenAI-compatible API port of vLLM on the head"),
    },
    "netcheck": {
        "iperf_port": _spec(_port(), "port of the iperf3 servers netcheck starts and stops"),
    },
    "monitoring": {
        "enabled": _spec(_bool_check(), "install node exporters on every node and "
                         "Prometheus on the head (see docs/monitoring.md)"),
        "prometheus_port": _spec(_port(), "Prometheus port on the head's cluster IP"),
        "node_exporter_port": _spec(_port(), "node exporter port on every node's cluster IP"),
        "scrape_interval": _spec(_duration_check("s, m"), "how often Prometheus scrapes"),
        "retention": _spec(_duration_check("h, d, w"), "how long Prometheus keeps samples"),
        "retention_size": _spec(_text_check("a size like 512MB or 2GB",
                                            pattern=re.compile(r"^[1-9][0-9]{0,5}(MB|GB)$")),
                                "most disk Prometheus uses for samples"),
        "dcgm_exporter_port": _spec(_int_check(1, 65535, nullable=True),
                                    "port of dcgm-exporter on hosts with GPUs; null = "
                                    "no GPU metrics"),
    },
    "models_dir": _spec(_abs_path_check(), "where model files live on every host"),
    "fan_out": _spec(_bool_check(), "software leaves the controller once: wheels and Debian "
                     "packages are staged on the controller and sent through the relay "
                     "chain (false: every node fetches them itself)"),
    "mirror": {
        "apt": _spec(_url_check(), "flat apt repository URL for hosts without internet"),
        "pip": _spec(_url_check(), "pip find-links/index URL for hosts without internet"),
    },
    "ssh_known_hosts_file": _spec(_text_check("a path or null", nullable=True),
                                  "known_hosts file to verify host keys against; "
                                  "null = ~/.ssh/known_hosts"),
    "secrets": {
        "hf_token": _spec(_secret_check(), "Hugging Face token (masked as ***)"),
    },
    # connection variables (host or group level)
    "ansible_host": _spec(_address_check(), "address to SSH to; default: the host name"),
    "host": _spec(_address_check(), "short for ansible_host"),
    "ansible_user": _spec(_text_check("a user name"), "SSH user; default root"),
    "user": _spec(_text_check("a user name"), "short for ansible_user"),
    "ansible_port": _spec(_port(), "SSH port; default 22"),
    "port": _spec(_port(), "short for ansible_port"),
    "ansible_ssh_private_key_file": _spec(_text_check("a path"),
                                          "SSH private key; relative to the inventory"),
    "ssh_key": _spec(_text_check("a path"), "short for ansible_ssh_private_key_file"),
}

_GROUP_KEYS = ("hosts", "children", "vars")

# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Host:
    """One inventory host with its fully merged variables. Identity = name."""

    name: str
    address: str
    user: str
    port: int
    key_file: str | None
    known_hosts_file: str | None
    groups: tuple[str, ...]
    vars: dict = field(repr=False)
    line: int = 0
    file: str = ""

    @property
    def is_head(self) -> bool:
        return self.vars.get("role") == "head"

    @property
    def gpus(self) -> int | None:
        return self.vars.get("gpus")


@dataclass(eq=False)
class Inventory:
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)
    #: group -> (direct hosts, direct child groups), in file order
    tree: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict, repr=False)
    #: host -> variable path (tuple of keys) -> (file, line, column) where its value was
    #: set; paths absent here hold built-in defaults
    origins: dict[str, dict[tuple, tuple]] = field(default_factory=dict, repr=False)

    @property
    def head(self) -> Host:
        for h in self.hosts.values():
            if h.is_head:
                return h
        raise InputError("inventory has no head host", file=str(self.path))  # pragma: no cover

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts.values() if not h.is_head]

    def select(self, limits: list[str] | None) -> list[Host]:
        """Hosts matching Ansible-like --limit patterns, in inventory order.

        A pattern is a host name, a group name or an fnmatch glob over both
        ("node[12]", "gpu*"); several patterns are a union, "!p" excludes and "&p"
        intersects. Patterns may also be given in one string separated by ',' or ':'.
        """
        patterns = self._split_patterns(limits or [])
        if not patterns:
            if limits:
                raise InputError(f"--limit {','.join(map(str, limits))!r} is empty: give a "
                                 "host, a group or a pattern (or leave --limit out for all "
                                 "hosts)", key="--limit")
            return list(self.hosts.values())
        plus = [p for p in patterns if not p.startswith(("!", "&"))]
        inter = [p[1:] for p in patterns if p.startswith("&")]
        minus = [p[1:] for p in patterns if p.startswith("!")]
        selected: set[str] = set()
        for p in plus or ["all"]:
            selected |= self._match(p, p)
        for p in inter:
            selected &= self._match(p, "&" + p)
        for p in minus:
            selected -= self._match(p, "!" + p)
        if not selected:
            raise InputError(f"--limit {','.join(patterns)!r} selects no hosts", key="--limit")
        return [h for name, h in self.hosts.items() if name in selected]

    # -- select helpers --
    def _split_patterns(self, limits: list[str]) -> list[str]:
        known = set(self.hosts) | set(self.groups)
        out: list[str] = []
        for item in limits:
            for part in str(item).split(","):
                part = part.strip()
                if not part:
                    continue
                if part.lstrip("!&") in known:  # e.g. an IPv6 host name with ':'
                    out.append(part)
                else:
                    out.extend(p.strip() for p in part.split(":") if p.strip())
        return out

    def _match(self, pattern: str, shown: str) -> set[str]:
        if not pattern:
            raise InputError(f"--limit: empty pattern {shown!r}", key="--limit")
        names: set[str] = set()
        if pattern in self.hosts:
            names.add(pattern)
        if pattern in self.groups:
            names.update(self.groups[pattern])
        if not names and any(c in pattern for c in "*?["):
            for h in self.hosts:
                if fnmatch.fnmatchcase(h, pattern):
                    names.add(h)
            for g, members in self.groups.items():
                if fnmatch.fnmatchcase(g, pattern):
                    names.update(members)
        if not names:
            candidates = list(self.hosts) + [g for g in self.groups if g not in self.hosts]
            close = difflib.get_close_matches(pattern, candidates, n=3, cutoff=0.5)
            if close:
                hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
            else:
                hint = ("hosts: " + ", ".join(_clip(list(self.hosts))) + "; groups: "
                        + ", ".join(_clip(list(self.groups))))
            raise InputError(f"--limit pattern {shown!r} matches no host or group ({hint})",
                             key="--limit")
        return names


def _clip(names: list[str], n: int = 10) -> list[str]:
    return names if len(names) <= n else names[:n] + [f"... ({len(names) - n} more)"]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

#: at most this many variable values copied into hosts in all (hosts x merged values)
MAX_MERGED_VALUES = 5_000_000
#: at most this many (host, group) memberships in all
MAX_MEMBERSHIPS = 5_000_000


def resolve_inventory_path(arg: str | None) -> Path:
    """The inventory to use: `arg` if given, else ./inventory.yaml if it exists, else
    $CLUSTERCTL_INVENTORY; otherwise an InputError listing what was tried."""
    if arg:
        return Path(arg)
    local = Path("inventory.yaml")
    if local.is_file():
        return local
    env = os.environ.get(INVENTORY_ENV, "").strip()
    if env:
        return Path(env)
    raise InputError(
        "no inventory: tried --inventory/-i (not given), ./inventory.yaml (not found), "
        f"${INVENTORY_ENV} (not set); pass -i PATH or see inventory/example.yaml",
        key="inventory")


def load_inventory(path: str | Path, *, extra_vars: dict | None = None) -> Inventory:
    """Read, validate and resolve an inventory: a YAML or INI file (Ansible's formats),
    with host_vars/ and group_vars/ beside it. `extra_vars` (see parse_extra_vars) apply
    last, over every host's variables, and are checked like inventory variables.
    Raises InputError listing every problem found (file:line:col each)."""
    from .inventory_sources import inventory_root
    shown = str(path)
    p = Path(path)
    text = yamlread.read_text(p, what="inventory")
    with yamlread.paused_gc():
        root = inventory_root(text, shown)
        loader = _Loader(shown, p)
        try:
            return loader.load(root, extra_vars=extra_vars)
        except RecursionError:  # pragma: no cover - every reader bounds its depth
            raise InputError("inventory is nested too deeply", file=shown) from None


def validate_vars(values: dict, *, label: str = "--extra-vars") -> tuple[dict, list[str]]:
    """Check a mapping of variables (from the command line, say) like inventory
    variables: (normalized values, warnings), or InputError naming `label` and the key."""
    if not isinstance(values, dict):
        raise InputError(f"{label}: expected a mapping of variables", key=label)
    loader = _Loader(label, Path(label))
    layer = loader.check_vars(yamlread.node_from_value(values, label))
    loader.fail_if_problems()
    return layer.values, [f"{label}: {msg}" for _, _, _, msg in loader.warnings]


Where = tuple  # (file, line | None, column | None)


@dataclass
class _Problem:
    file: str
    line: int | None
    col: int | None
    message: str
    key: str | None = None
    derived: bool = False  # found by a whole-inventory check, listed after local problems


@dataclass
class _Layer:
    """Variables set in one place (a group's vars:, a host entry, a vars file)."""

    values: dict
    origins: dict  # path tuple -> (file, line, col) of the value
    size: int = 0  # values in it (expanded)


@dataclass
class _GroupDef:
    name: str
    file: str
    line: int
    col: int
    hosts: dict[str, None] = field(default_factory=dict)      # direct members, file order
    children: dict[str, None] = field(default_factory=dict)   # file order
    parents: dict[str, None] = field(default_factory=dict)
    layers: list[_Layer] = field(default_factory=list)        # inline vars
    file_layers: list[_Layer] = field(default_factory=list)   # group_vars/


@dataclass
class _HostDef:
    name: str
    file: str
    line: int
    col: int
    layers: list[_Layer] = field(default_factory=list)
    file_layers: list[_Layer] = field(default_factory=list)   # host_vars/


def _pos(node: Node) -> Where:
    m = node.start_mark
    if m.line < 0:
        return (m.name, None, None)
    return (m.name, m.line + 1, m.column + 1)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: Node, *, secret: bool = False) -> str:
    """What a node is, for a message: its shape, or a scalar's value (never a secret's)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_null(node):
        return "null"
    if secret:
        return "a value (*** not shown)"
    if node.tag == "tag:yaml.org,2002:str":
        return repr(node.value)
    return node.value


def _secret_kind(node: Node) -> str:
    """What a node under secrets: is, never its value."""
    return _kind(node, secret=True)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _deep_copy(value):
    t = type(value)
    if t is dict:
        return {k: (_deep_copy(v) if type(v) in _CONTAINERS else v) for k, v in value.items()}
    if t is list:
        return [(_deep_copy(v) if type(v) in _CONTAINERS else v) for v in value]
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


_CONTAINERS = (dict, list)


def _count_values(value) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count_values(v) for v in value)
    return 1


def _sub_paths(value: dict, prefix: tuple):
    """Every key path inside a dict value (into nested dicts)."""
    for k, v in value.items():
        path = prefix + (k,)
        yield path
        if isinstance(v, dict):
            yield from _sub_paths(v, path)


def _deep_merge(into: dict, layer: dict, origins: dict, layer_origins: dict,
                prefix: tuple = ()) -> None:
    """Merge `layer` into `into` (dicts recursively, anything else replaced by a copy) and
    keep `origins` (path -> where) pointing at where each value came from. Work is
    proportional to the values merged, not to the size of `origins`."""
    for key, value in layer.items():
        path = prefix + (key,)
        old = into.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _deep_merge(old, value, origins, layer_origins, path)
        else:
            if isinstance(old, dict):
                for sub in _sub_paths(old, path):
                    origins.pop(sub, None)
            into[key] = _deep_copy(value)
            if isinstance(value, dict):
                for sub in _sub_paths(value, path):
                    if sub in layer_origins:
                        origins[sub] = layer_origins[sub]
        if path in layer_origins:
            origins[path] = layer_origins[path]


_STANDARD_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in
                         ("str", "int", "float", "bool", "null", "timestamp", "binary")}


class _Loader:
    def __init__(self, shown: str, path: Path):
        self.shown = shown
        self.path = path
        self.base_dir = path.absolute().parent
        self.problems: list[_Problem] = []
        self.warnings: list[tuple[str, int, int, str]] = []
        self.groups: dict[str, _GroupDef] = {}
        self.hosts: dict[str, _HostDef] = {}
        self.edges: dict[tuple[str, str], Where] = {}
        self.dup_checked: set[int] = set()
        self.constructor = yamlread.Constructor(duplicates="first")
        self.merged_values = 0

    # -- reporting --
    def problem(self, where: Where | None, message: str, key: str | None = None,
                derived: bool = False):
        file, line, col = where if where else (self.shown, None, None)
        self.problems.append(_Problem(file or self.shown, line, col, message, key, derived))

    def cross_problem(self, where: Where | None, message: str, key: str | None = None):
        self.problem(where, message, key, derived=True)

    def warn(self, where: Where, message: str):
        self.warnings.append((where[0] or self.shown, where[1] or 0, where[2] or 0, message))

    def _order(self, file: str) -> tuple:
        return (file != self.shown, file)

    def fail_if_problems(self):
        if not self.problems:
            return
        seen, uniq = set(), []
        for p in self.problems:
            k = (p.file, p.line, p.col, p.message)
            if k not in seen:
                seen.add(k)
                uniq.append(p)
        uniq.sort(key=lambda p: (p.derived, self._order(p.file), p.line or 0, p.col or 0))
        first = uniq[0]
        msg = first.message
        if len(uniq) > 1:
            msg += f" (and {len(uniq) - 1} more problem{'s' if len(uniq) > 2 else ''})"
            for p in uniq[1:]:
                msg += "\n  " + self.where(p.file, p.line, p.col) + p.message
        raise InputError(msg, file=first.file, line=first.line, column=first.col,
                         key=first.key)

    @staticmethod
    def where(file, line, col) -> str:
        s = file
        if line is not None:
            s += f":{line}"
            if col is not None:
                s += f":{col}"
        return s + ": "

    # -- YAML helpers --
    def pairs(self, node: MappingNode, what: str = "key", context: str = "",
              _merging: frozenset = frozenset()) -> list:
        """[(name, key_node, value_node)] with merge keys (<<) applied and duplicate keys
        reported (first occurrence kept). Names are the raw text of scalar keys."""
        self.dup_checked.add(id(node))
        _merging = _merging | {id(node)}
        merged: list = []
        own: list = []
        first_at: dict[str, Node] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, MappingNode) and id(src) in _merging:
                        self.problem(_pos(src), "'<<' merges a mapping into itself")
                    elif isinstance(src, MappingNode):
                        merged.extend(self.pairs(src, what, context, _merging))
                    else:
                        self.problem(_pos(src), f"'<<' merge expects a mapping, got {_kind(src)}")
                continue
            if not isinstance(knode, ScalarNode):
                self.problem(_pos(knode),
                             f"{context}{what} must be a plain name, got {_kind(knode)}")
                continue
            name = knode.value
            if name in first_at:
                self.problem(_pos(knode),
                             f"{context}duplicate {what} {name!r}: first at line "
                             f"{_pos(first_at[name])[1]}, again at line {_pos(knode)[1]}",
                             key=name)
                continue
            first_at[name] = knode
            own.append((name, knode, vnode))
        names = {n for n, _, _ in own}
        result = [t for t in merged if t[0] not in names]
        # keep one of each merged name (the first source wins, as in YAML)
        dedup, seen = [], set()
        for t in result:
            if t[0] not in seen:
                seen.add(t[0])
                dedup.append(t)
        return dedup + own

    def find_duplicates(self, root: Node):
        """Report duplicate keys in every mapping not already checked by pairs(). Each
        node is visited once (aliases share nodes), without recursion."""
        seen: set[int] = set()
        todo = [root]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, MappingNode):
                if id(node) not in self.dup_checked:
                    self.pairs(node)
                for k, v in node.value:
                    todo.append(v)
                    todo.append(k)
            elif isinstance(node, SequenceNode):
                todo.extend(reversed(node.value))

    def construct(self, node: Node, label: str):
        """The plain Python value of a node, or (False, None) after reporting why not."""
        try:
            return True, self.constructor.build(node)
        except yamlread.NodeError as e:
            self.problem((e.file, e.line, e.column), f"{label}: {e.problem}", key=label)
            return False, None

    # -- main --
    def load(self, root: Node | None, *, extra_vars: dict | None = None) -> Inventory:
        from .inventory_sources import read_vars_files
        if root is None or _is_null(root):
            raise InputError("inventory is empty (expected 'all:' with hosts, children, vars)",
                             file=self.shown)
        if not isinstance(root, MappingNode):
            _, line, col = _pos(root)
            raise InputError(f"expected a mapping of groups ('all:' ...), got {_kind(root)}",
                             file=self.shown, line=line, column=col)

        self.groups["all"] = _GroupDef("all", *_pos(root))
        for name, knode, vnode in self.pairs(root, "group"):
            if name in _GROUP_KEYS:
                self.problem(_pos(knode), f"top-level {name!r} must be indented under 'all:' "
                             "(the top level holds groups)", key=name)
                continue
            if name == "all":
                g = self.groups["all"]
                g.file, g.line, g.col = _pos(knode)
                self.walk_group("all", knode, vnode, None, set())
            else:
                self.walk_group(name, knode, vnode, "all", set())
        self.find_duplicates(root)

        self.find_cycles()
        if any(p.message.startswith("group cycle") for p in self.problems):
            self.fail_if_problems()  # precedence needs an acyclic group graph
        if not self.hosts:
            self.fail_if_problems()  # a broken structure explains the missing hosts best
            all_g = self.groups["all"]
            self.problem((all_g.file, all_g.line, all_g.col),
                         "no hosts in the inventory: add hosts under all: hosts: (or a group's "
                         "hosts:)")
            self.fail_if_problems()

        read_vars_files(self, self.base_dir)
        extra = None
        if extra_vars:
            extra = self.check_vars(yamlread.node_from_value(extra_vars, "--extra-vars"))

        host_groups = self.host_groups()
        hosts: dict[str, Host] = {}
        origins: dict[str, dict] = {}
        defaults_size = _count_values(DEFAULTS)
        defaults_blob = pickle.dumps(DEFAULTS, pickle.HIGHEST_PROTOCOL)  # a fast deep copy
        host_layers: dict[str, list[_Layer]] = {}
        for name, hdef in self.hosts.items():
            layers = host_layers[name] = self.layers_of(hdef, host_groups[name])
            if extra is not None:
                layers.append(extra)
            self.merged_values += defaults_size + sum(layer.size for layer in layers)
        if self.merged_values > MAX_MERGED_VALUES:
            raise InputError(f"the hosts' variables expand to {self.merged_values:,} values "
                             f"in all ({len(self.hosts)} hosts), more than the limit of "
                             f"{MAX_MERGED_VALUES:,}; refused (share less through aliases "
                             "and group vars)", file=self.shown)
        for name, hdef in self.hosts.items():
            groups = host_groups[name]
            layers = host_layers[name]
            merged = pickle.loads(defaults_blob)
            where: dict = {}
            for layer in layers:
                _deep_merge(merged, layer.values, where, layer.origins)
            origins[name] = where
            hosts[name] = self.make_host(hdef, tuple(groups), merged, where)

        members: dict[str, list[str]] = {g: [] for g in self.groups}
        for name, groups in host_groups.items():
            for g in groups:
                members[g].append(name)
        self.check_head(hosts, members, origins)
        self.check_cross(hosts, origins)
        self.fail_if_problems()

        warnings = [f"{self.where(file, line or None, col or None)}{msg}"
                    for file, line, col, msg in sorted(
                        self.warnings, key=lambda w: (self._order(w[0]), w[1], w[2]))]
        for name in self.hosts:
            if name in self.groups:
                h = self.hosts[name]
                warnings.append(f"{self.where(h.file, h.line, h.col)}{name!r} is both a host "
                                "and a group name")
        tree = {g: (list(d.hosts), list(d.children)) for g, d in self.groups.items()}
        return Inventory(path=self.path, hosts=hosts, groups=members, warnings=warnings,
                         tree=tree, origins=origins)

    def layers_of(self, hdef: _HostDef, groups: list[str]) -> list[_Layer]:
        """Ansible's precedence, lowest first: all's inline vars, group_vars/all, the other
        groups' inline vars (by depth, then name), their group_vars files (same order), the
        host's inline vars, host_vars files."""
        all_g = self.groups["all"]
        layers = list(all_g.layers) + list(all_g.file_layers)
        others = [self.groups[g] for g in groups if g != "all"]
        for g in others:
            layers.extend(g.layers)
        for g in others:
            layers.extend(g.file_layers)
        layers.extend(hdef.layers)
        layers.extend(hdef.file_layers)
        return layers

    # -- structure walk --
    def walk_group(self, name: str, knode: Node, vnode: Node, parent: str | None,
                   stack: set[int]):
        where = _pos(knode)
        if not _GROUP_NAME_RE.match(name):
            self.problem(where, f"group name {name!r}: use letters, digits, '_', '-' or '.'",
                         key=name)
            return
        g = self.groups.get(name)
        if g is None:
            g = self.groups[name] = _GroupDef(name, *where)
        if parent is not None:
            if name == "all":
                self.problem(where, f"group 'all' cannot be a child of {parent!r}", key=name)
                return
            g.parents[parent] = None
            if name not in self.groups[parent].children:
                self.groups[parent].children[name] = None
                self.edges[(parent, name)] = where
        if _is_null(vnode):
            return
        if not isinstance(vnode, MappingNode):
            self.problem(_pos(vnode), f"group {name!r}: expected a mapping with hosts, children "
                         f"or vars, got {_kind(vnode)}", key=name)
            return
        if id(vnode) in stack:
            self.problem(_pos(knode), f"group {name!r}: recursive YAML alias", key=name)
            return
        stack = stack | {id(vnode)}
        for key, k2, v2 in self.pairs(vnode, "key", f"group {name!r}: "):
            if key == "hosts":
                self.walk_hosts(name, v2)
            elif key == "children":
                if _is_null(v2):
                    continue
                if not isinstance(v2, MappingNode):
                    self.problem(_pos(v2), f"{name}.children: expected a mapping of group "
                                 f"names, got {_kind(v2)}", key="children")
                    continue
                for child, k3, v3 in self.pairs(v2, "group", f"{name}.children: "):
                    self.walk_group(child, k3, v3, name, stack)
            elif key == "vars":
                if _is_null(v2):
                    continue
                if not isinstance(v2, MappingNode):
                    self.problem(_pos(v2), f"{name}.vars: expected a mapping of variables, got "
                                 f"{_kind(v2)}", key="vars")
                    continue
                g.layers.append(self.check_vars(v2))
            else:
                hint = _suggest(key, _GROUP_KEYS)
                if not hint and key in KNOWN_VARS:
                    hint = " (variables go under 'vars:')"
                self.problem(_pos(k2), f"group {name!r}: unknown key {key!r}{hint}; expected "
                             "hosts, children or vars", key=key)

    def walk_hosts(self, group: str, node: Node):
        if _is_null(node):
            return
        if not isinstance(node, MappingNode):
            hint = ""
            if isinstance(node, SequenceNode):
                hint = " (write each host as 'name:' on its own line, not '- name')"
            self.problem(_pos(node), f"{group}.hosts: expected a mapping of host names, got "
                         f"{_kind(node)}{hint}", key="hosts")
            return
        for name, knode, vnode in self.pairs(node, "host", f"group {group!r}: "):
            where = _pos(knode)
            if not _HOST_NAME_RE.match(name):
                self.problem(where, f"host name {name!r}: use letters, digits, '.', '_', '-' "
                             "or ':'", key=name)
                continue
            hdef = self.hosts.get(name)
            if hdef is None:
                hdef = self.hosts[name] = _HostDef(name, *where)
            self.groups[group].hosts[name] = None
            if _is_null(vnode):
                continue
            if not isinstance(vnode, MappingNode):
                self.problem(_pos(vnode), f"host {name!r}: expected a mapping of variables (or "
                             f"nothing), got {_kind(vnode)}", key=name)
                continue
            hdef.layers.append(self.check_vars(vnode))

    # -- variables --
    def check_vars(self, node: MappingNode) -> _Layer:
        layer = _Layer({}, {})
        self._check_mapping(node, KNOWN_VARS, (), layer.values, layer.origins)
        layer.size = _count_values(layer.values)
        return layer

    def _check_mapping(self, node: MappingNode, schema: dict, prefix: tuple, out: dict,
                       origins: dict):
        for key, knode, vnode in self.pairs(node, "variable"):
            path = prefix + (key,)
            dotted = ".".join(path)
            if path == ("secrets",):
                if _is_null(vnode):
                    continue
                if not isinstance(vnode, MappingNode):
                    self.problem(_pos(vnode), f"secrets: expected a mapping of named secrets "
                                 f"(e.g. hf_token: ...), got {_secret_kind(vnode)}",
                                 key="secrets")
                    continue
                sub: dict = {}
                self._check_secrets(vnode, path, sub, origins)
                out[key] = sub
                origins[path] = _pos(vnode)
                continue
            spec = schema.get(key)
            if spec is None:
                suggestion = ""
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                head, _, rest = key.partition(".")
                if rest and isinstance(schema.get(head), dict):
                    suggestion = f" (write it nested: '{head}:' then '{rest}:' indented under it)"
                elif close:
                    suggestion = f" (did you mean {'.'.join(prefix + (close[0],))!r}?)"
                # a top-level name the inventory does not know is a user's own variable
                # or a role's (checked against the roles' argument_specs when a play
                # runs): only a near miss of a known name is worth a warning here
                if prefix or suggestion:
                    self.warn(_pos(knode), f"unknown variable {dotted!r}{suggestion}")
                ok, value = self.construct(vnode, dotted)
                if ok:
                    out[key] = value
                    origins[path] = _pos(vnode)
                continue
            if isinstance(spec, dict):
                if _is_null(vnode):
                    continue
                if not isinstance(vnode, MappingNode):
                    self.problem(_pos(vnode), f"{dotted}: expected a mapping (keys: "
                                 f"{', '.join(spec) or 'any'}), got {_kind(vnode)}", key=dotted)
                    continue
                sub = {}
                self._check_mapping(vnode, spec, path, sub, origins)
                out[key] = sub
                origins[path] = _pos(vnode)
                continue
            ok, value = self.construct(vnode, dotted)
            if not ok:
                continue
            raw = vnode.value if isinstance(vnode, ScalarNode) else None
            try:
                out[key] = spec.check(value, raw)
            except _Invalid as e:
                hint = f" ({e.hint})" if e.hint else ""
                self.problem(_pos(vnode), f"{dotted}: expected {e.expected}, got "
                             f"{_kind(vnode)}{hint}", key=dotted)
                continue
            origins[path] = _pos(vnode)

    def _check_secrets(self, node: MappingNode, prefix: tuple, out: dict, origins: dict):
        """Everything under secrets: is a Secret (the text as written), whatever its YAML
        type; nested mappings and lists keep their shape. Never echoes a value."""
        known = KNOWN_VARS["secrets"]
        for key, knode, vnode in self.pairs(node, "secret"):
            path = prefix + (key,)
            if key in known and isinstance(vnode, (MappingNode, SequenceNode)):
                self.problem(_pos(vnode), f"{'.'.join(path)}: expected {known[key].expected}, "
                             f"got {_secret_kind(vnode)}", key=".".join(path))
                continue
            value = self._secret_value(vnode, ".".join(path))
            if value is not _BAD:
                out[key] = value
                origins[path] = _pos(vnode)

    def _secret_value(self, node: Node, dotted: str):
        if isinstance(node, MappingNode):
            sub: dict = {}
            for key, _, vnode in self.pairs(node, "secret"):
                value = self._secret_value(vnode, f"{dotted}.{key}")
                if value is not _BAD:
                    sub[key] = value
            return sub
        if isinstance(node, SequenceNode):
            items = [self._secret_value(v, f"{dotted}[{i}]")
                     for i, v in enumerate(node.value)]
            return [v for v in items if v is not _BAD]
        if _is_null(node):
            return None
        if node.tag not in _STANDARD_SCALAR_TAGS:
            self.problem(_pos(node), f"{dotted}: unsupported YAML tag {node.tag!r} (the value "
                         "is not shown)", key=dotted)
            return _BAD
        return Secret(node.value)

    # -- vars files (host_vars/, group_vars/) --
    def add_vars_file(self, kind: str, name: str, root: Node | None, shown: str) -> None:
        """One file of host_vars/NAME or group_vars/NAME: a mapping of variables."""
        target = (self.hosts if kind == "host" else self.groups).get(name)
        if target is None:
            self.warn((shown, 0, 0), f"no {kind} {name!r} in the inventory; file ignored")
            return
        if root is None or _is_null(root):
            return
        if not isinstance(root, MappingNode):
            self.problem(_pos(root), f"{kind}_vars/{name}: expected a mapping of variables, "
                         f"got {_kind(root)}", key=name)
            return
        target.file_layers.append(self.check_vars(root))
        self.find_duplicates(root)

    # -- resolution --
    def resolve_path(self, value: str | None) -> str | None:
        if not value:
            return None
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = self.base_dir / p
        return os.path.normpath(str(p))

    def make_host(self, hdef: _HostDef, groups: tuple[str, ...], merged: dict,
                  where: dict) -> Host:
        address = merged.get("ansible_host") or merged.get("host") or hdef.name
        if "ansible_host" not in merged and "host" not in merged:
            problem = _address_problem(hdef.name)
            if problem:
                self.problem((hdef.file, hdef.line, hdef.col), f"host {hdef.name!r} has no "
                             f"ansible_host and its name is not a usable address ({problem})",
                             key=hdef.name)
        user = merged.get("ansible_user") or merged.get("user") or "root"
        port = merged.get("ansible_port") or merged.get("port") or 22
        key_file = merged.get("ansible_ssh_private_key_file") or merged.get("ssh_key")
        return Host(name=hdef.name, address=str(address), user=str(user), port=int(port),
                    key_file=self.resolve_path(key_file),
                    known_hosts_file=self.resolve_path(merged.get("ssh_known_hosts_file")),
                    groups=groups, vars=merged, line=hdef.line, file=hdef.file)

    def host_at(self, name: str) -> Where:
        h = self.hosts[name]
        return (h.file, h.line, h.col)

    def check_head(self, hosts: dict[str, Host], members: dict[str, list], origins: dict):
        """Exactly one head: role: head, or the single host of a group named 'head'.
        On success every host's vars['role'] is resolved to 'head' or 'worker'."""
        head_group = set(members.get("head", ()))
        group = self.groups.get("head")
        if group is not None and len(head_group) > 1:
            listed = ", ".join(h for h in self.hosts if h in head_group)
            self.cross_problem((group.file, group.line, group.col),
                               f"group 'head' has {len(head_group)} hosts ({listed}); exactly "
                               "one host can be the head", key="head")
            return

        def role_at(name: str) -> Where:
            return origins[name].get(("role",)) or self.host_at(name)

        heads: list[str] = []
        for name, host in hosts.items():
            role = host.vars.get("role")
            if name in head_group and role == "worker":
                self.cross_problem(role_at(name), f"host {name!r} is in group 'head' but has "
                                   "role: worker", key="role")
            elif name in head_group or role == "head":
                heads.append(name)
        if not heads:
            if any(not p.derived for p in self.problems):
                return  # the head may be in a part that failed to parse; fix that first
            all_g = self.groups["all"]
            self.cross_problem((all_g.file, all_g.line, all_g.col), "no head host: set "
                               "'role: head' on exactly one host, or put one host in a group "
                               "named 'head'", key="role")
            return
        if len(heads) > 1:
            def described(name: str) -> str:
                h = self.hosts[name]
                set_at = origins[name].get(("role",))
                extra = ""
                if set_at and (set_at[0], set_at[1]) != (h.file, h.line):
                    extra = f", role set at line {set_at[1]}" if set_at[0] == h.file else \
                        f", role set at {set_at[0]}:{set_at[1]}"
                return f"{name!r} (line {h.line}{extra})"

            shown = heads if len(heads) <= 10 else heads[:10]
            listed = ", ".join(described(n) for n in shown[:-1]) + " and " + described(shown[-1])
            if len(heads) > 10:
                listed += f" (and {len(heads) - 10} more)"
            self.cross_problem(role_at(heads[1]), f"{len(heads)} heads: {listed}; exactly one "
                               "host may have role: head", key="role")
            return
        for name, host in hosts.items():
            host.vars["role"] = "head" if name == heads[0] else "worker"

    def check_cross(self, hosts: dict[str, Host], origins: dict):
        """Checks on merged values: sm_host exists, Ray ports do not collide, no two hosts
        share an address and port. Messages about values do not name the host, so a value
        set once for many hosts is reported once."""
        fixed = ("port", "dashboard_port", "node_manager_port", "object_manager_port",
                 "client_server_port", "metrics_export_port")
        endpoints: dict[tuple[str, int], str] = {}
        for name, host in hosts.items():
            where = origins[name]
            host_at = self.host_at(name)
            endpoint = (_canonical_address(host.address), host.port)
            other = endpoints.setdefault(endpoint, name)
            if other != name:
                at = where.get(("ansible_host",)) or where.get(("host",)) or host_at
                self.cross_problem(at, f"host {name!r} has the same address and port as host "
                                   f"{other!r} ({host.address} port {host.port}, line "
                                   f"{self.hosts[other].line}); one machine is one host",
                                   key=name)
            sm_host = host.vars.get("infiniband", {}).get("sm_host")
            if sm_host is not None and sm_host not in hosts:
                self.cross_problem(where.get(("infiniband", "sm_host"), host_at),
                                   f"infiniband.sm_host: {sm_host!r} is not a host of this "
                                   f"inventory{_suggest(sm_host, hosts)}",
                                   key="infiniband.sm_host")
            ray = host.vars.get("ray")
            if not isinstance(ray, dict):
                continue
            lo, hi = ray.get("min_worker_port"), ray.get("max_worker_port")
            if not (isinstance(lo, int) and isinstance(hi, int)):
                continue
            if lo > hi:
                at = where.get(("ray", "max_worker_port")) or where.get(("ray", "min_worker_port"))
                self.cross_problem(at or host_at, f"ray: min_worker_port {lo} is above "
                                   f"max_worker_port {hi}", key="ray.max_worker_port")
                continue
            used: dict[int, str] = {}
            for key in fixed:
                port = ray.get(key)
                if not isinstance(port, int):
                    continue
                if port in used:
                    other = f"ray.{used[port]}"
                elif lo <= port <= hi:
                    other = f"the worker port range {lo}..{hi}"
                else:
                    used[port] = key
                    continue
                self.cross_problem(where.get(("ray", key), host_at),
                                   f"ray.{key}: port {port} collides with {other}",
                                   key=f"ray.{key}")

    # -- group graph (iterative: a chain of 10,000 groups must not exhaust the stack) --
    def find_cycles(self) -> None:
        state: dict[str, int] = {}   # 1 = on the path, 2 = done
        reported: set[frozenset] = set()
        for start in self.groups:
            if start in state:
                continue
            state[start] = 1
            path = [start]
            iters = [iter(self.groups[start].children)]
            while iters:
                g = path[-1]
                c = next(iters[-1], None)
                if c is None:
                    state[g] = 2
                    path.pop()
                    iters.pop()
                    continue
                if state.get(c) == 1:
                    cycle = path[path.index(c):] + [c]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self.problem(self.edges.get((g, c)),
                                     "group cycle: " + " -> ".join(cycle), key=c)
                elif c not in state:
                    state[c] = 1
                    path.append(c)
                    iters.append(iter(self.groups[c].children))

    def depths(self) -> dict[str, int]:
        """Longest distance from 'all' (Ansible's group depth), in topological order; the
        graph is acyclic here."""
        indegree = {g: len(d.parents) for g, d in self.groups.items()}
        depth = {g: 0 for g in self.groups}
        todo = [g for g, n in indegree.items() if n == 0]
        while todo:
            g = todo.pop()
            for c in self.groups[g].children:
                depth[c] = max(depth[c], depth[g] + 1)
                indegree[c] -= 1
                if indegree[c] == 0:
                    todo.append(c)
        return depth

    def host_groups(self) -> dict[str, list[str]]:
        """host -> every group it is in (directly or through children), 'all' first, then
        by depth and name (the order their variables apply in)."""
        depth = self.depths()
        direct: dict[str, list[str]] = {h: [] for h in self.hosts}
        for g, d in self.groups.items():
            for h in d.hosts:
                direct[h].append(g)
        closure: dict[str, frozenset] = {}
        total = 0

        def ancestors(g: str) -> frozenset:
            nonlocal total
            done = closure.get(g)
            if done is None:
                seen, todo = {g}, [g]
                while todo:
                    for p in self.groups[todo.pop()].parents:
                        if p not in seen:
                            seen.add(p)
                            todo.append(p)
                done = closure[g] = frozenset(seen)
                total += len(done)
            return done

        out: dict[str, list[str]] = {}
        for h, gs in direct.items():
            mine: set[str] = {"all"}
            for g in gs:
                mine |= ancestors(g)
            total += len(mine)
            if total > MAX_MEMBERSHIPS:
                raise InputError(f"group memberships exceed {MAX_MEMBERSHIPS:,} (hosts x the "
                                 "groups each is in); refused", file=self.shown)
            mine.discard("all")
            out[h] = ["all"] + sorted(mine, key=lambda g: (depth.get(g, 0), g))
        return out


_BAD = object()


def _canonical_address(address: str) -> str:
    if ":" in address:  # IPv6: one address has many spellings
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            pass
    return address.lower().rstrip(".")


# --------------------------------------------------------------------------------------
# Extra variables (-e/--extra-vars)
# --------------------------------------------------------------------------------------


def parse_extra_vars(items: list[str], *, base_dir: str | Path | None = None) -> dict:
    """Variables from `-e/--extra-vars` arguments, later arguments winning (deep-merged):

    - ``@FILE``: a YAML (or JSON) file holding a mapping, read with the bounded reader;
      a relative FILE is relative to `base_dir` (default: the current folder);
    - ``{...}``: a YAML/JSON mapping written inline;
    - ``KEY=VALUE [KEY=VALUE ...]``: shell-like words; each VALUE is text, as in Ansible
      (write JSON/YAML for numbers, booleans or lists).

    Pure apart from reading @FILE. Each problem is an InputError naming the argument.
    Check the result like inventory variables with ``load_inventory(...,
    extra_vars=...)`` or ``validate_vars``."""
    import shlex

    out: dict = {}
    for item in items:
        shown = f"--extra-vars {item!r}" if len(item) <= 60 else \
            f"--extra-vars {item[:57]!r}..."
        text = item.strip()
        if not text:
            raise InputError(f"{shown}: empty; expected KEY=VALUE, @FILE or a mapping",
                             key="--extra-vars")
        if text.startswith("@"):
            name = text[1:].strip()
            if not name:
                raise InputError(f"{shown}: '@' needs a file name", key="--extra-vars")
            path = Path(os.path.expanduser(name))
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            value = yamlread.load(path, what="extra vars file", default={})
            if not isinstance(value, dict):
                raise InputError(f"{shown}: the file must hold a mapping of variables, not "
                                 f"{type(value).__name__}", file=str(path), key="--extra-vars")
        elif text.startswith(("{", "[")):
            root = yamlread.compose(text, "--extra-vars")
            value = yamlread.Constructor().build(root) if root is not None else None
            if not isinstance(value, dict):
                raise InputError(f"{shown}: expected a mapping such as {{\"gpus\": 4}}",
                                 key="--extra-vars")
        else:
            try:
                words = shlex.split(text)
            except ValueError as e:
                raise InputError(f"{shown}: {e}", key="--extra-vars") from None
            value = {}
            for word in words:
                key, eq, val = word.partition("=")
                if not eq or not key:
                    raise InputError(f"{shown}: expected KEY=VALUE, got {word!r}",
                                     key="--extra-vars")
                value[key] = val
        for key in value:
            if not isinstance(key, str):
                raise InputError(f"{shown}: variable names must be text, got {key!r}",
                                 key="--extra-vars")
        _merge_plain(out, value)
    return out


def _merge_plain(into: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_plain(into[key], value)
        else:
            into[key] = value
