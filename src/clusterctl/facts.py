"""Facts: what a host looks like, gathered in ONE round trip.

A fact kind is a bash snippet (run on the node) plus a pure parser (run on the
controller). `build_script` joins every requested snippet into one bash script
whose output frames each result between markers::

    \\n@@clusterctl-fact <index>[,<index>...] <exit code> <kind>\\n<output>
    ...
    \\n@@clusterctl-facts-end <count>\\n

so a missing or failing tool (no nvidia-smi, no systemd) only affects its own
fact. `parse_output` turns that text back into a `Facts` object without any I/O.

Design notes:
- Each snippet runs in a `$( ... )` subshell with stdin from /dev/null and
  stderr discarded, so a snippet can neither eat the script (when it is fed to
  `bash -s`) nor abort the others (`exit` only leaves its subshell).
- The whole script is one function called on the last line: bash parses all of
  it before running anything, which makes stdin delivery safe.
- No per-fact python: `python3 --version` is the only python3 process; pip
  facts read `*.dist-info/METADATA` headers with one grep per venv.
- `unit` requests are batched into one `systemctl show` call.
- File content travels as base64 (only for regular files <= 256 KiB); the
  sha256 is computed here from the content, and on the node only for larger
  files.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import ipaddress
import json
import re
import shlex
import stat as statmod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .gpu_health import SNIPPET as _GPU_HEALTH_SNIPPET
from .gpu_health import parse_gpu_health_fact as _p_gpu_health

MARKER = "@@clusterctl-fact"
END_MARKER = "@@clusterctl-facts-end"
CONTENT_LIMIT = 256 * 1024  # bytes of file content transferred with a `file` fact

BASE_KINDS = ("os", "kernel", "arch", "interfaces", "routes", "packages", "gpus",
              "infiniband", "python", "net_manager", "networkd_files", "nvcc", "cpus", "memory")
PARAM_KINDS = ("file", "dir", "path", "pip", "unit", "sysctl", "check", "link")
# no argument, but gathered only when asked for (not in BASE_REQUESTS): slow or of use to few
ON_DEMAND_KINDS = ("gpu_health", "libc")
KINDS = BASE_KINDS + PARAM_KINDS + ON_DEMAND_KINDS
NET_MANAGERS = ("networkd", "netplan", "ifupdown", "none")


@dataclass(frozen=True)
class FactRequest:
    """One fact to gather: a base kind (arg "") or a parameterised kind with its arg."""

    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


BASE_REQUESTS: tuple[FactRequest, ...] = tuple(FactRequest(k) for k in BASE_KINDS)


@dataclass(frozen=True)
class Interface:
    name: str
    mtu: int
    state: str                                # operstate: UP, DOWN, UNKNOWN, ...
    mac: str | None
    addresses: list[tuple[str, int]]          # (ip, prefixlen), IPv4 and IPv6
    kind: str                                 # linkinfo kind (veth, bridge, vlan, ...) or link type (ether, loopback, infiniband)


@dataclass(frozen=True)
class Route:
    dst: str                                  # "default" or a CIDR / address
    gateway: str | None
    dev: str | None
    prefsrc: str | None
    protocol: str | None
    scope: str | None
    metric: int | None


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mib: int | None
    compute_cap: str | None                   # "8.0"; None when the driver cannot report it


@dataclass(frozen=True)
class IBPort:
    device: str                               # mlx5_0
    port: int
    state: str                                # ACTIVE, DOWN, INIT, ...
    phys_state: str                           # LinkUp, Disabled, Polling, ...
    rate: str                                 # "100 Gb/sec (4X EDR)"
    rate_gbps: float | None
    link_layer: str                           # InfiniBand | Ethernet (RoCE)
    netdevs: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- snippets

def _q(arg: str) -> str:
    return shlex.quote(arg)


_S_OS = """\
if [ -r /etc/os-release ]; then _cat /etc/os-release; else _cat /usr/lib/os-release; fi"""

_S_GPUS = """\
command -v nvidia-smi >/dev/null || exit 0
o=$(nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader,nounits) && { printf '%s\\n' "$o"; exit 0; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits"""

_S_INFINIBAND = """\
for p in /sys/class/infiniband/*/ports/*; do
  d=${p%/ports/*}; d=${d##*/}; n=${p##*/}
  st=; ph=; ra=; ll=; nd=
  read -r st < "$p/state"; read -r ph < "$p/phys_state"; read -r ra < "$p/rate"; read -r ll < "$p/link_layer"
  for x in "/sys/class/infiniband/$d/device/net/"*; do nd="$nd${nd:+,}${x##*/}"; done
  printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$d" "$n" "$st" "$ph" "$ra" "$ll" "$nd"
done"""

_S_NET_MANAGER = """\
f=(/etc/netplan/*.yaml /etc/netplan/*.yml); echo "netplan_files ${#f[@]}"
f=(/etc/systemd/network/*.network /run/systemd/network/*.network); echo "networkd_files ${#f[@]}"
[ -f /run/systemd/netif/state ] && echo "networkd_running"
n=0
for f in /etc/network/interfaces /etc/network/interfaces.d/*; do
  [ -f "$f" ] || continue
  while read -r w1 w2 _; do [ "$w1" = iface ] && [ "$w2" != lo ] && n=$((n+1)); done < "$f"
done
echo "ifupdown_ifaces $n"
command -v ifup >/dev/null && echo "ifup"
exit 0"""

_S_NETWORKD_FILES = """\
[ -f /run/systemd/netif/state ] || exit 0
for d in /sys/class/net/*; do
  i=; read -r i < "$d/ifindex" || continue
  [ -f "/run/systemd/netif/links/$i" ] || continue
  while IFS= read -r l; do
    case "$l" in NETWORK_FILE=?*) printf '%s\\t%s\\n' "${d##*/}" "${l#NETWORK_FILE=}";; esac
  done < "/run/systemd/netif/links/$i"
done
exit 0"""

_S_MEMORY = """\
while read -r k v _; do [ "$k" = MemTotal: ] && { echo "$v"; exit 0; }; done < /proc/meminfo
exit 1"""

_BASE_SNIPPETS = {
    "os": _S_OS,
    "kernel": "_cat /proc/sys/kernel/osrelease",
    "arch": "uname -m",
    "interfaces": "ip -d -j addr show",
    "routes": "ip -j route show table main",
    "packages": "dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\t${Version}\\n'",
    "gpus": _S_GPUS,
    "infiniband": _S_INFINIBAND,
    "python": "python3 --version 2>&1",
    "net_manager": _S_NET_MANAGER,
    "networkd_files": _S_NETWORKD_FILES,
    # nvcc on PATH, else where NVIDIA's packages put it (not on PATH over SSH); the
    # llamacpp build script looks in the same two places
    "nvcc": "n=$(command -v nvcc) || { [ -x /usr/local/cuda/bin/nvcc ] && "
            "n=/usr/local/cuda/bin/nvcc; } || exit 0\n\"$n\" --version",
    "cpus": "nproc",
    "memory": _S_MEMORY,
}


def _snippet_file(arg: str) -> str:
    return f"""\
p={_q(arg)}
[ -e "$p" ] || exit 0
s=$(stat -L -c '%f %s %a %U %G' -- "$p") || exit 1
echo "stat $s"
[ -f "$p" ] || exit 0
set -- $s
if [ "$2" -le {CONTENT_LIMIT} ]; then
  printf 'base64 '; base64 -w0 -- "$p" || exit 1; echo
else
  h=$(sha256sum -- "$p") || exit 1; echo "sha256 ${{h%% *}}"
fi"""


def _snippet_dir(arg: str) -> str:
    return f"""\
p={_q(arg)}
[ -e "$p" ] || exit 0
s=$(stat -L -c '%f %s %a %U %G' -- "$p") || exit 1
echo "stat $s\""""


def _snippet_path(arg: str) -> str:
    return f"""\
p={_q(arg)}
if [ -L "$p" ]; then k=symlink; elif [ -d "$p" ]; then k=directory; elif [ -f "$p" ]; then k=file
elif [ -e "$p" ]; then k=other; else exit 0; fi
if [ -e "$p" ]; then echo "$k exists"; else echo "$k dangling"; fi"""


def _snippet_pip(arg: str) -> str:
    v = _q(arg)
    return f"""\
v={v}
[ -e "$v/bin/python" ] || exit 0
echo "venv"
if [ -f "$v/pyvenv.cfg" ]; then
  while IFS= read -r l || [ -n "$l" ]; do printf 'cfg\\t%s\\n' "$l"; done < "$v/pyvenv.cfg"
fi
set -- {v}/lib/python3*/site-packages/*.dist-info/METADATA {v}/lib/python3*/site-packages/*.egg-info/PKG-INFO
[ $# -gt 0 ] && grep -H -m2 -E '^(Name|Version):' -- "$@"
exit 0"""


def _sysctl_path(key: str) -> str:
    # sysctl(8): with a '/' in the key, '.' is literal; otherwise '.' separates.
    return key.strip("/") if "/" in key else key.replace(".", "/")


def _snippet_sysctl(arg: str) -> str:
    return f"""\
f=/proc/sys/{_q(_sysctl_path(arg))}
[ -r "$f" ] || exit 1
_cat "$f\""""


def _snippet_check(arg: str) -> str:
    # the user's command runs with bash defaults (our nullglob would change what globs mean)
    return f"shopt -u nullglob\neval {_q(arg)} >/dev/null 2>&1"


def _snippet_link(arg: str) -> str:
    return f"""\
d=/sys/class/net/{_q(arg)}
[ -d "$d" ] || exit 0
m=; o=; read -r m < "$d/mtu"; read -r o < "$d/operstate"
echo "mtu $m"; echo "operstate $o\""""


_UNIT_PROPS = "Id,LoadState,ActiveState,SubState,UnitFileState,FragmentPath"


def _snippet_units(args: list[str]) -> str:
    return f"systemctl show -p {_UNIT_PROPS} -- " + " ".join(_q(a) for a in args)


_PARAM_SNIPPETS: dict[str, Callable[[str], str]] = {
    "file": _snippet_file,
    "dir": _snippet_dir,
    "path": _snippet_path,
    "pip": _snippet_pip,
    "sysctl": _snippet_sysctl,
    "check": _snippet_check,
    "link": _snippet_link,
}

_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_.:@+\-/]+$")
_IFNAME_RE = re.compile(r"^[^/\s:]{1,15}$")


def _validate(req: FactRequest) -> None:
    if not isinstance(req, FactRequest):
        raise ValueError(f"expected a FactRequest, got {type(req).__name__}: {req!r}")
    if req.kind not in KINDS:
        raise ValueError(f"unknown fact kind {req.kind!r} (known: {', '.join(KINDS)})")
    if not isinstance(req.arg, str):
        raise ValueError(f"fact {req.kind}: arg must be a string, got {type(req.arg).__name__}")
    if req.kind in BASE_KINDS or req.kind in ON_DEMAND_KINDS:
        if req.arg:
            raise ValueError(f"fact {req.kind} takes no argument, got {req.arg!r}")
        return
    if not req.arg:
        raise ValueError(f"fact {req.kind} needs an argument (e.g. {req.kind}:<value>)")
    if "\x00" in req.arg:
        raise ValueError(f"fact {req.kind}: argument contains a NUL byte")
    if req.kind == "unit" and not _UNIT_RE.match(req.arg):
        raise ValueError(f"fact unit: {req.arg!r} is not a valid systemd unit name")
    if req.kind == "sysctl" and (not _SYSCTL_RE.match(req.arg) or ".." in req.arg.split("/")):
        raise ValueError(f"fact sysctl: {req.arg!r} is not a valid sysctl key")
    if req.kind == "link" and (not _IFNAME_RE.match(req.arg) or req.arg in (".", "..")):
        raise ValueError(f"fact link: {req.arg!r} is not a valid interface name")


def _unique(requests: Iterable[FactRequest]) -> list[FactRequest]:
    """Requests deduplicated in first-seen order (the index used in markers)."""
    seen: dict[FactRequest, None] = {}
    for req in requests:
        _validate(req)
        seen.setdefault(req, None)
    return list(seen)


_PRELUDE = """\
__clusterctl_facts() {
export LC_ALL=C
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/cuda/bin"
shopt -s nullglob
local _o
_cat() { local l; while IFS= read -r l || [ -n "$l" ]; do printf '%s\\n' "$l"; done < "$1"; }
_emit() { printf '\\n%s %s %s %s\\n%s' "@@clusterctl-fact" "$1" "$2" "$3" "$4"; }"""


def _section(index: str, kind: str, snippet: str) -> str:
    return f"_o=$( {{\n{snippet}\n}} </dev/null 2>/dev/null ); _emit {index} $? {kind} \"$_o\""


def build_script(requests: Iterable[FactRequest]) -> str:
    """One bash script gathering every (deduplicated) request; see the module doc."""
    uniq = _unique(requests)
    parts = [_PRELUDE]
    unit_indices = [i for i, r in enumerate(uniq) if r.kind == "unit"]
    for i, req in enumerate(uniq):
        if req.kind == "unit":
            if i == unit_indices[0]:
                idx = ",".join(str(j) for j in unit_indices)
                parts.append(_section(idx, "unit", _snippet_units([uniq[j].arg for j in unit_indices])))
            continue
        if req.kind in _BASE_SNIPPETS:
            snippet = _BASE_SNIPPETS[req.kind]
        else:
            snippet = _PARAM_SNIPPETS[req.kind](req.arg)
        parts.append(_section(str(i), req.kind, snippet))
    parts.append(f"printf '\\n%s %d\\n' {END_MARKER} {len(uniq)}")
    parts.append("}\n__clusterctl_facts\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- parsers
# Each parser: (body, rc, arg) -> value. Policy: a tool that is missing or fails
# with no output gives an "empty" value (None / [] / {}); output that cannot be
# parsed raises ValueError.

def _lines(body: str) -> list[str]:
    return [ln for ln in body.splitlines() if ln.strip()]


def _p_os(body: str, rc: int, arg: str) -> dict:
    out: dict[str, str | None] = {}
    for ln in _lines(body):
        if ln.lstrip().startswith("#"):
            continue
        key, sep, value = ln.partition("=")
        if not sep or not re.match(r"^[A-Z0-9_]+$", key.strip()):
            raise ValueError(f"unexpected os-release line {ln!r}")
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"unexpected os-release line {ln!r}: {exc}") from None
        out[key.strip().lower()] = " ".join(parts)
    for k in ("id", "version_id", "pretty_name"):
        out.setdefault(k, None)
    return out


def _p_text(body: str, rc: int, arg: str) -> str | None:
    text = body.strip()
    return text if rc == 0 and text else None


def _load_json(body: str, what: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not JSON ({exc}): {body[:120]!r}") from None


def _p_interfaces(body: str, rc: int, arg: str) -> list[Interface]:
    if not body.strip():
        return []
    data = _load_json(body, "ip -j addr")
    if not isinstance(data, list):
        raise ValueError(f"ip -j addr: expected a JSON list, got {type(data).__name__}")
    out = []
    for link in data:
        if not isinstance(link, dict) or "ifname" not in link:
            raise ValueError(f"ip -j addr: unexpected entry {str(link)[:120]!r}")
        addrs = [(a["local"], int(a["prefixlen"])) for a in link.get("addr_info", [])
                 if isinstance(a, dict) and "local" in a and "prefixlen" in a]
        kind = (link.get("linkinfo") or {}).get("info_kind") or link.get("link_type") or "unknown"
        out.append(Interface(name=link["ifname"], mtu=int(link.get("mtu", 0)),
                             state=str(link.get("operstate", "UNKNOWN")),
                             mac=link.get("address"), addresses=addrs, kind=kind))
    return out


def _p_routes(body: str, rc: int, arg: str) -> list[Route]:
    if not body.strip():
        return []
    data = _load_json(body, "ip -j route")
    if not isinstance(data, list):
        raise ValueError(f"ip -j route: expected a JSON list, got {type(data).__name__}")
    out = []
    for r in data:
        if not isinstance(r, dict) or "dst" not in r:
            raise ValueError(f"ip -j route: unexpected entry {str(r)[:120]!r}")
        metric = r.get("metric")
        out.append(Route(dst=r["dst"], gateway=r.get("gateway"), dev=r.get("dev"),
                         prefsrc=r.get("prefsrc"), protocol=r.get("protocol"),
                         scope=r.get("scope"), metric=int(metric) if metric is not None else None))
    return out


def _p_packages(body: str, rc: int, arg: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for ln in _lines(body):
        parts = ln.split("\t")
        if len(parts) != 3 or len(parts[0]) < 2:
            raise ValueError(f"dpkg-query: unexpected line {ln!r}")
        status, name, version = parts
        if status[1] == "i":                          # current status: installed
            out.setdefault(name, version)
    return out


def _na(value: str) -> str | None:
    value = value.strip()
    return None if not value or value.startswith("[") or value in ("N/A", "Not Supported") else value


def _p_gpus(body: str, rc: int, arg: str) -> list[GPU]:
    if rc != 0:
        return []
    out = []
    for ln in _lines(body):
        if "No devices were found" in ln:
            continue
        cols = [c.strip() for c in ln.split(",")]
        if len(cols) not in (3, 4) or not cols[0].isdigit():
            raise ValueError(f"nvidia-smi: unexpected line {ln!r}")
        mem = _na(cols[2])
        out.append(GPU(index=int(cols[0]), name=cols[1],
                       memory_mib=int(float(mem)) if mem else None,
                       compute_cap=_na(cols[3]) if len(cols) == 4 else None))
    return out


def _after_colon(value: str) -> str:
    return value.split(":", 1)[1].strip() if ":" in value else value.strip()


def _p_infiniband(body: str, rc: int, arg: str) -> list[IBPort]:
    out = []
    for ln in _lines(body):
        cols = ln.split("\t")
        if len(cols) != 7 or not cols[1].isdigit():
            raise ValueError(f"infiniband: unexpected line {ln!r}")
        dev, port, state, phys, rate, layer, netdevs = cols
        m = re.match(r"^\s*([\d.]+)\s*Gb/sec", rate)
        out.append(IBPort(device=dev, port=int(port), state=_after_colon(state),
                          phys_state=_after_colon(phys), rate=rate.strip(),
                          rate_gbps=float(m.group(1)) if m else None, link_layer=layer.strip(),
                          netdevs=[n for n in netdevs.split(",") if n]))
    return out


def _p_python(body: str, rc: int, arg: str) -> str | None:
    m = re.search(r"^Python (\S+)", body, re.M)
    return m.group(1) if rc == 0 and m else None


def _p_net_manager(body: str, rc: int, arg: str) -> str:
    signals: dict[str, int] = {}
    for ln in _lines(body):
        key, _, value = ln.partition(" ")
        if key not in ("netplan_files", "networkd_files", "networkd_running", "ifupdown_ifaces", "ifup"):
            raise ValueError(f"net_manager: unexpected line {ln!r}")
        signals[key] = int(value) if value.strip().isdigit() else 1
    if signals.get("netplan_files"):
        return "netplan"
    if signals.get("networkd_running") or signals.get("networkd_files"):
        return "networkd"
    if signals.get("ifup") and signals.get("ifupdown_ifaces"):
        return "ifupdown"
    return "none"


def _p_networkd_files(body: str, rc: int, arg: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for ln in _lines(body):
        name, sep, path = ln.partition("\t")
        if not sep or not path.startswith("/"):
            raise ValueError(f"networkd_files: unexpected line {ln!r}")
        out[name] = path
    return out


def _p_nvcc(body: str, rc: int, arg: str) -> str | None:
    if rc != 0:
        return None
    m = re.search(r"release [\d.]+, V(\d[\w.]*)", body)
    if m:
        return m.group(1)
    m = re.search(r"release (\d[\d.]*)", body)
    return m.group(1) if m else None


def _int_body(body: str, what: str) -> int | None:
    text = body.strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{what}: expected an integer, got {text[:80]!r}")
    return int(text)


def _p_cpus(body: str, rc: int, arg: str) -> int | None:
    return _int_body(body, "nproc") if rc == 0 else None


def _p_memory(body: str, rc: int, arg: str) -> int | None:
    kib = _int_body(body, "MemTotal") if rc == 0 else None
    return None if kib is None else kib // 1024


def _file_kind(raw_mode_hex: str) -> str:
    m = int(raw_mode_hex, 16)
    if statmod.S_ISREG(m):
        return "file"
    if statmod.S_ISDIR(m):
        return "directory"
    return "other"


def _parse_stat(ln: str, what: str) -> dict:
    cols = ln.split(" ")
    if len(cols) != 6 or cols[0] != "stat":
        raise ValueError(f"{what}: unexpected stat line {ln!r}")
    try:
        return {"kind": _file_kind(cols[1]), "size": int(cols[2]), "mode": int(cols[3], 8),
                "owner": cols[4], "group": cols[5]}
    except ValueError:
        raise ValueError(f"{what}: unexpected stat line {ln!r}") from None


def _p_file(body: str, rc: int, arg: str) -> dict:
    out: dict[str, Any] = {"exists": False, "kind": None, "sha256": None, "size": None,
                           "mode": None, "owner": None, "group": None, "content": None}
    lines = _lines(body)
    if not lines:
        return out
    out.update(_parse_stat(lines[0], f"file:{arg}"))
    out["exists"] = out["kind"] == "file"
    for ln in lines[1:]:
        key, _, value = ln.partition(" ")
        if key == "base64":
            try:
                content = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                raise ValueError(f"file:{arg}: content is not valid base64") from None
            out["content"] = content
            out["sha256"] = hashlib.sha256(content).hexdigest()
        elif key == "sha256" and re.match(r"^[0-9a-f]{64}$", value.strip()):
            out["sha256"] = value.strip()
        else:
            raise ValueError(f"file:{arg}: unexpected line {ln[:120]!r}")
    if rc != 0:                       # stat worked but reading failed: content unknown
        out["content"] = out["sha256"] = None
    return out


def _p_dir(body: str, rc: int, arg: str) -> dict:
    out: dict[str, Any] = {"exists": False, "kind": None, "mode": None, "owner": None, "group": None}
    lines = _lines(body)
    if not lines:
        return out
    st = _parse_stat(lines[0], f"dir:{arg}")
    st.pop("size")
    out.update(st)
    out["exists"] = out["kind"] == "directory"
    return out


def _p_path(body: str, rc: int, arg: str) -> dict:
    lines = _lines(body)
    if not lines:
        return {"exists": False, "kind": None}
    kind, _, state = lines[0].partition(" ")
    if kind not in ("symlink", "directory", "file", "other") or state not in ("exists", "dangling"):
        raise ValueError(f"path:{arg}: unexpected line {lines[0]!r}")
    return {"exists": state == "exists", "kind": kind}


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_META_RE = re.compile(r"^(.*):(Name|Version): ?(.*)$")


def _p_pip(body: str, rc: int, arg: str) -> dict:
    lines = body.splitlines()
    if not any(ln.strip() for ln in lines):
        return {"exists": False, "python": None, "packages": {}}
    if lines[0] != "venv":
        raise ValueError(f"pip:{arg}: unexpected first line {lines[0][:120]!r}")
    python = None
    per_file: dict[str, dict[str, str]] = {}
    for ln in lines[1:]:
        if not ln.strip():
            continue
        if ln.startswith("cfg\t"):
            key, sep, value = ln[4:].partition("=")
            key = key.strip()
            if sep and key in ("version", "version_info") and python is None:
                python = ".".join(value.strip().split(".")[:3])
            continue
        m = _META_RE.match(ln)
        if not m:
            raise ValueError(f"pip:{arg}: unexpected line {ln[:120]!r}")
        per_file.setdefault(m.group(1), {})[m.group(2)] = m.group(3).strip()
    packages: dict[str, str] = {}
    for meta in per_file.values():
        if "Name" in meta and "Version" in meta:
            packages.setdefault(canonical_name(meta["Name"]), meta["Version"])
    return {"exists": True, "python": python, "packages": dict(sorted(packages.items()))}


def _p_sysctl(body: str, rc: int, arg: str) -> str | None:
    if rc != 0:
        return None
    return " ".join(body.split())


def _p_check(body: str, rc: int, arg: str) -> int:
    return rc


def _p_link(body: str, rc: int, arg: str) -> dict:
    out: dict[str, Any] = {"exists": False, "mtu": None, "operstate": None}
    for ln in _lines(body):
        key, _, value = ln.partition(" ")
        if key == "mtu":
            out["mtu"] = _int_body(value, f"link:{arg} mtu")
        elif key == "operstate":
            out["operstate"] = value.strip() or None
        else:
            raise ValueError(f"link:{arg}: unexpected line {ln!r}")
        out["exists"] = True
    return out


def unit_unavailable(name: str) -> dict:
    """The unit fact when systemd could not be asked (no systemd, systemctl failed)."""
    return {"available": False, "id": name, "load_state": None, "active_state": None,
            "sub_state": None, "unit_file_state": None, "fragment_path": None}


_UNIT_KEYS = {"Id": "id", "LoadState": "load_state", "ActiveState": "active_state",
              "SubState": "sub_state", "UnitFileState": "unit_file_state",
              "FragmentPath": "fragment_path"}


def _p_units(body: str, rc: int, args: list[str]) -> list[dict]:
    if not body.strip():
        return [unit_unavailable(a) for a in args]
    blocks = [b for b in re.split(r"\n\s*\n", body.strip("\n")) if b.strip()]
    if len(blocks) != len(args):
        raise ValueError(f"systemctl show: {len(blocks)} blocks for {len(args)} units")
    out = []
    for name, block in zip(args, blocks):
        unit = unit_unavailable(name)
        unit["available"] = True
        for ln in block.splitlines():
            key, sep, value = ln.partition("=")
            if not sep or key not in _UNIT_KEYS:
                raise ValueError(f"systemctl show {name}: unexpected line {ln!r}")
            unit[_UNIT_KEYS[key]] = value or None
        out.append(unit)
    return out


_PARSERS: dict[str, Callable[[str, int, str], Any]] = {
    "os": _p_os, "kernel": _p_text, "arch": _p_text, "interfaces": _p_interfaces,
    "routes": _p_routes, "packages": _p_packages, "gpus": _p_gpus,
    "infiniband": _p_infiniband, "python": _p_python, "net_manager": _p_net_manager, "networkd_files": _p_networkd_files,
    "nvcc": _p_nvcc, "cpus": _p_cpus, "memory": _p_memory,
    "file": _p_file, "dir": _p_dir, "path": _p_path, "pip": _p_pip,
    "sysctl": _p_sysctl, "check": _p_check, "link": _p_link,
}

# gpu_health (on demand): nvidia-smi health query, banner, kernel XIDs, dcgmi diag -r 1;
# snippet and parser live in gpu_health.py
_BASE_SNIPPETS["gpu_health"] = _GPU_HEALTH_SNIPPET
_PARSERS["gpu_health"] = _p_gpu_health


def _p_libc(body: str, rc: int, arg: str) -> str | None:
    """`getconf GNU_LIBC_VERSION` ("glibc 2.36") -> "2.36"; None on musl or without getconf."""
    m = re.search(r"^glibc (\d+\.\d+)", body, re.M)
    return m.group(1) if rc == 0 and m else None


# libc (on demand): the glibc version, which decides the manylinux wheels a node can install
_BASE_SNIPPETS["libc"] = "getconf GNU_LIBC_VERSION 2>/dev/null"
_PARSERS["libc"] = _p_libc

_HEADER_RE = re.compile(rf"^{MARKER} (\S+) (\S+) (\S+)$", re.M)
_END_RE = re.compile(rf"^{END_MARKER} (\d+)$", re.M)


def parse_output(stdout: str, requests: Iterable[FactRequest]) -> Facts:
    """Parse the output of `build_script(requests)`. Pure; ValueError on garbage."""
    uniq = _unique(requests)
    text = stdout.replace("\r\n", "\n")
    headers = list(_HEADER_RE.finditer(text))
    end = _END_RE.search(text)
    if not headers and not end:
        raise ValueError(f"fact output has no {MARKER!r} markers (not the output of the fact "
                         f"script?): {text[:200]!r}")
    if end is None:
        raise ValueError(f"fact output is truncated: no {END_MARKER!r} line after "
                         f"{len(headers)} sections (expected {len(uniq)} requests)")
    if int(end.group(1)) != len(uniq):
        raise ValueError(f"fact output is for {end.group(1)} requests, expected {len(uniq)}")
    values: dict[FactRequest, Any] = {}
    rcs: dict[FactRequest, int] = {}
    bounds = [h.start() for h in headers[1:]] + [end.start()]
    for h, stop in zip(headers, bounds):
        if h.start() > end.start():
            raise ValueError(f"fact output has a section after the end marker: {h.group(0)!r}")
        idx_text, rc_text, kind = h.groups()
        if not re.match(r"^\d+(,\d+)*$", idx_text) or not re.match(r"^-?\d+$", rc_text):
            raise ValueError(f"malformed fact marker line {h.group(0)!r}")
        indices, rc = [int(i) for i in idx_text.split(",")], int(rc_text)
        if len(indices) != 1 and kind != "unit":
            raise ValueError(f"malformed fact marker line {h.group(0)!r}: only unit facts can share a section")
        # the body starts after the header's newline and ends before the "\n" of the next marker
        body = text[h.end() + 1:max(h.end() + 1, stop - 1)]
        for i in indices:
            if i >= len(uniq):
                raise ValueError(f"fact marker index {i} out of range ({len(uniq)} requests)")
            if uniq[i].kind != kind:
                raise ValueError(f"fact marker {i} is {kind!r} but request {i} is {uniq[i]} "
                                 "(output does not belong to these requests)")
            if uniq[i] in values:
                raise ValueError(f"fact {uniq[i]} appears twice in the output")
        try:
            if kind == "unit":
                parsed = _p_units(body, rc, [uniq[i].arg for i in indices])
            else:
                parsed = [_PARSERS[kind](body, rc, uniq[indices[0]].arg)]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"fact {', '.join(str(uniq[i]) for i in indices)}: {exc}") from None
        for i, value in zip(indices, parsed):
            values[uniq[i]] = value
            rcs[uniq[i]] = rc
    missing = [str(r) for r in uniq if r not in values]
    if missing:
        raise ValueError(f"fact output lacks {len(missing)} requested facts: {', '.join(missing[:5])}")
    return Facts(values, rcs)


# --------------------------------------------------------------------------- Facts


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class Facts:
    """Parsed facts of one host. Values are shared: treat them as read-only."""

    def __init__(self, values: dict[FactRequest, Any], exit_codes: dict[FactRequest, int] | None = None):
        self._values = dict(values)
        self._rcs = dict(exit_codes or {})

    def get(self, req: FactRequest) -> Any:
        try:
            return self._values[req]
        except KeyError:
            raise KeyError(f"fact {req} was not gathered (add it to the op's requests())") from None

    def exit_code(self, req: FactRequest) -> int:
        """Exit code of the snippet that produced `req` (0 when not recorded)."""
        self.get(req)
        return self._rcs.get(req, 0)

    def __contains__(self, req: object) -> bool:
        return req in self._values

    @property
    def requests(self) -> list[FactRequest]:
        return list(self._values)

    def merged(self, other: Facts) -> Facts:
        """A new Facts with `other`'s values overriding ours."""
        return Facts({**self._values, **other._values}, {**self._rcs, **other._rcs})

    def _base(self, kind: str) -> Any:
        return self.get(FactRequest(kind))

    os = property(lambda self: self._base("os"), doc="dict: id, version_id, pretty_name, ...")
    kernel = property(lambda self: self._base("kernel"))
    arch = property(lambda self: self._base("arch"))
    interfaces = property(lambda self: self._base("interfaces"))
    routes = property(lambda self: self._base("routes"))
    packages = property(lambda self: self._base("packages"), doc="installed dpkg packages: name -> version")
    gpus = property(lambda self: self._base("gpus"))
    infiniband = property(lambda self: self._base("infiniband"))
    python = property(lambda self: self._base("python"))
    net_manager = property(lambda self: self._base("net_manager"),
                           doc='"netplan" | "networkd" | "ifupdown" | "none"')
    networkd_files = property(lambda self: self._base("networkd_files"),
                              doc="interface -> the .network file systemd-networkd applied to it")
    nvcc = property(lambda self: self._base("nvcc"))
    cpus = property(lambda self: self._base("cpus"))
    memory_mib = property(lambda self: self._base("memory"))
    gpu_health = property(lambda self: self._base("gpu_health"),
                          doc="gpu_health.GpuHealth (on demand: request FactRequest('gpu_health'))")
    libc = property(lambda self: self._base("libc"),
                    doc="glibc version such as '2.36', None on musl (on demand: "
                        "request FactRequest('libc'))")

    @property
    def default_route(self) -> Route | None:
        return next((r for r in self.routes if r.dst == "default"), None)

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def interface_for(self, network: str | None, address: str) -> Interface | None:
        """The cluster NIC.

        network a CIDR -> the interface with an address inside it (preferring the one
        that holds `address`); an interface name -> that interface; None -> the
        interface holding `address`. None when nothing matches.
        """
        def holds(iface: Interface, ip) -> bool:
            return any(_ip(a) == ip for a, _ in iface.addresses)

        ip = _ip(address)
        if network:
            if "/" not in network:
                return self.interface(network)
            try:
                net = _network(network)
            except ValueError:
                raise ValueError(f"network {network!r} is neither a CIDR nor an interface name") from None
            inside = [i for i in self.interfaces
                      if any((a := _ip(addr)) is not None and a in net for addr, _ in i.addresses)]
            if ip is not None:
                for iface in inside:
                    if holds(iface, ip):
                        return iface
            return inside[0] if inside else None
        if ip is None:
            return None
        return next((i for i in self.interfaces if holds(i, ip)), None)

    def to_dict(self) -> dict:
        """JSON-able: {"kind" or "kind:arg": value}; bytes as base64 text."""
        return {str(req): _jsonable(value) for req, value in self._values.items()}

    def __repr__(self) -> str:
        return f"Facts({', '.join(str(r) for r in self._values)})"


@functools.lru_cache(maxsize=65536)
def _ip(text: str):
    """The address in `text` (a scope after % left out), None if it is not one. Cached:
    the cluster view asks it for every address of every host on each gathering."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def _network(text: str):
    return ipaddress.ip_network(text, strict=False)
