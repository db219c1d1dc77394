"""The `clusterctl` command line: the only layer that knows click. Each command parses
options, calls one capability function, renders the result. Exit codes: 0 ok, 1 host(s)
failed, 2 bad input, 3 changes pending under --check.

This module holds the `main` group only. The commands live in one module per family
(`engine`, `adhoc`, `inventory`, `deploy`, `netcheck`, `sync`, `lab`), each importing the
shared `common` module (never this package), and are imported only when used: `clusterctl
bootstrap` loads `cli/engine.py` and nothing of deploy, lab or netcheck.
"""
from __future__ import annotations

import importlib

import click

from .. import __version__
from ..errors import raise_on_terminate
from .common import CONTEXT

#: every command, imported only when used (keeps start-up fast): name -> (module, attribute)
LAZY_COMMANDS = {
    "bootstrap": ("clusterctl.cli.engine", "bootstrap"),
    "apply": ("clusterctl.cli.engine", "apply_cmd"),
    "verify": ("clusterctl.cli.engine", "verify"),
    "exec": ("clusterctl.cli.adhoc", "exec_cmd"),
    "task": ("clusterctl.cli.adhoc", "task_cmd"),
    "example-inventory": ("clusterctl.cli.inventory", "example_inventory_cmd"),
    "inventory": ("clusterctl.cli.inventory", "inventory_command"),
    "lab": ("clusterctl.cli.lab", "lab_group"),
    "mirror": ("clusterctl.cli.lab", "mirror_group"),
    "netcheck": ("clusterctl.cli.netcheck", "netcheck_command"),
    "sync-model": ("clusterctl.cli.sync", "sync_model_command"),
    "plan-model": ("clusterctl.cli.deploy", "plan_model_command"),
    "deploy-model": ("clusterctl.cli.deploy", "deploy_model_command"),
    "undeploy": ("clusterctl.cli.deploy", "undeploy_command"),
    "status": ("clusterctl.cli.deploy", "status_command"),
}


class LazyGroup(click.Group):
    """A group that imports a command's module on first use (see LAZY_COMMANDS)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="clusterctl")
def main():
    """Provision GPU machines into one distributed LLM inference cluster
    (vLLM + Ray, llama.cpp RPC) from one inventory file."""
    raise_on_terminate()


__all__ = ["main", "LAZY_COMMANDS", "LazyGroup"]
