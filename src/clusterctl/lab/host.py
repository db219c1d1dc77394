"""The controller side: commands, preconditions, interfaces. Every command the lab runs
on the host goes through `run` (argv lists, never a shell string)."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import ClusterctlError

# tool -> Debian package that provides it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "tc": "iproute2",
    "bridge": "iproute2",
    "nsenter": "util-linux",
    "nft": "nftables",
    "dpkg-scanpackages": "dpkg-dev",
    "apt-get": "apt",
}
LAB_TOOLS = ("systemd-nspawn", "debootstrap", "ssh-keygen", "ip", "tc", "bridge", "nsenter",
             "nft")
MIRROR_TOOLS = ("apt-get", "dpkg-scanpackages")


class HostCommandFailed(ClusterctlError):
    def __init__(self, argv: list[str], code: int, stderr: str):
        self.argv, self.code, self.stderr = argv, code, stderr
        tail = "\n".join("    " + ln for ln in stderr.strip().splitlines()[-10:])
        msg = f"command failed on the controller (exit {code}): {' '.join(argv)}"
        super().__init__(msg + ("\n" + tail if tail else ""))


def run(argv: list[str], *, check: bool = True, input: str | None = None,
        timeout: float | None = 120) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise ClusterctlError(f"{argv[0]} not found; install it with: apt-get install "
                              f"{TOOLS.get(argv[0], argv[0])}") from None
    except subprocess.TimeoutExpired:
        raise ClusterctlError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from None
    if check and proc.returncode != 0:
        raise HostCommandFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc


def nsenter_net(pid: int, argv: list[str]) -> list[str]:
    """argv run in a node's network namespace with the host's binaries."""
    return ["nsenter", "-t", str(pid), "-n", "--", *argv]


def require_root(what: str = "clusterctl lab") -> None:
    if os.geteuid() != 0:
        raise ClusterctlError(f"{what} needs root: it creates a bridge, network namespaces "
                              "and systemd-nspawn containers. Run it with sudo.")


def missing_tools(tools) -> list[str]:
    return [t for t in tools if shutil.which(t) is None
            and not any(Path(d, t).exists() for d in ("/usr/sbin", "/sbin"))]


def require_tools(tools) -> None:
    missing = missing_tools(tools)
    if missing:
        packages = sorted({TOOLS.get(t, t) for t in missing})
        raise ClusterctlError(f"missing tools: {', '.join(missing)}. Install them with: "
                              f"apt-get install {' '.join(packages)}")


# ----------------------------------------------------------------------------- links

def links() -> dict[str, dict]:
    """ifname -> `ip -j -d link` record."""
    out = run(["ip", "-j", "-d", "link", "show"]).stdout
    return {rec["ifname"]: rec for rec in json.loads(out or "[]")}


def link(ifname: str) -> dict | None:
    proc = run(["ip", "-j", "-d", "link", "show", "dev", ifname], check=False)
    if proc.returncode != 0:
        return None
    recs = json.loads(proc.stdout or "[]")
    return recs[0] if recs else None


def link_is_ours(ifname: str, alias: str) -> bool:
    rec = link(ifname)
    return rec is not None and rec.get("ifalias") == alias


def used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks on this host: every address's prefix and every route's destination."""
    nets: list[ipaddress.IPv4Network] = []
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for rec in addrs:
        for a in rec.get("addr_info", []):
            if a.get("family") == "inet":
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}",
                                                  strict=False))
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout
                        or "[]")
    for rec in routes:
        dst = rec.get("dst", "")
        if not dst or dst == "default":
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32",
                                              strict=False))
        except ValueError:
            continue
    return nets


INOTIFY_PER_NODE = 10      # systemd, logind, dbus, getty... measured ~8 per booted node


def inotify_instances_in_use() -> int:
    """inotify instances open on this host (root's are what lab nodes compete for)."""
    used = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != 0:
                continue
            for fd in (proc / "fd").iterdir():
                try:
                    if os.readlink(fd) == "anon_inode:inotify":
                        used += 1
                except OSError:
                    pass
        except OSError:
            pass
    return used


def inotify_shortfall(nodes: int, used: int, limit: int) -> str | None:
    """Why `nodes` more nodes would not boot, or None. Pure."""
    need = nodes * INOTIFY_PER_NODE
    if used + need <= limit:
        return None
    return (f"not enough inotify instances for {nodes} nodes: each node's systemd needs "
            f"about {INOTIFY_PER_NODE}, and {used} of fs.inotify.max_user_instances={limit} "
            "are in use (other labs or programs). Bring other labs down, or raise the limit: "
            f"sysctl -w fs.inotify.max_user_instances={max(1024, 2 * (used + need))}")


def require_inotify(nodes: int) -> None:
    """Every node's systemd needs inotify instances; past fs.inotify.max_user_instances
    (often 128, ~14 nodes on a host) nodes die at boot with "Too many open files"."""
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    except (OSError, ValueError):
        return
    problem = inotify_shortfall(nodes, inotify_instances_in_use(), limit)
    if problem:
        raise ClusterctlError(problem)


def write_sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError:
        pass


# The kernel's ARP table is one table for every network namespace: the lab's nodes, the
# controller and every container on the host share net.ipv4.neigh.default.gc_thresh3
# entries (1024 by default). N nodes that all talk to all (netcheck's pings, a ring
# all_reduce) need about N * N of them; past the limit the kernel logs "neighbor table
# overflow" and new peers are unreachable: at 32 nodes netcheck then reports healthy
# pairs as "no ping".
NEIGH_KEYS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")
NEIGH_SAVED = ".neigh-thresholds.json"     # in the lab root: the values before any lab


def neigh_thresholds_for(total_nodes: int, current: tuple[int, int, int]
                         ) -> tuple[int, int, int] | None:
    """The thresholds that fit `total_nodes` lab nodes talking all to all, or None when
    the current ones do. Never lower than the current values. Pure."""
    need = total_nodes * (total_nodes + 1) + 512          # peers, the controller, the rest
    if current[2] >= need:
        return None
    hard = 1 << (need - 1).bit_length()                   # next power of two
    return (max(current[0], hard // 8), max(current[1], hard // 2), hard)


def _neigh_path(key: str) -> Path:
    return Path("/proc/sys/net/ipv4/neigh/default", key)


def read_neigh_thresholds() -> tuple[int, int, int] | None:
    try:
        return tuple(int(_neigh_path(k).read_text()) for k in NEIGH_KEYS)   # type: ignore
    except (OSError, ValueError):
        return None


def fit_neigh_table(total_nodes: int, saved: Path, log) -> None:
    """Raise the ARP table's thresholds for `total_nodes` (the values before the first
    raise are kept in `saved`, restored by restore_neigh_table when no lab is left)."""
    current = read_neigh_thresholds()
    if current is None:
        return
    new = neigh_thresholds_for(total_nodes, current)
    if new is None:
        return
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(dict(zip(NEIGH_KEYS, current))) + "\n")
    for key, value in zip(NEIGH_KEYS, new):
        write_sysctl(f"net/ipv4/neigh/default/{key}", str(value))
    log(f"lab: raised the kernel's ARP table (net.ipv4.neigh.default.gc_thresh1/2/3, one "
        f"table for every network namespace) from {'/'.join(map(str, current))} to "
        f"{'/'.join(map(str, new))} for {total_nodes} lab nodes; restored when the last "
        "lab goes down")


def restore_neigh_table(saved: Path, log) -> None:
    """Put back the thresholds recorded before the first lab raised them."""
    try:
        values = json.loads(saved.read_text())
    except (OSError, ValueError):
        return
    for key in NEIGH_KEYS:
        if isinstance(values.get(key), int):
            write_sysctl(f"net/ipv4/neigh/default/{key}", str(values[key]))
    saved.unlink(missing_ok=True)
    log("lab: restored the kernel's ARP table thresholds "
        f"({'/'.join(str(values.get(k)) for k in NEIGH_KEYS)})")
