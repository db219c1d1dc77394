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


def ssh_config(hosts, environ=None) -> str:
    """An ssh_config for testinfra's ssh backend that logs into each host exactly as every
    other command does (the inventory, then the operator's ssh_config: user, port, keys,
    ProxyJump hops; the ssh-agent is ssh's own), with strict host key checking."""
    from ..sshconfig import target_for
    blocks = [target_for(h, environ).openssh_config(h.name) for h in hosts]
    blocks.append("Host *\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n"
                  "  ConnectTimeout 10\n")
    return "\n".join(blocks)


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
