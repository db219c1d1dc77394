"""SIGTERM and SIGINT end a command promptly with a message and 143/130."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent("""
    import sys, time
    import click
    from clusterctl.cli import main
    from clusterctl.cli.common import handle_errors

    @main.command(name="sleepy")
    @handle_errors
    def sleepy():
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            print("cleaned up", flush=True)

    main(["sleepy"])
""")


@pytest.mark.parametrize("sig,code,name", [(signal.SIGTERM, 143, "SIGTERM"),
                                           (signal.SIGINT, 130, "SIGINT")])
def test_signal_ends_the_command_with_a_message(sig, code, name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # started as from a terminal: a test run launched in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler in the child
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (out, err)
    assert f"interrupted ({name})" in err
    assert "cleaned up" in out             # finally blocks (remote clean-up) ran
    assert "Traceback" not in err
