"""A real sshd on 127.0.0.1, started by the test with its own host key and config."""
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class LocalSSHD:
    port: int
    host_key: Path          # private host key of the server
    client_key: Path
    dir: Path

    def known_hosts_line(self, key: Path | None = None) -> str:
        pub = Path(str(key or self.host_key) + ".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if os.geteuid() != 0 or not Path(SSHD).exists():
        pytest.skip("needs root and openssh-server (sshd)")
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o755)
    host_key, client_key = d / "host_key", d / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    auth = d / "authorized_keys"
    auth.write_text(Path(str(client_key) + ".pub").read_text())
    auth.chmod(0o600)
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                   f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
                   "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                   f"PidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\nStrictModes no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("sshd did not start: " + proc.stderr.read().decode()[-500:])
    yield LocalSSHD(port, host_key, client_key, d)
    proc.terminate()
    proc.wait(timeout=10)
