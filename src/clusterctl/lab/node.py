"""One lab node: its writable layer, its boot under systemd-nspawn, its readiness.

Each node runs `systemd-nspawn --boot` (systemd as PID 1) over the shared image with its
own overlay upper dir, in its own network namespace. nspawn creates the node's veth pair
with the names we choose (`--network-veth-extra=PORT:eth0`): PORT on the host, which the
lab attaches to its bridge, and eth0 in the node. The veth disappears with the node.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

from ..errors import ClusterctlError
from . import cgroups, host, procs
from .state import LabState, NodeState

NETWORK_FILE = "etc/systemd/network/10-clusterctl-lab.network"


def node_files(state: LabState, node: NodeState, authorized_key: str) -> dict[str, tuple[str, int]]:
    """Files written into the node's upper dir before boot: path -> (content, mode). Pure."""
    prefix = state.subnet.split("/")[1]
    hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{node.name}",
             "::1\tlocalhost ip6-localhost ip6-loopback", ""]
    hosts += [f"{n.ip}\t{n.name}" for n in state.nodes]
    network = "\n".join([
        "# written by clusterctl lab: the node's port on the lab switch",
        "[Match]", "Name=eth0", "",
        "[Link]", f"MTUBytes={state.node_mtu}", "",
        "[Network]", f"Address={node.ip}/{prefix}",
        "LinkLocalAddressing=no", "IPv6AcceptRA=no",
        "ConfigureWithoutCarrier=yes", "IgnoreCarrierLoss=yes", ""])
    return {
        "etc/hostname": (node.name + "\n", 0o644),
        "etc/machine-id": (node.machine_id + "\n", 0o444),
        "etc/hosts": ("\n".join(hosts) + "\n", 0o644),
        NETWORK_FILE: (network, 0o644),
        "etc/ssh/sshd_config.d/10-clusterctl-lab.conf": (
            "# written by clusterctl lab: the host key generated on the controller\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n", 0o644),
        "root/.ssh/authorized_keys": (authorized_key.strip() + "\n", 0o600),
    }


def prepare_upper(state: LabState, node: NodeState, authorized_key: str) -> str:
    """Create the node's upper dir with its files and a fresh ed25519 host key (generated
    here, so the controller knows it before the node boots). Returns the public key."""
    upper = state.node_dir(node) / "upper"
    upper.mkdir(parents=True, exist_ok=True)
    if not node.machine_id:
        node.machine_id = uuid.uuid4().hex
    for rel, (content, mode) in node_files(state, node, authorized_key).items():
        path = upper / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.chmod(path, mode)
    os.chmod(upper / "root", 0o700)
    os.chmod(upper / "root/.ssh", 0o700)
    key = upper / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{node.name}",
                  "-f", str(key)])
    return Path(f"{key}.pub").read_text().strip()


def nspawn_argv(state: LabState, node: NodeState) -> list[str]:
    upper = state.node_dir(node) / "upper"
    return [
        "systemd-nspawn", "--quiet", "--boot",
        "--directory", state.image, f"--overlay={state.image}:{upper}:/",
        "--machine", node.name, "--hostname", node.name,
        "--register=no", "--keep-unit",              # PID 1 of this host is not systemd
        f"--network-veth-extra={node.port}:eth0",    # implies a private network namespace
        "--link-journal=no", "--resolv-conf=off", "--timezone=off",
        "--console=read-only",
        *(f"--bind-ro={src}:{dst}" for src, dst in state.binds),
    ]


def spawn(state: LabState, node: NodeState) -> None:
    """Start the node's nspawn in its own session (it outlives `lab up`); record PIDs."""
    log = state.node_dir(node) / "console.log"
    node.cgroups = cgroups.node_cgroups(state.name, node.short)
    state.save()                                  # recorded before they exist
    procs_files = cgroups.create(node.cgroups)
    with open(log, "ab") as fh, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cgroups.launcher(procs_files, nspawn_argv(state, node)),
                                env=cgroups.launcher_env(procs_files), stdin=devnull,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    node.nspawn_pid = proc.pid
    node.nspawn_start = procs.start_time(proc.pid)
    # keep the Popen object from warning: we track the process by PID from here on
    proc.returncode = 0


def nspawn_markers(node: NodeState) -> tuple[str, ...]:
    return ("systemd-nspawn", node.name)


def wait_init(state: LabState, node: NodeState, timeout: float) -> None:
    """Wait for the container's PID 1 and record it (for nsenter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.is_ours(node.nspawn_pid, node.nspawn_start):
            raise ClusterctlError(f"{node.name}: systemd-nspawn exited during boot; "
                                  f"see {state.node_dir(node) / 'console.log'}:\n"
                                  + console_tail(state, node))
        pid = procs.container_init(node.nspawn_pid)   # type: ignore[arg-type]
        if pid:
            node.pid, node.pid_start = pid, procs.start_time(pid)
            return
        time.sleep(0.05)
    raise ClusterctlError(f"{node.name}: no container init after {timeout:.0f}s")


def wait_port(ifname: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path("/sys/class/net", ifname).exists():
            return
        time.sleep(0.05)
    raise ClusterctlError(f"switch port {ifname} did not appear within {timeout:.0f}s")


def wait_sshd(state: LabState, node: NodeState, timeout: float) -> None:
    """Wait until the node's sshd answers with its banner on port 22."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not procs.is_ours(node.nspawn_pid, node.nspawn_start):
            raise ClusterctlError(f"{node.name}: the node stopped during boot:\n"
                                  + console_tail(state, node))
        try:
            with socket.create_connection((node.ip, 22), timeout=1.0) as sock:
                sock.settimeout(2.0)
                banner = sock.recv(64)
                if banner.startswith(b"SSH-"):
                    return
                last = f"unexpected banner {banner!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ClusterctlError(f"{node.name}: sshd on {node.ip}:22 not ready after "
                          f"{timeout:.0f}s ({last}); console:\n" + console_tail(state, node))


def console_tail(state: LabState, node: NodeState, lines: int = 15) -> str:
    try:
        text = (state.node_dir(node) / "console.log").read_text(errors="replace")
    except FileNotFoundError:
        return "    (no console log)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    tail = "\n".join("    " + ln for ln in text.splitlines()[-lines:] if ln.strip())
    if "Too many open files" in text:
        tail += ("\n  hint: the host ran out of inotify instances; raise "
                 "fs.inotify.max_user_instances (sysctl -w fs.inotify.max_user_instances=1024)")
    return tail


def stop(node: NodeState, timeout: float = 5.0) -> None:
    """Stop a node we started: SIGTERM to nspawn (the node halts), then SIGKILL to the
    node's PID 1 and to nspawn if they are still there. Only PIDs that are still ours."""
    import signal
    nspawn_alive = procs.signal_if_ours(node.nspawn_pid, node.nspawn_start, signal.SIGTERM,
                                        *nspawn_markers(node))
    if nspawn_alive and not procs.wait_gone([node.nspawn_pid], timeout):  # type: ignore[list-item]
        return
    procs.signal_if_ours(node.pid, node.pid_start, signal.SIGKILL)
    procs.signal_if_ours(node.nspawn_pid, node.nspawn_start, signal.SIGKILL,
                         *nspawn_markers(node))
    # a killed PID 1 takes its whole namespace down with it (Ray, servers): on a loaded
    # machine that can take a while
    procs.wait_gone([p for p in (node.nspawn_pid, node.pid) if p], 30.0)
