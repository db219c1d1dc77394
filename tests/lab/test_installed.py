"""clusterctl installed from its wheel into a fresh venv (not editable, no checkout on the
path), run from an unrelated folder against the lab: it plans a bootstrap with its packaged
roles, runs a user's playbook and role, converges with packaged roles, and its packaged
testinfra suite passes for what they set up."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterctl import resources
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection

pytestmark = pytest.mark.lab

BUILD_WHEEL = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis", "lab-state", "*.pyc")
PROBE_DIR = "/srv/clusterctl-installed"


def _run(cmd, *, timeout, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(clusterctl executable, a folder outside the checkout, env without the checkout)."""
    repo = resources.checkout_root()
    if repo is None:
        pytest.skip("builds the wheel from a source checkout")
    tmp = tmp_path_factory.mktemp("installed")
    project = tmp / "project"
    shutil.copytree(repo, project, ignore=IGNORED, symlinks=True)
    proc = _run([sys.executable, "-c", BUILD_WHEEL, tmp / "dist"], cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheel = tmp / "dist" / proc.stdout.strip().splitlines()[-1]
    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", venv], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # dependencies from the package index (or pip's cache), the package from its wheel
    proc = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(project)                    # nothing of the checkout is left to lean on
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CLUSTERCTL_HOME", "CLUSTERCTL_ROLES_PATH",
                        "VIRTUAL_ENV")}
    exe = venv / "bin" / "clusterctl"
    proc = _run([venv / "bin" / "python", "-c",
                 "import clusterctl.resources as r; print(r.data_root())"],
                cwd=elsewhere, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = Path(proc.stdout.strip())
    assert data.is_relative_to(venv) and (data / "roles").is_dir(), data
    return exe, elsewhere, env


def _cli(installed, *args, timeout=1800, env=None):
    exe, elsewhere, base_env = installed
    return _run([exe, *args], cwd=elsewhere, env=dict(base_env, **(env or {})),
                timeout=timeout)


def test_bootstrap_check_plans_with_the_packaged_roles(installed, lab):
    proc = _cli(installed, "bootstrap", lab.inventory_path, "--check", "--json")
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert sorted(report["recap"]) == sorted(n.name for n in lab.nodes)
    for host, r in report["recap"].items():
        assert r["failed"] == 0 and not r["unreachable"], (host, r)


@pytest.fixture
def probe_playbook(installed, lab):
    """A user's playbook and role, in the unrelated folder; removed from the nodes after."""
    _exe, elsewhere, _env = installed
    role = elsewhere / "roles" / "installed_probe"
    (role / "templates").mkdir(parents=True, exist_ok=True)
    (role / "templates" / "probe.txt.j2").write_text("probe on {{ inventory_hostname }}\n")
    (role / "tasks.yaml").write_text(
        f"- name: probe folder\n  directory: {{path: {PROBE_DIR}, mode: '0755'}}\n"
        f"- name: probe file\n  template: {{src: probe.txt.j2, dest: {PROBE_DIR}/probe.txt,"
        " mode: '0644'}\n")
    playbook = elsewhere / "probe.yaml"
    playbook.write_text("- name: probe\n  hosts: all\n  roles: [installed_probe]\n")
    yield playbook
    for host in load_inventory(lab.inventory_path).hosts.values():
        with Connection(host) as c:
            c.run(["rm", "-rf", PROBE_DIR], check=False)


def test_apply_runs_a_users_playbook_and_role(installed, lab, probe_playbook):
    roles_dir = str(probe_playbook.parent / "roles")
    proc = _cli(installed, "apply", probe_playbook.name, "-i", lab.inventory_path,
                env={"CLUSTERCTL_ROLES_PATH": roles_dir}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for host in load_inventory(lab.inventory_path).hosts.values():
        with Connection(host) as c:
            res = c.run(["cat", f"{PROBE_DIR}/probe.txt"], check=False)
        assert res.stdout == f"probe on {host.name}\n", (host.name, res.stderr)
    # again, with the role from --roles-path: nothing left to change
    proc = _cli(installed, "apply", probe_playbook.name, "-i", lab.inventory_path,
                "--roles-path", roles_dir, "--check", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_packaged_roles_converge_and_verify_passes(installed, lab):
    """The packaged network and nccl roles (and the packaged templates/nccl.env.j2) converge
    the nodes; the packaged testinfra suite then passes for what they promise. (The whole
    bootstrap and the whole suite run from the checkout in test_bootstrap.py; a first
    bootstrap compiles llama.cpp, too long to repeat here.)"""
    _exe, elsewhere, _env = installed
    (elsewhere / "network.yaml").write_text(
        "- name: cluster network\n  hosts: all\n  roles: [network, nccl]\n")
    proc = _cli(installed, "apply", "network.yaml", "-i", lab.inventory_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = _cli(installed, "verify", lab.inventory_path, "--", "-k", "mtu or nccl",
                timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r" (\d+) passed, (\d+) deselected", proc.stdout)
    assert passed and "failed" not in proc.stdout, proc.stdout[-2000:]
    assert int(passed[1]) % len(lab.nodes) == 0 and int(passed[1]) >= len(lab.nodes)


def test_a_missing_playbook_names_the_packaged_folder(installed, lab):
    _exe, elsewhere, _env = installed
    proc = _cli(installed, "apply", "no_such_playbook", "-i", lab.inventory_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(elsewhere / "no_such_playbook") in proc.stderr
    assert "/clusterctl/_data/playbooks/no_such_playbook.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_wheel_bootstraps_from_an_ini_inventory_then_checks_and_serves(installed, lab):
    """The whole path a new user takes, from the installed wheel in an unrelated folder:
    an Ansible INI inventory with a host range and group_vars/host_vars bootstraps the
    lab (the full bootstrap playbook, Ray check included), the packaged testinfra suite
    passes, netcheck measures every pair, and deploy-model serves a real completion."""
    from test_operator import ini_inventory

    _exe, elsewhere, _env = installed
    ini = ini_inventory(lab, elsewhere / "ini")
    proc = _cli(installed, "bootstrap", ini, "--json", timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recap = json.loads(proc.stdout)["recap"]
    assert sorted(recap) == sorted(n.name for n in lab.nodes)
    assert all(r["failed"] == 0 and not r["unreachable"] for r in recap.values()), recap

    proc = _cli(installed, "verify", ini, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r" \d+ passed", proc.stdout) and " failed" not in proc.stdout

    proc = _cli(installed, "netcheck", "-i", ini, "--duration", "1", "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    n = len(lab.nodes)
    assert len([ln for ln in data["links"] if ln.get("gbps")]) == n * (n - 1), data["links"]
    assert not [f for f in data["findings"] if f["severity"] == "error"], data["findings"]

    from clusterctl.deploy.tinymodels import find_vocab_gguf, write_tiny_gguf
    vocab = find_vocab_gguf()
    assert vocab is not None, "bootstrap caches the llama.cpp source the tiny model needs"
    model = write_tiny_gguf(elsewhere / "tiny-wheel.gguf", vocab)
    head = next(node.name for node in lab.nodes if node.role == "head")
    try:
        proc = _cli(installed, "deploy-model", model, "-i", ini, "--name", "wheel",
                    "--limit", head, "--port", "8391", "--json", "--timeout", "600",
                    timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert result["ready_seconds"] > 0 and result["reply"], result
    finally:
        proc = _cli(installed, "undeploy", "wheel", "-i", ini, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
