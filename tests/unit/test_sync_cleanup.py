"""The end of a sync on a node: its processes are stopped and gone before the run folder is
removed (a relay stopping on SIGTERM still writes its last status there). The cleanup is a
shell script; here it runs on this machine against stand-in relays."""
import signal
import subprocess
import sys
import time

from clusterctl.sync.nodes import finish_script
from standins import started  # noqa: F401  (the fixture)

# a stand-in relay: names the run folder in its command line like the agent does, keeps
# its status file fresh (write + rename, as the agent's reporter does), and on SIGTERM
# takes a moment, then writes its final status
RELAY = r"""
import os, signal, sys, time
rundir, role, term = sys.argv[1], sys.argv[2], sys.argv[3]
def flush(state):
    path = os.path.join(rundir, role + ".status")
    with open(path + ".tmp", "w") as fh:
        fh.write('{"state": "%s"}' % state)
    os.replace(path + ".tmp", path)
def stop(signum, frame):
    time.sleep(0.3)
    flush("failed")
    os._exit(0)
signal.signal(signal.SIGTERM, stop if term == "slow" else signal.SIG_IGN)
flush("listening")
with open(os.path.join(rundir, role + ".ready"), "w") as fh:
    fh.write("1")
while True:
    time.sleep(0.002)
    flush("receiving")
"""


def start(started, rundir, role="relay", term="slow"):
    proc = subprocess.Popen([sys.executable, "-c", RELAY, str(rundir), role, term])
    started.append(proc)
    deadline = time.monotonic() + 10
    while not (rundir / f"{role}.ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    return proc


def run(script):
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_the_run_folder_goes_after_a_relay_that_writes_while_it_stops(tmp_path, started):
    rundir = tmp_path / "clusterctl-sync-0123456789ab-node1"
    rundir.mkdir()
    staging = tmp_path / "model" / ".clusterctl-sync"
    staging.mkdir(parents=True)
    relay = start(started, rundir)
    assert run(finish_script(str(rundir), [relay.pid], str(staging))).returncode == 0
    assert relay.poll() is not None                 # exited before finish returned
    assert not rundir.exists()
    assert not staging.exists()                     # empty: removed


def test_a_process_known_only_from_its_pid_file_is_stopped_too(tmp_path, started):
    rundir = tmp_path / "clusterctl-sync-0123456789ab-node2"
    rundir.mkdir()
    sender = start(started, rundir, role="send")
    (rundir / "send.pid").write_text(str(sender.pid))
    assert run(finish_script(str(rundir), [], None)).returncode == 0
    assert sender.poll() is not None and not rundir.exists()


def test_a_relay_that_ignores_sigterm_is_killed_before_the_folder_goes(tmp_path, started):
    rundir = tmp_path / "clusterctl-sync-0123456789ab-node3"
    rundir.mkdir()
    stubborn = start(started, rundir, term="ignore")
    assert run(finish_script(str(rundir), [stubborn.pid], None, wait_s=0.3)).returncode == 0
    assert stubborn.poll() == -signal.SIGKILL and not rundir.exists()


def test_a_reused_pid_is_left_alone(tmp_path, started):
    rundir = tmp_path / "clusterctl-sync-0123456789ab-node4"
    rundir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (rundir / "relay.pid").write_text(str(other.pid))
        assert run(finish_script(str(rundir), [other.pid], None)).returncode == 0
        assert not rundir.exists()
        assert other.poll() is None                 # not ours: not signalled
    finally:
        other.kill()
        other.wait()


def test_the_script_quotes_the_paths():
    script = finish_script("/tmp/clusterctl-sync-x-node'1", [12, 34], "/m/a b/.clusterctl-sync")
    assert "rm -rf -- '/tmp/clusterctl-sync-x-node'\"'\"'1'" in script
    assert "rmdir -- '/m/a b/.clusterctl-sync'" in script
    assert 'P="12 34"' in script
