"""Run the testinfra suite against an inventory, over ssh with verified host keys."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ClusterctlError

SUITE = Path(__file__).with_name("test_cluster.py")
#: what the suite needs at run time: import name -> distribution name
RUNTIME_MODULES = {"pytest": "pytest", "testinfra": "pytest-testinfra"}


def check_runtime() -> None:
    """pytest and pytest-testinfra are dependencies of clusterctl; an environment without
    them gets one line that says what to install, not a pytest start-up error."""
    missing = [dist for module, dist in RUNTIME_MODULES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ClusterctlError(f"verify needs {' and '.join(missing)}, missing from "
                              f"{sys.prefix}: pip install {' '.join(missing)} (or reinstall "
                              "clusterctl, which depends on them)")


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
    check_runtime()
    with tempfile.TemporaryDirectory(prefix="clusterctl-verify-") as tmp:
        cfg = Path(tmp) / "ssh_config"
        cfg.write_text(ssh_config(hosts))
        # pytest's own settings, so that no pytest.ini or pyproject.toml above the installed
        # suite (a venv inside someone's project) changes how it runs
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\naddopts = -ra\n")
        env = dict(os.environ, CLUSTERCTL_VERIFY_INVENTORY=str(inventory.path))
        cmd = [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider",
               "-c", str(ini), "--rootdir", tmp, f"--ssh-config={cfg}",
               "--hosts=" + ",".join(f"ssh://{h.name}" for h in hosts)]
        cmd += list(extra_args or [])
        return subprocess.run(cmd, env=env, cwd=tmp).returncode
