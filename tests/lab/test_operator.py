"""The lab reached the way operators reach their own machines: ad hoc commands and their
own Python tasks, a key that lives only in an ssh-agent, a node reachable only through
a ProxyJump via another node (its direct SSH blocked on the controller), an Ansible INI
inventory with ranges and group_vars/host_vars. Never a paramiko traceback."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labtools import lab_inventory_data, write_inventory

pytestmark = pytest.mark.lab

BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": ":".join(sys.path)}


def cli(*args, env=None, cwd=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "clusterctl.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL, env=dict(BASE_ENV, **(env or {})))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def lab_inventory(lab) -> dict:
    return lab_inventory_data(lab.inventory_path)


@pytest.fixture
def home(tmp_path):
    """An empty HOME (no ~/.ssh keys or config of the machine's user to lean on), and
    no ssh_config beyond the test's own."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True, mode=0o700)
    return h


def test_exec_runs_on_every_node(lab, home):
    proc = cli("exec", "-i", lab.inventory_path, "--json", "--", "uname -r; hostname",
               env={"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    by_host = {h["host"]: h for h in data["hosts"]}
    assert sorted(by_host) == sorted(n.name for n in lab.nodes)
    kernel = os.uname().release                      # nspawn nodes share the host kernel
    for node in lab.nodes:
        out = by_host[node.name]
        assert out["status"] == "ok" and out["exit_code"] == 0, out
        assert out["stdout"].splitlines()[0] == kernel, out
    # human output: one block per host and a recap
    proc = cli("exec", "-i", lab.inventory_path, "-l", "workers", "--", "uname -r",
               env={"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    workers = [n.name for n in lab.nodes if n.role != "head"]
    for name in workers:
        assert f"{name} | OK | rc=0" in proc.stdout, proc.stdout


TASKS = '''
from invoke import task


@task
def cpus(c):
    return c.run("nproc", hide=True).stdout.strip()


@task
def stamp(c, path, check=False):
    if check:
        return "would write " + path
    c.run(f"echo stamped-$(hostname) > {path}")
    return "wrote " + path
'''


def test_a_users_task_runs_on_every_node(lab, home, tmp_path):
    tasks = tmp_path / "tasks.py"
    tasks.write_text(TASKS)
    env = {"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"}
    proc = cli("task", "-i", lab.inventory_path, "--json", "cpus", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    results = {h["host"]: h for h in data["hosts"]}
    assert sorted(results) == sorted(n.name for n in lab.nodes)
    for r in results.values():
        assert r["status"] == "ok" and int(r["value"]) >= 1, r
    path = "/tmp/clusterctl-operator-stamp"
    proc = cli("task", "-i", lab.inventory_path, "--check", "stamp", "--arg", f"path={path}",
               cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "would write" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("exec", "-i", lab.inventory_path, "--json", "--", f"test -e {path}", env=env)
    assert proc.returncode == 1, "--check of a task wrote the file"
    try:
        proc = cli("task", "-i", lab.inventory_path, "stamp", "--arg", f"path={path}",
                   cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = cli("exec", "-i", lab.inventory_path, "--json", "--", f"cat {path}", env=env)
        data = json.loads(proc.stdout)
        for h in data["hosts"]:
            assert h["stdout"].startswith("stamped-"), h
    finally:
        cli("exec", "-i", lab.inventory_path, "--", f"rm -f {path}", env=env)


@pytest.fixture
def agent(lab, tmp_path):
    """An ssh-agent of this test holding the lab's key (the only place it is)."""
    if not shutil.which("ssh-agent") or not shutil.which("ssh-add"):
        pytest.fail("ssh-agent/ssh-add missing: apt-get install openssh-client")
    sock = tmp_path / "agent.sock"
    proc = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        key = Path(lab.inventory_path).parent / "id_ed25519"
        proc = subprocess.run(["ssh-add", str(key)], capture_output=True, text=True,
                              timeout=30, env=dict(BASE_ENV, SSH_AUTH_SOCK=str(sock)))
        assert proc.returncode == 0, proc.stderr
        yield str(sock)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def inventory_without_key(lab, tmp_path) -> Path:
    data = lab_inventory(lab)
    del data["all"]["vars"]["ansible_ssh_private_key_file"]
    return write_inventory(tmp_path / "inventory.yaml", data)


def test_a_key_only_in_the_agent_connects(lab, agent, home, tmp_path):
    inv = inventory_without_key(lab, tmp_path)
    env = {"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"}
    proc = cli("exec", "-i", inv, "--json", "--", "true", env=dict(env, SSH_AUTH_SOCK=agent))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(h["status"] == "ok" for h in json.loads(proc.stdout)["hosts"])
    # the same without the agent: each host named as refusing the login, no traceback
    proc = cli("exec", "-i", inv, "--json", "--", "true", env=env)
    assert proc.returncode != 0
    data = json.loads(proc.stdout)
    for h in data["hosts"]:
        assert h["status"] == "unreachable", h
        node = next(n for n in lab.nodes if n.name == h["host"])
        assert f"root@{node.ip}:22" in h["message"], h["message"]


NFT_TABLE = "clusterctl_test_jump"


@pytest.fixture
def direct_ssh_blocked(lab):
    """The controller cannot open SSH to the last node (an nftables rule of this test on
    the controller's output path); the nodes still reach each other."""
    if not shutil.which("nft"):
        pytest.fail("nft missing: apt-get install nftables")
    target = lab.nodes[-1]
    rules = (f"table inet {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority 0;"
             f"\n  ip daddr {target.ip} tcp dport 22 reject with tcp reset\n }}\n}}\n")
    subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
    proc = subprocess.run(["nft", "-f", "-"], input=rules, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    try:
        yield target
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)


def test_a_node_reached_only_through_proxyjump(lab, direct_ssh_blocked, home, tmp_path):
    target = direct_ssh_blocked
    via = lab.nodes[0]
    env = {"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"}
    # blocked: the error names the target, no traceback
    proc = cli("exec", "-i", lab.inventory_path, "-l", target.name, "--json", "--", "true",
               env=env, timeout=120)
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["hosts"][0]["status"] == "unreachable"
    # through the operator's ssh_config: ProxyJump via the first node
    config = tmp_path / "ssh_config"
    key = Path(lab.inventory_path).parent / "id_ed25519"
    config.write_text(f"Host {target.name} {target.ip}\n  ProxyJump root@{via.ip}\n"
                      f"Host {via.ip}\n  IdentityFile {key}\n")
    env["CLUSTERCTL_SSH_CONFIG"] = str(config)
    proc = cli("exec", "-i", lab.inventory_path, "--json", "--", "hostname", env=env,
               timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    by_host = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert by_host[target.name]["stdout"].strip() == target.name
    # the whole planning path (facts of every node) goes through the jump too
    proc = cli("bootstrap", lab.inventory_path, "--check", "--json", env=env, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    recap = json.loads(proc.stdout)["recap"]
    assert not recap[target.name]["unreachable"] and recap[target.name]["failed"] == 0
    # and verify's testinfra (OpenSSH, not paramiko) goes through the same jump
    proc = cli("verify", lab.inventory_path, "--limit", target.name, "--", "-k", "mtu",
               env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r" 1 passed", proc.stdout), proc.stdout[-2000:]


def ini_inventory(lab, folder: Path) -> Path:
    """The lab's inventory as an Ansible INI file with a host range, plus group_vars/ and
    host_vars/ folders (absolute key paths: group_vars are not beside the lab's files)."""
    data = lab_inventory(lab)
    all_vars = dict(data["all"]["vars"])
    head = [n for n in lab.nodes if n.role == "head"]
    workers = [n for n in lab.nodes if n.role != "head"]
    prefix = workers[0].name.rstrip("0123456789")
    numbers = sorted(int(n.name[len(prefix):]) for n in workers)
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "group_vars").mkdir(exist_ok=True)
    (folder / "host_vars").mkdir(exist_ok=True)
    write_inventory(folder / "group_vars" / "all.yaml", all_vars)
    for n in lab.nodes:
        write_inventory(folder / "host_vars" / f"{n.name}.yaml", {"ansible_host": n.ip})
    ini = folder / "hosts.ini"
    ini.write_text(
        "# the lab, as an Ansible INI inventory\n"
        "[head]\n" + "".join(f"{n.name}\n" for n in head) + "\n"
        f"[workers]\n{prefix}[{numbers[0]}:{numbers[-1]}]\n\n"
        "[gpu_less:children]\nhead\nworkers\n")
    return ini


def test_an_ini_inventory_sees_the_same_cluster(lab, home, tmp_path):
    ini = ini_inventory(lab, tmp_path / "ini")
    env = {"HOME": str(home), "CLUSTERCTL_SSH_CONFIG": "none"}
    proc = cli("inventory", "-i", ini, "--host", lab.nodes[-1].name, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "host_vars" in proc.stdout and "group_vars" in proc.stdout, proc.stdout
    assert lab.nodes[-1].ip in proc.stdout
    proc = cli("inventory", "-i", ini, "--list", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = cli("exec", "-i", ini, "--json", "--", "hostname", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for h in json.loads(proc.stdout)["hosts"]:
        assert h["stdout"].strip() == h["host"]
