"""Run the testinfra suite against an inventory, over ssh with verified host keys."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = Path(__file__).with_name("test_cluster.py")


def ssh_config(hosts) -> str:
    """An ssh_config for testinfra's ssh backend: the inventory's address, port, user,
    key and known_hosts per host; strict host key checking."""
    blocks = []
    for h in hosts:
        lines = [f"Host {h.name}", f"  HostName {h.address}", f"  Port {h.port}",
                 f"  User {h.user}", "  StrictHostKeyChecking yes", "  BatchMode yes",
                 "  LogLevel ERROR", "  ConnectTimeout 10"]
        if h.key_file:
            lines += [f"  IdentityFile {h.key_file}", "  IdentitiesOnly yes"]
        if h.known_hosts_file:
            lines.append(f"  UserKnownHostsFile {h.known_hosts_file}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def run_verify(inventory, hosts, *, extra_args: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="clusterctl-verify-") as tmp:
        cfg = Path(tmp) / "ssh_config"
        cfg.write_text(ssh_config(hosts))
        env = dict(os.environ, CLUSTERCTL_VERIFY_INVENTORY=str(inventory.path))
        cmd = [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider",
               "--rootdir", tmp, f"--ssh-config={cfg}",
               "--hosts=" + ",".join(f"ssh://{h.name}" for h in hosts)]
        cmd += list(extra_args or [])
        return subprocess.run(cmd, env=env, cwd=tmp).returncode
