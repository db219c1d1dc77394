"""clusterctl.monitoring (pure parts and the client's transports) and the monitoring role's
templates, without hosts: file_sd text from deployment records, PromQL, strict parsing of
Prometheus answers (hostile ones included), rows, and the SSH transport's script run by
the local bash against a local HTTP server standing in for Prometheus."""
from __future__ import annotations

import copy
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl import monitoring as mon
from clusterctl.deploy.layout import Deployment, Group, UnitSpec, parse_record, record_json
from clusterctl.engine.templating import render_file
from clusterctl.errors import InputError
from clusterctl.inventory import DEFAULTS

from localconn import LocalConnection

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "monitoring"


def _deployment(name="tiny", backend="llamacpp", groups=None, **extra) -> Deployment:
    groups = groups or [Group(0, "n1", "198.18.0.11", 8000, ["n1", "n2"], ["u"])]
    units = [UnitSpec(host="n1", name=f"clusterctl-{name}.service", kind="llama-server",
                      argv=["llama-server"])]
    dep = Deployment(name=name, backend=backend, model="m.gguf", model_path="/opt/models/m",
                     served_name=name, head="n1", groups=groups, units=units)
    for k, v in extra.items():
        setattr(dep, k, v)
    return dep


# --------------------------------------------------------------------------- file_sd


def test_targets_of_a_deployment_one_per_replica_with_labels():
    dep = _deployment(groups=[Group(0, "n1", "198.18.0.11", 8001, ["n1"], ["a"]),
                              Group(1, "n2", "198.18.0.12", 8002, ["n2"], ["b"])])
    path, text = mon.deployment_targets(dep)
    assert path == "/etc/prometheus/clusterctl.d/tiny.json"
    assert json.loads(text) == [
        {"targets": ["198.18.0.11:8001"], "labels": {"deployment": "tiny", "backend": "llamacpp",
                                                     "model": "tiny", "replica": "0",
                                                     "host": "n1"}},
        {"targets": ["198.18.0.12:8002"], "labels": {"deployment": "tiny", "backend": "llamacpp",
                                                     "model": "tiny", "replica": "1",
                                                     "host": "n2"}}]
    # the record as deploy-model keeps it on the head gives the same file
    assert mon.deployment_targets(json.loads(record_json(dep))) == (path, text)
    assert mon.deployment_targets(parse_record(record_json(dep))) == (path, text)


def test_targets_text_is_deterministic_and_the_record_is_not_changed():
    dep = _deployment()
    before = copy.deepcopy(dep.to_record())
    assert mon.deployment_targets(dep) == mon.deployment_targets(dep)
    assert dep.to_record() == before


def test_ipv6_target_in_brackets():
    dep = _deployment(groups=[Group(0, "n1", "fd00::11", 8000, ["n1"], ["a"])])
    assert json.loads(mon.deployment_targets(dep)[1])[0]["targets"] == ["[fd00::11]:8000"]


def test_llama_server_with_an_api_key_goes_to_the_authenticated_job():
    """llama-server answers /metrics only with a key; vLLM's key guards /v1 only."""
    keyed = {**_deployment().to_record(), "api_key_secrets": ["team"]}
    assert mon.deployment_targets(keyed)[0] == "/etc/prometheus/clusterctl.d/auth/tiny.json"
    vllm = {**_deployment(backend="vllm").to_record(), "api_key_secrets": ["team"]}
    assert mon.deployment_targets(vllm)[0] == "/etc/prometheus/clusterctl.d/tiny.json"
    assert mon.deployment_targets_paths("tiny") == [
        "/etc/prometheus/clusterctl.d/tiny.json", "/etc/prometheus/clusterctl.d/auth/tiny.json"]


@pytest.mark.parametrize("change, key", [
    ({"name": "../../etc/passwd"}, "name"),
    ({"name": ""}, "name"),
    ({"backend": "tgi"}, "backend"),
    ({"groups": []}, "groups"),
    ({"groups": "x"}, "groups"),
    ({"groups": [[]]}, "groups"),
    ({"groups": [{"ip": "1.2.3.4; rm -rf /", "port": 1, "host": "n"}]}, "groups.ip"),
    ({"groups": [{"ip": "1.2.3.4", "port": 0, "host": "n"}]}, "groups.port"),
    ({"groups": [{"ip": "1.2.3.4", "port": True, "host": "n"}]}, "groups.port"),
    ({"groups": [{"ip": "1.2.3.4", "port": "80", "host": "n"}]}, "groups.port"),
])
def test_a_bad_record_is_one_input_error_naming_the_field(change, key):
    record = {**_deployment().to_record(), **change}
    with pytest.raises(InputError) as err:
        mon.deployment_targets(record)
    assert err.value.key == key


def test_a_record_that_is_not_a_mapping_is_an_input_error():
    with pytest.raises(InputError):
        mon.deployment_targets(["tiny"])


def test_register_writes_the_file_and_moves_it_when_a_key_is_added(monkeypatch, tmp_path):
    monkeypatch.setattr(mon, "SD_DIR", str(tmp_path / "sd"))
    monkeypatch.setattr(mon, "SD_AUTH_DIR", str(tmp_path / "sd" / "auth"))
    conn = LocalConnection(_Host())
    plain = mon.register_deployment(conn, _deployment())
    assert plain == str(tmp_path / "sd" / "tiny.json")
    assert json.loads(Path(plain).read_text())[0]["labels"]["deployment"] == "tiny"
    assert oct(Path(plain).stat().st_mode & 0o777) == "0o644"
    keyed = mon.register_deployment(conn, {**_deployment().to_record(),
                                           "api_key_secrets": ["team"]})
    assert keyed == str(tmp_path / "sd" / "auth" / "tiny.json")
    assert not Path(plain).exists() and Path(keyed).exists()
    mon.unregister_deployment(conn, "tiny")
    assert not Path(keyed).exists()
    mon.unregister_deployment(conn, "tiny")                 # absent: no error
    with pytest.raises(InputError):
        mon.unregister_deployment(conn, "-rf /")


class _Inv:
    def __init__(self, settings):
        self.head = type("H", (), {"vars": {"monitoring": settings}})()


def test_monitoring_enabled_only_when_the_inventory_says_true():
    assert mon.monitoring_enabled(_Inv({"enabled": True}))
    assert not mon.monitoring_enabled(_Inv({"enabled": False}))
    assert not mon.monitoring_enabled(_Inv(None))
    assert not mon.monitoring_enabled(_Inv({"enabled": "yes"}))


# --------------------------------------------------------------------------- PromQL


def test_queries_cover_both_backends_by_deployment():
    q = mon.metric_queries("1m")
    assert set(q) == set(mon.METRICS)
    assert q["requests_per_s"] == \
        'sum by (deployment) (rate(vllm:request_success_total{deployment!=""}[1m]))'
    assert "vllm:generation_tokens_total" in q["tokens_per_s"]
    assert "llamacpp:tokens_predicted_total" in q["tokens_per_s"]
    assert q["ttft_p50_s"].startswith("histogram_quantile(0.5, sum by (deployment, le)")
    assert "vllm:time_to_first_token_seconds_bucket" in q["ttft_p50_s"]
    assert "vllm:num_requests_waiting" in q["waiting"] and \
        "llamacpp:requests_deferred" in q["waiting"]
    assert "llamacpp:requests_processing" in q["running"]
    for text in q.values():       # every query only reads the targets deploy-model wrote
        assert text.count("{") == text.count('{deployment!=""}')
        assert text.count("(") == text.count(")")
    assert mon.metric_queries("30s")["tokens_per_s"].count("[30s]") == 2


@pytest.mark.parametrize("window", ["", "1", "0m", "1m]) or up[", "1d", 5, None])
def test_a_bad_window_is_an_input_error(window):
    with pytest.raises(InputError):
        mon.metric_queries(window)


# --------------------------------------------------------------------------- answers


def _vector(*series) -> str:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [1700000000.1, value]} for labels, value in series]}})


def test_vector_answer_parsed_and_nan_is_no_value():
    got = mon.parse_query_answer(_vector(({"deployment": "a"}, "2.5"),
                                         ({"deployment": "b"}, "NaN"),
                                         ({"deployment": "c"}, "+Inf")))
    assert got == [mon.Sample({"deployment": "a"}, 2.5), mon.Sample({"deployment": "b"}, None),
                   mon.Sample({"deployment": "c"}, None)]
    assert mon.parse_query_answer(_vector()) == []
    scalar = json.dumps({"status": "success", "data": {"resultType": "scalar",
                                                       "result": [1.0, "3"]}})
    assert mon.parse_query_answer(scalar) == [mon.Sample({}, 3.0)]


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("<html>502 Bad Gateway</html>", "not JSON"),
    ("[]", "JSON object"),
    ('{"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}',
     "bad_data: parse error"),
    ('{"status": "success"}', "'data'"),
    ('{"status": "warning", "data": {}}', "status success"),
    ('{"status": "success", "data": {"resultType": "matrix", "result": []}}', "vector"),
    ('{"status": "success", "data": {"resultType": "vector", "result": {}}}', "list"),
    ('{"status": "success", "data": {"resultType": "vector", "result": [1]}}', "object"),
    ('{"status": "success", "data": {"resultType": "vector", "result": [{"value": 1}]}}',
     "[time"),
    ('{"status": "success", "data": {"resultType": "vector", "result": '
     '[{"metric": {}, "value": [1, "lots"]}]}}', "not a number"),
    ('{"status": "success", "data": {"resultType": "vector", "result": '
     '[{"metric": {}, "value": [1, 2]}]}}', "[time"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
])
def test_malformed_answers_are_one_metrics_error(text, says):
    with pytest.raises(mon.MetricsError) as err:
        mon.parse_query_answer(text)
    assert says in str(err.value)


def test_an_oversized_answer_is_refused_before_parsing():
    with pytest.raises(mon.MetricsError, match="larger than"):
        mon.parse_query_answer(b" " * (mon.ANSWER_LIMIT + 1))


def test_error_text_from_the_answer_is_printable_and_bounded():
    text = json.dumps({"status": "error", "errorType": "x\x1b[31m", "error": "y" * 5000})
    with pytest.raises(mon.MetricsError) as err:
        mon.parse_query_answer(text)
    message = str(err.value)
    assert "\x1b" not in message and len(message) < 400


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.sampled_from(["status", "data", "resultType", "result",
                                                       "metric", "value", "activeTargets",
                                                       "labels", "health"]), kids, max_size=4),
                    max_leaves=30))
def test_any_json_is_parsed_or_refused_never_a_crash(value):
    text = json.dumps(value)
    for parse in (mon.parse_query_answer, mon.parse_targets_answer):
        try:
            out = parse(text)
        except mon.MetricsError:
            continue
        assert isinstance(out, list)


def test_targets_answer():
    text = json.dumps({"status": "success", "data": {"activeTargets": [
        {"labels": {"job": "node", "instance": "10.0.0.1:9100", "host": "n1"},
         "scrapePool": "node", "health": "up", "lastError": ""},
        {"labels": {"job": "ray", "instance": "10.0.0.2:8090"}, "health": "down",
         "lastError": "connection refused"},
        {"labels": {}, "scrapePool": "deployments", "health": "sideways"}],
        "droppedTargets": []}})
    got = mon.parse_targets_answer(text)
    assert [(t.job, t.instance, t.health) for t in got] == [
        ("node", "10.0.0.1:9100", "up"), ("ray", "10.0.0.2:8090", "down"),
        ("deployments", "", "unknown")]
    assert [t.instance for t in mon.unhealthy_targets(got)] == ["10.0.0.2:8090", ""]
    assert got[1].last_error == "connection refused"


def test_env_file():
    text = "# comment\nPROMETHEUS_URL=http://10.0.0.1:9090\n\nbroken\nPROMETHEUS_SD_DIR=/x\n"
    assert mon.parse_env_file(text) == {"PROMETHEUS_URL": "http://10.0.0.1:9090",
                                        "PROMETHEUS_SD_DIR": "/x"}


# --------------------------------------------------------------------------- client, rows


class FakeTransport:
    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def __call__(self, paths):
        self.calls.append(list(paths))
        out = []
        for p in paths:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(p).query).get("query", [""])[0]
            out.append(self.answers.get(query, _vector()))
        return out


def test_one_refresh_is_one_round_trip_and_rows_per_deployment():
    q = mon.metric_queries("1m")
    transport = FakeTransport({
        q["tokens_per_s"]: _vector(({"deployment": "tiny"}, "12.5"),
                                   ({"deployment": "other"}, "1")),
        q["requests_per_s"]: _vector(({"deployment": "big"}, "0.5")),
        q["ttft_p50_s"]: _vector(({"deployment": "big"}, "0.042"), ({"deployment": "tiny"},
                                                                   "NaN")),
        q["waiting"]: _vector(({"deployment": "tiny"}, "3"), ({"deployment": "big"}, "0")),
        q["kv_cache"]: '{"status": "error", "errorType": "timeout", "error": "slow"}',
    })
    data = mon.metrics_rows(mon.PrometheusClient(transport), ["tiny", "big"])
    assert len(transport.calls) == 1 and len(transport.calls[0]) == len(mon.METRICS)
    rows = {r["name"]: r for r in data["deployments"]}
    assert list(rows) == ["tiny", "big"]
    assert rows["tiny"]["tokens_per_s"] == 12.5 and rows["tiny"]["waiting"] == 3
    assert rows["tiny"]["ttft_p50_s"] is None and rows["tiny"]["requests_per_s"] is None
    assert rows["big"]["requests_per_s"] == 0.5 and rows["big"]["ttft_p50_s"] == 0.042
    assert rows["big"]["kv_cache"] is None
    assert data["problems"] == ["kv_cache: kv_cache: Prometheus says timeout: slow"]
    json.dumps(data)                                  # JSON data, as it is
    lines = mon.render_rows(data)
    assert lines[0].split() == ["deployment", "req/s", "tok/s", "TTFT", "p50", "waiting",
                                "running", "KV", "cache"]
    assert lines[1].split() == ["tiny", "-", "12.50", "-", "3", "-", "-"]
    assert lines[2].split() == ["big", "0.50", "-", "42", "ms", "0", "-", "-"]
    assert lines[3] == "metrics: kv_cache: kv_cache: Prometheus says timeout: slow"


def test_prometheus_that_cannot_be_asked_gives_no_rows_and_says_why():
    def down(paths):
        raise mon.MetricsError("monitoring is not set up on this host")
    data = mon.metrics_rows(mon.PrometheusClient(down), ["tiny"])
    assert data == {"deployments": [], "problems": ["monitoring is not set up on this host"],
                    "window": "1m"}
    assert mon.render_rows(data) == ["metrics: monitoring is not set up on this host"]


def test_a_transport_answering_short_is_an_error():
    with pytest.raises(mon.MetricsError, match="expected 1 answers"):
        mon.PrometheusClient(lambda paths: []).targets()


def test_http_transport_turns_connection_errors_into_metrics_errors():
    def refuse(url, timeout):
        raise ConnectionRefusedError("refused")
    [answer] = mon.http_transport("http://10.0.0.1:9090/", opener=refuse)(["/api/v1/targets"])
    assert isinstance(answer, mon.MetricsError) and "10.0.0.1:9090" in str(answer)


# -- the SSH transport's script, run by the local bash against a local stand-in server --

class _Prometheus(http.server.BaseHTTPRequestHandler):
    answers: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        code, body = self.answers.get((url.path, query), (200, _vector()))
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Prometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Host:
    name = "head"


def test_ssh_transport_asks_everything_in_one_command(prometheus, monkeypatch):
    q = mon.metric_queries("1m")
    monkeypatch.setattr(_Prometheus, "answers", {
        ("/api/v1/query", q["tokens_per_s"]): (200, _vector(({"deployment": "tiny"}, "7"))),
        ("/api/v1/query", q["waiting"]): (400, '{"status": "error", "errorType": "bad_data", '
                                               '"error": "nope"}'),
    })
    LocalConnection.calls = []
    client = mon.PrometheusClient(mon.ssh_transport(LocalConnection(_Host()), prometheus))
    data = mon.metrics_rows(client, ["tiny"])
    assert len([c for c in LocalConnection.calls if c[0] == "run"]) == 1
    assert data["deployments"][0]["tokens_per_s"] == 7.0
    assert data["deployments"][0]["waiting"] is None
    assert any(p.startswith("waiting: curl exit 22") and "bad_data" in p
               for p in data["problems"]), data["problems"]


def test_ssh_transport_reads_the_url_the_role_wrote(prometheus, monkeypatch, tmp_path):
    env = tmp_path / "monitoring.env"
    env.write_text(f"# written by the role\nPROMETHEUS_URL={prometheus}\n")
    monkeypatch.setattr(mon, "MONITORING_ENV_FILE", str(env))
    answer = json.dumps({"status": "success", "data": {"activeTargets": [
        {"labels": {"job": "node", "instance": "x:9100"}, "health": "up"}]}})
    monkeypatch.setattr(_Prometheus, "answers", {("/api/v1/targets", ""): (200, answer)})
    client = mon.PrometheusClient(mon.ssh_transport(LocalConnection(_Host())))
    assert [t.instance for t in client.targets()] == ["x:9100"]


def test_ssh_transport_without_monitoring_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(mon, "MONITORING_ENV_FILE", str(tmp_path / "absent.env"))
    client = mon.PrometheusClient(mon.ssh_transport(LocalConnection(_Host())))
    with pytest.raises(mon.MetricsError, match="monitoring is not set up"):
        client.targets()


def test_ssh_transport_with_prometheus_down_is_a_metrics_error():
    client = mon.PrometheusClient(mon.ssh_transport(LocalConnection(_Host()),
                                                    "http://127.0.0.1:9", timeout=2))
    with pytest.raises(mon.MetricsError, match="curl exit 7"):
        client.targets()


# --------------------------------------------------------------------------- the role


def _role_vars(**monitoring) -> dict:
    v = copy.deepcopy(DEFAULTS)
    v["monitoring"].update({"enabled": True, **monitoring})
    v.update(yaml.safe_load((ROLE / "defaults.yaml").read_text()))
    v.update(inventory_hostname="n1", cluster_ip="10.0.0.1", listen_ip="10.0.0.1",
             head={"name": "n1", "cluster_ip": "10.0.0.1", "gpus": 0, "is_head": True},
             peers=[{"name": "n2", "cluster_ip": "10.0.0.2", "gpus": 8, "is_head": False},
                    {"name": "n3", "cluster_ip": None, "gpus": 0, "is_head": False},
                    {"name": "n4", "cluster_ip": "fd00::4", "gpus": 0, "is_head": False}])
    return v


def _render(name: str, variables: dict) -> str:
    return render_file(ROLE / "templates" / name, variables,
                       include_paths=[ROLE / "templates", REPO / "templates"])


def _jobs(config: dict) -> dict:
    return {j["job_name"]: j for j in config["scrape_configs"]}


def test_prometheus_config_scrapes_every_node_ray_and_the_deployments():
    config = yaml.safe_load(_render("prometheus.yml.j2", _role_vars()))
    assert config["global"] == {"scrape_interval": "15s", "scrape_timeout": "10s",
                                "evaluation_interval": "15s",
                                "external_labels": {"cluster": "clusterctl"}}
    jobs = _jobs(config)
    assert set(jobs) == {"prometheus", "node", "ray", "deployments", "deployments-auth"}
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["10.0.0.1:9090"],
                                                     "labels": {"host": "n1"}}]
    # every host with a cluster IP (n3 has none: it was not reachable), IPv6 bracketed
    assert jobs["node"]["static_configs"] == [
        {"targets": ["10.0.0.1:9100"], "labels": {"host": "n1"}},
        {"targets": ["10.0.0.2:9100"], "labels": {"host": "n2"}},
        {"targets": ["[fd00::4]:9100"], "labels": {"host": "n4"}}]
    assert jobs["ray"]["file_sd_configs"] == [
        {"files": ["/tmp/ray/prom_metrics_service_discovery.json"], "refresh_interval": "30s"}]
    assert jobs["deployments"]["file_sd_configs"][0]["files"] == [mon.SD_DIR + "/*.json"]
    assert jobs["deployments-auth"]["file_sd_configs"][0]["files"] == \
        [mon.SD_AUTH_DIR + "/*.json"]
    assert jobs["deployments-auth"]["authorization"] == {"credentials_file":
                                                         mon.SCRAPE_KEY_FILE}


def test_dcgm_targets_only_for_hosts_with_gpus_and_a_port():
    assert "dcgm" not in _jobs(yaml.safe_load(_render("prometheus.yml.j2", _role_vars())))
    jobs = _jobs(yaml.safe_load(_render("prometheus.yml.j2",
                                        _role_vars(dcgm_exporter_port=9400))))
    assert jobs["dcgm"]["static_configs"] == [{"targets": ["10.0.0.2:9400"],
                                               "labels": {"host": "n2", "gpus": "8"}}]


@pytest.mark.parametrize("interval, timeout", [("5s", "5s"), ("15s", "10s"), ("1m", "10s")])
def test_scrape_timeout_never_above_the_interval(interval, timeout):
    config = yaml.safe_load(_render("prometheus.yml.j2", _role_vars(scrape_interval=interval)))
    assert config["global"]["scrape_timeout"] == timeout


def test_services_listen_on_the_cluster_ip_with_bounded_retention():
    v = _role_vars(retention="7d", retention_size="512MB")
    unit = _render("prometheus.conf.j2", v)
    assert "--web.listen-address=10.0.0.1:9090" in unit
    assert "--storage.tsdb.retention.time=7d" in unit
    assert "--storage.tsdb.retention.size=512MB" in unit
    assert "--config.file=/etc/prometheus/clusterctl.yml" in unit
    assert "ExecStart=\nExecStart=/usr/bin/prometheus " in unit
    assert "PrivateTmp=false" in unit          # Ray's file_sd file is in the real /tmp
    exporter = _render("node-exporter.conf.j2", v)
    assert "--web.listen-address=10.0.0.1:9100" in exporter
    assert "0.0.0.0" not in unit + exporter
    env = mon.parse_env_file(_render("monitoring.env.j2", v))
    assert env["PROMETHEUS_URL"] == "http://10.0.0.1:9090"
    assert env["PROMETHEUS_SD_DIR"] == mon.SD_DIR


def test_role_and_module_agree_on_paths():
    defaults = yaml.safe_load((ROLE / "defaults.yaml").read_text())
    assert defaults["prometheus_sd_dir"] == mon.SD_DIR
    assert defaults["prometheus_scrape_key"] == mon.SCRAPE_KEY_FILE
    assert defaults["monitoring_env_file"] == mon.MONITORING_ENV_FILE


def test_every_task_of_the_role_is_opt_in():
    tasks = yaml.safe_load((ROLE / "tasks.yaml").read_text())
    assert tasks and all("monitoring.enabled" in str(t.get("when", "")) for t in tasks)
