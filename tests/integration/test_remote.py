"""clusterctl.remote against a real sshd: host keys, commands, files, errors, ssh-agent,
ssh_config (User, Port, IdentityFile, ProxyJump), secrets kept out of argv."""
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import paramiko
import pytest

from clusterctl.errors import CommandFailed, HostKeyError, UnreachableError
from clusterctl.remote import Connection
from clusterctl.session import Session
from clusterctl.secret import Secret


@dataclass
class H:
    name: str
    address: str
    port: int
    user: str = "root"
    key_file: str | None = None
    known_hosts_file: str | None = None
    vars: dict | None = None     # like inventory.Host.vars: what the inventory set


@pytest.fixture(autouse=True)
def no_operator_ssh_setup(monkeypatch, tmp_path):
    """This machine's ~/.ssh/config, agent and keys play no part unless a test says so."""
    monkeypatch.setenv("CLUSTERCTL_SSH_CONFIG", "none")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


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


def test_a_large_stdin_arrives_whole(conn):
    """Hundreds of KB of stdin (a non-root upload goes this way) arrive intact and in
    one piece; invoke alone would feed it one byte per 10 ms (hours for this much)."""
    import hashlib
    data = "".join(f"line {i} " + "x" * (i % 97) + "\n" for i in range(6000))
    assert len(data) > 300_000
    res = conn.run("sha256sum", stdin=data, timeout=120)
    assert res.stdout.split()[0] == hashlib.sha256(data.encode()).hexdigest()


def test_put_is_atomic_with_mode_and_get(conn, tmp_path):
    path = tmp_path / "conf"
    conn.put(b"one\n", str(path), mode=0o640)
    assert path.read_bytes() == b"one\n"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    conn.put("two\n", str(path))
    assert conn.get(str(path)) == b"two\n"
    assert [p.name for p in tmp_path.iterdir() if "clusterctl-" in p.name] == []


def test_session_connect_isolates_unreachable(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    good = host(sshd, kh, "good")
    bad = H("bad", "127.0.0.1", 1, key_file=str(sshd.client_key), known_hosts_file=str(kh))
    with Session(None, connect_timeout=3) as session:
        group = session.connect([good, bad])
        assert list(group.succeeded) == ["good"]
        assert isinstance(group.failed["bad"].exception, UnreachableError)
        assert "127.0.0.1:1" in group.failed["bad"].reason
        assert session.connection(good) is group.succeeded["good"]     # one per host


def test_timeout_cuts_a_stuck_command(conn):
    """The command would run 30 s and succeed: it is cut at the timeout instead, with the
    timeout in the message (how long the cut takes is a figure of bench/bench_remote.py)."""
    from clusterctl.errors import HostError
    with pytest.raises(HostError) as err:
        conn.run(["sleep", "30"], timeout=1.5)
    assert "timed out after 1.5s" in str(err.value)
    assert conn.run(["echo", "again"]).stdout == "again\n"   # reconnects on next use


# -- ssh-agent, ssh_config, ProxyJump -----------------------------------------------------
def _ssh_config(tmp_path, monkeypatch, text: str):
    path = tmp_path / "ssh_config"
    path.write_text(textwrap.dedent(text))
    monkeypatch.setenv("CLUSTERCTL_SSH_CONFIG", str(path))


@pytest.fixture
def agent(tmp_path):
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_key_only_in_ssh_agent(sshd, tmp_path, monkeypatch, agent):
    key = tmp_path / "agent_key"
    shutil.copy(sshd.client_key, key)
    key.chmod(0o600)
    subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True,
                   env=dict(os.environ, SSH_AUTH_SOCK=str(agent)))
    key.unlink()                      # from now on the agent is the only place it is
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    h = H("agent", "127.0.0.1", sshd.port, known_hosts_file=str(kh))
    with pytest.raises(UnreachableError) as err:     # no agent, no key: a clear refusal
        Connection(h).open()
    assert f"authentication failed as root@127.0.0.1:{sshd.port}" in str(err.value)
    assert "SSH_AUTH_SOCK not set" in str(err.value)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent))
    with Connection(h) as c:
        assert c.run(["echo", "from the agent"]).stdout == "from the agent\n"


def test_ssh_config_applies_where_the_inventory_is_silent(sshd, tmp_path, monkeypatch):
    _ssh_config(tmp_path, monkeypatch, f"""\
        Host box
          HostName 127.0.0.1
          Port {sshd.port}
          User nosuchuser
          IdentityFile {sshd.client_key}
        """)
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    # the inventory set no user and no port (Host.user/port hold the defaults root/22):
    # HostName, Port and User come from ssh_config
    silent = H("cfg", "box", 22, known_hosts_file=str(kh), vars={})
    with pytest.raises(UnreachableError) as err:
        Connection(silent).open()
    assert f"authentication failed as nosuchuser@127.0.0.1:{sshd.port}" in str(err.value)
    # the inventory sets the user: it wins; the key is ssh_config's IdentityFile
    given = H("cfg", "box", 22, known_hosts_file=str(kh), vars={"ansible_user": "root"})
    with Connection(given) as c:
        assert c.target.key_files == (str(sshd.client_key),)
        assert c.run(["whoami"]).stdout == "root\n"


def test_inventory_port_wins_over_ssh_config(sshd, tmp_path, monkeypatch):
    _ssh_config(tmp_path, monkeypatch, """\
        Host 127.0.0.1
          Port 1
          User nosuchuser
        """)
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    h = H("inv", "127.0.0.1", sshd.port, key_file=str(sshd.client_key), known_hosts_file=str(kh),
          vars={"ansible_port": sshd.port, "user": "root"})
    with Connection(h) as c:
        assert str(c.target) == f"root@127.0.0.1:{sshd.port}"
        assert c.run(["echo", "ok"]).stdout == "ok\n"


def _jump_config(sshd, tmp_path, monkeypatch, jump_port):
    _ssh_config(tmp_path, monkeypatch, f"""\
        Host jumpbox
          HostName 127.0.0.1
          Port {jump_port}
          User root
          IdentityFile {sshd.client_key}
        Host inner
          HostName 127.0.0.1
          Port {sshd.port}
          IdentityFile {sshd.client_key}
          ProxyJump jumpbox
        """)


def test_proxyjump_through_the_local_sshd(sshd, tmp_path, monkeypatch, no_operator_ssh_setup):
    _jump_config(sshd, tmp_path, monkeypatch, sshd.port)
    kh = tmp_path / "known_hosts"
    h = H("inner", "inner", 22, known_hosts_file=str(kh), vars={})
    # the jump host's key is checked too: unknown -> refused, naming the jump host
    with pytest.raises(HostKeyError) as err:
        Connection(h).open()
    assert f"jump host root@127.0.0.1:{sshd.port}" in str(err.value)
    # accepted once: the jump host's key goes to ~/.ssh/known_hosts, made 0700/0600
    with Connection(h, accept_new_host_keys=True) as c:
        assert c.run(["echo", "through"]).stdout == "through\n"
    ssh_dir = no_operator_ssh_setup / ".ssh"
    assert oct(ssh_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((ssh_dir / "known_hosts").stat().st_mode & 0o777) == "0o600"
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in (ssh_dir / "known_hosts").read_text()
    assert oct(kh.stat().st_mode & 0o777) == "0o600"
    # now both keys are known; the connection runs over a channel of the jump host
    with Connection(h) as c:
        assert str(c.target) == f"root@127.0.0.1:{sshd.port} via root@127.0.0.1:{sshd.port}"
        assert isinstance(c._conn.client.get_transport().sock, paramiko.Channel)
        assert c.run(["echo", "again"]).stdout == "again\n"


def test_unreachable_jump_host_is_named(sshd, tmp_path, monkeypatch):
    _jump_config(sshd, tmp_path, monkeypatch, 1)
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    with pytest.raises(UnreachableError) as err:
        Connection(H("inner", "inner", 22, known_hosts_file=str(kh), vars={})).open()
    assert str(err.value) == (f"inner: cannot connect to jump host root@127.0.0.1:1 (on the way "
                              f"to root@127.0.0.1:{sshd.port}): Connection refused")


# -- a port that is not SSH: one line, no traceback -----------------------------------------
@pytest.fixture
def not_ssh_port():
    """A TCP port that answers like a web server."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                try:
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_port_that_does_not_speak_ssh_gives_one_clean_error(not_ssh_port, tmp_path):
    script = textwrap.dedent(f"""\
        from types import SimpleNamespace
        from clusterctl.session import Session
        hosts = [SimpleNamespace(name=f"web{{i}}", address="127.0.0.1", port={not_ssh_port},
                                 user="root", key_file=None,
                                 known_hosts_file={str(tmp_path / "kh")!r}) for i in range(3)]
        with Session(None, connect_timeout=5) as session:
            for name, failure in sorted(session.connect(hosts).failed.items()):
                print(failure.exception)
        """)
    env = dict(os.environ, CLUSTERCTL_SSH_CONFIG="none")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == ""                      # paramiko printed nothing
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"web{i}: cannot connect to root@127.0.0.1:{not_ssh_port}: "
                               f"port {not_ssh_port} accepted the connection but ")
        assert "SSH port" in line


# -- secrets -------------------------------------------------------------------------------
def test_secret_env_value_is_in_no_process_argv(conn):
    token = "hf_argvleakcheck_7f3a9c"
    # a control process that does have the token in its argv shows the check finds one
    check = textwrap.dedent("""\
        bash -c 'sleep 30; :' "$TOKEN" & ctl=$!
        until grep -qaF -f <(printf '%s\\n' "$TOKEN") /proc/$ctl/cmdline; do :; done
        found=$(grep -laF -f <(printf '%s\\n' "$TOKEN") /proc/[0-9]*/cmdline 2>/dev/null)
        kill $ctl
        echo "control=/proc/$ctl/cmdline"
        echo found=$found
        """)
    res = conn.run(check, env={"TOKEN": Secret(token), "PLAIN": "visible"})
    lines = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert lines["found"] == lines["control"]      # only the control, no clusterctl process
    assert "TOKEN=***" in res.command and token not in res.command
    # the same value as a plain env value is in the command text, so the remote shell's
    # argv holds it: the check sees that too
    res = conn.run(check, env={"TOKEN": token})
    lines = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert lines["control"] in lines["found"].split()
    assert len(lines["found"].split()) > 1


def test_secret_env_value_arrives_intact(conn):
    value = " a b\n'c\"$x\\ \t"
    res = conn.run("printf %s \"$TOKEN\" | sha256sum; cat", env={"TOKEN": Secret(value)},
                   stdin="caller's own stdin\n")
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert res.stdout == f"{digest}  -\ncaller's own stdin\n"


def test_openssh_config_block_logs_in_through_the_same_jump(sshd, tmp_path, monkeypatch):
    """What a tool running OpenSSH itself (verify's testinfra) gets from the target."""
    _jump_config(sshd, tmp_path, monkeypatch, sshd.port)
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    with Connection(H("inner", "inner", 22, known_hosts_file=str(kh), vars={})) as c:
        block = c.target.openssh_config("node")
    cfg = tmp_path / "openssh_config"
    cfg.write_text(block + "\nHost *\n  StrictHostKeyChecking yes\n  BatchMode yes\n")
    proc = subprocess.run(["ssh", "-F", str(cfg), "node", "echo", "via", "openssh"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "via openssh\n"
    resolved = subprocess.run(["ssh", "-G", "-F", str(cfg), "node"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
    assert "proxyjump node-jump1" in resolved


def test_proxycommand_from_ssh_config(sshd, tmp_path, monkeypatch):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    _ssh_config(tmp_path, monkeypatch, f"""\
        Host piped
          HostName 127.0.0.1
          Port {sshd.port}
          User root
          IdentityFile {sshd.client_key}
          ProxyCommand ssh -F none -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -i {sshd.client_key} -p %p -W %h:%p root@127.0.0.1
        """)  # noqa: E501
    with Connection(H("piped", "piped", 22, known_hosts_file=str(kh), vars={})) as c:
        assert "via ProxyCommand" in str(c.target)
        assert isinstance(c._conn.client.get_transport().sock, paramiko.ProxyCommand)
        assert c.run(["echo", "piped"]).stdout == "piped\n"
        proxy = c._proxy.process
    assert proxy.poll() is not None          # closing the connection ended the command


def test_failing_proxycommand_is_one_line_with_its_stderr(tmp_path, monkeypatch):
    _ssh_config(tmp_path, monkeypatch, """\
        Host piped
          ProxyCommand sh -c "echo no route to the moon >&2; exit 3"
        """)
    script = textwrap.dedent("""\
        from types import SimpleNamespace
        from clusterctl.remote import Connection
        h = SimpleNamespace(name="piped", address="piped", port=22, user="root",
                            key_file=None, known_hosts_file=None, vars={})
        try:
            Connection(h, connect_timeout=5).open()
        except Exception as exc:
            print(type(exc).__name__, exc)
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ), timeout=60)
    assert proc.stderr == ""
    assert proc.stdout.startswith("UnreachableError piped: cannot connect to root@piped:22 via "
                                  "ProxyCommand")
    assert proc.stdout.rstrip().endswith("ProxyCommand said: no route to the moon")
    assert len(proc.stdout.splitlines()) == 1
