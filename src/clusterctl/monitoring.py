"""Metrics of the deployments, read from the Prometheus that the `monitoring` role runs on
the head (opt-in: `monitoring: {enabled: true}` in the inventory; docs/monitoring.md).

Pure parts (unit-tested without hosts):

* ``deployment_targets(record) -> (path, text)``: the file_sd file through which
  Prometheus scrapes a deployment's model servers (one target per replica);
* ``metric_queries(window)``: PromQL for requests/s, generated tokens/s, time to first
  token (p50), waiting and running requests and KV-cache use of every deployment at once,
  for vLLM (``vllm:*``) and llama-server (``llamacpp:*``) metric names;
* ``parse_query_answer`` / ``parse_targets_answer``: bounded, strict readers of the
  answers of Prometheus's HTTP API (``/api/v1/query``, ``/api/v1/targets``): anything
  malformed is a ``MetricsError``, never a crash or a made-up number;
* ``metrics_rows`` / ``render_rows``: what ``clusterctl status`` shows (JSON data, text).

The client (``PrometheusClient``) asks Prometheus through a *transport*: on the head over
the command's SSH connection (``ssh_transport``: curl runs on the head against
Prometheus's cluster address, so no port is opened to the controller; every query of one
refresh goes in ONE command), or directly over HTTP (``http_transport``) from a controller
on the cluster network.
"""
from __future__ import annotations

import json
import math
import posixpath
import re
import secrets
import shlex
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import ClusterctlError, InputError

__all__ = [
    "SD_DIR", "SD_AUTH_DIR", "SCRAPE_KEY_FILE", "MONITORING_ENV_FILE", "METRICS",
    "MetricsError", "Sample", "Target", "DeploymentMetrics",
    "deployment_targets", "deployment_targets_paths", "metric_queries",
    "monitoring_enabled", "register_deployment", "unregister_deployment",
    "parse_query_answer", "parse_targets_answer", "parse_env_file",
    "PrometheusClient", "ssh_transport", "http_transport",
    "collect_metrics", "metrics_rows", "render_rows", "unhealthy_targets",
]

# Where the role points Prometheus's file_sd (roles/monitoring/defaults.yaml): one JSON
# file per deployment; targets whose /metrics needs an API key go under auth/, scraped
# with the bearer token in SCRAPE_KEY_FILE.
SD_DIR = "/etc/prometheus/clusterctl.d"
SD_AUTH_DIR = SD_DIR + "/auth"
SCRAPE_KEY_FILE = "/etc/prometheus/clusterctl-scrape.key"
# Written by the role on the head: PROMETHEUS_URL=http://<head cluster IP>:<port>
MONITORING_ENV_FILE = "/etc/clusterctl/monitoring.env"

ANSWER_LIMIT = 4 * 1024 * 1024          # bytes of one Prometheus answer we read
SERIES_LIMIT = 10_000                   # series of one answer we read
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class MetricsError(ClusterctlError):
    """Prometheus could not be asked, or answered something that is not a valid answer."""


# --------------------------------------------------------------------------- file_sd


def _record_dict(record: Any) -> Mapping:
    data = record.to_record() if hasattr(record, "to_record") else record
    if not isinstance(data, Mapping):
        raise InputError(f"deployment record: expected a mapping, got {type(data).__name__}",
                         key="record")
    return data


def _record_name(data: Mapping) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(f"deployment record: name: expected a name of [A-Za-z0-9_.-] "
                         f"(at most 63 characters), got {name!r}", key="name")
    return name


def _needs_key(data: Mapping) -> bool:
    """llama-server with an API key answers /metrics only with the key; vLLM's --api-key
    guards /v1 routes only, so its /metrics stays open on the cluster network."""
    return bool(data.get("api_key_secrets")) and data.get("backend") == "llamacpp"


def deployment_targets_paths(name: str) -> list[str]:
    """Both places a deployment's file_sd file can be (for undeploy: remove both)."""
    return [posixpath.join(SD_DIR, f"{name}.json"),
            posixpath.join(SD_AUTH_DIR, f"{name}.json")]


def deployment_targets(record: Any) -> tuple[str, str]:
    """(path on the head, JSON text) of the file_sd file for a deployment: one target per
    replica's server (``groups[i].ip:port``, where /metrics is), labelled ``deployment``,
    ``backend``, ``model``, ``replica`` and ``host``. `record` is a deploy.layout
    Deployment or its record (``to_record()``, the JSON deploy-model keeps on the head).
    Raises InputError naming the field when the record is not usable."""
    data = _record_dict(record)
    name = _record_name(data)
    backend = data.get("backend")
    if backend not in ("llamacpp", "vllm"):
        raise InputError(f"deployment record {name}: backend: expected llamacpp or vllm, "
                         f"got {backend!r}", key="backend")
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        raise InputError(f"deployment record {name}: groups: expected a non-empty list",
                         key="groups")
    served = data.get("served_name") or name
    entries = []
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping):
            raise InputError(f"deployment record {name}: groups[{i}]: expected a mapping",
                             key="groups")
        ip, port, host = g.get("ip"), g.get("port"), g.get("host")
        if not isinstance(ip, str) or not re.fullmatch(r"[0-9A-Fa-f.:]+", ip or ""):
            raise InputError(f"deployment record {name}: groups[{i}].ip: expected an IP "
                             f"address, got {ip!r}", key="groups.ip")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InputError(f"deployment record {name}: groups[{i}].port: expected a port, "
                             f"got {port!r}", key="groups.port")
        address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        index = g.get("index", i)
        entries.append({"targets": [address],
                        "labels": {"deployment": name, "backend": backend,
                                   "model": str(served), "replica": str(index),
                                   "host": str(host or "")}})
    folder = SD_AUTH_DIR if _needs_key(data) else SD_DIR
    return posixpath.join(folder, f"{name}.json"), json.dumps(entries, indent=2) + "\n"


def monitoring_enabled(inventory) -> bool:
    """Whether the inventory turns monitoring on (its head's `monitoring.enabled`)."""
    settings = inventory.head.vars.get("monitoring")
    return isinstance(settings, Mapping) and settings.get("enabled") is True


def register_deployment(conn, record) -> str:
    """Write the deployment's file_sd file on the head (`conn`) and remove its other
    place (a key added or dropped moves it); Prometheus picks it up within 30 s.
    Returns the path written."""
    path, text = deployment_targets(record)
    name = _record_name(_record_dict(record))
    conn.run(["rm", "-f", *[p for p in deployment_targets_paths(name) if p != path]])
    conn.run(["mkdir", "-p", posixpath.dirname(path)])
    conn.put(text.encode(), path, mode=0o644)
    return path


def unregister_deployment(conn, name: str) -> None:
    """Remove the deployment's file_sd file from the head (no error when absent)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(f"deployment name: expected [A-Za-z0-9_.-], got {name!r}", key="name")
    conn.run(["rm", "-f", *deployment_targets_paths(name)])


# --------------------------------------------------------------------------- PromQL

#: what `status` shows per deployment: key -> (column, unit)
METRICS: dict[str, tuple[str, str]] = {
    "requests_per_s": ("req/s", "requests/s"),
    "tokens_per_s": ("tok/s", "generated tokens/s"),
    "ttft_p50_s": ("TTFT p50", "seconds"),
    "waiting": ("waiting", "requests"),
    "running": ("running", "requests"),
    "kv_cache": ("KV cache", "fraction used"),
}

_WINDOW_RE = re.compile(r"^[1-9][0-9]{0,4}[smh]$")
_SEL = '{deployment!=""}'      # only the targets deploy-model registered


def metric_queries(window: str = "1m") -> dict[str, str]:
    """PromQL per metric, each ONE query for every deployment (``by (deployment)``; a
    deployment runs one backend, so the vLLM and llama.cpp halves never overlap).

    llama-server has no completed-requests counter and no first-token histogram: its
    requests/s and TTFT stay empty rather than being guessed."""
    if not isinstance(window, str) or not _WINDOW_RE.match(window):
        raise InputError(f"metrics window: expected a duration like 1m or 30s, got {window!r}",
                         key="window")

    def rate(metric: str) -> str:
        return f"sum by (deployment) (rate({metric}{_SEL}[{window}]))"

    def gauge(metric: str, how: str = "sum") -> str:
        return f"{how} by (deployment) ({metric}{_SEL})"

    return {
        "requests_per_s": rate("vllm:request_success_total"),
        "tokens_per_s": rate("vllm:generation_tokens_total") + " or "
                        + rate("llamacpp:tokens_predicted_total"),
        "ttft_p50_s": "histogram_quantile(0.5, sum by (deployment, le) (rate("
                      f"vllm:time_to_first_token_seconds_bucket{_SEL}[{window}])))",
        "waiting": gauge("vllm:num_requests_waiting") + " or "
                   + gauge("llamacpp:requests_deferred"),
        "running": gauge("vllm:num_requests_running") + " or "
                   + gauge("llamacpp:requests_processing"),
        "kv_cache": gauge("vllm:kv_cache_usage_perc", "max") + " or "
                    + gauge("vllm:gpu_cache_usage_perc", "max"),
    }


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Sample:
    labels: dict
    value: float | None            # None: NaN/Inf (e.g. a quantile without data)


@dataclass(frozen=True)
class Target:
    job: str
    instance: str
    health: str                    # up | down | unknown
    last_error: str
    labels: dict = field(default_factory=dict)


def _load_answer(text: str | bytes, what: str) -> Mapping:
    if isinstance(text, bytes):
        if len(text) > ANSWER_LIMIT:
            raise MetricsError(f"{what}: answer larger than {ANSWER_LIMIT} bytes")
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise MetricsError(f"{what}: no answer")
    if len(text) > ANSWER_LIMIT:
        raise MetricsError(f"{what}: answer larger than {ANSWER_LIMIT} bytes")
    if not text.strip():
        raise MetricsError(f"{what}: empty answer")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise MetricsError(f"{what}: not JSON: {_excerpt(text)}") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{what}: expected a JSON object, got {type(data).__name__}")
    status = data.get("status")
    if status == "error":
        raise MetricsError(f"{what}: Prometheus says {_clean(data.get('errorType'))}: "
                           f"{_clean(data.get('error'))}")
    if status != "success":
        raise MetricsError(f"{what}: expected status success, got {_clean(status)}")
    body = data.get("data")
    if not isinstance(body, dict):
        raise MetricsError(f"{what}: 'data' is not an object")
    return body


def _clean(value: Any, limit: int = 200) -> str:
    """A value from an answer, safe to print: one line, bounded, no control characters."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _excerpt(text: str) -> str:
    return _clean(text.strip(), 120)


def _labels(value: Any) -> dict:
    if not isinstance(value, dict):
        return {}
    return {str(k): _clean(v) for k, v in value.items() if isinstance(v, str)}


def _number(value: Any, what: str) -> float | None:
    """A sample value: Prometheus sends [time, "text"]; NaN/Inf become None."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
        raise MetricsError(f"{what}: a sample is not [time, \"value\"]")
    try:
        number = float(value[1])
    except ValueError:
        raise MetricsError(f"{what}: sample value {_clean(value[1], 40)!r} is not a "
                           "number") from None
    return number if math.isfinite(number) else None


def parse_query_answer(text: str | bytes, what: str = "query") -> list[Sample]:
    """The samples of an instant query's answer (``/api/v1/query``): a vector (one sample
    per series) or a scalar (one sample, no labels)."""
    body = _load_answer(text, what)
    kind, result = body.get("resultType"), body.get("result")
    if kind == "scalar":
        return [Sample({}, _number(result, what))]
    if kind != "vector":
        raise MetricsError(f"{what}: expected a vector, got {_clean(kind)}")
    if not isinstance(result, list):
        raise MetricsError(f"{what}: 'result' is not a list")
    if len(result) > SERIES_LIMIT:
        raise MetricsError(f"{what}: more than {SERIES_LIMIT} series")
    out = []
    for item in result:
        if not isinstance(item, dict):
            raise MetricsError(f"{what}: a series is not an object")
        out.append(Sample(_labels(item.get("metric")), _number(item.get("value"), what)))
    return out


def parse_targets_answer(text: str | bytes) -> list[Target]:
    """The active targets of ``/api/v1/targets``."""
    body = _load_answer(text, "targets")
    active = body.get("activeTargets")
    if not isinstance(active, list):
        raise MetricsError("targets: 'activeTargets' is not a list")
    if len(active) > SERIES_LIMIT:
        raise MetricsError(f"targets: more than {SERIES_LIMIT} targets")
    out = []
    for t in active:
        if not isinstance(t, dict):
            raise MetricsError("targets: a target is not an object")
        labels = _labels(t.get("labels"))
        health = t.get("health")
        out.append(Target(job=labels.get("job") or _clean(t.get("scrapePool") or ""),
                          instance=labels.get("instance", ""),
                          health=health if health in ("up", "down", "unknown") else "unknown",
                          last_error=_clean(t.get("lastError") or "", 300),
                          labels=labels))
    return out


def unhealthy_targets(targets: Iterable[Target]) -> list[Target]:
    return [t for t in targets if t.health != "up"]


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines of the role's monitoring.env (comments and blanks skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- client

# A transport sends GET requests (path with its query string, under the Prometheus URL)
# and returns one answer (text) or a MetricsError per request, in order.
Transport = Callable[[Sequence[str]], list]


class PrometheusClient:
    """Prometheus's HTTP API through a transport (ssh_transport / http_transport)."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def _get(self, paths: Sequence[str]) -> list:
        answers = self.transport(list(paths))
        if len(answers) != len(paths):
            raise MetricsError(f"expected {len(paths)} answers, got {len(answers)}")
        return answers

    def query_many(self, queries: Mapping[str, str]) -> dict[str, list[Sample] | MetricsError]:
        """Instant queries, all in one round trip; a failed one is its MetricsError."""
        keys = list(queries)
        paths = ["/api/v1/query?" + urllib.parse.urlencode({"query": queries[k]}) for k in keys]
        out: dict[str, list[Sample] | MetricsError] = {}
        for key, answer in zip(keys, self._get(paths)):
            if isinstance(answer, MetricsError):
                out[key] = answer
                continue
            try:
                out[key] = parse_query_answer(answer, key)
            except MetricsError as exc:
                out[key] = exc
        return out

    def query(self, promql: str) -> list[Sample]:
        got = self.query_many({"query": promql})["query"]
        if isinstance(got, MetricsError):
            raise got
        return got

    def targets(self) -> list[Target]:
        [answer] = self._get(["/api/v1/targets?state=active"])
        if isinstance(answer, MetricsError):
            raise answer
        return parse_targets_answer(answer)


def _split_marked(stdout: str, marker: str, count: int) -> list:
    """Answers of the SSH script: each is `MARKER <curl exit>` then the body."""
    parts = stdout.split(marker + " ")[1:]
    answers: list = []
    for part in parts[:count]:
        code, _, body = part.partition("\n")
        if code.strip() != "0":
            answers.append(MetricsError(f"curl exit {_clean(code.strip(), 20)} asking "
                                        f"Prometheus: {_excerpt(body) or 'no answer'}"))
        else:
            answers.append(body)
    while len(answers) < count:
        answers.append(MetricsError("no answer from Prometheus (the command was cut short)"))
    return answers


def ssh_transport(conn, url: str | None = None, timeout: float = 5.0) -> Transport:
    """Run curl on the head (`conn`: its remote.Connection) against Prometheus: `url`, or
    the PROMETHEUS_URL the role wrote to MONITORING_ENV_FILE. All requests of one call go
    in one SSH command. Prometheus not set up -> MetricsError saying so."""
    def send(paths: Sequence[str]) -> list:
        marker = "--clusterctl-" + secrets.token_hex(8)
        if url is None:
            lines = [f"f={shlex.quote(MONITORING_ENV_FILE)}",
                     '[ -r "$f" ] || { echo "monitoring is not set up on this host (no $f: '
                     'enable monitoring in the inventory and run bootstrap)" >&2; exit 3; }',
                     "u=$(sed -n 's/^PROMETHEUS_URL=//p' \"$f\" | head -n 1)",
                     '[ -n "$u" ] || { echo "no PROMETHEUS_URL in $f" >&2; exit 3; }']
        else:
            lines = [f"u={shlex.quote(url.rstrip('/'))}"]
        for p in paths:
            lines.append(f"b=$(curl -sS --fail-with-body --max-time {timeout:g} "
                         f"--max-filesize {ANSWER_LIMIT} \"$u\"{shlex.quote(p)} 2>&1); "
                         f"c=$?; printf '%s %s\\n%s\\n' {shlex.quote(marker)} \"$c\" \"$b\"")
        result = conn.run("\n".join(lines), check=False, timeout=timeout * len(paths) + 10)
        if result.exit_code == 3:
            raise MetricsError(_clean(result.stderr.strip() or "monitoring is not set up", 300))
        if result.exit_code != 0 and marker not in result.stdout:
            raise MetricsError(f"asking Prometheus on {getattr(conn, 'name', 'the head')} "
                               f"failed (exit {result.exit_code}): "
                               f"{_excerpt(result.stderr) or 'no output'}")
        return _split_marked(result.stdout, marker, len(paths))
    return send


def http_transport(url: str, timeout: float = 5.0,
                   opener: Callable[..., Any] = urllib.request.urlopen) -> Transport:
    """Ask Prometheus directly (a controller on the cluster network)."""
    base = url.rstrip("/")

    def send(paths: Sequence[str]) -> list:
        out: list = []
        for p in paths:
            try:
                with opener(base + p, timeout=timeout) as resp:
                    out.append(resp.read(ANSWER_LIMIT + 1))
            except OSError as exc:       # URLError, HTTPError, timeouts
                out.append(MetricsError(f"asking Prometheus at {base}: {_clean(str(exc))}"))
        return out
    return send


# --------------------------------------------------------------------------- rows


@dataclass
class DeploymentMetrics:
    """One refresh for one deployment: a value per METRICS key (None: no data, e.g. no
    traffic in the window, or a metric its backend does not have)."""

    name: str
    values: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: self.values.get(k) for k in METRICS}}


def collect_metrics(client: PrometheusClient, names: Iterable[str], *, window: str = "1m"
                    ) -> tuple[dict[str, DeploymentMetrics], list[str]]:
    """One refresh: ({deployment: metrics} for every name, problems). A query that fails
    leaves its metric empty and adds its problem; a transport failure raises
    MetricsError (Prometheus not reachable, monitoring not set up)."""
    names = list(names)
    out = {n: DeploymentMetrics(n, {k: None for k in METRICS}) for n in names}
    problems = []
    for key, got in client.query_many(metric_queries(window)).items():
        if isinstance(got, MetricsError):
            problems.append(f"{key}: {got}")
            continue
        for sample in got:
            name = sample.labels.get("deployment")
            if name in out and sample.value is not None:
                out[name].values[key] = sample.value
    return out, problems


def metrics_rows(client: PrometheusClient, names: Iterable[str], *, window: str = "1m"
                 ) -> dict:
    """The JSON data of one refresh (for `status --json` and every `--watch` refresh):
    ``{"deployments": [{"name", "requests_per_s", "tokens_per_s", "ttft_p50_s",
    "waiting", "running", "kv_cache"}...], "problems": [...], "window": window}``;
    a Prometheus that cannot be asked gives no rows and its one problem."""
    names = list(names)
    try:
        found, problems = collect_metrics(client, names, window=window)
    except MetricsError as exc:
        return {"deployments": [], "problems": [str(exc)], "window": window}
    return {"deployments": [found[n].to_dict() for n in names], "problems": problems,
            "window": window}


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "ttft_p50_s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    if key == "kv_cache":
        return f"{value * 100:.0f}%"
    if key in ("waiting", "running"):
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def render_rows(data: Mapping) -> list[str]:
    """Text lines of metrics_rows(...) data: a header and one aligned row per deployment,
    then the problems."""
    keys = list(METRICS)
    head = ["deployment"] + [METRICS[k][0] for k in keys]
    table = [head]
    for row in data.get("deployments", []):
        table.append([_clean(row.get("name"), 63)] + [_fmt(k, row.get(k)) for k in keys])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = []
    if len(table) > 1:
        for r in table:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(cells).rstrip())
    for p in data.get("problems", []):
        lines.append(f"metrics: {_clean(p, 300)}")
    return lines
