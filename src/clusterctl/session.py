"""One cluster session per command: connections, the parallel map, the cluster view.

A command creates one `Session` and every capability works through it:

- `connection(host)`: ONE persistent SSH connection per host for the whole command
  (opened on first use, reused by the engine, the Ray check, deploy, sync, netcheck);
- `map(fn, hosts)`: the one bounded parallel map (`forks` workers, an optional
  per-host deadline that cuts a stalled host's connection). It returns a
  `GroupResult` in the spirit of Fabric's: the hosts that succeeded with their
  values, and the hosts that failed, each with its step and reason. One host's
  failure never stops the others;
- `cluster_view(facts)`: the typed view of the cluster computed once per fact
  gathering: per host its cluster IP and NIC, head or worker, GPUs; the head; peers.

No other module starts a thread pool or opens SSH connections of its own.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Callable, Iterable

from .errors import ClusterctlError, HostError
from .remote import Connection


# -- group results ------------------------------------------------------------

@dataclass
class HostFailure:
    """Why one host failed one step."""

    host: str
    step: str
    reason: str
    exception: BaseException | None = None

    def __str__(self) -> str:
        return f"{self.host}: {self.step + ': ' if self.step else ''}{self.reason}"

    def to_dict(self) -> dict:
        return {"host": self.host, "step": self.step, "reason": self.reason}


@dataclass
class GroupResult:
    """Outcome of one step on a group of hosts: values of the hosts that succeeded,
    failures of the others (never both for one host)."""

    succeeded: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, HostFailure] = field(default_factory=dict)
    cut: dict[str, str] = field(default_factory=dict)    # name -> "timed out after ..."

    @property
    def ok(self) -> bool:
        return not self.failed

    def __contains__(self, name: str) -> bool:
        return name in self.succeeded or name in self.failed

    def outcome(self, name: str) -> Any:
        """The value for `name`, or its exception (the HostError made from its failure
        when the step raised none)."""
        if name in self.succeeded:
            return self.succeeded[name]
        failure = self.failed[name]
        return failure.exception or HostError(name, failure.reason)

    def to_dict(self) -> dict:
        return {"succeeded": sorted(self.succeeded),
                "failed": {n: f.to_dict() for n, f in sorted(self.failed.items())}}


def failure_reason(exc: BaseException) -> str:
    """The user-facing reason of an exception, without the host prefix HostError adds."""
    if isinstance(exc, HostError):
        prefix = f"{exc.host}: "
        text = str(exc)
        return text[len(prefix):] if text.startswith(prefix) else text
    if isinstance(exc, ClusterctlError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- the cluster view -----------------------------------------------------------

_INVENTORY = object()


def cluster_address(host, facts, network=_INVENTORY) -> tuple[str | None, str | None]:
    """(cluster NIC name, cluster IP) of a host from its facts. Pure; the one
    implementation every capability uses.

    The NIC: the interface on `cluster.network` (a CIDR or an interface name), else
    the one holding the host's SSH address, else (no network set, ansible_host a name
    or a NAT address) the default route's. The IP: the SSH address when that NIC
    holds it, else its first IPv4 (inside the network when it is a CIDR), else a
    global IPv6 address. `network` overrides the inventory's `cluster.network`.
    """
    if network is _INVENTORY:
        network = (host.vars.get("cluster") or {}).get("network")
    try:
        iface = facts.interface_for(network, host.address)
    except ValueError:
        iface = None
    if iface is None and not network:
        route = facts.default_route
        if route is not None and route.dev:
            iface = facts.interface(route.dev)
    if iface is None:
        return None, None
    net = None
    if network and "/" in str(network):
        net = ipaddress.ip_network(str(network), strict=False)
    v4, v6 = [], []
    for addr, _prefix in iface.addresses:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            continue
        if net is not None and (ip.version != net.version or ip not in net):
            continue
        if ip.version == 4:
            v4.append(addr)
        elif not ip.is_link_local:
            v6.append(addr)
    if host.address in v4 or host.address in v6:
        return iface.name, host.address
    if v4:
        return iface.name, v4[0]
    return iface.name, (v6[0] if v6 else None)


@dataclass(frozen=True)
class HostView:
    name: str
    address: str                    # what SSH dials
    cluster_ip: str | None
    cluster_iface: str | None
    is_head: bool
    gpus: int                       # stated in the inventory, else detected

    def entry(self) -> dict:
        """The template-facing form (`head`, `peers` variables)."""
        return {"name": self.name, "cluster_ip": self.cluster_ip,
                "cluster_iface": self.cluster_iface, "is_head": self.is_head,
                "gpus": self.gpus}


class ClusterView:
    """The cluster as the facts show it, computed once per gathering (linear in hosts)."""

    def __init__(self, hosts: dict[str, HostView]):
        self.hosts = hosts
        self.head = next((h for h in hosts.values() if h.is_head), None)
        self._entries = {name: h.entry() for name, h in hosts.items()}
        self._all_entries = list(self._entries.values())
        self._position = {n: i for i, n in enumerate(self._entries)}

    @classmethod
    def build(cls, inventory, facts: dict[str, Any]) -> "ClusterView":
        views = {}
        for name, f in facts.items():
            if f is None:
                continue
            host = inventory.hosts[name]
            iface, ip = cluster_address(host, f)
            detected = len(f.gpus or []) if _has(f, "gpus") else 0
            views[name] = HostView(name, host.address, ip, iface, host.is_head,
                                   host.gpus if host.gpus is not None else detected)
        return cls(views)

    def ip(self, name: str) -> str | None:
        view = self.hosts.get(name)
        return view.cluster_ip if view else None

    def ips(self) -> dict[str, str]:
        """host -> cluster IP, for the hosts that have one."""
        return {n: h.cluster_ip for n, h in self.hosts.items() if h.cluster_ip}

    def peers(self, name: str) -> "Peers":
        """Template entries of every other host: a read-only sequence made in O(1)
        (a list per host would make planning quadratic in the host count)."""
        return Peers(self._all_entries, self._position.get(name))

    def head_entry(self) -> dict | None:
        return self._entries.get(self.head.name) if self.head else None


class Peers(Sequence):
    """Every entry but one, without copying (shared dicts: treat them as read-only)."""

    def __init__(self, entries: list[dict], skip: int | None):
        self._entries, self._skip = entries, skip

    def __len__(self) -> int:
        return len(self._entries) - (self._skip is not None)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        if self._skip is not None and index >= self._skip:
            index += 1
        return self._entries[index]

    def __iter__(self):
        skip = self._skip
        return (e for i, e in enumerate(self._entries) if i != skip)

    def __eq__(self, other) -> bool:
        return list(self) == (list(other) if isinstance(other, (list, tuple, Peers))
                              else other)

    def __repr__(self) -> str:
        return f"Peers({list(self)!r})"


def _has(facts, kind: str) -> bool:
    from .facts import FactRequest
    return FactRequest(kind) in facts


# -- the session ------------------------------------------------------------------

class Session:
    """Connections and the parallel map for one command. Use as a context manager."""

    def __init__(self, inventory, *, forks: int = 20, accept_new_host_keys: bool = False,
                 connect_timeout: float = 10.0):
        self.inventory = inventory
        self.forks = max(1, int(forks))
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self._conns: dict[str, Connection] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self.opened = 0                 # connections opened (for tests and benchmarks)
        self._locks: list[HostLock] = []

    # connections ------------------------------------------------------------
    def _host(self, host_or_name):
        if isinstance(host_or_name, str):
            return self.inventory.hosts[host_or_name]
        return host_or_name

    def connection(self, host_or_name) -> Connection:
        """The host's one connection, opened on first use (reopened if it was cut)."""
        host = self._host(host_or_name)
        with self._lock:
            lock = self._host_locks.setdefault(host.name, threading.Lock())
        with lock:
            conn = self._conns.get(host.name)
            if conn is None:
                conn = Connection(host, accept_new_host_keys=self.accept_new_host_keys,
                                  connect_timeout=self.connect_timeout)
                self._conns[host.name] = conn
            if not conn.is_open:
                conn.open()
                with self._lock:
                    self.opened += 1
            return conn

    def connect(self, hosts: Iterable) -> GroupResult:
        """Open the connections of `hosts` in parallel; unreachable hosts fail alone."""
        return self.map(lambda h: self.connection(h), list(hosts), step="connecting",
                        deadline=max(30.0, 3 * self.connect_timeout))

    def fresh_connection(self, host_or_name, *, connect_timeout: float | None = None
                         ) -> Connection:
        """A NEW connection beside the session's (not cached, not opened): to prove that
        a path still carries a fresh SSH session, e.g. after an MTU change. The caller
        closes it (use it as a context manager)."""
        return Connection(self._host(host_or_name),
                          accept_new_host_keys=self.accept_new_host_keys,
                          connect_timeout=connect_timeout or self.connect_timeout)

    def lock(self, name: str, command: str, *, break_stale: bool = False) -> HostLock:
        """Take a lock on the head, held until this session closes (the end of the
        command) or until released: cluster-wide "cluster" for commands that change
        hosts, "deploy-NAME" for a deployment, "sync-NAME" for a sync. A second command
        gets LockBusy naming the holder. The lock lives in a shell on the head that
        ends with this connection, so a controller that dies leaves no stale lock."""
        import re
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100] or "_"
        lock = HostLock(self.connection(self.inventory.head), safe, command,
                        break_stale=break_stale).acquire()
        self._locks.append(lock)
        return lock

    def abort(self, name: str) -> None:
        """Cut a host's connection now (wakes a thread stuck on a stalled path)."""
        conn = self._conns.get(name)
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks = []
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the parallel map ----------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], items: Iterable, *, step: str = "",
            deadline: float | None = None, name: Callable[[Any], str] | None = None,
            forks: int | None = None) -> GroupResult:
        """Run fn(item) for every item (host names, hosts, or objects with a `.host`)
        with at most `forks` at a time. `deadline` (seconds, per item) cuts the item's
        host connection when it passes; the item then fails as timed out. Exceptions
        are the item's failure; the others carry on."""
        return parallel_map(fn, items, forks=forks or self.forks, step=step,
                            deadline=deadline, name=name, abort=self.abort)


def parallel_map(fn: Callable[[Any], Any], items: Iterable, *, forks: int, step: str = "",
                 deadline: float | None = None, name: Callable[[Any], str] | None = None,
                 host: Callable[[Any], str] | None = None,
                 abort: Callable[[str], None] | None = None,
                 grace: float = 10.0) -> GroupResult:
    """The one bounded parallel map (see Session.map). Results are keyed by name(item)
    (default: the item's host name); `abort(host(item))` is called for an item past
    its deadline (a session cuts that host's connection, which wakes the thread). A
    thread that still has not returned `grace` seconds later is left behind: its item
    fails as timed out and the map returns anyway."""
    items = list(items)
    key = name or _item_name
    host_of = host or key
    result = GroupResult()
    if not items:
        return result
    workers = max(1, min(forks, len(items)))
    started: dict[str, float] = {}
    cut_at: dict[str, float] = {}

    def run(item):
        started[key(item)] = time.monotonic()
        return fn(item)

    def timed_out_reason(why: str) -> str:
        return f"timed out after {deadline:g}s" + (f" during {step}" if step else "") + why

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(run, item): item for item in items}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5 if deadline else None,
                                 return_when=FIRST_COMPLETED)
            for fut in done:
                item = futures[fut]
                k = key(item)
                try:
                    result.succeeded[k] = fut.result()
                except BaseException as exc:  # noqa: BLE001 - per-host isolation
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    reason = failure_reason(exc)
                    if k in cut_at:
                        reason = timed_out_reason(f" ({reason})")
                    result.failed[k] = HostFailure(host_of(item), step, reason, exc)
            if deadline:
                now = time.monotonic()
                for fut in list(pending):
                    item = futures[fut]
                    k = key(item)
                    t0 = started.get(k)
                    if t0 is None or now - t0 <= deadline:
                        continue
                    if k not in cut_at:
                        cut_at[k] = now
                        result.cut[k] = timed_out_reason("")
                        if abort is not None:
                            abort(host_of(item))
                    elif now - cut_at[k] > grace:       # abandoned: it did not wake up
                        pending.discard(fut)
                        result.failed[k] = HostFailure(
                            host_of(item), step,
                            timed_out_reason(" (still stalled after its connection was cut)"),
                            HostError(host_of(item), "stalled"))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


def _item_name(item) -> str:
    """A map item's key: a host name, a host's (or connection's) `.name`, or the name of
    the host a state object holds (`.host.name`)."""
    if isinstance(item, str):
        return item
    value = getattr(item, "name", None)
    if isinstance(value, str):
        return value
    host = getattr(item, "host", None)
    if host is not None and isinstance(getattr(host, "name", None), str):
        return host.name
    raise TypeError(f"cannot name map item {item!r}")


# -- locks ------------------------------------------------------------------------------

LOCK_DIR = "/run/clusterctl/locks"
_LOCK_SCRIPT = r"""
d={dir}; n={name}
mkdir -p "$d" || exit 70
exec 9>>"$d/$n.lock" || exit 70
if [ "${{CLUSTERCTL_BREAK:-0}}" = 1 ] && ! flock -n 9; then
  pid=$(sed -n 's/^pid=//p' "$d/$n.owner" 2>/dev/null)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  flock -w 10 9 || {{ echo BUSY; cat "$d/$n.owner" 2>/dev/null; exit 75; }}
elif ! flock -n 9; then
  echo BUSY; cat "$d/$n.owner" 2>/dev/null; exit 75
fi
printf 'pid=%s\n%s\n' "$$" {owner} > "$d/$n.owner"
echo LOCKED
cat >/dev/null
rm -f "$d/$n.owner"
"""


class LockBusy(ClusterctlError):
    """Another command holds the lock (exit 1: the cluster is busy, not bad input)."""


def _check_lock_name(name: str) -> str:
    import re
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}", name):
        raise ValueError(f"bad lock name {name!r}")
    return name


def lock_script(name: str, owner: str) -> str:
    """The remote side of a lock: flock held by a shell that lives as long as the
    channel (stdin) does, so a controller that dies (or a dropped connection) releases
    it: no stale lock survives its holder. The owner line says who holds it."""
    import shlex
    return _LOCK_SCRIPT.format(dir=shlex.quote(LOCK_DIR), name=shlex.quote(_check_lock_name(name)),
                               owner=shlex.quote(owner))


def held_locks_script(names: list[str]) -> str:
    """Shell for the head: `HELD NAME` for each lock whose holder is alive (the owner
    file names the pid of the shell that holds the flock). A name no lock can have is
    never held."""
    import shlex
    lines = []
    for name in names:
        try:
            owner = shlex.quote(f"{LOCK_DIR}/{_check_lock_name(name)}.owner")
        except ValueError:
            continue
        lines.append(f"p=$(sed -n 's/^pid=//p' {owner} 2>/dev/null); "
                     f"[ -n \"$p\" ] && kill -0 \"$p\" 2>/dev/null && "
                     f"echo HELD {shlex.quote(name)}")
    return "\n".join(lines) + "\ntrue"


def parse_lock_answer(text: str) -> tuple[bool, dict]:
    """(locked, owner fields) from the lock script's first lines."""
    lines = text.strip().splitlines()
    owner: dict[str, str] = {}
    for ln in lines[1:]:
        key, sep, value = ln.partition("=")
        if sep:
            owner[key.strip()] = value.strip()
    return bool(lines) and lines[0] == "LOCKED", owner


def owner_line(command: str) -> str:
    import getpass
    import os
    import socket
    user = getpass.getuser() if hasattr(getpass, "getuser") else "?"
    command = " ".join(command.split())        # one line
    return (f"holder={user}@{socket.gethostname()}\ncontroller_pid={os.getpid()}\n"
            f"started={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\ncommand={command}")


class HostLock:
    """A named lock on one host, held while this object's channel is open."""

    def __init__(self, conn, name: str, command: str, *, break_stale: bool = False,
                 timeout: float = 20.0):
        self.conn, self.name, self.command = conn, name, command
        self.break_stale, self.timeout = break_stale, timeout
        self._chan = None

    def acquire(self) -> "HostLock":
        script = lock_script(self.name, owner_line(self.command))
        if self.break_stale:
            script = "export CLUSTERCTL_BREAK=1\n" + script
        chan = self.conn.open_channel(script)
        chan.settimeout(self.timeout)
        buf = b""
        try:
            while b"LOCKED\n" not in buf:
                data = chan.recv(4096)      # the BUSY path exits: EOF ends the loop
                if not data:
                    break
                buf += data
        except OSError as exc:              # socket.timeout is an OSError
            chan.close()
            raise HostError(self.conn.name, f"lock {self.name}: no answer within "
                            f"{self.timeout:g}s ({exc or 'timeout'})") from None
        text = buf.decode(errors="replace")
        locked, owner = parse_lock_answer(text)
        if not locked:
            chan.close()
            if text.startswith("BUSY"):
                holder = " ".join(f"{k}={v}" for k, v in owner.items()
                                  if k in ("holder", "started", "command")) or "unknown"
                raise LockBusy(
                    f"{self.conn.name}: {self.name} is locked by another clusterctl run "
                    f"({holder}; remote pid {owner.get('pid', '?')}). Wait for it, or if "
                    f"that run is gone, run again with --break-lock.")
            raise HostError(self.conn.name, f"lock {self.name}: cannot take it (flock "
                            f"missing?): {text.strip()[-200:]}")
        chan.settimeout(None)
        self._chan = chan
        return self

    def release(self) -> None:
        chan, self._chan = self._chan, None
        if chan is not None:
            try:
                chan.shutdown_write()       # EOF: the holder removes its owner file
                chan.recv_exit_status()
            except Exception:  # noqa: BLE001 - a dropped channel releases it too
                pass
            chan.close()

    def __enter__(self) -> "HostLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
