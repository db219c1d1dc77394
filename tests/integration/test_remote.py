"""clusterctl.remote against a real sshd: host keys, commands, files, errors."""
import subprocess
from dataclasses import dataclass

import pytest

from clusterctl.errors import CommandFailed, HostKeyError, UnreachableError
from clusterctl.remote import Connection, connect_all
from clusterctl.secret import Secret


@dataclass
class H:
    name: str
    address: str
    port: int
    user: str = "root"
    key_file: str | None = None
    known_hosts_file: str | None = None


def host(sshd, known_hosts, name="local"):
    return H(name, "127.0.0.1", sshd.port, key_file=str(sshd.client_key),
             known_hosts_file=str(known_hosts))


def test_unknown_host_key_is_refused(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as err:
        Connection(host(sshd, kh)).open()
    assert "unknown host key" in str(err.value) and "--accept-new-host-keys" in str(err.value)
    assert not kh.exists()


def test_accept_new_records_then_verifies(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    with Connection(host(sshd, kh), accept_new_host_keys=True) as c:
        assert c.run(["echo", "hi"]).stdout == "hi\n"
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in kh.read_text()
    with Connection(host(sshd, kh)) as c:  # now known: no flag needed
        assert c.run("echo $((6*7))").stdout.strip() == "42"


def test_changed_host_key_is_always_an_error(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line(other))
    for accept in (False, True):
        with pytest.raises(HostKeyError) as err:
            Connection(host(sshd, kh), accept_new_host_keys=accept).open()
        assert "HOST KEY CHANGED" in str(err.value)
    assert kh.read_text() == sshd.known_hosts_line(other)  # never rewritten


@pytest.fixture
def conn(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    with Connection(host(sshd, kh)) as c:
        yield c


def test_argv_is_quoted(conn, tmp_path):
    target = tmp_path / "a file; rm -rf nothing"
    conn.run(["touch", str(target)])
    assert target.exists()
    assert conn.run(["printf", "%s", "$(whoami) `id`"]).stdout == "$(whoami) `id`"


def test_failed_command_reports_code_and_stderr(conn):
    with pytest.raises(CommandFailed) as err:
        conn.run(["sh", "-c", "echo first >&2; echo second >&2; exit 4"])
    msg = str(err.value)
    assert msg.startswith("local: command failed (exit 4): sh -c")
    assert "first" in msg and "second" in msg
    res = conn.run(["false"], check=False)
    assert res.exit_code == 1 and not res.ok


def test_stdin_and_env_with_secret_masked(conn):
    res = conn.run("cat; echo \"$TOKEN\"", stdin="from stdin\n",
                   env={"TOKEN": Secret("hf_supersecret")})
    assert res.stdout == "from stdin\n***\n"
    assert "hf_supersecret" not in res.command
    with pytest.raises(CommandFailed) as err:
        conn.run("echo \"$TOKEN\" >&2; exit 1", env={"TOKEN": Secret("hf_supersecret")})
    assert "hf_supersecret" not in str(err.value) and "***" in str(err.value)


def test_put_is_atomic_with_mode_and_get(conn, tmp_path):
    path = tmp_path / "conf"
    conn.put(b"one\n", str(path), mode=0o640)
    assert path.read_bytes() == b"one\n"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    conn.put("two\n", str(path))
    assert conn.get(str(path)) == b"two\n"
    assert [p.name for p in tmp_path.iterdir() if "clusterctl-" in p.name] == []


def test_connect_all_isolates_unreachable(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    good = host(sshd, kh, "good")
    bad = H("bad", "127.0.0.1", 1, key_file=str(sshd.client_key), known_hosts_file=str(kh))
    conns, errors = connect_all([good, bad], connect_timeout=3)
    try:
        assert list(conns) == ["good"]
        assert isinstance(errors["bad"], UnreachableError)
        assert "127.0.0.1:1" in str(errors["bad"])
    finally:
        for c in conns.values():
            c.close()


def test_timeout_cuts_a_stuck_command(conn):
    import time

    from clusterctl.errors import HostError
    start = time.monotonic()
    with pytest.raises(HostError) as err:
        conn.run(["sleep", "30"], timeout=1.5)
    assert time.monotonic() - start < 10
    assert "timed out after 1.5s" in str(err.value)
    assert conn.run(["echo", "again"]).stdout == "again\n"   # reconnects on next use
