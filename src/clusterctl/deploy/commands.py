"""Pure command construction for model serving: argv lists, systemd quoting, nginx text,
the readiness requests and how their answers are judged. No I/O.

Flags are the ones the servers document:

* llama.cpp ``ggml-rpc-server`` (tools/rpc): ``-H/--host``, ``-p/--port``, ``-c/--cache``
  (local tensor cache under ``$LLAMA_CACHE/rpc``; tensors above 10 MiB are sent as a hash
  first, so a server that has them on disk is not sent them again), ``-t/--threads``,
  ``-d/--device``.
* ``llama-server``: ``-m``, ``--host``, ``--port``, ``--rpc HOST:PORT,...``, ``-ngl`` (layers
  offloaded to the devices, RPC servers included), ``--tensor-split`` (proportions per
  device), ``-c/--ctx-size``, ``--alias`` (the model name the API shows).
* ``vllm serve MODEL`` (the OpenAI server): ``--served-model-name``, ``--host``, ``--port``,
  ``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--max-model-len``,
  ``--gpu-memory-utilization``, ``--distributed-executor-backend {ray,mp}``; multi-node
  without Ray: ``--nnodes``, ``--node-rank``, ``--master-addr``, ``--master-port``, and
  ``--headless`` on the ranks that do not serve the API.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

__all__ = ["rpc_server_argv", "llama_server_argv", "vllm_server_argv", "systemd_exec",
           "systemd_env", "unit_name", "api_key_problem", "api_key_file_text",
           "api_key_env_text", "nginx_auth_text", "curl_config", "in_flight_from_metrics",
           "nginx_upstream", "chat_request", "judge_models", "judge_chat",
           "exposure_warning", "parse_tensor_split", "Readiness", "FREE_MEMORY_SCRIPT",
           "FreeMemory", "parse_free_memory"]

_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


# --------------------------------------------------------------------------- llama.cpp


def rpc_server_argv(binary: str, host: str, port: int, *, cache: bool = True,
                    threads: int | None = None, devices: list[str] | None = None) -> list[str]:
    """`ggml-rpc-server` bound to `host` (the node's cluster IP, never 0.0.0.0)."""
    _check_bind(host)
    argv = [binary, "--host", host, "--port", str(int(port))]
    if threads:
        argv += ["--threads", str(int(threads))]
    if devices:
        argv += ["--device", ",".join(devices)]
    if cache:
        argv.append("--cache")
    return argv


def llama_server_argv(binary: str, model_path: str, host: str, port: int, *,
                      rpc: list[str] | None = None, n_gpu_layers: int | str = 999,
                      tensor_split: list[float] | None = None, alias: str | None = None,
                      ctx_size: int | None = None, threads: int | None = None,
                      parallel: int | None = None, api_key_file: str | None = None,
                      metrics: bool = True, extra: list[str] | None = None) -> list[str]:
    """`llama-server` on the head: the model, the RPC servers, every layer offloaded.
    `api_key_file`: a 0600 file with the accepted keys, one a line (the keys never go
    into argv); `metrics`: the Prometheus endpoint /metrics (behind the key when set)."""
    _check_bind(host)
    argv = [binary, "--model", model_path, "--host", host, "--port", str(int(port))]
    if rpc:                                  # before -ngl: the RPC devices must exist first
        argv += ["--rpc", ",".join(rpc)]
    argv += ["--n-gpu-layers", str(n_gpu_layers)]
    if tensor_split:
        argv += ["--tensor-split", ",".join(_num(x) for x in tensor_split)]
    if ctx_size:
        argv += ["--ctx-size", str(int(ctx_size))]
    if alias:
        argv += ["--alias", alias]
    if threads:
        argv += ["--threads", str(int(threads))]
    if parallel:
        argv += ["--parallel", str(int(parallel))]
    if api_key_file:
        argv += ["--api-key-file", api_key_file]
    if metrics:
        argv.append("--metrics")
    return argv + list(extra or [])


def parse_tensor_split(text: str | None) -> list[float] | None:
    """'3,1,1' -> [3.0, 1.0, 1.0]; None/'' -> None. ValueError on anything else."""
    if not text:
        return None
    parts = [p.strip() for p in re.split(r"[,/]", text)]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--tensor-split {text!r}: expected proportions like 3,1,1") from None
    if any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise ValueError(f"--tensor-split {text!r}: proportions must be >= 0, one above 0")
    return values


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# --------------------------------------------------------------------------- vLLM


def vllm_server_argv(vllm: str, model_path: str, host: str, port: int, *,
                     served_model_name: str, vllm_args: list[str],
                     executor: str | None = None, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int | None = None,
                     enforce_eager: bool = False, extra: list[str] | None = None) -> list[str]:
    """`vllm serve MODEL ...` (the OpenAI server). `vllm_args` are the plan's
    (Plan.vllm_args()). With nnodes > 1 (multiprocessing executor across nodes), rank 0
    serves the API and the other ranks run `--headless` (only `vllm serve` has it, not
    the older `python -m vllm.entrypoints.openai.api_server`).
    """
    _check_bind(host)
    if executor not in (None, "mp", "ray"):
        raise ValueError(f"executor must be mp or ray, got {executor!r}")
    argv = [vllm, "serve", model_path, "--served-model-name", served_model_name,
            "--host", host, "--port", str(int(port))]
    argv += list(vllm_args)
    if executor:
        argv += ["--distributed-executor-backend", executor]
    if nnodes > 1:
        if executor != "mp":
            raise ValueError("--nnodes needs the mp executor")
        if not master_addr or not master_port:
            raise ValueError("multi-node mp needs master_addr and master_port")
        argv += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                 "--master-addr", master_addr, "--master-port", str(int(master_port))]
        if node_rank > 0:
            argv.append("--headless")
    if enforce_eager:
        argv.append("--enforce-eager")
    return argv + list(extra or [])


# --------------------------------------------------------------------------- systemd


def systemd_exec(argv: list[str]) -> str:
    """An ExecStart= value that systemd splits back into exactly `argv`.

    systemd unquotes "..." and '...' with C-style backslash escapes, and expands
    %-specifiers and $VARIABLES even inside quotes: those are doubled (%% and $$).
    """
    if not argv:
        raise ValueError("empty argv")
    if not str(argv[0]).startswith("/"):
        raise ValueError(f"the program must be an absolute path, got {argv[0]!r}")
    out = []
    for arg in argv:
        arg = str(arg)
        if "\n" in arg or "\x00" in arg:
            raise ValueError(f"argument with a newline or NUL: {arg!r}")
        text = arg.replace("%", "%%").replace("$", "$$")
        if arg and _SAFE_ARG.match(arg):
            out.append(text)
        else:
            out.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def systemd_env(key: str, value: str) -> str:
    """An Environment= value: "KEY=VALUE" in double quotes, with % doubled (a specifier
    there too) and backslashes and quotes escaped; $ is not expanded in Environment=."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise ValueError(f"environment variable name {key!r}")
    value = str(value)
    if "\n" in value or "\x00" in value:
        raise ValueError(f"environment value with a newline or NUL for {key}")
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def unit_name(deployment: str, role: str, index: int | str | None = None) -> str:
    """clusterctl-NAME-ROLE[-INDEX].service; INDEX is a replica's number or the slot
    ("b") of a single replica started beside the old one."""
    if not _NAME_RE.match(deployment):
        raise ValueError(f"deployment name {deployment!r}: letters, digits, _ . - "
                         f"(at most 63, starting with a letter or digit)")
    if isinstance(index, str) and index and not re.match(r"^[a-z]$", index):
        raise ValueError(f"unit slot {index!r}: one lowercase letter")
    suffix = f"-{index}" if index not in (None, "") else ""
    return f"clusterctl-{deployment}-{role}{suffix}.service"


# --------------------------------------------------------------------------- nginx


def _upstream_id(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"upstream name {name!r}: letters, digits, _ . -")
    return "clusterctl_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def nginx_upstream(name: str, servers: list[str], listen: str, *,
                   read_timeout: int = 600, auth_include: str | None = None,
                   tls_cert: str | None = None, tls_key: str | None = None,
                   down: list[str] | tuple[str, ...] = ()) -> str:
    """nginx config: a least_conn upstream of `servers` (HOST:PORT) behind `listen`
    (IP:PORT on the cluster network). Streaming responses are passed through unbuffered;
    a server that refuses the connection or times out is skipped for the next one
    (`proxy_next_upstream error timeout`), so a replica being restarted costs no request.

    `auth_include`: the 0600 file (nginx_auth_text) that maps the request's
    Authorization header to "1" for a known key: every path (not only /v1) answers 401
    without one, and the upstream gets the backends' key instead of the client's.
    `tls_cert`/`tls_key`: the gateway listens with TLS. `down`: servers marked down
    (taken out of rotation during a rolling redeploy)."""
    if not servers:
        raise ValueError("an upstream needs at least one server")
    upstream = _upstream_id(name)
    _check_bind(listen.rsplit(":", 1)[0])
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both a certificate and a key")
    lines = [f"# Written by clusterctl deploy-model for deployment {name}."]
    if auth_include:
        _check_conf_path(auth_include)
        lines += [f"include {auth_include};    # API keys (0600): not in this file", ""]
    lines += [f"upstream {upstream} {{", "    least_conn;"]
    for s in servers:
        if not re.match(r"^[A-Za-z0-9_.:\[\]-]+:\d+$", s):
            raise ValueError(f"upstream server {s!r}: expected HOST:PORT")
        mark = " down" if s in down else ""
        lines.append(f"    server {s} max_fails=2 fail_timeout=10s{mark};")
    if all(s in down for s in servers):
        raise ValueError("every upstream server would be down")
    lines += ["}", "", "server {", f"    listen {listen}{' ssl' if tls_cert else ''};"]
    if tls_cert:
        _check_conf_path(tls_cert)
        _check_conf_path(tls_key or "")
        lines += [f"    ssl_certificate {tls_cert};", f"    ssl_certificate_key {tls_key};",
                  "    ssl_protocols TLSv1.2 TLSv1.3;"]
    lines.append("    client_max_body_size 64m;")
    if auth_include:
        lines += [f"    if (${upstream}_authorized != 1) {{       # every path",
                  "        return 401 '{\"error\": {\"message\": \"missing or wrong API key "
                  "(Authorization: Bearer KEY)\", \"type\": \"authentication_error\", "
                  "\"code\": 401}}\\n';",
                  "    }",
                  "    add_header WWW-Authenticate 'Bearer' always;",
                  "    default_type application/json;"]
    lines += ["    location / {",
              f"        proxy_pass http://{upstream};",
              "        proxy_http_version 1.1;",
              "        proxy_set_header Connection \"\";",
              "        proxy_set_header Host $host;"]
    if auth_include:
        lines.append(f"        proxy_set_header Authorization ${upstream}_backend_auth;")
    lines += ["        proxy_buffering off;",
              "        proxy_next_upstream error timeout;",
              "        proxy_next_upstream_tries 0;",
              "        proxy_connect_timeout 5s;",
              f"        proxy_read_timeout {int(read_timeout)}s;",
              f"        proxy_send_timeout {int(read_timeout)}s;",
              "    }", "}", ""]
    return "\n".join(lines)


def nginx_auth_text(name: str, keys: list[str]) -> str:
    """The 0600 nginx include of a deployment's gateway: $..._authorized is "1" for a
    request whose Authorization header is exactly "Bearer KEY" for one of `keys`
    (case-sensitive: map's plain strings ignore case, so each key is an anchored regex),
    and $..._backend_auth is the header the backends get (the first key)."""
    if not keys:
        raise ValueError("no API keys")
    upstream = _upstream_id(name)
    lines = ["# Written by clusterctl deploy-model: API keys of the gateway (keep 0600).",
             f"map $http_authorization ${upstream}_authorized {{", "    default 0;"]
    for key in keys:
        problem = api_key_problem(key)
        if problem:
            raise ValueError(problem)
        lines.append(f'    "~^Bearer[ ]{_regex_literal(key)}$" 1;')
    lines += ["}", f"map ${upstream}_authorized ${upstream}_backend_auth {{",
              '    default "";', f'    1 "Bearer {keys[0]}";', "}", ""]
    return "\n".join(lines)


def _regex_literal(key: str) -> str:
    """A key (api_key_problem's alphabet) as a PCRE literal without backslashes."""
    return "".join(f"[{c}]" if c in ".+" else c for c in key)


def _check_conf_path(path: str) -> None:
    if not re.match(r"^/[A-Za-z0-9_./-]+$", path):
        raise ValueError(f"path {path!r} in nginx config: expected an absolute plain path")


# --------------------------------------------------------------------------- API keys

_KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
MIN_KEY_LENGTH = 16


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key (None when it can). The value itself is never in
    the text. Keys pass through nginx config, curl config and env files: a token
    alphabet (letters, digits, . _ ~ + / = -) keeps every one of them unquoted."""
    if len(key) < MIN_KEY_LENGTH:
        return (f"too short ({len(key)} characters; at least {MIN_KEY_LENGTH}: make one "
                f"with `openssl rand -hex 32`)")
    if len(key) > 4096:
        return "longer than 4096 characters"
    if not _KEY_RE.match(key):
        return ("has characters other than letters, digits and . _ ~ + / = - (make one "
                "with `openssl rand -hex 32`)")
    return None


def api_key_file_text(keys: list[str]) -> str:
    """llama-server --api-key-file: one key a line."""
    return "".join(k + "\n" for k in keys)


def api_key_env_text(keys: list[str]) -> str:
    """The 0600 EnvironmentFile of a vLLM unit: VLLM_API_KEY (vLLM takes one key from
    the environment; the gateway sends it, whatever key the client used)."""
    return f"VLLM_API_KEY={keys[0]}\n"


def curl_config(headers: list[str], body: str | None = None) -> str:
    """A curl config (`curl -K -` reads it from stdin) with the request's headers and
    body: headers holding a key never reach argv (and so never ps)."""
    def quote(text: str) -> str:
        if "\n" in text or "\r" in text:
            raise ValueError("newline in a curl config value")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [f"header = {quote(h)}" for h in headers]
    if body is not None:
        lines.append(f"data-binary = {quote(body)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- readiness


def chat_request(model: str, prompt: str = "Say hello.", max_tokens: int = 8) -> str:
    """The JSON body of the readiness chat completion. ignore_eos makes even a model
    that would stop at once produce tokens (both vLLM and llama-server accept it)."""
    return json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})


@dataclass
class Readiness:
    ok: bool
    detail: str
    text: str | None = None


def judge_models(body: str, served_name: str) -> Readiness:
    """GET /v1/models: the served model must be listed."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return Readiness(False, f"/v1/models answered with no JSON: {_clip(body)}")
    ids = [m.get("id") for m in (data.get("data") or []) if isinstance(m, dict)] \
        if isinstance(data, dict) else []
    if served_name in ids:
        return Readiness(True, f"/v1/models lists {served_name}")
    if ids:
        return Readiness(False, f"/v1/models lists {', '.join(map(str, ids))}, not "
                                f"{served_name}")
    return Readiness(False, f"/v1/models lists no model yet: {_clip(body)}")


def judge_chat(body: str) -> Readiness:
    """POST /v1/chat/completions: there must be generated text."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return Readiness(False, f"chat completion answered with no JSON: {_clip(body)}")
    if not isinstance(data, dict):
        return Readiness(False, f"chat completion: unexpected answer {_clip(body)}")
    if "error" in data:
        err = data["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        return Readiness(False, f"chat completion error: {_clip(str(msg))}")
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return Readiness(False, f"chat completion has no choices[0].message.content: "
                                f"{_clip(body)}")
    if not isinstance(text, str) or not text:
        reasoning = None
        try:
            reasoning = data["choices"][0]["message"].get("reasoning_content")
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
        if isinstance(reasoning, str) and reasoning:
            return Readiness(True, "chat completion returned reasoning text", reasoning)
        return Readiness(False, "chat completion returned no text")
    return Readiness(True, "chat completion returned text", text)


_IN_FLIGHT = ("llamacpp:requests_processing", "llamacpp:requests_deferred",
              "vllm:num_requests_running", "vllm:num_requests_waiting")


def in_flight_from_metrics(text: str) -> int | None:
    """Requests a server is working on or holding, from its Prometheus /metrics text
    (llama-server --metrics; vLLM): None when the text has none of those gauges."""
    total, seen = 0.0, False
    for line in (text or "").splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _IN_FLIGHT:
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (IndexError, ValueError):
                continue
    return int(total) if seen else None


# --------------------------------------------------------------------------- free memory

FREE_MEMORY_SCRIPT = r"""awk '/^MemAvailable:/ {print "mem", $2}' /proc/meminfo
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,memory.free,memory.total --format=csv,noheader,nounits \
    2>/dev/null | sed 's/^/gpu /'
fi
if command -v nginx >/dev/null 2>&1; then echo "nginx installed"
elif apt-cache policy nginx 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  echo "nginx candidate"
else echo "nginx none"; fi
"""


@dataclass
class FreeMemory:
    """What one host has free right now (FREE_MEMORY_SCRIPT's answer): MemAvailable,
    each GPU's free and total memory (nvidia-smi, MiB, by index), and whether nginx is
    installed ("installed"), installable ("candidate") or neither ("none")."""

    ram_available_mib: int | None = None
    gpu_free_mib: list[int] | None = None
    gpu_total_mib: list[int] | None = None
    nginx: str = "none"


def parse_free_memory(text: str) -> FreeMemory:
    """FREE_MEMORY_SCRIPT's output; lines it does not know are ignored."""
    out = FreeMemory(gpu_free_mib=[], gpu_total_mib=[])
    gpus: dict[int, tuple[int, int]] = {}
    for line in (text or "").splitlines():
        word, _, rest = line.strip().partition(" ")
        try:
            if word == "mem":
                out.ram_available_mib = int(rest.strip()) // 1024     # kB -> MiB
            elif word == "gpu":
                index, free, total = (int(float(x.strip())) for x in rest.split(",")[:3])
                gpus[index] = (free, total)
            elif word == "nginx" and rest.strip() in ("installed", "candidate", "none"):
                out.nginx = rest.strip()
        except ValueError:
            continue
    for i in sorted(gpus):
        out.gpu_free_mib.append(gpus[i][0])
        out.gpu_total_mib.append(gpus[i][1])
    return out


def _clip(text: str, n: int = 200) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= n else text[:n - 3] + "..."


# --------------------------------------------------------------------------- safety


def exposure_warning(addresses: dict[str, str], network: str | None) -> str | None:
    """A loud warning when the serving/RPC/Ray addresses are publicly routable.

    llama.cpp RPC and Ray accept anyone who can connect (no authentication, and the
    protocols allow running code / reading memory), so they must live on a private
    network. `addresses`: host -> the IP the servers bind to.
    """
    public = []
    for host, ip in addresses.items():
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if addr.is_global:
            public.append(f"{host} ({ip})")
    if network and "/" in str(network):
        try:
            net = ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            net = None
        if net is not None and net.is_global and not public:
            public.append(f"cluster.network {network}")
    if not public:
        return None
    return ("WARNING: the cluster network is publicly routable: " + ", ".join(public)
            + ". llama.cpp RPC servers, Ray and the model API are unauthenticated and "
            "bind to this network; anyone who can reach it can use them (and RPC/Ray allow "
            "running code). Put the cluster on a private network (10/8, 172.16/12, "
            "192.168/16) or firewall it to the cluster's hosts.")


def _check_bind(host: str) -> None:
    """Servers bind to one cluster address: never a wildcard."""
    if host in ("0.0.0.0", "::", "", "*"):
        raise ValueError(f"refusing to bind to {host!r}: bind to the node's cluster IP")
