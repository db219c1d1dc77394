"""Controller-side safety checks: PIDs are ours before they are signalled, clear refusals."""
import json
import os
import signal
import subprocess
import sys

import pytest

from clusterctl.errors import ClusterctlError
from clusterctl.lab import host, procs


def test_start_time_and_cmdline_of_this_process():
    assert procs.start_time(os.getpid()) is not None
    assert any("python" in a for a in procs.cmdline(os.getpid()))
    assert procs.start_time(2**22 + 12345) is None


def test_is_ours_checks_start_time_and_markers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                              "clusterctl-test-marker"])
    try:
        started = procs.start_time(child.pid)
        assert procs.is_ours(child.pid, started, "clusterctl-test-marker")
        assert not procs.is_ours(child.pid, started + 1, "clusterctl-test-marker")
        assert not procs.is_ours(child.pid, started, "some-other-program")
        assert not procs.is_ours(None, started)
        assert procs.stop(child.pid, started, "clusterctl-test-marker", timeout=5)
        assert not procs.alive(child.pid)
    finally:
        child.kill()
        child.wait()


def _spawn_marked(marker: str) -> subprocess.Popen:
    # a shell that stays (it forks sleep), in its own group so the sleep goes with it
    return subprocess.Popen(["sh", "-c", "sleep 30; :", marker], start_new_session=True)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def test_is_ours_recognises_every_just_started_process():
    """Right after Popen returns, /proc/PID/cmdline is often still empty (the kernel is in
    the middle of exec); each of many fresh processes must still be recognised."""
    missed = []
    for k in range(150):
        marker = f"clusterctl-test-spawn-{k}"
        child = _spawn_marked(marker)
        try:
            if not procs.is_ours(child.pid, procs.start_time(child.pid), marker):
                missed.append(k)
        finally:
            _kill_group(child)
    assert missed == []


def test_is_ours_waits_for_an_empty_cmdline_then_reads_it(monkeypatch):
    child = _spawn_marked("clusterctl-test-settle")
    try:
        started = procs.start_time(child.pid)
        real = procs.cmdline
        reads = []

        def in_exec(pid):            # the first reads see a process in the middle of exec
            reads.append(pid)
            return [] if len(reads) <= 3 else real(pid)
        monkeypatch.setattr(procs, "cmdline", in_exec)
        assert procs.is_ours(child.pid, started, "clusterctl-test-settle")
        assert len(reads) == 4
        # a command line that stays empty (a kernel thread, say) is not ours: no wait forever
        monkeypatch.setattr(procs, "cmdline", lambda pid: [])
        assert not procs.is_ours(child.pid, started, "clusterctl-test-settle", settle=0.05)
        # without markers there is nothing to read: start time and liveness decide
        assert procs.is_ours(child.pid, started)
    finally:
        _kill_group(child)


def test_stop_leaves_a_reused_pid_alone():
    # our own PID with another start time: the recorded process is gone, ours untouched
    assert procs.stop(os.getpid(), 1, timeout=0.1) is True
    assert procs.alive(os.getpid())


def test_not_root_is_refused(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterctlError, match="needs root.*sudo"):
        host.require_root()


def test_missing_tools_name_the_apt_packages(monkeypatch):
    monkeypatch.setattr(host, "missing_tools", lambda tools: ["systemd-nspawn", "debootstrap"])
    with pytest.raises(ClusterctlError,
                       match="apt-get install debootstrap systemd-container"):
        host.require_tools(["systemd-nspawn", "debootstrap"])


def test_up_refuses_without_root_before_touching_anything(monkeypatch, tmp_path):
    from clusterctl import lab
    monkeypatch.setenv("CLUSTERCTL_LAB_ROOT", str(tmp_path / "labs"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterctlError, match="needs root"):
        lab.up("unit", nodes=1)
    assert not (tmp_path / "labs").exists()


def test_cli_errors_are_one_line_with_exit_code(monkeypatch, tmp_path):
    from click.testing import CliRunner
    from clusterctl.cli.lab import lab_group
    monkeypatch.setenv("CLUSTERCTL_LAB_ROOT", str(tmp_path / "labs"))
    result = CliRunner().invoke(lab_group, ["status", "--name", "nope"])
    assert result.exit_code == 1
    assert "error: no lab named 'nope'" in result.output
    result = CliRunner().invoke(lab_group, ["up", "--name", "Bad_Name"])
    assert result.exit_code == 2 and "bad lab name" in result.output
    result = CliRunner().invoke(lab_group, ["down", "--name", "nope"])
    assert result.exit_code == 0 and "nothing to remove" in result.output


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_cgroup_hierarchies_nspawn_uses():
    from clusterctl.lab import cgroups
    assert cgroups.parse_mountinfo(MOUNTINFO) == ["/sys/fs/cgroup/systemd",
                                                  "/sys/fs/cgroup/unified"]
    pure_v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert cgroups.parse_mountinfo(pure_v2) == ["/sys/fs/cgroup"]


def test_each_node_gets_its_own_cgroup(monkeypatch):
    from pathlib import Path
    from clusterctl.lab import cgroups
    monkeypatch.setattr(cgroups, "hierarchies", lambda: [Path("/sys/fs/cgroup/unified")])
    assert cgroups.node_cgroups("lab", "node1") == [
        "/sys/fs/cgroup/unified/clusterctl-lab/lab/node1"]
    assert cgroups.node_cgroups("lab", "node1") != cgroups.node_cgroups("lab", "node2")
    argv = cgroups.launcher(["/x/cgroup.procs"], ["systemd-nspawn", "--boot"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-2:] == ["systemd-nspawn", "--boot"]
    assert "exec \"$@\"" in argv[2]


def test_inotify_budget():
    assert host.inotify_shortfall(3, used=40, limit=128) is None
    msg = host.inotify_shortfall(4, used=100, limit=128)
    assert "not enough inotify instances for 4 nodes" in msg
    assert "sysctl -w fs.inotify.max_user_instances=1024" in msg


def test_arp_table_thresholds_fit_the_lab_nodes():
    assert host.neigh_thresholds_for(8, (128, 512, 1024)) is None
    assert host.neigh_thresholds_for(32, (128, 512, 1024)) == (256, 1024, 2048)
    t1, t2, t3 = host.neigh_thresholds_for(100, (128, 512, 1024))
    assert t3 >= 100 * 100 and t1 < t2 < t3
    assert host.neigh_thresholds_for(32, (4096, 8192, 16384)) is None   # never lowered
    assert host.neigh_thresholds_for(40, (2000, 500, 1024))[0] == 2000


def test_arp_table_raised_for_a_large_lab_and_restored_after(tmp_path, monkeypatch):
    proc = {k: tmp_path / k for k in host.NEIGH_KEYS}
    for k, v in zip(host.NEIGH_KEYS, (128, 512, 1024)):
        proc[k].write_text(f"{v}\n")
    monkeypatch.setattr(host, "_neigh_path", lambda key: proc[key])
    monkeypatch.setattr(host, "write_sysctl",
                        lambda path, value: proc[path.rsplit("/", 1)[1]].write_text(value))
    saved, said = tmp_path / "labs" / host.NEIGH_SAVED, []
    host.fit_neigh_table(32, saved, said.append)
    assert host.read_neigh_thresholds() == (256, 1024, 2048)
    assert "1024" in said[0] and "2048" in said[0]
    host.fit_neigh_table(40, saved, said.append)           # a second lab: the first values
    assert json.loads(saved.read_text())["gc_thresh3"] == 1024
    host.restore_neigh_table(saved, said.append)
    assert host.read_neigh_thresholds() == (128, 512, 1024) and not saved.exists()
    host.restore_neigh_table(saved, said.append)           # nothing saved: nothing to do
    assert host.read_neigh_thresholds() == (128, 512, 1024)
