"""Where a host is logged into: the inventory where it sets a value, else ssh_config
(pure resolution), and the one-line errors that name that target."""
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterctl.errors import HostKeyError, InputError, UnreachableError
from clusterctl.inventory import load_inventory
from clusterctl.netcheck.findings import analyze
from clusterctl.netcheck.model import NodeInfo, Settings
from clusterctl.remote import _connect_error
from clusterctl.sshconfig import (MAX_JUMPS, SSH_CONFIG_ENV, InventorySSH, config_files,
                                  inventory_ssh, load_ssh_config, login_hint,
                                  parse_config_text, parse_jump, resolve_target, target_for)

CONFIG = """
Host gpu*
  User ops
  Port 2200
  IdentityFile ~/.ssh/gpu_key
  IdentityFile /keys/second

Host gpu2
  HostName 10.0.0.2
  ProxyJump bastion

Host bastion
  HostName bastion.example.org
  User jumper
  IdentityFile /keys/bastion

Host lonely
  IdentitiesOnly yes
  UserKnownHostsFile ~/.ssh/lonely_hosts /dev/null
  ProxyCommand nc %h %p
"""


def resolve(address, config=CONFIG, **given):
    cfg = parse_config_text(config) if config is not None else None
    return resolve_target(InventorySSH(address, **given), cfg, jump_user="me")


def test_ssh_config_fills_what_the_inventory_leaves_out():
    t = resolve("gpu1")
    assert (t.hostname, t.user, t.port) == ("gpu1", "ops", 2200)
    assert t.key_files == (str(Path("~/.ssh/gpu_key").expanduser()), "/keys/second")
    assert t.jump is None and t.proxy_command is None
    assert str(t) == "ops@gpu1:2200"


def test_the_inventory_wins_where_it_sets_a_value():
    t = resolve("gpu1", user="root", port=22, key_file="/inv/key", known_hosts_file="/inv/kh")
    assert (t.user, t.port, t.key_files, t.known_hosts_file) == ("root", 22, ("/inv/key",),
                                                                  "/inv/kh")


def test_defaults_without_config_or_match():
    for t in (resolve("other"), resolve("gpu1", config=None), resolve("x", config="")):
        assert (t.user, t.port, t.key_files, t.jump) == ("root", 22, (), None)
        assert t.hostname == t.alias


def test_proxyjump_resolves_the_jump_host_through_the_config_too():
    t = resolve("gpu2")
    assert (t.hostname, t.user, t.port) == ("10.0.0.2", "ops", 2200)
    (hop,) = t.hops
    assert (hop.hostname, hop.user, hop.port, hop.key_files) == (
        "bastion.example.org", "jumper", 22, ("/keys/bastion",))
    assert str(t) == "ops@10.0.0.2:2200 via jumper@bastion.example.org:22"
    assert t.ssh_command() == "ssh -p 2200 -J jumper@bastion.example.org ops@10.0.0.2"


def test_proxyjump_chain_and_users_ports_in_the_spec():
    t = resolve("n1", config="Host n1\n  ProxyJump a@first:2022,second\n"
                             "Host second\n  ProxyJump ignored\n")
    first, second = t.hops
    assert (first.user, first.hostname, first.port) == ("a", "first", 2022)
    # a later hop is reached through the earlier one, whatever its own ProxyJump says
    assert (second.user, second.hostname, second.port) == ("me", "second", 22)
    assert second.jump is first and t.jump is second
    assert str(t) == "root@n1:22 via a@first:2022 -> me@second:22"


def test_proxyjump_none_and_loops():
    assert resolve("n1", config="Host n1\n  ProxyJump none\nHost *\n  ProxyJump b\n").jump \
        is None
    with pytest.raises(ValueError, match="loop"):
        resolve("n1", config="Host *\n  ProxyJump bastion\n")
    t = resolve("n1", config="Host * !bastion\n  ProxyJump bastion\n")   # the usual fix
    assert [h.hostname for h in t.hops] == ["bastion"]


def test_identities_only_known_hosts_and_proxycommand():
    t = resolve("lonely")
    assert t.identities_only
    assert t.known_hosts_file == str(Path("~/.ssh/lonely_hosts").expanduser())
    assert t.proxy_command == "nc lonely 22"
    assert "via ProxyCommand" in str(t)


@pytest.mark.parametrize("spec, expected", [
    ("host", (None, "host", None)),
    ("u@host:2222", ("u", "host", 2222)),
    ("ssh://u@host:2222", ("u", "host", 2222)),
    ("[fe80::1]:22", (None, "fe80::1", 22)),
    ("u@fe80::1", ("u", "fe80::1", None)),
    ("u@h@host", ("u@h", "host", None)),
])
def test_parse_jump(spec, expected):
    assert parse_jump(spec) == expected


@pytest.mark.parametrize("spec", ["", "@host", "host:0", "host:99999", "host:x", "[::1",
                                  "[::1]x", "ho st", "host;rm"])
def test_parse_jump_refuses_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_jump(spec)


@given(st.text(max_size=40))
def test_parse_jump_never_fails_other_than_clearly(spec):
    try:
        user, host, port = parse_jump(spec)
    except ValueError:
        return
    assert host and (port is None or 0 < port < 65536)


@given(user=st.from_regex(r"[a-z_][a-z0-9_-]{0,8}", fullmatch=True),
       host=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
       port=st.integers(1, 65535))
def test_parse_jump_round_trips(user, host, port):
    assert parse_jump(f"{user}@{host}:{port}") == (user, host, port)


# -- what the inventory set ---------------------------------------------------------------
def test_inventory_host_tells_set_values_from_defaults(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n"
                   "    plain: {ansible_host: 10.0.0.1, role: head}\n"
                   "    given: {ansible_host: 10.0.0.2, ansible_user: admin, port: 2222,"
                   " ssh_key: k}\n")
    hosts = load_inventory(inv).hosts
    plain, given_ = inventory_ssh(hosts["plain"]), inventory_ssh(hosts["given"])
    assert (plain.address, plain.user, plain.port, plain.key_file) == ("10.0.0.1", None, None,
                                                                       None)
    assert (given_.user, given_.port) == ("admin", 2222)
    assert given_.key_file == str(tmp_path / "k")
    cfg = parse_config_text("Host 10.0.0.*\n  User ops\n  Port 2200\n")
    assert str(resolve_target(plain, cfg)) == "ops@10.0.0.1:2200"
    assert str(resolve_target(given_, cfg)) == "admin@10.0.0.2:2222"


def test_an_object_without_vars_sets_everything_it_has():
    h = SimpleNamespace(name="x", address="a", user="root", port=22, key_file=None)
    assert inventory_ssh(h) == InventorySSH("a", "root", 22, None, None)


# -- reading config files -----------------------------------------------------------------
def test_config_files_from_the_environment(tmp_path):
    assert config_files({SSH_CONFIG_ENV: "none"}) == []
    assert config_files({SSH_CONFIG_ENV: ""}) == []
    cfg = tmp_path / "cfg"
    cfg.write_text("Host x\n  Port 2\n")
    assert config_files({SSH_CONFIG_ENV: str(cfg)}) == [cfg]
    with pytest.raises(InputError, match=SSH_CONFIG_ENV):
        config_files({SSH_CONFIG_ENV: str(tmp_path / "missing")})
    assert load_ssh_config({SSH_CONFIG_ENV: str(cfg)}).lookup("x")["port"] == "2"
    assert load_ssh_config({SSH_CONFIG_ENV: "none"}) is None


def test_include_is_expanded_and_a_bad_line_is_named(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-gpu.conf").write_text("Host gpu*\n  User ops\n")
    (tmp_path / "conf.d" / "20-rest.conf").write_text("Host *\n  Port 2200\n")
    cfg = parse_config_text("Include conf.d/*.conf\n", base_dir=tmp_path)
    assert cfg.lookup("gpu1")["user"] == "ops" and cfg.lookup("gpu1")["port"] == "2200"
    bad = tmp_path / "bad"
    bad.write_text("Host x\n  Port 22\n  this-line-has-no-value\n")
    with pytest.raises(InputError) as err:
        load_ssh_config({SSH_CONFIG_ENV: str(bad)})
    assert str(err.value).startswith(f"{bad}:3: ")


def test_include_loops_are_bounded(tmp_path):
    loop = tmp_path / "loop"
    loop.write_text(f"Include {loop}\n")
    with pytest.raises(InputError, match="Include"):
        parse_config_text(loop.read_text(), base_dir=tmp_path)


def test_target_for_names_a_bad_proxyjump(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.write_text("Host *\n  ProxyJump @nobody\n")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(cfg))
    h = SimpleNamespace(name="n", address="n", user="root", port=22, key_file=None)
    with pytest.raises(InputError, match="ssh_config for n: bad ProxyJump"):
        target_for(h)
    cmd, port = login_hint(h)          # never raises: the inventory's own values
    assert (cmd, port) == ("ssh root@n", 22)


def test_max_jumps_is_enforced_on_long_nested_chains():
    lines = "".join(f"Host h{i}\n  ProxyJump h{i + 1}\n" for i in range(MAX_JUMPS + 2))
    with pytest.raises(ValueError):
        resolve("h0", config=lines)


# -- netcheck's fix text uses the real login ----------------------------------------------
def test_unreachable_fix_names_the_real_port_and_user(tmp_path, monkeypatch):
    monkeypatch.setenv(SSH_CONFIG_ENV, "none")
    h = SimpleNamespace(name="n2", address="10.0.0.2", user="admin", port=2222, key_file=None,
                        vars={"ansible_user": "admin", "ansible_port": 2222})
    cmd, port = login_hint(h)
    node = NodeInfo(name="n2", address="10.0.0.2", reachable=False, error="refused",
                    ssh_command=cmd, ssh_port=port)
    (finding,) = [f for f in analyze([node], [], [], Settings()) if f.code == "unreachable"]
    assert "`ssh -p 2222 admin@10.0.0.2`" in finding.fix
    assert "drops port 2222" in finding.fix and "port 22;" not in finding.fix


# -- errors name the real target ----------------------------------------------------------
TARGET = resolve("gpu2")
HOP = TARGET.jump


def _error(exc, hop=TARGET):
    return str(_connect_error("gpu2", exc, hop, TARGET, Path("/kh"), 10))


def test_connect_errors_are_one_line_naming_the_target():
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("10.0.0.2", 2200): ConnectionRefusedError(111, "Connection refused")})
    assert _error(refused) == ("gpu2: cannot connect to ops@10.0.0.2:2200 via "
                               "jumper@bastion.example.org:22: Connection refused")
    assert _error(socket.timeout(), HOP) == (
        "gpu2: timed out connecting to jump host jumper@bastion.example.org:22 (on the way "
        "to ops@10.0.0.2:2200) after 10s")
    banner = paramiko.SSHException("Error reading SSH protocol banner")
    banner.__context__ = EOFError()
    assert "port 2200 accepted the connection but closed it without an SSH greeting" in \
        _error(banner)
    auth = _error(paramiko.AuthenticationException("Authentication failed."))
    assert auth.startswith("gpu2: authentication failed as ops@10.0.0.2:2200 via ")
    assert "key files:" in auth and "ssh-agent:" in auth
    assert "ssh-add" in _error(paramiko.PasswordRequiredException("encrypted"))
    for text in (refused, banner, auth):
        assert "\n" not in str(text) and "Traceback" not in str(text)


def test_a_changed_key_of_a_jump_host_is_a_host_key_error():
    key = paramiko.RSAKey.generate(1024)
    other = paramiko.RSAKey.generate(1024)
    err = _connect_error("gpu2", paramiko.BadHostKeyException("b", other, key), HOP, TARGET,
                         Path("/kh"), 10)
    assert isinstance(err, HostKeyError)
    assert "HOST KEY CHANGED for jump host jumper@bastion.example.org:22" in str(err)
    assert isinstance(_connect_error("gpu2", OSError(113, "No route to host"), TARGET, TARGET,
                                     Path("/kh"), 10), UnreachableError)


def test_paramiko_logs_nothing():
    import clusterctl.remote

    assert clusterctl.remote.Connection      # importing the module silences paramiko
    log = logging.getLogger("paramiko.transport")
    assert not log.isEnabledFor(logging.ERROR)


# -- the same login for tools that run OpenSSH themselves ----------------------------------
@pytest.mark.parametrize("address, config, given", [
    ("gpu2", CONFIG, {}),
    ("gpu1", CONFIG, {"user": "root", "key_file": "/keys/with space",
                      "known_hosts_file": "/inv/known_hosts"}),
    ("n1", "Host n1\n  ProxyJump a@first:2022,second\n  IdentitiesOnly yes\n", {}),
    ("lonely", CONFIG, {"port": 2222}),
])
def test_openssh_config_logs_in_the_same_way(address, config, given):
    target = resolve(address, config=config, **given)
    block = target.openssh_config("node")
    again = resolve_target(InventorySSH("node"), parse_config_text(block), jump_user="other")

    def shape(t):
        return (t.hostname, t.user, t.port, t.key_files, t.identities_only, t.proxy_command,
                [(h.login, h.key_files, h.proxy_command) for h in t.hops])
    assert shape(again) == shape(target)
    assert again.known_hosts_file == target.known_hosts_file


def test_openssh_config_keeps_percent_signs_literal():
    block = resolve("x", config=None, key_file="/keys/100%d").openssh_config("x")
    assert "  IdentityFile /keys/100%%d\n" in block      # OpenSSH reads %% as %


def test_a_broken_known_hosts_line_is_one_clear_error(tmp_path, monkeypatch):
    from clusterctl.remote import Connection

    monkeypatch.setenv(SSH_CONFIG_ENV, "none")
    kh = tmp_path / "known_hosts"
    kh.write_text("[10.0.0.9]:22 ssh-ed25519 AAAA!!notbase64\n")
    h = SimpleNamespace(name="n9", address="10.0.0.9", user="root", port=22, key_file=None,
                        known_hosts_file=str(kh))
    with pytest.raises(HostKeyError) as err:      # before any connection is tried
        Connection(h).open()
    assert str(err.value) == (f"n9: cannot read known_hosts {kh}: a key that is not base64: "
                              "'[10.0.0.9]:22 ssh-ed25519 AAAA!!notbase64'")
