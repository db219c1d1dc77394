"""A stand-in for remote.Connection that runs commands with the local bash and writes
files locally, so the engine's whole plan/execute path runs without any host. Shared by
the unit tests that install it as the session's Connection."""
import subprocess
from pathlib import Path

from clusterctl.errors import CommandFailed
from clusterctl.remote import RunResult


class LocalConnection:
    calls: list = []            # ("facts" | "run" | "put", host, argv or path), in order

    is_open = True

    def __init__(self, host):
        self.host, self.name = host, host.name

    def open(self):
        return self

    def run(self, cmd, *, check=True, env=None, stdin=None, timeout=None):
        argv = cmd if isinstance(cmd, list) else ["bash", "-c", cmd]
        is_facts = isinstance(cmd, list) and cmd[:2] == ["bash", "-c"] and \
            "@@clusterctl-fact" in cmd[2]
        LocalConnection.calls.append(("facts" if is_facts else "run", self.name, argv))
        proc = subprocess.run(argv, capture_output=True, text=True, input=stdin)
        res = RunResult(" ".join(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode:
            raise CommandFailed(self.name, res.command, proc.returncode, proc.stderr)
        return res

    def put(self, data, path, *, mode=None, owner=None, group=None):
        LocalConnection.calls.append(("put", self.name, path))
        Path(path).write_bytes(data if isinstance(data, bytes) else data.encode())
        if mode is not None:
            Path(path).chmod(mode)

    def close(self):
        pass


class CheckOnlyConnection(LocalConnection):
    """For --check runs: writing anything is a test failure."""

    def put(self, *a, **k):
        raise AssertionError("check mode must not write")
