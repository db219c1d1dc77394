"""`clusterctl exec` and `clusterctl task` against a real sshd on 127.0.0.1, through the
CLI, and the session's lock taken over real SSH."""
import json
import subprocess
import sys

import pytest


def write_inventory(sshd, tmp_path, extra_host=""):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    inv = tmp_path / "inventory.yaml"
    inv.write_text(
        "all:\n"
        f"  vars: {{ansible_user: root, ansible_ssh_private_key_file: {sshd.client_key},"
        f" ssh_known_hosts_file: {kh}}}\n"
        "  hosts:\n"
        f"    h1: {{ansible_host: 127.0.0.1, ansible_port: {sshd.port}, role: head}}\n"
        + extra_host)
    return inv


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "clusterctl.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "PYTHONPATH": ":".join(sys.path), "CLUSTERCTL_SSH_CONFIG": "none"})


def test_exec_runs_on_every_host_with_a_recap(sshd, tmp_path):
    inv = write_inventory(sshd, tmp_path, "    down: {ansible_host: 127.0.0.1, ansible_port: 1}\n")
    res = cli("exec", "-i", str(inv), "--json", "--", "echo", "hello from", "$HOSTNAME")
    data = json.loads(res.stdout)
    assert res.returncode == 1                      # `down` cannot be reached
    by_host = {h["host"]: h for h in data["hosts"]}
    assert by_host["h1"]["status"] == "ok" and by_host["h1"]["exit_code"] == 0
    assert by_host["h1"]["stdout"] == "hello from $HOSTNAME\n"   # an argv: quoted
    assert by_host["down"]["status"] == "unreachable"
    assert "127.0.0.1:1" in by_host["down"]["message"]
    assert "Traceback" not in res.stderr
    res = cli("exec", "-i", str(inv), "-l", "h1", "--", "exit 3")
    assert res.returncode == 1 and "h1 | FAILED | rc=3" in res.stdout
    res = cli("exec", "-i", str(inv), "-l", "h1", "--check", "--", "touch /nonexistent/x")
    assert res.returncode == 0 and "would run: touch /nonexistent/x" in res.stdout


TASKS = '''
from invoke import task

@task
def kernel(c):
    return c.run("uname -s", hide=True).stdout.strip()

@task
def marker(c, path, check=False):
    if check:
        return "would write " + path
    c.run(f"echo done > {path}")
    return "wrote " + path

@task
def no_check(c):
    c.run("true")
'''


def test_user_tasks_from_a_tasks_file(sshd, tmp_path):
    inv = write_inventory(sshd, tmp_path)
    (tmp_path / "tasks.py").write_text(TASKS)
    res = cli("task", "-i", str(inv), "--json", "kernel", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["hosts"][0]["value"] == "Linux"
    target = tmp_path / "marker"
    res = cli("task", "-i", str(inv), "--json", "--check", "marker", "--arg",
              f"path={target}", cwd=tmp_path)
    assert res.returncode == 0 and not target.exists()
    assert json.loads(res.stdout)["hosts"][0]["value"] == f"would write {target}"
    res = cli("task", "-i", str(inv), "marker", "--arg", f"path={target}", cwd=tmp_path)
    assert res.returncode == 0 and target.read_text() == "done\n"
    res = cli("task", "-i", str(inv), "--check", "no_check", cwd=tmp_path)
    assert res.returncode == 2 and "check" in res.stderr
    res = cli("task", "-i", str(inv), "nope", cwd=tmp_path)
    assert res.returncode == 2 and "kernel" in res.stderr


def test_lock_refuses_a_second_holder_and_is_released_with_the_session(sshd, tmp_path):
    from clusterctl.inventory import load_inventory
    from clusterctl.session import LockBusy, Session
    inv = load_inventory(write_inventory(sshd, tmp_path))
    with Session(inv) as first:
        first.lock("deploy-tiny", "deploy-model tiny")
        with Session(inv) as second:
            with pytest.raises(LockBusy) as busy:
                second.lock("deploy-tiny", "deploy-model other")
            assert "deploy-model tiny" in str(busy.value)
            second.lock("deploy-other", "deploy-model other")     # another name is free
    with Session(inv) as third:                                    # released at close
        third.lock("deploy-tiny", "deploy-model tiny")
