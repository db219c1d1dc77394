"""Connections to hosts: the only module that touches SSH.

One persistent Fabric connection per host, opened the way the operator's own `ssh`
would: the inventory's values where it sets them, else ~/.ssh/config (HostName, User,
Port, IdentityFile, ProxyJump, ...: see sshconfig.py), keys from ssh-agent and the
key files. Host keys are always verified, also those of jump hosts: against the host's
`ssh_known_hosts_file` (the lab writes one), ssh_config's UserKnownHostsFile or
~/.ssh/known_hosts. An unknown key is refused unless `accept_new_host_keys` (then it
is recorded); a changed key is always a HostKeyError. Every connection error is one
line naming user@host:port (and the jump hosts); paramiko's own log never prints.

Secret environment values reach the remote command over stdin, never its argv.
"""
from __future__ import annotations

import io
import logging
import os
import re
import select
import shlex
import socket
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import fabric
import paramiko

from .errors import ClusterctlError, CommandFailed, HostError, HostKeyError, UnreachableError
from .secret import Secret, mask_text
from .sshconfig import SSHTarget, inventory_ssh, target_for

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_known_hosts_lock = threading.Lock()

# paramiko logs every failed handshake with a traceback from its transport thread;
# our errors say what happened in one line, so its log stays silent (a caller that
# wants it, e.g. for -vv debugging, may lower the level again).
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.setLevel(logging.CRITICAL)
_paramiko_log.propagate = False


@dataclass
class RunResult:
    command: str          # as shown to users (secrets masked)
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def known_hosts_path(host) -> Path:
    path = getattr(host, "known_hosts_file", None)
    return Path(path).expanduser() if path else DEFAULT_KNOWN_HOSTS.expanduser()


def _host_key_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _append_private(path: Path, line: str) -> None:
    """Append to a known_hosts file; a folder or file made here is 0700 / 0600."""
    folder = path.parent
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)     # whatever the umask says
        except FileExistsError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time and record its key (--accept-new-host-keys)."""

    def __init__(self, path: Path, port: int):
        self.path, self.port = path, port

    def missing_host_key(self, client, hostname, key):
        # paramiko passes "[host]:port" already for a port other than 22
        name = hostname if hostname.startswith("[") else _host_key_name(hostname, self.port)
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            _append_private(self.path, line)
        client.get_host_keys().add(name, key.get_name(), key)


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, host_name: str, path: Path, what: str = ""):
        self.host_name, self.path, self.what = host_name, path, what

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            self.host_name,
            f"unknown host key ({key.get_name()}) for {self.what or hostname}, not in "
            f"{self.path}. Check the fingerprint and add it, or run once with "
            "--accept-new-host-keys.")


# -- command text ------------------------------------------------------------------------
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_MISSING_EXIT = 97      # the remote shell did not receive a secret on stdin


@dataclass(frozen=True)
class RemoteCommand:
    """What run() sends: the command text (no secret in it), what to show in messages,
    the stdin to write (secret values first, then the caller's own) and the secrets
    to mask in any output."""

    text: str
    shown: str
    stdin: str | None
    secrets: tuple[Secret, ...] = ()


def _quote(cmd: list[str] | str) -> str:
    if isinstance(cmd, str):
        return cmd
    if any(isinstance(a, Secret) for a in cmd):
        # argv is readable by every user of the host (ps, /proc): pass it in env=
        raise TypeError("a Secret cannot be an argv element; pass it through env=")
    return shlex.join(str(a) for a in cmd)


def _display(cmd: list[str] | str) -> str:
    if isinstance(cmd, str):
        return cmd
    return shlex.join(str(a) for a in cmd)  # Secret prints as ***


def build_command(cmd: list[str] | str, *, env: Mapping[str, str | Secret] | None = None,
                  stdin: str | bytes | None = None, as_root: bool = True) -> RemoteCommand:
    """The remote command for run() (pure).

    Plain env values are exported in the command text. A Secret value never is: the
    text reads it from stdin (`IFS= read -r -d ''`, NUL-terminated, so any value but
    NUL works) before the command runs, and the caller's own stdin follows it. The
    text then runs under bash (`bash -c` as root, `sudo -n bash -c` otherwise), so no
    process on the host has a secret in its argv.
    """
    text, shown = _quote(cmd), _display(cmd)
    plain: list[tuple[str, str]] = []
    hidden: list[tuple[str, Secret]] = []
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(str(key)):
            raise ValueError(f"bad environment variable name {key!r}")
        if isinstance(value, Secret):
            if "\0" in value.reveal():
                raise ValueError(f"secret {key} contains a NUL byte")
            hidden.append((key, value))
        else:
            plain.append((key, str(value)))
    prefix = ""
    if plain:
        prefix += "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in plain) + "; "
    for key, _ in hidden:
        prefix += (f"IFS= read -r -d '' {key} || {{ echo 'clusterctl: secret {key} did not "
                   f"arrive on stdin' >&2; exit {SECRET_MISSING_EXIT}; }}; export {key}; ")
    text = prefix + text
    if env:
        shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shown  # Secret: ***
    if isinstance(stdin, bytes):
        stdin = stdin.decode()
    if hidden:
        stdin = "".join(v.reveal() + "\0" for _, v in hidden) + (stdin or "")
    if not as_root:
        text = "sudo -n bash -c " + shlex.quote(text)
    elif hidden:
        text = "bash -c " + shlex.quote(text)
    return RemoteCommand(text, shown, stdin, tuple(v for _, v in hidden))


# -- opening -----------------------------------------------------------------------------
class _ProxyProcess(paramiko.ProxyCommand):
    """ssh_config's ProxyCommand as the socket of a connection.

    paramiko's own class spins when the command exits (an empty read is retried, not
    taken as the end) and raises from its transport thread when it is closed twice; this
    one reads EOF as EOF, closes once, reaps the process, and keeps the command's stderr
    (bounded) for the error message."""

    STDERR_TAIL = 2000

    def __init__(self, command_line: str):   # noqa: D107 - paramiko's init is replaced
        self.cmd = shlex.split(command_line)
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr,
                                        bufsize=0, start_new_session=True)
        self.timeout: float | None = None
        self._close_lock = threading.Lock()
        self._done = False

    def send(self, content):
        try:
            self.process.stdin.write(content)
        except (OSError, ValueError) as exc:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd),
                                               getattr(exc, "strerror", None) or str(exc))
        return len(content)

    def recv(self, size):
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
            if not ready:
                raise socket.timeout()
            return os.read(self.process.stdout.fileno(), size)   # b"": the command ended
        except socket.timeout:
            raise
        except (OSError, ValueError) as exc:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd),
                                               getattr(exc, "strerror", None) or str(exc))

    def stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - self.STDERR_TAIL))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def terminate(self) -> None:
        try:
            self.process.terminate()
        except OSError:
            pass

    def close(self):
        with self._close_lock:
            if self._done:
                return
            self._done = True
        self.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass

    def discard(self) -> None:
        """Close, and drop the kept stderr (close() keeps it for the error message)."""
        self.close()
        try:
            self._stderr.close()
        except OSError:
            pass

    @property
    def closed(self):
        return self._done or self.process.poll() is not None


def _auth_kwargs(target: SSHTarget) -> dict:
    """paramiko connect() arguments for logging in: agent keys (unless IdentitiesOnly),
    the key files that exist, else the default ~/.ssh/id_* files."""
    keys = [k for k in target.key_files if Path(k).is_file()]
    kwargs: dict = {"allow_agent": not target.identities_only,
                    "look_for_keys": not target.key_files and not target.identities_only}
    if keys:
        kwargs["key_filename"] = keys
    return kwargs


def _connect_error(name: str, exc: BaseException, hop: SSHTarget, target: SSHTarget,
                   kh: Path, timeout: float) -> ClusterctlError:
    """One clear line for a failed login to `hop` (the target itself or a jump host)."""
    if hop is target:
        where = str(target)
    else:
        where = f"jump host {hop.login} (on the way to {target.login})"
    if isinstance(exc, ClusterctlError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            name,
            f"HOST KEY CHANGED for {where} (expected "
            f"{exc.expected_key.get_name()} {exc.expected_key.get_fingerprint().hex()}, got "
            f"{exc.key.get_fingerprint().hex()}). Someone may be intercepting the connection, "
            f"or the host was reinstalled: verify, then remove the old key from {kh}.")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return UnreachableError(name, f"authentication failed as {where}: a private key is "
                                "encrypted; load it into ssh-agent (ssh-add) first")
    if isinstance(exc, paramiko.AuthenticationException) or (
            type(exc) is paramiko.SSHException and "authentication methods" in str(exc)):
        tried = ", ".join(k for k in hop.key_files if Path(k).is_file()) or (
            "none" if hop.identities_only else "~/.ssh/id_*")
        agent = "no" if hop.identities_only else (
            "yes" if os.environ.get("SSH_AUTH_SOCK") else "no (SSH_AUTH_SOCK not set)")
        return UnreachableError(name, f"authentication failed as {where}: {exc} (key files: "
                                f"{tried}; ssh-agent: {agent})")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return UnreachableError(name, f"timed out connecting to {where} after {timeout:g}s")
    if isinstance(exc, paramiko.ProxyCommandFailure):
        return UnreachableError(name, f"cannot connect to {where}: the ProxyCommand ended "
                                f"({exc.error})")
    if isinstance(exc, paramiko.ChannelException):
        return UnreachableError(name, f"cannot connect to {where}: the jump host could not "
                                f"open a connection onward ({exc.text or exc})")
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        how = "sent no SSH greeting in time" if isinstance(
            exc.__context__, (socket.timeout, TimeoutError)) else \
            "closed it without an SSH greeting"
        return UnreachableError(name, f"cannot connect to {where}: port {hop.port} accepted the "
                                f"connection but {how} ({exc}); is "
                                f"{hop.port} the SSH port, and does sshd accept connections?")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        exc = next(iter(exc.errors.values()))    # e.g. Connection refused
    if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return UnreachableError(name, f"cannot connect to {where}: {reason}")
    return UnreachableError(name, f"cannot connect to {where}: {exc or type(exc).__name__}")


class Connection:
    """A persistent SSH connection to one inventory host."""

    def __init__(self, host, *, accept_new_host_keys: bool = False,
                 connect_timeout: float = 10.0):
        self.host = host
        self.name = host.name
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self._conn: fabric.Connection | None = None
        self._jumps: list[paramiko.SSHClient] = []
        self._proxy = None
        self._target: SSHTarget | None = None
        self._sftp = None
        self._lock = threading.Lock()
        self.secrets: list[Secret] = []

    @property
    def target(self) -> SSHTarget:
        """Where this connection logs in: the inventory's values, then ssh_config."""
        if self._target is None:
            self._target = target_for(self.host)
        return self._target

    # -- lifecycle ---------------------------------------------------------
    def _known_hosts(self, hop: SSHTarget) -> tuple[Path, list[Path]]:
        """(file new keys go to, files keys are looked up in) for one hop."""
        if hop is self.target:
            own = known_hosts_path(hop)
            return own, [own]
        own = Path(hop.known_hosts_file).expanduser() if hop.known_hosts_file \
            else DEFAULT_KNOWN_HOSTS.expanduser()
        return own, [own] + [p for p in [known_hosts_path(self.target)] if p != own]

    def _prepare(self, client: paramiko.SSHClient, hop: SSHTarget) -> Path:
        """Host key checking for one hop; Fabric and paramiko trust unknown hosts by
        default, we never do."""
        own, lookup = self._known_hosts(hop)
        client._system_host_keys = paramiko.HostKeys()
        client._host_keys = paramiko.HostKeys()
        for path in lookup:
            if path.exists():
                try:
                    client._host_keys.load(str(path))
                except (OSError, paramiko.SSHException, ValueError,
                        paramiko.hostkeys.InvalidHostKey) as exc:
                    if isinstance(exc, paramiko.hostkeys.InvalidHostKey):
                        exc = f"a key that is not base64: {exc.line.strip()[:80]!r}"
                    raise HostKeyError(self.name, f"cannot read known_hosts {path}: "
                                       f"{exc or type(exc).__name__}") from None
        client._host_keys_filename = None
        if self.accept_new_host_keys:
            client.set_missing_host_key_policy(_RecordNewKey(own, hop.port))
        else:
            what = hop.login if hop is self.target else f"jump host {hop.login}"
            client.set_missing_host_key_policy(_RefuseUnknownKey(self.name, own, what))
        client.save_host_keys = lambda *a, **k: None  # never rewrite the user's file
        return own

    def _connect_kwargs(self, hop: SSHTarget, sock) -> dict:
        kwargs = _auth_kwargs(hop)
        kwargs.update(banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout)
        if sock is not None:
            kwargs["sock"] = sock
        return kwargs

    def _first_sock(self, first: SSHTarget):
        if not first.proxy_command:
            return None
        try:
            self._proxy = _ProxyProcess(first.proxy_command)
        except (OSError, ValueError) as exc:
            raise UnreachableError(self.name, f"ProxyCommand {first.proxy_command!r} for "
                                   f"{first.login} failed: {exc}") from None
        return self._proxy

    def _open_jumps(self, target: SSHTarget):
        """Log into each jump host in turn; return the channel to the target."""
        hops = target.hops
        sock = self._first_sock(hops[0] if hops else target)
        for i, hop in enumerate(hops):
            client = paramiko.SSHClient()
            kh = self._prepare(client, hop)
            onward = hops[i + 1] if i + 1 < len(hops) else target
            try:
                client.connect(hop.hostname, port=hop.port, username=hop.user,
                               timeout=self.connect_timeout,
                               **self._connect_kwargs(hop, sock))
                self._jumps.append(client)
                transport = client.get_transport()
                transport.set_keepalive(15)
                sock = transport.open_channel("direct-tcpip", (onward.hostname, onward.port),
                                              ("127.0.0.1", 0), timeout=self.connect_timeout)
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                client.close()
                raise self._failure(exc, hop, target, kh, first=i == 0) from None
        return sock

    def _failure(self, exc: BaseException, hop: SSHTarget, target: SSHTarget, kh: Path, *,
                 first: bool) -> ClusterctlError:
        err = _connect_error(self.name, exc, hop, target, kh, self.connect_timeout)
        tail = self._proxy.stderr_tail() if first and self._proxy is not None else ""
        if tail and type(err) is UnreachableError:
            last = " | ".join(tail.splitlines()[-3:])
            err = UnreachableError(self.name, f"{str(err)[len(self.name) + 2:]}; "
                                   f"ProxyCommand said: {last}")
        return err

    def open(self) -> "Connection":
        if self._conn is not None and self._conn.is_connected:
            return self
        self.close()
        target = self.target
        given = inventory_ssh(self.host)
        if given.key_file and not Path(given.key_file).expanduser().is_file():
            raise UnreachableError(self.name, f"private key file {given.key_file} "
                                   "(ansible_ssh_private_key_file) does not exist")
        try:
            sock = self._open_jumps(target)
        except BaseException:
            self.close()
            raise
        conn = fabric.Connection(target.hostname, user=target.user, port=target.port,
                                 # our own resolution only: no second ssh_config lookup
                                 config=fabric.Config(ssh_config=paramiko.SSHConfig()),
                                 connect_timeout=self.connect_timeout,
                                 connect_kwargs=self._connect_kwargs(target, sock),
                                 inline_ssh_env=True)
        try:
            kh = self._prepare(conn.client, target)
        except BaseException:
            self.close()
            raise
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            conn.close()
            err = self._failure(exc, target, target, kh, first=not target.hops)
            self.close()
            raise err from None
        transport = conn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self._conn = conn
        return self

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        for client in reversed(self._jumps):
            try:
                client.close()
            except Exception:
                pass
        self._jumps = []
        if self._proxy is not None:
            try:
                self._proxy.discard()
            except Exception:
                pass
            self._proxy = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def abort(self) -> None:
        """Cut the connection now, also when a command is stuck on a stalled TCP path
        (e.g. an MTU black hole): shutdown(2) wakes a thread blocked in send/recv.
        Through jump hosts, the first hop's socket is the one on the stalled path."""
        conn = self._conn
        transports = [c.get_transport() for c in self._jumps]
        transports.append(conn.client.get_transport() if conn is not None else None)
        for transport in transports:
            sock = getattr(transport, "sock", None)
            try:
                if isinstance(sock, socket.socket):
                    sock.shutdown(socket.SHUT_RDWR)
                elif isinstance(sock, _ProxyProcess):
                    sock.terminate()             # its reader then sees the end
                elif sock is not None:
                    sock.close()                 # a jump host's channel
            except (OSError, paramiko.SSHException):
                pass

    @property
    def fabric(self) -> fabric.Connection:
        """The underlying Fabric connection (opened), for user tasks (`clusterctl task`)."""
        self.open()
        return self._conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.is_connected

    def open_channel(self, command: str):
        """A raw session channel running `command` (sudo'd like run() for a non-root
        user), left open for the caller: a lock held while the channel lives, a stream.
        The caller closes it."""
        self.open()
        text = command if self.is_root else "sudo -n bash -c " + shlex.quote(command)
        chan = self._conn.client.get_transport().open_session()
        chan.exec_command(text)
        return chan

    @property
    def is_root(self) -> bool:
        return self.target.user == "root"

    # -- commands ----------------------------------------------------------
    def run(self, cmd: list[str] | str, *, check: bool = True,
            env: Mapping[str, str | Secret] | None = None, stdin: str | bytes | None = None,
            timeout: float | None = None) -> RunResult:
        """Run a command. A list is quoted with shlex; a str is a shell snippet we wrote.

        Plain `env` values are exported in the command text; Secret values travel on
        stdin ahead of `stdin` (see build_command), never in any argv, and are masked
        in every message and output.
        """
        self.open()
        built = build_command(cmd, env=env, stdin=stdin, as_root=self.is_root)
        text, shown = built.text, built.shown
        secrets = list(self.secrets) + list(built.secrets)
        in_stream: io.StringIO | bool
        in_stream = False if built.stdin is None else ChunkedStdin(built.stdin)
        # invoke's own timeout cannot interrupt a channel stalled at the TCP level, so a
        # timer cuts the connection; the command then fails as timed out.
        fired: list[bool] = []

        def cut():
            fired.append(True)
            self.abort()
        timer = threading.Timer(timeout, cut) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            res = self._conn.run(text, hide=True, warn=True, in_stream=in_stream, pty=False)
            code, out, err = res.exited, res.stdout, res.stderr
        except Exception as exc:  # socket errors, a cut connection
            if fired:
                self.close()
                raise HostError(self.name, f"command timed out after {timeout:g}s (connection "
                                f"cut): {mask_text(shown, secrets)}") from None
            raise UnreachableError(self.name, f"connection to {self.target} lost running "
                                   f"{mask_text(shown, secrets)}: "
                                   f"{mask_text(str(exc) or type(exc).__name__, secrets)}") \
                from None
        finally:
            if timer:
                timer.cancel()
        if fired:
            self.close()
            raise HostError(self.name, f"command timed out after {timeout:g}s (connection "
                            f"cut): {mask_text(shown, secrets)}")
        out, err = mask_text(out, secrets), mask_text(err, secrets)
        result = RunResult(mask_text(shown, secrets), code, out, err)
        if check and code != 0:
            raise CommandFailed(self.name, result.command, code, err, out)
        return result

    # -- files -------------------------------------------------------------
    def _sftp_client(self):
        self.open()
        if self._sftp is None:
            self._sftp = self._conn.sftp()
        return self._sftp

    def put(self, data: bytes | str, path: str, *, mode: int | None = None,
            owner: str | None = None, group: str | None = None) -> None:
        """Write a file atomically: temp name beside it, chmod/chown, rename."""
        if isinstance(data, str):
            data = data.encode()
        tmp = f"{path}.clusterctl-{uuid.uuid4().hex[:8]}"
        if self.is_root:
            sftp = self._sftp_client()
            try:
                with sftp.open(tmp, "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
                if mode is not None:
                    sftp.chmod(tmp, mode)
            except OSError as exc:
                self.run(["rm", "-f", tmp], check=False)
                raise HostError(self.name, f"cannot write {path}: {exc}") from None
            self.run(" && ".join(_finish_steps(tmp, path, None, owner, group)))
        else:
            cmd = f"umask 077; cat > {shlex.quote(tmp)}"
            self.run(cmd, stdin=data)
            self.run(" && ".join(_finish_steps(tmp, path, mode, owner, group)))

    def get(self, path: str) -> bytes:
        sftp = self._sftp_client()
        buf = io.BytesIO()
        try:
            sftp.getfo(path, buf)
        except OSError as exc:
            raise HostError(self.name, f"cannot read {path}: {exc}") from None
        return buf.getvalue()


class ChunkedStdin(io.StringIO):
    """stdin for a remote command. invoke asks a non-terminal stream for one character
    per read and sleeps 10 ms between reads (about 100 bytes/s: a 1 KB input took over
    10 s); this stream answers every read with up to 64 KiB instead."""

    CHUNK = 65536

    def read(self, size: int | None = -1) -> str:
        return super().read(self.CHUNK)


def _finish_steps(tmp: str, path: str, mode: int | None, owner: str | None,
                  group: str | None) -> list[str]:
    """Shell steps that give a temp file its mode/ownership and move it into place."""
    steps = []
    if mode is not None:
        steps.append(shlex.join(["chmod", format(mode, "o"), tmp]))
    if owner or group:
        spec = (owner or "") + (f":{group}" if group else "")
        steps.append(shlex.join(["chown", spec, tmp]))
    steps.append(shlex.join(["mv", "-f", tmp, path]))
    steps.append(stale_temp_cleanup(path))
    return steps


def stale_temp_cleanup(path: str) -> str:
    """Shell that removes what interrupted writes of `path` left beside it (a run killed
    mid-copy leaves `PATH.clusterctl-XXXXXXXX`): every such sibling that no process has
    open (a write in progress holds it open in its sftp-server or shell). Costs one glob
    when there is nothing to clean; never fails."""
    pattern = shlex.quote(path + ".clusterctl-") + "*"
    return (f"for f in {pattern}; do [ -e \"$f\" ] || continue; "
            f"ls -l /proc/[0-9]*/fd 2>/dev/null | grep -qF -- \" $f\" "
            f"|| rm -f -- \"$f\"; done; true")
