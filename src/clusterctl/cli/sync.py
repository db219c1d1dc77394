"""`clusterctl sync-model SOURCE`: parse options, run clusterctl.sync's sync_model with a
live bar, render."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from ..errors import ClusterctlError
from .common import Rate, echo_error, load_inventory_arg, parse_rate

if TYPE_CHECKING:       # a type only: importing clusterctl.sync loads SSH (slow start-up)
    from ..sync.report import SyncProgress


def short_names(names: list[str]) -> dict[str, str]:
    """Node names without the prefix they all share up to a '-' or '.' (lab-node1 -> node1)."""
    if len(names) < 2:
        return {n: n for n in names}
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind("-"), prefix.rfind("."))
    if cut < 0:
        return {n: n for n in names}
    return {n: n[cut + 1:] or n for n in names}


def node_states_text(nodes: dict[str, str]) -> str:
    """'node1 ✓ node2 42% node3 failed' — the per-node part of the live bar (rich markup;
    the names are escaped)."""
    from rich.markup import escape
    short = short_names(list(nodes))
    marks = {"verified": "✓", "synced": "✓", "unchanged": "=", "failed": "✗"}
    parts = []
    for name, state in nodes.items():
        mark = marks.get(state, state)
        style = "red" if state == "failed" else "green" if mark == "✓" else ""
        text = escape(f"{short[name]} {mark}")
        parts.append(f"[{style}]{text}[/{style}]" if style else text)
    return "  ".join(parts)


class LiveBar:
    """One rich progress bar: phase, bytes, rate, time left, and each node's state."""

    def __init__(self, console):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[nodes]}"),
            console=console, transient=False, refresh_per_second=4)
        self.task = None
        self.round = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("connecting", total=None, nodes="")
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, p: SyncProgress) -> None:
        from rich.markup import escape
        nodes = node_states_text(p.nodes)
        if p.phase == "transferring":
            if self.round != p.round:
                self.round = p.round
                self.progress.reset(self.task, total=max(1, p.total), completed=0)
            desc = "sync" if p.round <= 1 else f"sync (round {p.round})"
            self.progress.update(self.task, description=desc, total=max(1, p.total),
                                 completed=p.done, nodes=nodes)
        elif p.phase == "done":
            self.progress.update(self.task, description="done", nodes=nodes)
        else:
            desc = p.phase + (f": {escape(p.message)}" if p.message else "")   # a path
            self.progress.update(self.task, description=desc, nodes=nodes)


@click.command(name="sync-model")
@click.argument("source")
@click.option("-i", "--inventory", "inventory_opt", metavar="FILE",
              help="Inventory file (default ./inventory.yaml, then $CLUSTERCTL_INVENTORY).")
@click.option("-l", "--limit", multiple=True, metavar="PATTERN",
              help="Only hosts matching PATTERN (host, group, glob, !exclude); repeatable.")
@click.option("--name", metavar="NAME",
              help="Folder (or file) name under models_dir; default: the source's name.")
@click.option("--verify", is_flag=True,
              help="Hash every file on every node (sha256) instead of the size+mtime check.")
@click.option("--bwlimit", metavar="RATE", type=Rate(),
              help="Cap the stream, e.g. 200M (bytes/s), 1G, 800mbit. Default: link speed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust SSH host keys seen for the first time and record them.")
def sync_model_command(source, inventory_opt, limit, name, verify, bwlimit, as_json,
                       accept_new_host_keys):
    """Put SOURCE at models_dir/NAME on every node, verified against a sha256 manifest.

    SOURCE is a folder or file on this machine, NODE:/path on an inventory host, or a
    Hugging Face repo id (ORG/NAME[@REVISION] or hf:ORG/NAME; downloaded on one node with
    huggingface_hub from python.venv, HF_TOKEN taken from the environment). Nodes that
    hold data forward it along a chain, so this machine sends one copy. Re-runs send only
    what changed; an interrupted sync resumes. Exit 1 when a node failed.
    """
    from rich.console import Console

    from ..render import print_json
    from ..sync.report import render
    from ..sync.run import sync_model

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        rate = parse_rate(bwlimit) if bwlimit else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bwlimit") from None
    try:
        inv = load_inventory_arg(None, inventory_opt)   # warnings verbatim (no markup)
        hosts = inv.select(list(limit)) if limit else None
        with LiveBar(err) as bar:
            report = sync_model(inv, source, name, hosts=hosts, verify=verify, progress=bar,
                                bwlimit=rate, accept_new_host_keys=accept_new_host_keys)
    except ClusterctlError as exc:
        echo_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        from ..errors import interrupted_exit_code, interrupted_message
        click.secho(interrupted_message(exc, "partial files are kept; run again to resume"),
                    fg="red", err=True)
        sys.exit(interrupted_exit_code(exc))
    if as_json:
        print_json(report.to_dict())
    else:
        render(report, Console(highlight=False))
    sys.exit(report.exit_code)
