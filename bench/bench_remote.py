#!/usr/bin/env python3
"""Benchmark: clusterctl.remote against a local sshd: connect, a short command, and how
long a stalled command takes to be cut at its timeout (next to the timeout itself).
Prints figures; asserts nothing (tests/integration/test_remote.py checks that the stalled
command is cut with the timeout message; the old test also asserted it took < 10 s).

    sudo python bench/bench_remote.py [--runs 5] [--timeout 1.5]

Needs root and openssh-server: it starts its own sshd on 127.0.0.1 with its own host key,
client key and known_hosts in a temporary folder, and stops it at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clusterctl.errors import HostError  # noqa: E402
from clusterctl.remote import Connection  # noqa: E402

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Host:
    name: str
    address: str
    port: int
    user: str = "root"
    key_file: str | None = None
    known_hosts_file: str | None = None
    vars: dict | None = None


def start_sshd(d: Path) -> tuple[subprocess.Popen, Host]:
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    auth = d / "authorized_keys"
    auth.write_text((d / "client_key.pub").read_text())
    auth.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\nStrictModes no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("sshd did not start")
            time.sleep(0.1)
    pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    return proc, Host("bench", "127.0.0.1", port, key_file=str(d / "client_key"),
                      known_hosts_file=str(d / "known_hosts"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1.5,
                    help="timeout of the stalled command (the test uses 1.5)")
    args = ap.parse_args()
    if os.geteuid() != 0 or not Path(SSHD).exists():
        raise SystemExit("needs root and openssh-server (sshd)")
    os.environ["CLUSTERCTL_SSH_CONFIG"] = "none"      # this machine's ssh setup plays no part
    os.environ.pop("SSH_AUTH_SOCK", None)
    connect, command, cut, reconnect = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        proc, host = start_sshd(d)
        try:
            for _ in range(args.runs):
                conn = Connection(host)
                t = time.monotonic()
                conn.open()
                connect.append(time.monotonic() - t)
                try:
                    t = time.monotonic()
                    conn.run(["true"])
                    command.append(time.monotonic() - t)
                    t = time.monotonic()
                    try:
                        conn.run(["sleep", "60"], timeout=args.timeout)
                        raise SystemExit("the stalled command was not cut")
                    except HostError:
                        cut.append(time.monotonic() - t)
                    t = time.monotonic()
                    conn.run(["true"])                   # reconnects on next use
                    reconnect.append(time.monotonic() - t)
                finally:
                    conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def row(label: str, values: list[float], baseline: str = "") -> None:
        print(f"{label:<34} {statistics.median(values):>8.3f} {max(values):>8.3f}  {baseline}")
    print(f"\nclusterctl.remote against a local sshd, {args.runs} runs\n")
    print(f"{'what':<34} {'median s':>8} {'max s':>8}  baseline")
    row("connect (key auth, known host)", connect)
    row("run `true`", command)
    row(f"stalled command cut (timeout {args.timeout:g}s)", cut,
        f"timeout {args.timeout:g}s; overhead median "
        f"{statistics.median(cut) - args.timeout:+.3f}s")
    row("next command (reconnects)", reconnect)
    return 0


if __name__ == "__main__":
    sys.exit(main())
