"""deploy-model --api-key-secret / --tls-*: the gateway's nginx text, the servers' key
files, where the keys go (0600 files, curl configs on stdin) and where they never go
(argv, unit files, records, logs). Pure or against stand-in hosts."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterctl.deploy import launch
from clusterctl.deploy.commands import (api_key_problem, curl_config, llama_server_argv,
                                        nginx_auth_text, nginx_upstream)
from clusterctl.deploy.launch import (DeployOptions, deployment_key, install_secret_files,
                                      read_tls_files, resolve_api_keys, secret_files,
                                      wait_ready)
from clusterctl.deploy.layout import (Access, HostInfo, lb_config, layout_llamacpp,
                                      layout_vllm, parse_record, record_json)
from clusterctl.deploy.planner import NodeGPUs, plan_model
from clusterctl.errors import InputError
from clusterctl.remote import RunResult
from clusterctl.secret import Secret

KEY = "k3y-0123456789abcdef.+/=~_"
KEY2 = "second-key-0123456789ABCDEF"


def three_hosts():
    return [HostInfo("n1", "10.0.0.1", True), HostInfo("n2", "10.0.0.2"),
            HostInfo("n3", "10.0.0.3")]


def cpu_plan():
    from test_deploy_layout import TINY
    return plan_model(TINY, [NodeGPUs(h.name, 0, 0, ram_mib=24000) for h in three_hosts()],
                      max_model_len=512)


def keyed(replicas=1, tls=False, **kw):
    return layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                           rpc_port=50052, replicas=replicas,
                           access=Access(["api_key", "other"], tls=tls), **kw)


# --------------------------------------------------------------------------- commands


def test_llama_server_gets_a_key_file_and_metrics_never_the_key():
    argv = llama_server_argv("/b/llama-server", "/m.gguf", "10.0.0.1", 8001,
                             api_key_file="/etc/clusterctl/keys/tiny.keys")
    i = argv.index("--api-key-file")
    assert argv[i + 1] == "/etc/clusterctl/keys/tiny.keys"
    assert "--metrics" in argv and "--api-key" not in argv


def _nginx_regexes(auth_text: str) -> list[str]:
    return re.findall(r'"~(\^Bearer\[ \].*?\$)" 1;', auth_text)


@given(st.text(alphabet="abcXYZ019._~+/=-", min_size=16, max_size=80))
def test_the_key_map_matches_exactly_the_key_case_sensitively(key):
    text = nginx_auth_text("tiny", [key, KEY2])
    [first, second] = _nginx_regexes(text)
    assert "\\" not in first                       # no escapes for nginx's parser to eat
    assert re.fullmatch(first, f"Bearer {key}")
    assert not re.fullmatch(first, f"Bearer {key}x")
    assert not re.fullmatch(first, f"bearer {key}")
    assert not re.fullmatch(first, f"Bearer {key[:-1]}")
    if key.swapcase() != key:
        assert not re.fullmatch(first, f"Bearer {key.swapcase()}")
    assert re.fullmatch(second, f"Bearer {KEY2}")
    # the backends get the first key, whatever key the client used
    assert f'1 "Bearer {key}";' in text


def test_the_key_map_refuses_keys_that_would_need_quoting():
    for bad in ['has space 0123456789', 'quote"0123456789ab', "sh0rt", "semi;0123456789abc"]:
        assert api_key_problem(bad)
        with pytest.raises(ValueError) as exc:
            nginx_auth_text("tiny", [bad])
        assert bad not in str(exc.value)


def test_gateway_checks_the_key_on_every_path_and_retries_refused_replicas():
    text = nginx_upstream("tiny", ["10.0.0.1:8001", "10.0.0.2:8002"], "10.0.0.1:8000",
                          auth_include="/etc/nginx/clusterctl/tiny.auth.conf")
    http, _, server = text.partition("server {\n")
    assert "include /etc/nginx/clusterctl/tiny.auth.conf;" in http      # http level: map
    location = server.index("location /")
    check = server.index("if ($clusterctl_tiny_authorized != 1)")
    assert check < location                      # server level: before every location
    assert "return 401" in server[check:location]
    assert "proxy_set_header Authorization $clusterctl_tiny_backend_auth;" in server
    assert "proxy_next_upstream error timeout;" in server
    assert "listen 10.0.0.1:8000;" in server


def test_gateway_tls_and_servers_taken_out_of_rotation():
    text = nginx_upstream("tiny", ["10.0.0.1:8001", "10.0.0.2:8002"], "10.0.0.1:8000",
                          tls_cert="/etc/nginx/clusterctl/tiny.crt",
                          tls_key="/etc/nginx/clusterctl/tiny.key", down=["10.0.0.2:8002"])
    assert "listen 10.0.0.1:8000 ssl;" in text
    assert "ssl_certificate_key /etc/nginx/clusterctl/tiny.key;" in text
    assert "server 10.0.0.2:8002 max_fails=2 fail_timeout=10s down;" in text
    assert "server 10.0.0.1:8001 max_fails=2 fail_timeout=10s;" in text
    with pytest.raises(ValueError, match="every upstream server"):
        nginx_upstream("tiny", ["10.0.0.1:8001"], "10.0.0.1:8000", down=["10.0.0.1:8001"])
    with pytest.raises(ValueError, match="both"):
        nginx_upstream("tiny", ["10.0.0.1:8001"], "10.0.0.1:8000", tls_cert="/a.crt")


def test_curl_config_quotes_the_body_and_headers():
    body = json.dumps({"messages": [{"content": 'say "hi" \\ bye'}]})
    text = curl_config([f"Authorization: Bearer {KEY}"], body)
    lines = text.splitlines()
    assert lines[0] == f'header = "Authorization: Bearer {KEY}"'
    value = lines[1][len("data-binary = "):]
    # curl's config unquoting: \\ -> \ and \" -> "
    unquoted = re.sub(r'\\(.)', r"\1", value[1:-1])
    assert json.loads(unquoted) == json.loads(body)
    with pytest.raises(ValueError):
        curl_config(["X: a\nb"])


# --------------------------------------------------------------------------- layout


def test_a_key_puts_the_gateway_in_front_of_one_replica():
    dep = keyed()
    assert dep.lb is not None and dep.lb.port == 8000 and dep.lb.servers == ["10.0.0.1:8001"]
    assert dep.endpoint == "http://10.0.0.1:8000/v1"
    [server] = [u for u in dep.units if u.kind == "llama-server"]
    assert server.bind == "10.0.0.1:8001"                  # cluster IP, behind the gateway
    assert server.key_file == "/etc/clusterctl/keys/tiny.keys"
    assert dep.lb.auth_path == "/etc/nginx/clusterctl/tiny.auth.conf"
    assert dep.api_key_secrets == ["api_key", "other"]
    assert layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                           rpc_port=50052).lb is None       # no key: as before


def test_tls_endpoint_and_record_round_trip():
    dep = keyed(replicas=2, tls=True)
    assert dep.endpoint == "https://10.0.0.1:8000/v1"
    again = parse_record(record_json(dep))
    assert again.lb.tls_key == "/etc/nginx/clusterctl/tiny.key"
    assert again.api_key_secrets == ["api_key", "other"] and again.endpoint == dep.endpoint
    assert again.units[-1].key_file == dep.units[-1].key_file
    down = lb_config(dep, down=[dep.lb.servers[0]])
    assert f"server {dep.lb.servers[0]} max_fails=2 fail_timeout=10s down;" in down
    assert "listen 10.0.0.1:8000 ssl;" in down


def test_old_records_without_access_fields_still_parse():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)
    data = json.loads(record_json(dep))
    data.pop("api_key_secrets")
    for u in data["units"]:
        u.pop("key_file")
    old = parse_record(json.dumps(data))
    assert old.api_key_secrets == [] and old.units[0].key_file is None


def test_vllm_reads_its_key_from_a_required_environment_file():
    plan = cpu_plan()
    dep = layout_vllm("hf", "m", "/m", "hf", plan, three_hosts(), port=8000,
                      access=Access(["api_key"]))
    [unit] = dep.units
    assert unit.key_file == "/etc/clusterctl/keys/hf.env"
    assert unit.template_vars()["secret_env_files"] == ["/etc/clusterctl/keys/hf.env"]
    assert "--api-key" not in " ".join(unit.argv)
    assert dep.lb is not None and unit.bind == "10.0.0.1:8001"


def test_unit_files_name_the_key_file_never_the_key(tmp_path):
    from clusterctl.engine.roles import default_roles_paths, load_role
    from clusterctl.engine.templating import render_file
    plan = cpu_plan()
    vdep = layout_vllm("hf", "m", "/m", "hf", plan, three_hosts(), port=8000,
                       access=Access(["api_key"]))
    for dep, role in ((keyed(), "llamacpp_serve"), (vdep, "vllm_serve")):
        r = load_role(role, default_roles_paths())
        for u in dep.units:
            text = render_file(r.templates_dir / f"{u.kind}.service.j2",
                               {"unit": u.template_vars()}, include_paths=r.template_folders)
            assert KEY not in text
            if u.key_file and u.kind.startswith("vllm"):
                assert f"\nEnvironmentFile={u.key_file}\n" in text     # no '-': required
            elif u.key_file:
                assert f"--api-key-file {u.key_file}" in text


# --------------------------------------------------------------------------- launch


class Inv:
    def __init__(self, secrets):
        from pathlib import Path

        class Head:
            vars = {"secrets": secrets}
        self.head = Head()
        self.path = Path("inventory.yaml")


def test_resolve_api_keys_names_an_unknown_secret_and_hides_values():
    inv = Inv({"api_key": Secret(KEY), "hf_token": Secret("hf_xxxxxxxxxxxxxxxxxx"),
               "weak": Secret("abc")})
    assert [k.reveal() for k in resolve_api_keys(inv, ["api_key", "api_key"])] == [KEY]
    with pytest.raises(InputError) as exc:
        resolve_api_keys(inv, ["api_key", "nope"])
    text = str(exc.value)
    assert "nope" in text and "api_key, hf_token, weak" in text and KEY not in text
    with pytest.raises(InputError) as exc:
        resolve_api_keys(inv, ["weak"])
    assert "too short" in str(exc.value) and "abc" not in str(exc.value).replace(
        "secrets.weak", "")
    with pytest.raises(InputError):
        resolve_api_keys(Inv(None), ["api_key"])


def test_tls_files_are_checked(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n")
    assert read_tls_files(str(cert), str(key))[1].startswith(b"-----BEGIN PRIVATE")
    assert read_tls_files(None, None) is None
    with pytest.raises(InputError, match="--tls-key"):
        read_tls_files(str(cert), None)
    with pytest.raises(InputError, match="not a PEM"):
        read_tls_files(str(key), str(key))
    with pytest.raises(InputError, match="not a regular file"):
        read_tls_files(str(tmp_path), str(key))


def test_secret_files_per_host():
    dep = keyed(replicas=2, tls=True)
    files = secret_files(dep, [Secret(KEY), Secret(KEY2)], (b"CERT", b"KEY"))
    assert files["n1"]["/etc/clusterctl/keys/tiny.keys"] == f"{KEY}\n{KEY2}\n".encode()
    assert files["n1"]["/etc/nginx/clusterctl/tiny.key"] == b"KEY"
    assert b"map $http_authorization" in files["n1"]["/etc/nginx/clusterctl/tiny.auth.conf"]
    server_hosts = {u.host for u in dep.units if u.kind == "llama-server"}
    assert set(files) == server_hosts | {"n1"}


class FileHost:
    """A stand-in host for install_secret_files: sha256sum and put, nothing else."""

    def __init__(self, name, files):
        self.name, self.files, self.commands = name, files, []

    def run(self, cmd, check=True, stdin=None, **kw):
        import hashlib
        self.commands.append(cmd)
        if cmd[0] == "sha256sum":
            out = "".join(f"{hashlib.sha256(self.files[p]).hexdigest()}  {p}\n"
                          for p in cmd[2:] if p in self.files)
            return RunResult("sha", 0, out, "")
        return RunResult("x", 0, "", "")

    def put(self, data, path, mode=None, **kw):
        assert mode == 0o600
        self.files[path] = data if isinstance(data, bytes) else data.encode()


def test_install_writes_0600_files_only_where_they_differ():
    dep = keyed()
    hosts = {h: FileHost(h, {}) for h in ("n1", "n2", "n3")}
    keys = [Secret(KEY)]
    plan = install_secret_files(dep, keys, None, hosts, check=True)
    assert plan == {"n1": {"/etc/clusterctl/keys/tiny.keys": "new",
                           "/etc/nginx/clusterctl/tiny.auth.conf": "new"}}
    assert hosts["n1"].files == {}                                   # check: nothing written
    assert install_secret_files(dep, keys, None, hosts) == plan
    assert install_secret_files(dep, keys, None, hosts) == {}         # unchanged: no write
    assert install_secret_files(dep, [Secret(KEY2)], None, hosts) == {
        "n1": {"/etc/clusterctl/keys/tiny.keys": "changed",
               "/etc/nginx/clusterctl/tiny.auth.conf": "changed"}}
    for cmds in (h.commands for h in hosts.values()):
        assert not any(KEY in " ".join(map(str, c)) for c in cmds)   # never in argv


def test_readiness_sends_the_key_on_stdin_only():
    dep = keyed()
    calls = []

    class Host:
        def __init__(self, name):
            self.name = name

        def run(self, cmd, check=True, stdin=None, **kw):
            if cmd[:2] == ["systemctl", "show"]:
                units = cmd[cmd.index("--") + 1:]
                return RunResult("show", 0, "\n\n".join(
                    f"Id={u}\nActiveState=active\nSubState=running\nNRestarts=0"
                    for u in units), "")
            assert cmd[0] == "curl"
            calls.append((cmd, stdin))
            assert KEY not in " ".join(cmd)
            if f"Bearer {KEY}" not in (stdin or ""):
                return RunResult("curl", 0, '{"error": "401"}\n401', "")
            if cmd[-1].endswith("/models"):
                return RunResult("curl", 0, '{"data": [{"id": "tiny"}]}\n200', "")
            assert "data-binary" in stdin
            return RunResult("curl", 0, '{"choices": [{"message": {"content": "hi"}}]}\n200',
                             "")
    conns = {h: Host(h) for h in ("n1", "n2", "n3")}
    _s, reply = wait_ready(dep, conns, timeout=30, key=Secret(KEY), sleep=lambda s: None)
    assert reply == "hi"
    assert {c[-1] for c, _ in calls} >= {"http://10.0.0.1:8001/v1/chat/completions",
                                        "http://10.0.0.1:8000/v1/chat/completions"}


def test_deployment_key_comes_from_the_inventory_by_name():
    dep = keyed()
    assert deployment_key(Inv({"other": Secret(KEY2)}), dep).reveal() == KEY2
    assert deployment_key(Inv({}), dep) is None
    assert DeployOptions().api_key_secrets == []
    assert launch.deployment_key(Inv({}), layout_llamacpp(
        "tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000, rpc_port=1)) is None


# --------------------------------------------------------------------------- rolling


def test_in_flight_requests_from_metrics():
    from clusterctl.deploy.commands import in_flight_from_metrics
    llama = ("# HELP llamacpp:requests_processing Number of requests processing.\n"
             "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"
             "llamacpp:requests_deferred 1\nllamacpp:tokens_predicted_total 50\n")
    assert in_flight_from_metrics(llama) == 3
    vllm = ('vllm:num_requests_running{engine="0",model_name="m"} 0.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n')
    assert in_flight_from_metrics(vllm) == 0
    assert in_flight_from_metrics('{"error": "401"}') is None
    assert in_flight_from_metrics("") is None


def two_groups(ctx=256, **kw):
    return layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts()[:2], port=8000,
                           rpc_port=50052, replicas=2, ctx_size=ctx,
                           access=Access(["api_key"]), **kw)


def test_which_groups_roll():
    from clusterctl.deploy.launch import group_deployment, rolling_groups
    old = two_groups(256)
    assert rolling_groups(old, two_groups(256)) == []                  # nothing changes
    assert rolling_groups(old, two_groups(512)) == [0, 1]
    assert rolling_groups(old, two_groups(256), restart=True) == [0, 1]
    assert rolling_groups(old, two_groups(256), changed_hosts={"n2"}) == [1]
    assert rolling_groups(None, two_groups(512)) is None
    assert rolling_groups(old, keyed(replicas=1)) is None              # one group
    three = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                            rpc_port=50052, replicas=3, ctx_size=512,
                            access=Access(["api_key"]))
    assert rolling_groups(old, three) is None                          # another shape
    one = group_deployment(two_groups(512), 1)
    assert one.lb is None and [g.index for g in one.groups] == [1]
    assert {u.host for u in one.units} == {"n2"}


class GatewayHost:
    """The gateway/head stand-in for roll(): records nginx configs and reloads."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def put(self, data, path, mode=None, **kw):
        text = data if isinstance(data, str) else data.decode()
        if path.startswith("/etc/nginx/conf.d/"):
            down = re.findall(r"server (\S+) max_fails=2 fail_timeout=10s down;", text)
            self.events.append(("gateway", tuple(down)))
        else:
            self.events.append(("record", json.loads(text)["units"][-1]["argv"][-1]))

    def run(self, cmd, check=True, stdin=None, **kw):
        if cmd[0] == "curl":                                     # /metrics: idle
            return RunResult("curl", 0, "llamacpp:requests_processing 0\n200", "")
        if cmd[:2] == ["mkdir", "-p"]:
            return RunResult("", 0, "", "")
        self.events.append(("run", " ".join(cmd) if isinstance(cmd, list) else cmd))
        return RunResult("", 0, "", "")


def _roll_world(monkeypatch, ready):
    events = []
    conns = {h: GatewayHost(h, events) for h in ("n1", "n2")}

    class Report:
        failed_hosts: list = []

    def fake_run_units(inventory, dep, opts, reporter=None, session=None):
        events.append(("install", tuple(g.index for g in dep.groups)))
        return Report()

    def fake_wait_ready(dep, conns, *, timeout, log, key=None, **kw):
        [g] = dep.groups
        events.append(("ready?", g.index))
        if not ready(g.index):
            raise launch.DeployFailed(f"group {g.index}: never answered")
        return 1.0, "hi"
    monkeypatch.setattr(launch, "run_units", fake_run_units)
    monkeypatch.setattr(launch, "wait_ready", fake_wait_ready)
    return events, conns


def test_roll_takes_each_group_out_restarts_it_and_puts_it_back(monkeypatch):
    from clusterctl.deploy.launch import roll
    old, new = two_groups(256), two_groups(512)
    events, conns = _roll_world(monkeypatch, lambda i: True)
    roll(None, new, old, [0, 1], conns, DeployOptions(), Secret(KEY), lambda s: None)
    flow = [e for e in events if e[0] != "run"]
    s0, s1 = new.lb.servers
    assert flow == [("gateway", (s0,)), ("install", (0,)), ("ready?", 0), ("gateway", ()),
                    ("record", "--metrics"),
                    ("gateway", (s1,)), ("install", (1,)), ("ready?", 1), ("gateway", ()),
                    ("record", "--metrics")]
    reloads = [e for e in events if e[0] == "run" and "reload nginx" in e[1]]
    assert len(reloads) == 4


def test_a_replica_that_never_answers_stops_the_roll_and_stays_out(monkeypatch):
    from clusterctl.deploy.launch import RollingFailed, roll
    old, new = two_groups(256), two_groups(512)
    events, conns = _roll_world(monkeypatch, lambda i: i == 0)
    with pytest.raises(RollingFailed) as exc:
        roll(None, new, old, [0, 1], conns, DeployOptions(), None, lambda s: None)
    text = str(exc.value)
    assert "group 1 (n2" in text and "never answered" in text and "keep serving" in text
    gateways = [e for e in events if e[0] == "gateway"]
    assert gateways[-1] == ("gateway", (new.lb.servers[1],))   # the broken one stays out
    assert ("ready?", 1) in events


def test_metrics_targets_are_the_servers_themselves():
    dep = keyed(replicas=2)
    targets = dep.metrics_targets()
    assert [t["address"] for t in targets] == dep.lb.servers
    assert all(t["needs_key"] and t["api_key_secrets"] == ["api_key", "other"]
               for t in targets)
    open_dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                               rpc_port=50052)
    [t] = open_dep.metrics_targets()
    assert t == {"deployment": "tiny", "backend": "llamacpp", "group": 0, "host": "n1",
                 "address": "10.0.0.1:8000", "kind": "llama-server", "needs_key": False,
                 "api_key_secrets": []}
    vdep = layout_vllm("hf", "m", "/m", "hf", cpu_plan(), three_hosts(), port=8000,
                       access=Access(["api_key"]))
    assert [t["needs_key"] for t in vdep.metrics_targets()] == [False]
