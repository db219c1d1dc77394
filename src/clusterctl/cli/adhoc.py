"""`clusterctl exec | task`: one command or one @task function on every selected host in
parallel, through the session (clusterctl.adhoc), with a per-host recap."""
from __future__ import annotations

import sys

import click

from .common import handle_errors, inventory_options, load_inventory_arg


def _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys):
    from ..session import Session
    inv = load_inventory_arg(None, inventory_opt)
    hosts = inv.select(list(limit) or None)
    return Session(inv, forks=forks, accept_new_host_keys=accept_new_host_keys), hosts


def _adhoc_finish(report, as_json):
    from ..render import console, print_json
    if as_json:
        print_json(report.to_dict())
    else:
        from ..adhoc import render
        render(report, console())
    sys.exit(report.exit_code)


_ADHOC_OPTIONS = [
    click.option("-f", "--forks", type=click.IntRange(1, 500), default=20, show_default=True,
                 help="Hosts worked on in parallel."),
    click.option("--accept-new-host-keys", is_flag=True, help="Trust SSH host keys seen "
                 "for the first time and record them."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable report."),
    click.option("--check", is_flag=True, help="Run nothing that could change a host."),
]


def adhoc_options(fn):
    for opt in reversed(_ADHOC_OPTIONS):
        fn = opt(fn)
    return fn


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@inventory_options
@adhoc_options
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=None,
              help="Seconds before a host's command is cut.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def exec_cmd(inventory_opt, limit, forks, accept_new_host_keys, as_json, check, timeout,
             command):
    """Run COMMAND on every selected host in parallel: per-host output and a recap
    (`clusterctl exec -l workers -- uname -r`). One argument is a shell line; several
    are an argv."""
    from ..adhoc import run_exec
    session, hosts = _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys)
    with session:
        report = run_exec(session, hosts, list(command), timeout=timeout, check=check)
    _adhoc_finish(report, as_json)


@click.command(name="task")
@inventory_options
@adhoc_options
@click.option("--tasks-file", metavar="FILE", help="Python file with @task functions "
              "(default ./tasks.py, then ./fabfile.py).")
@click.option("--arg", "task_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the task (text); repeatable.")
@click.argument("name")
@handle_errors
def task_cmd(inventory_opt, limit, forks, accept_new_host_keys, as_json, check, tasks_file,
             task_args, name):
    """Run your own step NAME, an invoke/Fabric @task function taking a Fabric
    Connection, on every selected host with the same connections as every command."""
    from pathlib import Path
    from ..adhoc import find_tasks_file, run_task
    from ..errors import InputError
    kwargs = {}
    for item in task_args:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--arg {item!r}: expected KEY=VALUE", key="--arg")
        kwargs[key] = value
    path = find_tasks_file(tasks_file)
    session, hosts = _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys)
    with session:
        report = run_task(session, hosts, Path(path), name, check=check, kwargs=kwargs)
    _adhoc_finish(report, as_json)


__all__ = ["exec_cmd", "task_cmd", "adhoc_options"]
