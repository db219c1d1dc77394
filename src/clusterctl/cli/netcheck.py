"""`clusterctl netcheck`: parse options, run the checks (clusterctl.netcheck), render the
result."""
from __future__ import annotations

import sys

import click

from ..errors import EXIT_BAD_INPUT
from .common import BoundedInt, FiniteFloat, handle_errors, load_inventory_arg


@click.command(name="netcheck")
@click.option("-i", "--inventory", "inventory_opt", metavar="FILE",
              help="Inventory file (default ./inventory.yaml, then $CLUSTERCTL_INVENTORY).")
@click.option("-l", "--limit", multiple=True, metavar="PATTERN",
              help="Only hosts matching PATTERN (host, group, glob, !exclude); repeatable.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object on stdout: {"schema_version", "nodes", "links", "findings"} '
                   '(and "collective" with --collective).')
@click.option("--report", "report_path", metavar="FILE.svg|FILE.html",
              help="Also write the heatmap and findings as a picture to share.")
@click.option("--duration", type=FiniteFloat(1, 120), default=3.0, show_default=True,
              metavar="SECONDS", help="Seconds per pair and round (the multi-stream run, "
              "and the 1 s single-stream run out of it).")
@click.option("--parallel/--serial", "parallel", default=True, show_default=True,
              help="Bandwidth in rounds of disjoint pairs (N-1 rounds), or one pair at a time.")
@click.option("--no-bandwidth", is_flag=True, help="Skip iperf3 (RTT, MTU, ports, versions only).")
@click.option("--bidir/--no-bidir", "bidir", default=True, show_default=True,
              help="Both directions of a pair at once (iperf3 --bidir, full duplex: N-1 "
                   "rounds), or one direction at a time (twice the rounds; for links where "
                   "full duplex is not wanted, or hosts short of CPU).")
@click.option("--streams", type=BoundedInt(1, 128), default=4, show_default=True,
              help="Parallel TCP streams per iperf3 run (the main Gbit/s figure).")
@click.option("--single-stream/--no-single-stream", "single_stream", default=True,
              show_default=True,
              help="After each multi-stream run, a 1 s run with one stream (what NCCL/Gloo "
                   "get per flow).")
@click.option("--collective", is_flag=True,
              help="Also run all_reduce and all_gather across the nodes with "
                   "torch.distributed from the cluster venv (Gloo on CPU nodes, NCCL when "
                   "every node has a GPU) over the NIC the env file names: bus bandwidth "
                   "per message size beside the slowest link's iperf3 figure, and who "
                   "failed to join. Needs torch in the venv (python.vllm brings it).")
@click.option("--collective-sizes", metavar="SIZES", default="8K,1M,32M", show_default=True,
              help="Message sizes of --collective, comma separated (binary units).")
@click.option("--collective-bisect-seconds", type=FiniteFloat(0, 3600), default=300.0,
              show_default=True, metavar="S",
              help="When --collective finds the group slow, at most this long re-running "
                   "it on subgroups to name the node(s) that drag it; 0: no bisect.")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust SSH host keys seen for the first time and record them.")
@click.option("-v", "--verbose", count=True, help="Show progress; -vv: tracebacks of bugs.")
@handle_errors
def netcheck_command(inventory_opt, limit, as_json, report_path, duration, parallel,
                     no_bandwidth, bidir, streams, single_stream, collective, collective_sizes,
                     collective_bisect_seconds, accept_new_host_keys, verbose):
    """Prove the network is fit for distributed inference: bandwidth matrix (iperf3),
    jumbo-frame path, RTT, the NIC NCCL/Gloo/vLLM/Ray use, ports to the head, version
    skew, InfiniBand. Exit 1 when any finding is an error."""
    from rich.console import Console
    from rich.markup import escape

    from ..netcheck.collective import parse_sizes
    from ..netcheck.report import render, write_report
    from ..netcheck.run import NetcheckOptions, run_netcheck
    from ..render import print_json

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if report_path and not report_path.lower().endswith((".svg", ".html", ".htm")):
        raise click.BadParameter("give a file ending in .svg or .html", param_hint="--report")
    sizes = tuple(parse_sizes(collective_sizes)) if collective else None
    inv = load_inventory_arg(None, inventory_opt)
    hosts = inv.select(list(limit)) if limit else list(inv.hosts.values())
    options = NetcheckOptions(
        duration=duration, schedule="tournament" if parallel else "serial",
        bandwidth=not no_bandwidth, bidir=bidir, streams=streams,
        single_stream_seconds=1.0 if single_stream else 0.0,
        accept_new_host_keys=accept_new_host_keys, collective=collective,
        collective_sizes=sizes, collective_bisect_seconds=collective_bisect_seconds,
        progress=(lambda m: err.print(f"[dim]{escape(m)}[/dim]")) if verbose or not as_json
        else None)
    result = run_netcheck(inv, hosts, options)
    if as_json:
        print_json(result.to_json())
    else:
        render(result, Console(highlight=False))
    if report_path:
        try:
            path = write_report(result, report_path)
        except OSError as exc:
            click.secho(f"error: cannot write {report_path}: {exc}", fg="red", err=True)
            sys.exit(EXIT_BAD_INPUT)
        err.print(f"report written to {escape(str(path))}")
    sys.exit(result.exit_code)
