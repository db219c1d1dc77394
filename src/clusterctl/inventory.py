"""Inventory: parse and validate an Ansible-style YAML inventory (pure, layer 1).

The file is read with yaml's *compose* API, so every node keeps its position and
every problem can be reported as ``file:line:col: key: what was expected, got what``.
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

Variable precedence, lowest first::

    DEFAULTS < all vars < group vars (by depth, then name) < host vars

with dict values deep-merged. See docs/inventory.md.
"""
from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import InputError
from .secret import Secret

__all__ = [
    "DEFAULTS",
    "KNOWN_VARS",
    "VarSpec",
    "Host",
    "Inventory",
    "load_inventory",
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
    },
    "python": {
        "venv": "/opt/clusterctl/venv",
        "ray": None,
        "vllm": None,
        "vllm_package": "vllm",
        "torch": None,
        "extra": [],
    },
    "nccl": {"debug": "WARN", "ib_hca": None},
    "llamacpp": {
        "source": "llama-cpp-python==0.3.36",
        "ref": None,
        "prefix": "/opt/clusterctl/llama.cpp",
        "rpc_port": 50052,
        "cuda": "auto",
    },
    "vllm": {"port": 8000},
    "netcheck": {"iperf_port": 5201},
    "models_dir": "/opt/models",
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
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value.strip())
    return None


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
        n = _as_int(value)
        if n is None or n < lo or (hi is not None and n > hi):
            raise _Invalid(expected)
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
        try:
            ipaddress.IPv4Address(s)
        except ValueError:
            return "not a valid IPv4 address"
        return None
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


def _cuda_check():
    expected = "auto, true or false"

    def check(value, raw):
        if isinstance(value, bool):
            return value
        if value == "auto":
            return "auto"
        raise _Invalid(expected)

    return expected, check


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
    },
    "vllm": {
        "port": _spec(_port(), "OpenAI-compatible API port of vLLM on the head"),
    },
    "netcheck": {
        "iperf_port": _spec(_port(), "port of the iperf3 servers netcheck starts and stops"),
    },
    "models_dir": _spec(_abs_path_check(), "where model files live on every host"),
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

# Dict-valued variables that accept any key (every value is a Secret).
_OPEN_DICTS = {"secrets": _spec(_secret_check(), "a secret (masked as ***)")}

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


def load_inventory(path: str | Path) -> Inventory:
    """Read, validate and resolve an inventory file. Raises InputError listing every
    problem found (file:line:col each)."""
    shown = str(path)
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read inventory: {e.strerror or e}", file=shown) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"inventory is not UTF-8 text (byte {e.start})", file=shown) from None
    try:
        return _Loader(shown, p).load(text)
    except RecursionError:
        raise InputError("inventory is nested too deeply", file=shown) from None


@dataclass
class _Problem:
    line: int | None
    col: int | None
    message: str
    key: str | None = None
    derived: bool = False  # found by a whole-inventory check, listed after local problems


@dataclass
class _Layer:
    """Variables set in one place (a group's vars:, or a host entry)."""

    values: dict
    origins: dict  # path tuple -> (line, col) of the value


@dataclass
class _GroupDef:
    name: str
    line: int
    col: int
    hosts: list[str] = field(default_factory=list)       # direct members, file order
    children: list[str] = field(default_factory=list)    # file order
    parents: list[str] = field(default_factory=list)
    layers: list[_Layer] = field(default_factory=list)


@dataclass
class _HostDef:
    name: str
    line: int
    col: int
    layers: list[_Layer] = field(default_factory=list)


def _pos(node: Node) -> tuple[int, int]:
    m = node.start_mark
    return m.line + 1, m.column + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_null(node):
        return "null"
    if node.tag == "tag:yaml.org,2002:str":
        return repr(node.value)
    return node.value


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _deep_merge(into: dict, layer: dict, origins: dict, layer_origins: dict,
                prefix: tuple = ()) -> None:
    """Merge `layer` into `into` (dicts recursively, anything else replaced) and keep
    `origins` (path -> (line, col)) pointing at where each value came from."""
    for key, value in layer.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, origins, layer_origins, path)
        else:
            into[key] = _deep_copy(value)
            n = len(path)
            for p in [p for p in origins if p[:n] == path]:
                del origins[p]
            for p, where in layer_origins.items():
                if p[:n] == path:
                    origins[p] = where
        if path in layer_origins:
            origins[path] = layer_origins[path]


class _Loader:
    def __init__(self, shown: str, path: Path):
        self.shown = shown
        self.path = path
        self.base_dir = path.absolute().parent
        self.problems: list[_Problem] = []
        self.warnings: list[tuple[int, int, str]] = []
        self.groups: dict[str, _GroupDef] = {}
        self.hosts: dict[str, _HostDef] = {}
        self.edges: dict[tuple[str, str], tuple[int, int]] = {}
        self.dup_checked: set[int] = set()

    # -- reporting --
    def problem(self, where: tuple[int, int] | None, message: str, key: str | None = None,
                derived: bool = False):
        line, col = where if where else (None, None)
        self.problems.append(_Problem(line, col, message, key, derived))

    def cross_problem(self, where: tuple[int, int] | None, message: str, key: str | None = None):
        self.problem(where, message, key, derived=True)

    def warn(self, where: tuple[int, int], message: str):
        self.warnings.append((where[0], where[1], message))

    def fail_if_problems(self):
        if not self.problems:
            return
        seen, uniq = set(), []
        for p in self.problems:
            k = (p.line, p.col, p.message)
            if k not in seen:
                seen.add(k)
                uniq.append(p)
        uniq.sort(key=lambda p: (p.derived, p.line or 0, p.col or 0))
        first = uniq[0]
        msg = first.message
        if len(uniq) > 1:
            msg += f" (and {len(uniq) - 1} more problem{'s' if len(uniq) > 2 else ''})"
            for p in uniq[1:]:
                msg += "\n  " + self.where(p.line, p.col) + p.message
        raise InputError(msg, file=self.shown, line=first.line, column=first.col, key=first.key)

    def where(self, line, col) -> str:
        s = self.shown
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
                             f"{_pos(first_at[name])[0]}, again at line {_pos(knode)[0]}",
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

    def find_duplicates(self, node: Node, stack: set[int]):
        """Report duplicate keys in every mapping not already checked by pairs()."""
        if id(node) in stack:
            return
        stack = stack | {id(node)}
        if isinstance(node, MappingNode):
            if id(node) not in self.dup_checked:
                self.pairs(node)
            for k, v in node.value:
                self.find_duplicates(k, stack)
                self.find_duplicates(v, stack)
        elif isinstance(node, SequenceNode):
            for v in node.value:
                self.find_duplicates(v, stack)

    def construct(self, node: Node, label: str):
        """The plain Python value of a node, or (False, None) after reporting why not."""
        try:
            return True, SafeConstructor().construct_object(node, deep=True)
        except ConstructorError as e:
            mark = e.problem_mark or node.start_mark
            problem = e.problem or "cannot read this value"
            tag = re.search(r"constructor for the tag '([^']*)'", problem)
            if tag:
                problem = f"unsupported YAML tag '{tag.group(1)}'"
            elif "recursive" in problem:
                problem = "recursive YAML alias"
            self.problem((mark.line + 1, mark.column + 1), f"{label}: {problem}", key=label)
            return False, None
        except RecursionError:
            self.problem(_pos(node), f"{label}: value is nested too deeply", key=label)
            return False, None

    # -- main --
    def load(self, text: str) -> Inventory:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or "invalid YAML"
            if e.context:
                context = e.context
                if e.context_mark is not None and mark is not None \
                        and e.context_mark.line != mark.line:
                    context += f" at line {e.context_mark.line + 1}"
                problem = f"{context}{',' if problem.startswith('but ') else ':'} {problem}"
            if "'\\t'" in problem:
                problem += " (indent with spaces, not tabs)"
            line = mark.line + 1 if mark else None
            col = mark.column + 1 if mark else None
            raise InputError(f"YAML syntax error: {problem}", file=self.shown, line=line,
                             column=col) from None
        except yaml.YAMLError as e:
            raise InputError(f"YAML error: {e}", file=self.shown) from None

        if root is None or _is_null(root):
            raise InputError("inventory is empty (expected 'all:' with hosts, children, vars)",
                             file=self.shown)
        if not isinstance(root, MappingNode):
            raise InputError(f"expected a mapping of groups ('all:' ...), got {_kind(root)}",
                             file=self.shown, line=_pos(root)[0], column=_pos(root)[1])

        self.groups["all"] = _GroupDef("all", *_pos(root))
        for name, knode, vnode in self.pairs(root, "group"):
            if name in _GROUP_KEYS:
                self.problem(_pos(knode), f"top-level {name!r} must be indented under 'all:' "
                             "(the top level holds groups)", key=name)
                continue
            if name == "all":
                g = self.groups["all"]
                g.line, g.col = _pos(knode)
                self.walk_group("all", knode, vnode, None, set())
            else:
                self.walk_group(name, knode, vnode, "all", set())
        self.find_duplicates(root, set())

        self.find_cycles()
        if not self.hosts:
            self.fail_if_problems()  # a broken structure explains the missing hosts best
            all_g = self.groups["all"]
            self.problem((all_g.line, all_g.col),
                         "no hosts in the inventory: add hosts under all: hosts: (or a group's "
                         "hosts:)")
            self.fail_if_problems()

        members = self.members()
        depth = self.depths()
        hosts: dict[str, Host] = {}
        origins: dict[str, dict] = {}
        for name, hdef in self.hosts.items():
            host_groups = sorted((g for g in self.groups if name in members[g]),
                                 key=lambda g: (depth.get(g, 0), g))
            host_groups.remove("all")
            host_groups.insert(0, "all")
            merged = _deep_copy(DEFAULTS)
            where: dict = {}
            for g in host_groups:
                for layer in self.groups[g].layers:
                    _deep_merge(merged, layer.values, where, layer.origins)
            for layer in hdef.layers:
                _deep_merge(merged, layer.values, where, layer.origins)
            origins[name] = where
            hosts[name] = self.make_host(hdef, tuple(host_groups), merged, where)

        self.check_head(hosts, members, origins)
        self.check_cross(hosts, origins)
        self.fail_if_problems()

        groups_out = {g: [h for h in self.hosts if h in members[g]] for g in self.groups}
        warnings = [f"{self.shown}:{line}:{col}: {msg}"
                    for line, col, msg in sorted(self.warnings, key=lambda w: (w[0], w[1]))]
        for name in self.hosts:
            if name in self.groups:
                warnings.append(f"{self.shown}:{self.hosts[name].line}:{self.hosts[name].col}: "
                                f"{name!r} is both a host and a group name")
        return Inventory(path=self.path, hosts=hosts, groups=groups_out, warnings=warnings)

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
            if parent not in g.parents:
                g.parents.append(parent)
            if name not in self.groups[parent].children:
                self.groups[parent].children.append(name)
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
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)
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
        return layer

    def _check_mapping(self, node: MappingNode, schema: dict, prefix: tuple, out: dict,
                       origins: dict, open_spec: VarSpec | None = None):
        for key, knode, vnode in self.pairs(node, "variable"):
            path = prefix + (key,)
            dotted = ".".join(path)
            spec = schema.get(key)
            if spec is None and open_spec is not None:
                spec = open_spec
            if spec is None:
                suggestion = ""
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                head, _, rest = key.partition(".")
                if rest and isinstance(schema.get(head), dict):
                    suggestion = f" (write it nested: '{head}:' then '{rest}:' indented under it)"
                elif close:
                    suggestion = f" (did you mean {'.'.join(prefix + (close[0],))!r}?)"
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
                sub: dict = {}
                self._check_mapping(vnode, spec, path, sub, origins, _OPEN_DICTS.get(key))
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
                self.problem((hdef.line, hdef.col), f"host {hdef.name!r} has no ansible_host and "
                             f"its name is not a usable address ({problem})", key=hdef.name)
        user = merged.get("ansible_user") or merged.get("user") or "root"
        port = merged.get("ansible_port") or merged.get("port") or 22
        key_file = merged.get("ansible_ssh_private_key_file") or merged.get("ssh_key")
        return Host(name=hdef.name, address=str(address), user=str(user), port=int(port),
                    key_file=self.resolve_path(key_file),
                    known_hosts_file=self.resolve_path(merged.get("ssh_known_hosts_file")),
                    groups=groups, vars=merged, line=hdef.line)

    def check_head(self, hosts: dict[str, Host], members: dict[str, set], origins: dict):
        """Exactly one head: role: head, or the single host of a group named 'head'.
        On success every host's vars['role'] is resolved to 'head' or 'worker'."""
        head_group = members.get("head", set())
        group = self.groups.get("head")
        if group is not None and len(head_group) > 1:
            listed = ", ".join(h for h in self.hosts if h in head_group)
            self.cross_problem((group.line, group.col),
                               f"group 'head' has {len(head_group)} hosts ({listed}); exactly "
                               "one host can be the head", key="head")
            return

        def role_at(name: str) -> tuple[int, int]:
            hdef = self.hosts[name]
            return origins[name].get(("role",)) or (hdef.line, hdef.col)

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
            self.cross_problem((all_g.line, all_g.col), "no head host: set 'role: head' on "
                               "exactly one host, or put one host in a group named 'head'",
                               key="role")
            return
        if len(heads) > 1:
            def described(name: str) -> str:
                line = self.hosts[name].line
                set_at = origins[name].get(("role",))
                extra = f", role set at line {set_at[0]}" if set_at and set_at[0] != line else ""
                return f"{name!r} (line {line}{extra})"

            listed = ", ".join(described(n) for n in heads[:-1]) + " and " + described(heads[-1])
            self.cross_problem(role_at(heads[1]), f"{len(heads)} heads: {listed}; exactly one "
                               "host may have role: head", key="role")
            return
        for name, host in hosts.items():
            host.vars["role"] = "head" if name == heads[0] else "worker"

    def check_cross(self, hosts: dict[str, Host], origins: dict):
        """Checks on merged values: sm_host exists, Ray ports do not collide. Messages do
        not name the host, so a value set once for many hosts is reported once."""
        fixed = ("port", "dashboard_port", "node_manager_port", "object_manager_port",
                 "client_server_port")
        for name, host in hosts.items():
            where = origins[name]
            host_at = (self.hosts[name].line, self.hosts[name].col)
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

    # -- group graph --
    def find_cycles(self) -> None:
        state: dict[str, int] = {}   # 1 = on stack, 2 = done
        reported: set[frozenset] = set()

        def visit(g: str, path: list[str]):
            state[g] = 1
            for c in self.groups[g].children:
                if state.get(c) == 1:
                    cycle = path[path.index(c):] + [c] if c in path else [g, c]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self.problem(self.edges.get((g, c)),
                                     "group cycle: " + " -> ".join(cycle), key=c)
                elif state.get(c) is None:
                    visit(c, path + [c])
            state[g] = 2

        for g in self.groups:
            if state.get(g) is None:
                visit(g, [g])

    def members(self) -> dict[str, set]:
        """group -> every host in it or in its descendants (cycles are cut)."""
        result: dict[str, set] = {}
        for g in self.groups:
            seen, todo, out = {g}, [g], set()
            while todo:
                x = todo.pop()
                out.update(self.groups[x].hosts)
                for c in self.groups[x].children:
                    if c not in seen:
                        seen.add(c)
                        todo.append(c)
            result[g] = out
        result["all"] = set(self.hosts)
        return result

    def depths(self) -> dict[str, int]:
        """Longest distance from 'all' (Ansible's group depth); cycles are cut."""
        memo: dict[str, int] = {"all": 0}

        def depth(g: str, seen: frozenset) -> int:
            if g in memo:
                return memo[g]
            parents = [p for p in self.groups[g].parents if p not in seen] or ["all"]
            d = 1 + max(depth(p, seen | {p}) for p in parents)
            memo[g] = d
            return d

        for g in self.groups:
            depth(g, frozenset([g]))
        return memo
