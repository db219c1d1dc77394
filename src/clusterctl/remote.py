"""Connections to hosts: the only module that touches SSH.

One persistent Fabric connection per host. Host keys are always verified:
against the host's `ssh_known_hosts_file` (the lab writes one) or
~/.ssh/known_hosts. An unknown key is refused unless `accept_new_host_keys`
(then it is recorded); a changed key is always a HostKeyError.
"""
from __future__ import annotations

import io
import shlex
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import fabric
import paramiko

from .errors import CommandFailed, HostError, HostKeyError, UnreachableError
from .secret import Secret, mask_text

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_known_hosts_lock = threading.Lock()


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


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time and record its key (--accept-new-host-keys)."""

    def __init__(self, path: Path, port: int):
        self.path, self.port = path, port

    def missing_host_key(self, client, hostname, key):
        name = hostname if hostname.startswith("[") else _host_key_name(hostname, self.port)
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(line)
        client.get_host_keys().add(name, key.get_name(), key)


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, host_name: str, path: Path):
        self.host_name, self.path = host_name, path

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            self.host_name,
            f"unknown host key ({key.get_name()}) for {hostname}, not in {self.path}. "
            "Check the fingerprint and add it, or run once with --accept-new-host-keys.")


def _quote(cmd: list[str] | str) -> str:
    if isinstance(cmd, str):
        return cmd
    return shlex.join(str(a) if not isinstance(a, Secret) else a.reveal() for a in cmd)


def _display(cmd: list[str] | str) -> str:
    if isinstance(cmd, str):
        return cmd
    return shlex.join(str(a) for a in cmd)  # Secret prints as ***


class Connection:
    """A persistent SSH connection to one inventory host."""

    def __init__(self, host, *, accept_new_host_keys: bool = False,
                 connect_timeout: float = 10.0):
        self.host = host
        self.name = host.name
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self._conn: fabric.Connection | None = None
        self._sftp = None
        self._lock = threading.Lock()
        self.secrets: list[Secret] = []

    # -- lifecycle ---------------------------------------------------------
    def open(self) -> "Connection":
        if self._conn is not None and self._conn.is_connected:
            return self
        host = self.host
        connect_kwargs = {"allow_agent": False, "look_for_keys": host.key_file is None,
                          "banner_timeout": self.connect_timeout,
                          "auth_timeout": self.connect_timeout}
        if host.key_file:
            connect_kwargs["key_filename"] = [str(Path(host.key_file).expanduser())]
        conn = fabric.Connection(host.address, user=host.user, port=host.port,
                                 connect_timeout=self.connect_timeout,
                                 connect_kwargs=connect_kwargs,
                                 inline_ssh_env=True)
        client = conn.client
        # Fabric trusts unknown hosts by default; we never do.
        kh = known_hosts_path(host)
        client._system_host_keys = paramiko.HostKeys()
        client._host_keys = paramiko.HostKeys()
        if kh.exists():
            try:
                client.load_host_keys(str(kh))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(self.name, f"cannot read known_hosts {kh}: {exc}") from None
        if self.accept_new_host_keys:
            client.set_missing_host_key_policy(_RecordNewKey(kh, host.port))
        else:
            client.set_missing_host_key_policy(_RefuseUnknownKey(self.name, kh))
        client.save_host_keys = lambda *a, **k: None  # never rewrite the user's file
        try:
            conn.open()
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                self.name,
                f"HOST KEY CHANGED for {host.address}:{host.port} (expected "
                f"{exc.expected_key.get_name()} {exc.expected_key.get_fingerprint().hex()}, got "
                f"{exc.key.get_fingerprint().hex()}). Someone may be intercepting the connection, "
                f"or the host was reinstalled: verify, then remove the old key from {kh}.") from None
        except paramiko.AuthenticationException as exc:
            raise UnreachableError(self.name, f"authentication failed as {host.user}@{host.address}:"
                                   f"{host.port}: {exc}") from None
        except (socket.timeout, TimeoutError):
            raise UnreachableError(self.name, f"timed out connecting to {host.address}:{host.port}"
                                   f" after {self.connect_timeout:g}s") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise UnreachableError(self.name, f"cannot connect to {host.address}:{host.port}: "
                                   f"{exc or type(exc).__name__}") from None
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
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def abort(self) -> None:
        """Cut the connection now, also when a command is stuck on a stalled TCP path
        (e.g. an MTU black hole): shutdown(2) wakes a thread blocked in send/recv."""
        conn = self._conn
        transport = conn.client.get_transport() if conn is not None else None
        sock = getattr(transport, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.is_connected

    @property
    def is_root(self) -> bool:
        return self.host.user == "root"

    # -- commands ----------------------------------------------------------
    def run(self, cmd: list[str] | str, *, check: bool = True,
            env: Mapping[str, str | Secret] | None = None, stdin: str | bytes | None = None,
            timeout: float | None = None) -> RunResult:
        """Run a command. A list is quoted with shlex; a str is a shell snippet we wrote.

        Environment values go on the command line through `env` for plain values;
        Secret values are passed on stdin-free form as exported variables and masked
        in every message.
        """
        self.open()
        text = _quote(cmd)
        shown = _display(cmd)
        secrets = list(self.secrets)
        if env:
            assigns = []
            for k, v in env.items():
                if isinstance(v, Secret):
                    secrets.append(v)
                    assigns.append(f"{k}={shlex.quote(v.reveal())}")
                else:
                    assigns.append(f"{k}={shlex.quote(str(v))}")
            prefix = "export " + " ".join(assigns) + "; "
            text = prefix + text
            shown = " ".join(f"{k}={v if not isinstance(v, Secret) else '***'}"
                             for k, v in env.items()) + " " + shown
        if not self.is_root:
            text = "sudo -n bash -c " + shlex.quote(text)
        in_stream: io.StringIO | bool
        if stdin is None:
            in_stream = False
        else:
            in_stream = io.StringIO(stdin.decode() if isinstance(stdin, bytes) else stdin)
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
            raise UnreachableError(self.name, f"connection lost running "
                                   f"{mask_text(shown, secrets)}: {exc}") from None
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
    return steps


def connect_all(hosts: Iterable, *, accept_new_host_keys: bool = False, forks: int = 20,
                connect_timeout: float = 10.0,
                on_error: Callable[[object, Exception], None] | None = None
                ) -> tuple[dict[str, Connection], dict[str, Exception]]:
    """Open connections to all hosts in parallel. Returns (connections, errors by host name)."""
    hosts = list(hosts)
    conns: dict[str, Connection] = {}
    errors: dict[str, Exception] = {}

    def _one(h):
        c = Connection(h, accept_new_host_keys=accept_new_host_keys,
                       connect_timeout=connect_timeout)
        c.open()
        return c

    if not hosts:
        return conns, errors
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        futures = {h.name: pool.submit(_one, h) for h in hosts}
        for name, fut in futures.items():
            try:
                conns[name] = fut.result()
            except Exception as exc:  # noqa: BLE001 - isolated per host
                errors[name] = exc
                if on_error:
                    on_error(name, exc)
    return conns, errors


def close_all(conns: Mapping[str, Connection]) -> None:
    for c in conns.values():
        try:
            c.close()
        except Exception:
            pass

