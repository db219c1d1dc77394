"""`clusterctl plan-model | deploy-model | undeploy | status`: parse options, call one
function of clusterctl.deploy (launch or the planner), render the result."""
from __future__ import annotations

import sys
import time

import click

from ..deploy.planner import MAX_NODES
from ..errors import EXIT_BAD_INPUT, EXIT_HOST_FAILED, InputError
from .common import (BoundedInt, FiniteFloat, Proportions, SafeName, handle_errors,
                     inventory_options, load_inventory_arg)


def _inventory_options(fn):
    """The main CLI's -i/--limit, plus the host-key flag."""
    fn = inventory_options(fn)
    return click.option("--accept-new-host-keys", is_flag=True,
                        help="Trust SSH host keys seen for the first time and record them.")(fn)


MAX_CONTEXT = 1 << 31


def _plan_options(fn):
    for opt in reversed([
        click.option("--max-model-len", type=BoundedInt(1, MAX_CONTEXT), metavar="TOKENS",
                     help="Context length to plan (and serve) for; default: the model's, "
                          "capped at 8192."),
        click.option("--gpu-memory-utilization", type=FiniteFloat(0.05, 1.0),
                     default=0.90, show_default=True, help="Share of each GPU vLLM may use."),
        click.option("--kv-cache-dtype", default="auto", show_default=True,
                     help="auto, fp8, ... (vLLM's --kv-cache-dtype; llama.cpp: f16, q8_0, "
                          "q4_0, ...)."),
    ]):
        fn = opt(fn)
    return fn


def _load_inventory(option: str | None):
    return load_inventory_arg(None, option)


def _console(stderr: bool = False):
    from ..render import console
    return console(stderr=stderr)


# --------------------------------------------------------------------------- plan-model


@click.command(name="plan-model")
@click.argument("model")
@_inventory_options
@_plan_options
@click.option("--backend", type=click.Choice(["vllm", "llamacpp"]),
              help="Plan for vLLM (TP/PP) or llama.cpp RPC (layers split by memory); "
                   "default: llamacpp for a GGUF, vllm otherwise (as deploy-model).")
@click.option("--concurrency", type=BoundedInt(1, 100_000), default=1, show_default=True,
              help="Full-length sequences the KV cache must hold at once.")
@click.option("--nodes", "n_nodes", type=BoundedInt(1, MAX_NODES), metavar="N",
              help=f"Plan for N hypothetical nodes (at most {MAX_NODES}) instead of the "
                   f"inventory's hosts.")
@click.option("--gpus-per-node", type=BoundedInt(0, 1024), metavar="G",
              help="With --nodes: GPUs per node (0 = CPU only).")
@click.option("--gpu-memory-gb", "--gpu-memory-gib", "gpu_memory_gb",
              type=FiniteFloat(0.1, 16384), metavar="GIB",
              help="With --nodes: memory of each GPU in GiB (nvidia-smi's MiB / 1024; an "
                   "H100 80GB is 79.6).")
@click.option("--ram-gb", "--ram-gib", "ram_gb", type=FiniteFloat(0.1, 1_048_576),
              metavar="GIB", help="With --nodes: RAM of each node in GiB (CPU plans).")
@click.option("--tensor-split", type=Proportions(), metavar="P1,P2,...",
              help="llama.cpp: share of the layers per device, in llama.cpp's device order "
                   "(default: by memory).")
@click.option("--rpc-on-head", is_flag=True, help="llama.cpp: the serving host's memory "
              "is an RPC device too (as deploy-model --rpc-on-head).")
@click.option("--report", "report_path", metavar="FILE.svg",
              help="Also write the per-device memory bars as an SVG picture.")
@click.option("--json", "as_json", is_flag=True, help="The plan as one JSON object.")
@click.option("-v", "--verbose", count=True)
@handle_errors
def plan_model_command(model, inventory_opt, limit, accept_new_host_keys, max_model_len,
                       gpu_memory_utilization, kv_cache_dtype, backend, concurrency, n_nodes,
                       gpus_per_node, gpu_memory_gb, ram_gb, tensor_split, rpc_on_head,
                       report_path, as_json, verbose):
    """Show how MODEL would be placed (TP/PP or llama.cpp's layer split, memory per GPU,
    server flags) without deploying. Memory is in GiB (2^30 bytes) and MiB, as nvidia-smi.

    MODEL: a GGUF file or Hugging Face folder here, or a path on the head / in models_dir.
    GPUs come from the inventory's hosts (`gpus` / `gpu_memory_mib` host variables; when
    every host states them and MODEL is here, nothing is asked over SSH; otherwise
    nvidia-smi), or from --nodes/--gpus-per-node/--gpu-memory-gb for a what-if."""
    from pathlib import Path

    from ..deploy.modelinfo import read_model_info
    from ..deploy.planner import (NodeGPUs, plan_llamacpp, plan_model, plan_to_dict,
                                  render_plan, render_svg)
    from .common import parse_proportions

    if report_path and not report_path.lower().endswith(".svg"):
        raise click.BadParameter("give a file ending in .svg", param_hint="--report")
    if n_nodes:
        if gpus_per_node is None:
            raise InputError("--nodes needs --gpus-per-node (0 for CPU nodes)",
                             key="--gpus-per-node")
        if gpus_per_node and not gpu_memory_gb:
            raise InputError("--gpus-per-node needs --gpu-memory-gb", key="--gpu-memory-gb")
        mib = int(gpu_memory_gb * 1024) if gpu_memory_gb else 0
        ram = int(ram_gb * 1024) if ram_gb else None
        nodes = [NodeGPUs(f"node{i + 1}", gpus_per_node, mib, ram_mib=ram)
                 for i in range(n_nodes)]
        if not Path(model).expanduser().exists():
            raise InputError(f"{model}: with --nodes, MODEL must be a local file or folder",
                             key="MODEL")
        info = read_model_info(Path(model).expanduser())
    else:
        inv = _load_inventory(inventory_opt)
        info, nodes = _inventory_nodes(inv, model, limit, accept_new_host_keys,
                                       backend or "auto")
    backend = backend or ("llamacpp" if info.format == "gguf" else "vllm")
    if backend == "llamacpp":
        plan = plan_llamacpp(info, nodes, max_model_len=max_model_len,
                             gpu_memory_utilization=gpu_memory_utilization,
                             kv_cache_dtype=kv_cache_dtype, concurrency=concurrency,
                             rpc_on_head=rpc_on_head, strict=False,
                             tensor_split=parse_proportions(tensor_split) if tensor_split
                             else None)
    else:
        if tensor_split or rpc_on_head:
            raise InputError("--tensor-split and --rpc-on-head plan llama.cpp: add "
                             "--backend llamacpp", key="--backend")
        plan = plan_model(info, nodes, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization,
                          kv_cache_dtype=kv_cache_dtype, concurrency=concurrency,
                          strict=False)
    if as_json:
        from ..render import print_json
        print_json(plan_to_dict(plan, info))
    else:
        click.echo(render_plan(plan))
    if report_path:
        try:
            Path(report_path).write_text(render_svg(plan), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the report: {exc.strerror or exc}",
                             file=report_path, key="--report") from None
        click.echo(f"report written to {report_path}", err=True)
    sys.exit(0 if plan.fits else EXIT_BAD_INPUT)


class _NeedsHead(Exception):
    """MODEL is not a local path: finding it needs the head."""


def _stated_nodes(inv, targets, backend: str):
    """NodeGPUs from the inventory alone, or None when a host does not state its GPUs
    (`gpus`, and `gpu_memory_mib` when gpus > 0) or when RAM matters (CPU hosts)."""
    from ..deploy.planner import NodeGPUs
    hosts = sorted(targets, key=lambda h: not h.is_head)
    nodes = []
    for h in hosts:
        count, mem = h.gpus, h.vars.get("gpu_memory_mib")
        if count is None or (count > 0 and not mem):
            return None
        nodes.append(NodeGPUs(h.name, int(count), int(mem or 0)))
    cpu_hosts = [n for n in nodes if n.count == 0]
    if cpu_hosts and (backend != "vllm" or len(cpu_hosts) == len(nodes)):
        return None            # their RAM takes part in the plan: ask the hosts
    return nodes


def _inventory_nodes(inv, model, limit, accept_new_host_keys, backend: str = "auto"):
    from pathlib import Path
    from ..session import Session
    from ..deploy.launch import connect_all, gather_facts, host_infos, node_gpus
    from ..deploy.modelinfo import read_model_info
    from ..deploy.models import models_dir_of, remote_model_info, resolve_model
    targets = inv.select(list(limit) or None)
    if backend == "auto":
        p = Path(model).expanduser()
        backend = "llamacpp" if p.suffix.lower() == ".gguf" else "vllm"
    stated = _stated_nodes(inv, targets, backend)
    if stated is not None:
        def no_head(_p):
            raise _NeedsHead
        try:
            ref = resolve_model(model, models_dir_of(inv), no_head)
        except _NeedsHead:
            ref = None
        if ref is not None and ref.kind == "local":
            return read_model_info(Path(ref.local_path)), stated
    head = inv.head
    hosts = list(targets) + ([head] if head not in targets else [])
    with Session(inv, accept_new_host_keys=accept_new_host_keys) as session:
        conns = connect_all(session, hosts)
        facts = gather_facts(conns)
        infos = host_infos(targets, facts)

        def on_head(p):
            return conns[head.name].run(["test", "-e", p], check=False).exit_code == 0
        ref = resolve_model(model, models_dir_of(inv), on_head)
        if ref.kind == "local":
            info = read_model_info(Path(ref.local_path))
        elif ref.kind == "head" or on_head(ref.remote_path):
            info = remote_model_info(conns[head.name], ref.remote_path)
        else:
            raise InputError(f"{model}: not downloaded yet; plan-model reads local files or "
                             f"the head's copy (`clusterctl sync-model {model}` first)",
                             key="MODEL")
        return info, node_gpus(infos)


# --------------------------------------------------------------------------- deploy-model


@click.command(name="deploy-model")
@click.argument("model")
@_inventory_options
@click.option("--backend", type=click.Choice(["vllm", "llamacpp"]),
              help="Default: llamacpp for GGUF, vllm otherwise.")
@click.option("--name", metavar="NAME", type=SafeName(), help="Deployment name (units, "
              "record, default served model name): letters, digits, _ . - (at most 63); "
              "default: from MODEL.")
@click.option("--port", type=click.IntRange(1, 65535), help="API port on the cluster "
              "network (default: vllm.port of the inventory, 8000; the next free one when "
              "another deployment has it).")
@click.option("--served-model-name", "served_name", metavar="NAME",
              help="Model name clients ask for (default: the deployment name).")
@_plan_options
@click.option("--tensor-parallel-size", "tp", type=BoundedInt(1, 1024),
              help="Override the planner's TP.")
@click.option("--pipeline-parallel-size", "pp", type=BoundedInt(1, MAX_NODES),
              help="Override the planner's PP (on CPU: nodes).")
@click.option("--executor", type=click.Choice(["ray", "mp"]),
              help="vLLM distributed executor (default: ray across GPU nodes, mp on one "
                   "node and on CPU).")
@click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs / compilation.")
@click.option("--cpu-kvcache-gb", type=BoundedInt(1, 65536), help="vLLM on CPU: "
              "VLLM_CPU_KVCACHE_SPACE (GiB).")
@click.option("--vllm-arg", "extra_args", multiple=True, metavar="ARG",
              help="Extra argument for vLLM (repeatable), e.g. --vllm-arg=--dtype=float32.")
@click.option("--rpc-port", type=click.IntRange(1, 65535), help="llama.cpp: RPC server "
              "port (default: llamacpp.rpc_port, 50052).")
@click.option("--tensor-split", metavar="P1,P2,...", type=Proportions(),
              help="llama.cpp: share of the "
              "layers per RPC device (default: by free memory).")
@click.option("--rpc-on-head", is_flag=True, help="llama.cpp: also run an RPC server on "
              "the serving host, so its memory takes layers too.")
@click.option("--no-rpc-cache", is_flag=True, help="llama.cpp: RPC servers without the "
              "local tensor cache.")
@click.option("--replicas", type=BoundedInt(1, 1024), default=1, show_default=True,
              help="Serving groups behind an nginx load balancer (least_conn).")
@click.option("--lb-host", metavar="HOST", help="Host of the load balancer (default: "
              "the head).")
@click.option("--api-key-secret", "api_key_secrets", multiple=True, metavar="NAME",
              help="Require an API key (Authorization: Bearer KEY) on every route: the "
                   "value of secrets.NAME in the inventory (repeatable: any of the keys "
                   "is accepted). Puts the nginx gateway in front, also of one replica.")
@click.option("--tls-cert", metavar="FILE", help="The gateway serves HTTPS with this PEM "
              "certificate (a file here; needs --tls-key).")
@click.option("--tls-key", metavar="FILE", help="The certificate's PEM private key (a file "
              "here; copied 0600 to the gateway host).")
@click.option("--timeout", type=FiniteFloat(1, 7 * 86400), default=900, show_default=True,
              help="Seconds to wait for a real completion.")
@click.option("--restart", is_flag=True, help="Restart the units even when unchanged "
              "(weights reload; llama.cpp RPC servers keep their cache).")
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show the unit files' diffs.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.option("--force", is_flag=True, help="Deploy even on GPU hosts that fail the GPU "
              "health check (ECC errors, fatal XIDs, missing GPUs, ...); they are shown as "
              "warnings.")
@click.option("--break-lock", is_flag=True, help="Take the deployment's lock even if "
              "another run holds it (only when that run is gone).")
@click.option("-v", "--verbose", count=True)
@handle_errors
def deploy_model_command(model, inventory_opt, limit, accept_new_host_keys, backend, name,
                         port, served_name, max_model_len, gpu_memory_utilization,
                         kv_cache_dtype, tp, pp, executor, enforce_eager, cpu_kvcache_gb,
                         extra_args, rpc_port, tensor_split, rpc_on_head, no_rpc_cache,
                         replicas, lb_host, timeout, restart, check, diff, as_json, verbose,
                         force=False, break_lock=False, api_key_secrets=(), tls_cert=None,
                         tls_key=None):
    """Plan, launch and prove MODEL served across the cluster.

    MODEL: a GGUF file or Hugging Face folder on this machine (synced to models_dir), a
    path on the head or in models_dir, or a Hugging Face repo id (downloaded on a node).
    Ready means /v1/models lists it AND a chat completion returns text; then the endpoint
    and the time to ready are printed. On failure, the unit's journal tail is shown."""
    from ..render import LineReporter, print_json
    from ..deploy.commands import parse_tensor_split
    from ..deploy.launch import DeployOptions, deploy_model
    inv = _load_inventory(inventory_opt)
    try:
        split = parse_tensor_split(tensor_split)
    except ValueError as exc:
        raise InputError(str(exc), key="--tensor-split") from None
    out = _console(stderr=as_json)
    opts = DeployOptions(backend=backend, name=name, port=port, rpc_port=rpc_port,
                         replicas=replicas, lb_host=lb_host, served_name=served_name,
                         max_model_len=max_model_len,
                         gpu_memory_utilization=gpu_memory_utilization,
                         kv_cache_dtype=kv_cache_dtype, tensor_parallel_size=tp,
                         pipeline_parallel_size=pp, executor=executor, tensor_split=split,
                         rpc_on_head=rpc_on_head, rpc_cache=not no_rpc_cache,
                         enforce_eager=enforce_eager, cpu_kvcache_gb=cpu_kvcache_gb,
                         extra_args=list(extra_args), timeout=timeout, restart=restart,
                         check=check, diff=diff, limit=list(limit) or None,
                         accept_new_host_keys=accept_new_host_keys, force=force,
                         break_lock=break_lock, api_key_secrets=list(api_key_secrets),
                         tls_cert=tls_cert, tls_key=tls_key)

    def log(text: str) -> None:
        style = "bold red" if text.startswith("WARNING") else "dim"
        out.print(f"[{style}]{_esc(text)}[/{style}]")

    reporter = LineReporter(out, verbosity=verbose, diff=diff)
    result = deploy_model(inv, model, opts, reporter=reporter, log=log)
    dep = result.deployment
    if as_json:
        print_json(result.to_dict())
    elif result.check:
        out.print(f"check: {result.changed} change(s) pending for {dep.name} "
                  f"({dep.backend}); endpoint would be {dep.endpoint}")
    else:
        out.print(f"[bold green]ready[/bold green]: {dep.name} ({dep.backend}, "
                  f"{len(dep.groups)} group(s) on {', '.join(dep.hosts)})")
        out.print(f"  endpoint:      {dep.endpoint}   model: {dep.served_name}")
        out.print(f"  time to ready: {result.ready_seconds:.1f}s"
                  + (f" (+ {result.sync_seconds:.1f}s model sync)" if result.sync_seconds
                     else "")
                  + ("" if result.changed else " (units unchanged)"))
        out.print(f"  reply:         {_esc(repr((result.reply or '')[:80]))}")
        auth = ""
        if dep.api_key_secrets:
            out.print(f"  API key:       required on every route (secrets."
                      f"{', secrets.'.join(dep.api_key_secrets)})")
            auth = " -H \"Authorization: Bearer $KEY\""
        out.print(f"  try:  curl {dep.endpoint}/chat/completions{auth} -H "
                  f"'Content-Type: application/json' -d '{{\"model\": \"{dep.served_name}\", "
                  f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    if result.exit_code:
        sys.exit(result.exit_code)


def _esc(text: str) -> str:
    return text.replace("[", "\\[")


# --------------------------------------------------------------------------- undeploy


@click.command(name="undeploy")
@click.argument("name", required=False)
@_inventory_options
@click.option("--all", "all_", is_flag=True, help="Every deployment.")
@click.option("-v", "--verbose", count=True)
@handle_errors
def undeploy_command(name, inventory_opt, limit, accept_new_host_keys, all_, verbose):
    """Stop and remove deployment NAME (its units on every host, its load balancer and
    its record). NAME may be left out when only one model is deployed. llama.cpp RPC
    caches stay on disk, so a later deploy does not resend the weights."""
    from ..deploy.launch import undeploy
    inv = _load_inventory(inventory_opt)
    if limit:
        raise InputError("undeploy removes a whole deployment; --limit does not apply "
                         "(a host that cannot be reached is recorded and finished later)",
                         key="--limit")
    out = _console()
    removed = undeploy(inv, name, all_=all_, accept_new_host_keys=accept_new_host_keys,
                       log=lambda t: out.print(f"[dim]{_esc(t)}[/dim]"))
    out.print("undeployed: " + ", ".join(removed))


# --------------------------------------------------------------------------- status


@click.command(name="status")
@_inventory_options
@click.option("--json", "as_json", is_flag=True,
              help="JSON: {schema_version, deployments, metrics}.")
@click.option("--watch", "watch", type=FiniteFloat(1, 3600), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C (with monitoring on: live metrics).")
@click.option("--window", default="1m", show_default=True, metavar="DURATION",
              help="Prometheus rate window for the metrics (e.g. 30s, 5m).")
@click.option("-v", "--verbose", count=True)
@handle_errors
def status_command(inventory_opt, limit, accept_new_host_keys, as_json, watch, window,
                   verbose):
    """What is deployed where: each deployment's backend, hosts, endpoint and health
    (ready: every unit active and every endpoint lists the model; degraded: the endpoint
    answers but a unit or replica does not; down). With `monitoring.enabled` in the
    inventory, also each deployment's requests/s, tokens/s, time to first token and
    queue from Prometheus on the head. Works from any controller: the records live on
    the head."""
    from ..monitoring import metric_queries
    from ..deploy.launch import open_session
    inv = _load_inventory(inventory_opt)
    selected = {h.name for h in inv.select(list(limit))} if limit else None   # exit 2 first
    metric_queries(window)                       # a bad --window: exit 2 before connecting
    with open_session(inv, 20, accept_new_host_keys) as session:
        if watch is None:
            rows, metrics = _status_once(inv, session, selected, window)
            _show_status(rows, metrics, as_json, verbose)
            sys.exit(0 if all(r.health == "ready" for r in rows) else EXIT_HOST_FAILED)
        out = _console()
        try:
            while True:
                rows, metrics = _status_once(inv, session, selected, window)
                if not as_json:
                    out.clear()
                    out.print(f"[dim]{time.strftime('%H:%M:%S')}  every {watch:g}s, "
                              f"Ctrl-C to stop[/dim]")
                _show_status(rows, metrics, as_json, verbose)
                time.sleep(watch)
        except KeyboardInterrupt:
            sys.exit(0)


def _status_once(inv, session, selected, window):
    from ..deploy.launch import deployment_metrics, status
    rows = status(inv, session=session)
    if selected is not None:       # the deployments that run on any of the selected hosts
        rows = [r for r in rows if selected & set(r.deployment.hosts)]
    metrics = deployment_metrics(inv, session, [r.deployment.name for r in rows],
                                 window=window) if rows else None
    return rows, metrics


def _show_status(rows, metrics, as_json: bool, verbose: int) -> None:
    from rich.table import Table
    from ..monitoring import render_rows
    from ..render import print_json
    if as_json:
        print_json({"deployments": [r.to_dict() for r in rows], "metrics": metrics})
        return
    out = _console()
    if not rows:
        out.print("nothing deployed")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "backend", "model", "endpoint", "hosts", "health"):
        table.add_column(col, overflow="fold", no_wrap=col in ("endpoint", "health", "backend"))
    style = {"ready": "green", "degraded": "yellow", "down": "bold red"}
    for r in rows:
        d = r.deployment
        table.add_row(d.name, d.backend, d.served_name, d.endpoint, ", ".join(d.hosts),
                      f"[{style[r.health]}]{r.health}[/{style[r.health]}]")
    out.print(table)
    for r in rows:
        if r.health != "ready" or verbose:
            for unit, st in r.units.items():
                if st.get("active") != "active" or verbose:
                    out.print(f"  {r.deployment.name}: {unit} {st.get('active')}"
                              f"/{st.get('sub', '?')}")
            for e, v in r.endpoints.items():
                if v != "ok" or verbose:
                    out.print(f"  {r.deployment.name}: {e}: {_esc(v)}")
        for w in r.lost:
            since = (time.strftime("%H:%M:%S", time.localtime(w["since"]))
                     if isinstance(w.get("since"), (int, float)) else "?")
            out.print(f"  {r.deployment.name}: RPC worker {_esc(w['host'])} lost since "
                      f"{since} ({_esc(w['why'])}): its llama-server is stopped so "
                      f"requests fail at once; serve on the others with "
                      f"`clusterctl deploy-model ... --name {r.deployment.name} "
                      f"--limit '!{_esc(w['host'])}'`")
    if metrics is not None:
        out.print()
        out.print(f"[bold]serving metrics[/bold] [dim](Prometheus on the head, rate over "
                  f"{metrics.get('window')})[/dim]")
        for line in render_rows(metrics):
            out.print(_esc(line))


__all__ = ["plan_model_command", "deploy_model_command", "undeploy_command", "status_command"]
