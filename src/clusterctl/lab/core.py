"""`clusterctl lab`: up, down, status, fault, heal.

Every step of `up` is recorded in the lab's state file before it is taken, so `down` can
undo exactly what was created (also after a crash or a failed `up`, which cleans up after
itself). Nothing the lab did not create is touched: interfaces carry the lab's alias and
are deleted only when they still do; processes are signalled only by recorded PID, when
their start time and command line still match.
"""
from __future__ import annotations

import fcntl
import sys
import ipaddress
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..errors import ClusterctlError, InputError
from .. import mirror as mirror_mod
from . import cgroups, host, image as image_mod, naming, netplan, network, node as node_mod, procs
from .inventory_file import render_inventory, render_known_hosts
from .state import (FaultState, LabState, NodeState, cache_root, lab_dir, lab_root,
                    list_labs, load_state)

DEFAULT_NAME = "lab"
DEFAULT_NODES = 3
BOOT_TIMEOUT = 90.0
PACKAGES_FILE = Path(__file__).with_name("mirror_packages.yaml")
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def mirror_dir() -> Path:
    return cache_root() / "mirror" / "lab"


@contextmanager
def _labs_lock():
    """One lab operation at a time on this host (subnets and bridges are host-wide)."""
    root = lab_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `clusterctl lab` operation to finish", file=sys.stderr,
                  flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _parallel(fn, items, workers: int = 16) -> list:
    """fn over the lab's items through the session's parallel map; results in order, the
    first failure (in order) raised once all have finished."""
    from ..session import parallel_map
    items = list(items)
    group = parallel_map(lambda pair: fn(pair[1]), list(enumerate(items)), forks=workers,
                         name=lambda pair: str(pair[0]))
    for i in range(len(items)):
        if str(i) in group.failed:
            raise group.outcome(str(i))
    return [group.succeeded[str(i)] for i in range(len(items))]


# ----------------------------------------------------------------------------- up

def up(name: str = DEFAULT_NAME, nodes: int = DEFAULT_NODES, link: str = netplan.DEFAULT_LINK,
       mirror: bool = True, *, subnet: str | None = None, mtu: int = netplan.DEFAULT_MTU,
       node_mtu: int | None = None, boot_timeout: float = BOOT_TIMEOUT,
       binds: list[tuple[str, str]] | None = None, log: Log = print) -> LabState:
    """Bring lab `name` up with `nodes` nodes and return its state.

    Builds (once) the node image and, with `mirror`, the offline mirror; boots the nodes in
    parallel; writes the lab's inventory. `binds`: (controller folder, path in the node)
    pairs, bound read-only into every node (`check_binds`). On failure, removes what it
    created and raises. If the lab is already up with the same shape, returns it unchanged.
    """
    naming.validate_lab_name(name)
    if not 1 <= int(nodes) <= naming.MAX_NODES:
        raise InputError(f"--nodes must be 1..{naming.MAX_NODES} (got {nodes})", key="nodes")
    netplan.link_rate(link)
    bind_list = check_binds(binds or [])
    if not 1280 <= mtu <= 65535:
        raise InputError(f"mtu must be 1280..65535 (got {mtu})", key="mtu")
    node_mtu = mtu if node_mtu is None else node_mtu
    if not 576 <= node_mtu <= 65535:
        raise InputError(f"node mtu must be 576..65535 (got {node_mtu})", key="node_mtu")
    host.require_root()
    host.require_tools(host.LAB_TOOLS + (host.MIRROR_TOOLS if mirror else ()))

    existing = load_state(name)
    if existing is not None:
        if existing.phase == "up" and _all_nodes_running(existing):
            if len(existing.nodes) == nodes and existing.link == link \
                    and (existing.mirror is not None) == bool(mirror) \
                    and existing.binds == bind_list:
                log(f"lab {name} is already up")
                return existing
            binds_text = ", ".join(f"{s}:{d}" for s, d in existing.binds) or "none"
            raise ClusterctlError(
                f"lab {name} is already up with {len(existing.nodes)} nodes, link "
                f"{existing.link}, mirror {'on' if existing.mirror else 'off'}, read-only "
                f"binds {binds_text}; run `clusterctl lab down --name {name}` first")
        log(f"lab {name}: removing the leftovers of an earlier run")
        down(name, log=log)

    image = image_mod.ensure_image(log=log)
    mdir = None
    if mirror:
        apt, pip = mirror_mod.read_package_lists(PACKAGES_FILE)
        mdir = mirror_dir()
        if not mirror_mod.mirror_is_current(mdir, apt, pip, image=image):
            log(f"building the offline mirror in {mdir} (cached; rebuilt when "
                f"{PACKAGES_FILE.name} changes)")
        mirror_mod.build_mirror(mdir, apt, pip, image=image, log=log)

    with _labs_lock():
        host.require_inotify(nodes)
        host.fit_neigh_table(nodes + sum(len(st.nodes) for st in _other_labs(name)),
                             lab_root() / host.NEIGH_SAVED, log)
        state = _new_state(name, nodes, link, subnet, mtu, node_mtu, image, bind_list)
        try:
            _boot(state, mdir, boot_timeout, log)
        except BaseException as exc:
            state.phase = "failed"
            try:
                state.save()
            except OSError:
                pass
            log(f"lab up failed ({type(exc).__name__}); removing what it created")
            try:
                _teardown(state, log=log)
            except ClusterctlError as cleanup:
                log(f"cleanup after the failed lab up was incomplete: {cleanup}")
            raise
    return state


def _other_labs(name: str) -> list[LabState]:
    """The states of the labs other than `name` (those whose state can be read)."""
    return [st for other in list_labs() if other != name
            and (st := load_state(other)) is not None]


def _other_labs_subnets(name: str) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(st.subnet) for st in _other_labs(name)]


def check_binds(binds) -> list[list[str]]:
    """Validated read-only binds as [[SOURCE, DEST], ...]: SOURCE an existing folder or file
    of the controller, DEST an absolute path in the node other than `/`; no `:` (nspawn's
    separator), no newline, no DEST twice. Pure but for the existence check."""
    out: list[list[str]] = []
    for item in binds:
        try:
            src, dst = (str(x) for x in item)
        except (TypeError, ValueError):
            raise InputError(f"bind {item!r}: expected a (controller path, node path) pair",
                             key="binds") from None
        for what, path in (("source", src), ("destination", dst)):
            if not path.startswith("/") or any(c in path for c in ":\n\0"):
                raise InputError(f"bind {src}:{dst}: the {what} must be an absolute path "
                                 "without ':' or newlines", key="binds")
        dst = os.path.normpath(dst)
        if dst == "/":
            raise InputError(f"bind {src}:{dst}: cannot bind over the node's root", key="binds")
        if not os.path.exists(src):
            raise InputError(f"bind {src}:{dst}: {src} does not exist on this machine",
                             key="binds")
        if any(d == dst for _s, d in out):
            raise InputError(f"bind {src}:{dst}: {dst} is bound twice", key="binds")
        out.append([os.path.normpath(src), dst])
    return out


def _new_state(name, count, link, subnet, mtu, node_mtu, image: Path,
               binds: list[list[str]] | None = None) -> LabState:
    used = host.used_networks() + _other_labs_subnets(name)
    net = netplan.allocate_subnet(used, subnet)
    d = lab_dir(name)
    if d.exists():                      # no state file (checked by the caller): debris
        shutil.rmtree(d)
    state = LabState(
        name=name, subnet=str(net), bridge=naming.bridge_name(name),
        bridge_ip=str(netplan.bridge_address(net)), link=link, mtu=mtu, node_mtu=node_mtu,
        image=str(image), nft_table=naming.nft_table(name), binds=list(binds or []),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        owner_pid=os.getpid(), owner_start=procs.start_time(os.getpid()))
    for k in range(1, count + 1):
        state.nodes.append(NodeState(
            name=naming.node_name(name, k), index=k, ip=str(netplan.node_address(net, k)),
            port=naming.port_name(name, k), role="head" if k == 1 else "worker"))
    state.save()
    return state


def _boot(state: LabState, mdir: Path | None, boot_timeout: float, log: Log) -> None:
    t0 = time.monotonic()
    if not state.key_path.exists():
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                  f"clusterctl-lab-{state.name}", "-f", str(state.key_path)])
    pub = Path(f"{state.key_path}.pub").read_text()
    host_keys = dict(zip([n.name for n in state.nodes],
                         _parallel(lambda n: node_mod.prepare_upper(state, n, pub),
                                   state.nodes)))
    state.known_hosts_path.write_text(render_known_hosts(state, host_keys))
    state.save()

    network.create_bridge(state)
    existing = host.links()
    for n in state.nodes:
        if n.port in existing:
            raise ClusterctlError(f"interface {n.port} already exists; clusterctl lab does "
                                  "not touch interfaces it did not create")
        state.interfaces.append(n.port)
    state.save()
    network.apply_ruleset(state, None)          # guard the controller before nodes exist

    for n in state.nodes:
        node_mod.spawn(state, n)
    state.save()

    def plug(n: NodeState) -> None:
        node_mod.wait_port(n.port, boot_timeout)
        node_mod.wait_init(state, n, boot_timeout)
        network.attach_port(state, n)
    _parallel(plug, state.nodes)
    state.save()

    if mdir is not None:
        state.mirror = mirror_mod.serve_mirror(
            mdir, state.bridge_ip, mirror_mod.DEFAULT_PORT, pick_free_port=True,
            log_file=state.dir / "mirror.log")
        state.save()
    network.apply_ruleset(state, state.mirror.port if state.mirror else None)

    _parallel(lambda n: node_mod.wait_sshd(state, n, boot_timeout), state.nodes)
    _parallel(lambda n: check_ssh(state, n), state.nodes)
    state.inventory_path.write_text(render_inventory(
        state, when=time.strftime("%Y-%m-%d %H:%M:%S")))
    state.phase = "up"
    state.save()
    log(f"lab {state.name}: {len(state.nodes)} nodes up in {time.monotonic() - t0:.1f}s")


def check_ssh(state: LabState, node: NodeState, command: str = "true",
              timeout: float = 20.0) -> str:
    """Log in with the lab key, verifying the host key against the lab's known_hosts."""
    import paramiko
    client = paramiko.SSHClient()
    client.load_host_keys(str(state.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.connect(node.ip, username="root", key_filename=str(state.key_path),
                           look_for_keys=False, allow_agent=False, timeout=5,
                           banner_timeout=5, auth_timeout=5)
            try:
                _, stdout, _ = client.exec_command(command, timeout=10)
                out = stdout.read().decode()
                code = stdout.channel.recv_exit_status()
            finally:
                client.close()
            if code != 0:
                raise ClusterctlError(f"{node.name}: `{command}` exited {code}")
            return out
        except (paramiko.SSHException, OSError) as exc:
            if isinstance(exc, paramiko.BadHostKeyException) or time.monotonic() > deadline:
                raise ClusterctlError(f"{node.name}: ssh root@{node.ip} failed: {exc}") \
                    from None
            time.sleep(0.3)


# ----------------------------------------------------------------------------- down

def down(name: str = DEFAULT_NAME, *, log: Log = print) -> bool:
    """Remove lab `name`: nodes, ports, bridge, nft tables, mirror server, state dir.
    Idempotent. Returns False when there was nothing to remove."""
    naming.validate_lab_name(name)
    state = load_state(name)
    d = lab_dir(name)
    if state is None:
        if d.exists():
            host.require_root()
            _remove_tree(d)
            return True
        return False
    host.require_root()
    with _labs_lock():
        state = load_state(name)
        if state is None:
            return False
        _teardown(state, log=log)
        if not _other_labs(name):
            host.restore_neigh_table(lab_root() / host.NEIGH_SAVED, log)
    return True


def _remove_tree(d: Path) -> None:
    """rmtree that tolerates entries vanishing under it (another `down` of the same lab
    racing this one); any other error is raised."""
    def onerror(_fn, _path, exc_info):
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]
    shutil.rmtree(d, onerror=onerror)


def _teardown(state: LabState, *, log: Log) -> None:
    errors: list[str] = []
    if state.mirror is not None:
        mirror_mod.stop_mirror(state.mirror)
    _parallel(node_mod.stop, state.nodes)
    survivors = [n.name for n in state.nodes
                 if procs.is_ours(n.nspawn_pid, n.nspawn_start, *node_mod.nspawn_markers(n))
                 or procs.is_ours(n.pid, n.pid_start)]
    if survivors:
        errors.append("nodes still running: " + ", ".join(survivors))
    else:
        for n in state.nodes:               # nspawn's runtime dir, if it was killed hard
            shutil.rmtree(NSPAWN_PROPAGATE / n.name, ignore_errors=True)
            busy = cgroups.remove(n.cgroups)
            if busy:
                errors.append(f"{n.name}: cgroups still in use: {', '.join(busy)}")
    if state.nft_tables:
        if host.missing_tools(["nft"]):
            errors.append("nft is missing: cannot delete nft tables "
                          + ", ".join(state.nft_tables))
        else:
            try:
                network.delete_ruleset(state)
            except ClusterctlError as exc:
                errors.append(str(exc))
    try:
        network.remove_interfaces(state)
    except ClusterctlError as exc:
        errors.append(str(exc))
    if errors:
        state.save()
        raise ClusterctlError(f"lab {state.name}: could not remove everything; state kept in "
                              f"{state.dir} (run `lab down` again):\n  " + "\n  ".join(errors))
    shutil.rmtree(state.dir, ignore_errors=True)
    if state.dir.exists():
        raise ClusterctlError(f"could not remove {state.dir}")


# ----------------------------------------------------------------------------- status

def require_state(name: str) -> LabState:
    naming.validate_lab_name(name)
    state = load_state(name)
    if state is None:
        raise ClusterctlError(f"no lab named {name!r} (labs: {', '.join(list_labs()) or 'none'});"
                              f" start one with `clusterctl lab up --name {name}`")
    return state


def status(name: str = DEFAULT_NAME) -> LabState:
    return require_state(name)


def owner_alive(state: LabState) -> bool:
    """Is the process that brought the lab up (e.g. a test session) still running?"""
    return procs.is_ours(state.owner_pid, state.owner_start)


def _all_nodes_running(state: LabState) -> bool:
    return bool(state.nodes) and all(procs.is_ours(n.pid, n.pid_start) for n in state.nodes)


def node_health(state: LabState, node: NodeState, probe: bool = True) -> dict:
    """Live view of one node: process running, port state, sshd answering."""
    running = procs.is_ours(node.pid, node.pid_start)
    rec = host.link(node.port) if running else None
    port = "missing" if rec is None else ("up" if "UP" in rec.get("flags", []) else "down")
    reachable = None
    if probe and running and port == "up":
        try:
            with socket.create_connection((node.ip, 22), timeout=0.5):
                reachable = True
        except OSError:
            reachable = False
    return {
        "running": running,
        "port": port,
        "port_mtu": rec.get("mtu") if rec else None,
        "ssh": reachable,
        "faults": [f.describe() for f in state.faults_of(node.name)],
    }


def health(state: LabState, probe: bool = True) -> dict[str, dict]:
    results = _parallel(lambda n: node_health(state, n, probe), state.nodes)
    return {n.name: r for n, r in zip(state.nodes, results)}


# ----------------------------------------------------------------------------- faults

def fault(name: str, node: str, kind: str, arg: str | int | None = None) -> FaultState:
    """Inject a fault on one node (recorded, so `heal` undoes exactly it)."""
    arg = netplan.check_fault(kind, None if arg is None else str(arg))
    state = require_state(name)
    target = state.node(naming.node_index(name, node, len(state.nodes)))
    host.require_root()
    with _labs_lock():
        state = require_state(name)
        if state.phase != "up":
            raise ClusterctlError(f"lab {name} is not up (phase {state.phase})")
        new = FaultState(node=target.name, kind=kind, arg=arg)
        if kind == "block-port":
            state.faults = [f for f in state.faults
                            if not (f.node == target.name and f.kind == kind and f.arg == arg)]
        else:                                   # one of each kind per node: last one wins
            state.faults = [f for f in state.faults
                            if not (f.node == target.name and f.kind == kind)]
        state.faults.append(new)
        state.save()
        _apply_faults(state, [target], nft=kind in ("block-port", "partition"))
    return new


def heal(name: str, node: str | None = None) -> list[FaultState]:
    """Remove the faults of one node (or of all nodes) and return once the healed nodes
    answer ping from and to the others and the controller; returns the faults removed."""
    state = require_state(name)
    targets = state.nodes if node is None else \
        [state.node(naming.node_index(name, node, len(state.nodes)))]
    host.require_root()
    with _labs_lock():
        state = require_state(name)
        names = {t.name for t in targets}
        removed = [f for f in state.faults if f.node in names]
        state.faults = [f for f in state.faults if f.node not in names]
        state.save()
        nodes = [state.node_by_name(t.name) for t in targets]
        healed = [n for n in nodes if any(f.node == n.name for f in removed)]
        _apply_faults(state, healed,
                      nft=any(f.kind in ("block-port", "partition") for f in removed))
        # the rules and qdiscs are in place when their commands return; the nodes' own
        # view of the path (neighbour entries that failed meanwhile) may lag: wait for it
        network.wait_paths(state, [n.name for n in healed],
                           parallel=_parallel)
    return removed


def _apply_faults(state: LabState, nodes: list[NodeState], nft: bool) -> None:
    for n in nodes:
        if not procs.is_ours(n.pid, n.pid_start):
            raise ClusterctlError(f"{n.name} is not running; `clusterctl lab down --name "
                                  f"{state.name}` and up again")
        network.apply_port(state, n)
    if nft:
        network.apply_ruleset(state, state.mirror.port if state.mirror else None)


def ssh_argv(state: LabState, node: str, command: list[str] | None = None) -> list[str]:
    """The ssh command line that logs into a node with the lab's key and known_hosts."""
    target = state.node(naming.node_index(state.name, node, len(state.nodes)))
    return ["ssh", "-i", str(state.key_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={state.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
            f"root@{target.ip}", *(command or [])]
