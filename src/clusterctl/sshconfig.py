"""Where and how to log into a host: the inventory first, then the operator's ssh_config.

OpenSSH's rule applies per value: the inventory wins where it sets a value
(`ansible_user`/`user`, `ansible_port`/`port`, `ansible_ssh_private_key_file`/`ssh_key`,
`ssh_known_hosts_file`); where it does not, ~/.ssh/config (then /etc/ssh/ssh_config)
decides, looked up by the host's address as `ssh ADDRESS` would (Host patterns, Match,
HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand,
UserKnownHostsFile); then the built-in defaults (root, 22).

`CLUSTERCTL_SSH_CONFIG` names another config file to read instead (like `ssh -F`);
`none` (or empty) reads none.

The resolution is pure (`resolve_target`); only `load_ssh_config` reads files.
"""
from __future__ import annotations

import getpass
import glob
import io
import os
import re
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import paramiko

from .errors import InputError

SSH_CONFIG_ENV = "CLUSTERCTL_SSH_CONFIG"
USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_USER = "root"            # the inventory's documented default
DEFAULT_PORT = 22
MAX_CONFIG_BYTES = 1 << 20       # per file
MAX_CONFIG_FILES = 64            # Include expansion, all files together
MAX_INCLUDE_DEPTH = 16
MAX_JUMPS = 8                    # hops in one chain, nested ProxyJumps included

_LINE_RE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(.+)")   # how paramiko splits a line
_NAME_RE = re.compile(r"^[A-Za-z0-9._:%-]+$")


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to open one SSH connection."""

    alias: str                         # the name looked up in ssh_config (inventory address)
    hostname: str                      # where to connect (HostName applied)
    user: str
    port: int
    key_files: tuple[str, ...] = ()    # tried in order; empty = ~/.ssh/id_* defaults
    identities_only: bool = False      # IdentitiesOnly yes: no agent, no default keys
    known_hosts_file: str | None = None  # None = the caller's default
    jump: "SSHTarget | None" = None    # the hop right before this host (ProxyJump)
    proxy_command: str | None = None   # ProxyCommand (only without ProxyJump)

    @property
    def login(self) -> str:
        """user@host:port of this hop alone."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"

    @property
    def hops(self) -> tuple["SSHTarget", ...]:
        """The jump hosts, the one contacted first first."""
        chain: list[SSHTarget] = []
        hop = self.jump
        while hop is not None:
            chain.append(hop)
            hop = hop.jump
        return tuple(reversed(chain))

    def __str__(self) -> str:
        text = self.login
        if self.hops:
            text += " via " + " -> ".join(h.login for h in self.hops)
        elif self.proxy_command:
            text += f" via ProxyCommand {self.proxy_command!r}"
        return text

    def ssh_command(self) -> str:
        """The OpenSSH command line an operator types to try this login by hand."""
        parts = ["ssh"]
        if self.port != DEFAULT_PORT:
            parts += ["-p", str(self.port)]
        if len(self.key_files) == 1:
            parts += ["-i", shlex.quote(self.key_files[0])]
        if self.hops:
            parts += ["-J", ",".join(h.login if h.port != DEFAULT_PORT
                                     else f"{h.user}@{h.hostname}" for h in self.hops)]
        parts.append(f"{self.user}@{self.hostname}")
        return " ".join(parts)

    def openssh_config(self, name: str) -> str:
        """Host blocks for OpenSSH (`ssh -F FILE NAME`) that log in exactly as this target
        does, for tools that run ssh themselves (testinfra). Each jump host gets a block
        of its own (NAME-jump1, ...) so its user, port and keys are kept. Options for all
        hosts (StrictHostKeyChecking, BatchMode) go in a `Host *` block after these."""
        blocks = []
        hops = self.hops
        for i, hop in enumerate(hops, 1):
            via = f"{name}-jump{i - 1}" if i > 1 else None
            blocks.append(hop._block(f"{name}-jump{i}", via, self.known_hosts_file))
        blocks.append(self._block(name, f"{name}-jump{len(hops)}" if hops else None, None))
        return "\n".join(blocks)

    def _block(self, name: str, via: str | None, extra_known_hosts: str | None) -> str:
        lines = [f"Host {name}", f"  HostName {self.hostname}", f"  Port {self.port}",
                 f"  User {_ssh_value(self.user)}"]
        lines += [f"  IdentityFile {_ssh_value(k)}" for k in self.key_files]
        if self.identities_only:
            lines.append("  IdentitiesOnly yes")
        known = [k for k in (self.known_hosts_file, extra_known_hosts) if k]
        if known and not self.known_hosts_file:
            known.insert(0, "~/.ssh/known_hosts")     # a jump host's own default file
        if known:
            lines.append("  UserKnownHostsFile " + " ".join(_ssh_value(k) for k in known))
        if via:
            lines.append(f"  ProxyJump {via}")
        elif self.proxy_command:
            lines.append(f"  ProxyCommand {self.proxy_command}")
        return "\n".join(lines) + "\n"


def _ssh_value(value: str) -> str:
    """A value for an ssh_config line: `%` doubled (no token expansion), quoted when it
    holds spaces."""
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


@dataclass(frozen=True)
class InventorySSH:
    """The SSH values an inventory host sets itself; None = not set (ssh_config decides)."""

    address: str
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    known_hosts_file: str | None = None


def inventory_ssh(host) -> InventorySSH:
    """What the inventory set for `host` (an inventory.Host or a look-alike).

    `Host.user`/`Host.port` are filled with the defaults (root, 22) when the inventory
    does not set them; `Host.vars` only holds what was written, so it tells the two
    apart. An object without `vars` counts as having set everything it has.
    """
    given = getattr(host, "vars", None)
    user = getattr(host, "user", None)
    port = getattr(host, "port", None)
    if isinstance(given, dict):
        if "ansible_user" not in given and "user" not in given:
            user = None
        if "ansible_port" not in given and "port" not in given:
            port = None
    return InventorySSH(address=str(host.address), user=user,
                        port=int(port) if port is not None else None,
                        key_file=getattr(host, "key_file", None),
                        known_hosts_file=getattr(host, "known_hosts_file", None))


# -- resolution (pure) -------------------------------------------------------------------
def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """One ProxyJump hop `[user@]host[:port]`, `[user@][v6addr]:port` or
    `ssh://[user@]host[:port]` -> (user, host, port)."""
    s = spec.strip()
    if s.startswith("ssh://"):
        s = s[len("ssh://"):].rstrip("/")
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
    port: int | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"bad ProxyJump host {spec!r}")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad ProxyJump host {spec!r}")
            port = _parse_port(rest[1:], spec)
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = _parse_port(p, spec)
    else:
        host = s
    if not host or not _NAME_RE.match(host) or (user is not None and not user):
        raise ValueError(f"bad ProxyJump host {spec!r}")
    return user, host, port


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {spec!r}")
    return int(text)


def resolve_target(inv: InventorySSH, config: paramiko.SSHConfig | None, *,
                   default_user: str = DEFAULT_USER,
                   jump_user: str | None = None) -> SSHTarget:
    """Combine what the inventory set with what ssh_config says for its address.

    Pure apart from paramiko's own `Match exec`/canonicalization when a config uses
    them. A jump host not given a user anywhere logs in as `jump_user` (default: the
    local user, as ssh does). Raises ValueError for a ProxyJump that cannot be parsed
    or loops.
    """
    return _resolve(inv.address, inv.user, inv.port, inv.key_file, inv.known_hosts_file,
                    config, default_user, jump_user or getpass.getuser(), depth=0,
                    forced_jump=None, use_config_jump=True)


def _resolve(alias: str, user: str | None, port: int | None, key_file: str | None,
             known_hosts: str | None, config: paramiko.SSHConfig | None, default_user: str,
             jump_user: str, *, depth: int, forced_jump: SSHTarget | None,
             use_config_jump: bool) -> SSHTarget:
    if depth > MAX_JUMPS:
        raise ValueError(f"ProxyJump chain longer than {MAX_JUMPS} hops at {alias!r} "
                         "(a loop? e.g. `Host *` with a ProxyJump that matches itself)")
    opts = config.lookup(alias) if config is not None else {}
    hostname = opts.get("hostname") or alias
    user = user or opts.get("user") or default_user
    if port is None:
        port = _parse_port(str(opts["port"]), f"Port {opts['port']}") if "port" in opts \
            else DEFAULT_PORT
    if key_file:
        keys: tuple[str, ...] = (str(Path(key_file).expanduser()),)
    else:
        keys = tuple(str(Path(k).expanduser()) for k in opts.get("identityfile", []) or [])
    identities_only = str(opts.get("identitiesonly", "no")).lower() == "yes"
    if known_hosts is None and opts.get("userknownhostsfile"):
        first = str(opts["userknownhostsfile"]).split()[0]
        if first.lower() != "none":
            known_hosts = str(Path(first).expanduser())
    jump = forced_jump
    proxy_command = None
    if jump is None and use_config_jump:
        spec = opts.get("proxyjump")
        if spec and spec.strip().lower() != "none":
            for hop_spec in spec.split(","):
                h_user, h_host, h_port = parse_jump(hop_spec)
                # the first hop follows its own config (its ProxyJump too); each later
                # hop is reached through the one before it, as `ssh -J a,b` does
                jump = _resolve(h_host, h_user, h_port, None, None, config, jump_user,
                                jump_user, depth=depth + 1, forced_jump=jump,
                                use_config_jump=jump is None)
        elif opts.get("proxycommand"):
            proxy_command = str(opts["proxycommand"])
    return SSHTarget(alias=alias, hostname=str(hostname), user=str(user), port=int(port),
                     key_files=keys, identities_only=identities_only,
                     known_hosts_file=known_hosts, jump=jump, proxy_command=proxy_command)


# -- reading config files ----------------------------------------------------------------
def config_files(environ: os._Environ | dict | None = None) -> list[Path]:
    """The ssh_config files to read, in order: CLUSTERCTL_SSH_CONFIG alone when set,
    else ~/.ssh/config and /etc/ssh/ssh_config where they exist."""
    env = os.environ if environ is None else environ
    chosen = env.get(SSH_CONFIG_ENV)
    if chosen is not None:
        if chosen.strip().lower() in ("", "none"):
            return []
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise InputError(f"{SSH_CONFIG_ENV}={chosen}: no such ssh_config file "
                             "(set it to a file, or to `none` to read no ssh_config)")
        return [path]
    return [p for p in (Path(USER_CONFIG).expanduser(), Path(SYSTEM_CONFIG)) if p.is_file()]


def parse_config_text(text: str, *, origin: str = "<ssh_config>",
                      base_dir: Path | None = None) -> paramiko.SSHConfig:
    """An SSHConfig from text; `Include` is expanded relative to base_dir (~/.ssh)."""
    config = paramiko.SSHConfig()
    _parse_into(config, text, origin, base_dir or Path(USER_CONFIG).expanduser().parent)
    return config


def _parse_into(config: paramiko.SSHConfig, text: str, origin: str, base_dir: Path) -> None:
    lines = list(_expanded_lines(text, origin, base_dir, depth=0, budget=[MAX_CONFIG_FILES]))
    try:
        config.parse(io.StringIO("".join(line + "\n" for line in lines)))
    except paramiko.ConfigParseError as exc:
        raise InputError(f"cannot read ssh_config: {exc}", file=origin) from None


def _read_bounded(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read ssh_config: {exc.strerror or exc}", file=str(path)) \
            from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"ssh_config larger than {MAX_CONFIG_BYTES} bytes", file=str(path))
    return data.decode("utf-8", errors="replace")


def _expanded_lines(text: str, origin: str, base_dir: Path, *, depth: int,
                    budget: list[int]) -> Iterator[str]:
    """Lines of a config with `Include` replaced by the included files' lines, each
    checked the way paramiko splits it so a bad line is named by file:line."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            raise InputError("cannot read ssh_config: expected `Keyword value`",
                             file=origin, line=number)
        if match.group(1).lower() != "include":
            yield line
            continue
        if depth >= MAX_INCLUDE_DEPTH:
            raise InputError(f"Include nested deeper than {MAX_INCLUDE_DEPTH}",
                             file=origin, line=number)
        for pattern in match.group(2).split():
            pattern = os.path.expanduser(pattern.strip('"'))
            if not os.path.isabs(pattern):
                pattern = str(base_dir / pattern)
            for name in sorted(glob.glob(pattern)):
                path = Path(name)
                if not path.is_file():
                    continue
                budget[0] -= 1
                if budget[0] < 0:
                    raise InputError(f"more than {MAX_CONFIG_FILES} ssh_config files "
                                     "through Include", file=origin, line=number)
                yield from _expanded_lines(_read_bounded(path), str(path), base_dir,
                                           depth=depth + 1, budget=budget)


_cache_lock = threading.Lock()
_cache: dict[tuple, paramiko.SSHConfig | None] = {}


def load_ssh_config(environ: os._Environ | dict | None = None) -> paramiko.SSHConfig | None:
    """The operator's ssh_config (see config_files), parsed once per file set and
    modification time; None when there is none to read."""
    files = config_files(environ)
    if not files:
        return None
    key = tuple((str(p), _mtime(p)) for p in files)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        config = paramiko.SSHConfig()
        for p in files:   # into one object: the first value found wins, as in ssh
            base = Path(SYSTEM_CONFIG).parent if p == Path(SYSTEM_CONFIG) \
                else Path(USER_CONFIG).expanduser().parent
            _parse_into(config, _read_bounded(p), str(p), base)
        _cache.clear()
        _cache[key] = config
        return config


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def target_for(host, environ: os._Environ | dict | None = None) -> SSHTarget:
    """The resolved SSH target of an inventory host, with the operator's ssh_config.

    Raises InputError for an unreadable ssh_config or a bad ProxyJump in it."""
    config = load_ssh_config(environ)
    try:
        return resolve_target(inventory_ssh(host), config)
    except (ValueError, paramiko.SSHException) as exc:
        raise InputError(f"ssh_config for {host.address}: {exc or type(exc).__name__}") \
            from None


def login_hint(host) -> tuple[str, int]:
    """(the `ssh ...` line an operator types to try a host's login by hand, its SSH port),
    for messages and fix texts; never raises (an unreadable ssh_config: the inventory's
    own values)."""
    try:
        target = target_for(host)
    except InputError:
        target = resolve_target(inventory_ssh(host), None, jump_user=DEFAULT_USER)
    return target.ssh_command(), target.port
