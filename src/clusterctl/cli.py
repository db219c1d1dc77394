"""The `clusterctl` command line. Each command parses options, calls one function,
renders the result. Exit codes: 0 ok, 1 host(s) failed, 2 bad input, 3 changes
pending under --check."""
from __future__ import annotations

import functools
from pathlib import Path
import sys
import traceback

import click

from . import __version__
from .errors import (EXIT_HOST_FAILED, ClusterctlError, interrupted_exit_code,
                     interrupted_message, raise_on_terminate)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def handle_errors(fn):
    """Expected errors: one clear message and their exit code. Bugs: a traceback with -v."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0)
        try:
            return fn(*args, **kwargs)
        except ClusterctlError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException):
            raise  # click reports its own usage errors
        except KeyboardInterrupt as exc:
            click.secho(interrupted_message(exc), fg="red", err=True)
            sys.exit(interrupted_exit_code(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: say so plainly
            if verbose:
                traceback.print_exc()
            click.secho(f"internal error: {type(exc).__name__}: {exc}"
                        + ("" if verbose else " (run with -v for the traceback)"),
                        fg="red", err=True)
            sys.exit(EXIT_HOST_FAILED)
    return wrapper


def inventory_options(fn):
    """-i/--inventory and --limit: the hosts a command works on."""
    fn = click.option("-i", "--inventory", "inventory_opt", metavar="FILE",
                      help="Inventory file (default ./inventory.yaml, then "
                           "$CLUSTERCTL_INVENTORY).")(fn)
    fn = click.option("-l", "--limit", multiple=True, metavar="PATTERN",
                      help="Only hosts matching PATTERN (host, group, glob, !exclude); "
                           "repeatable.")(fn)
    return fn


def run_options(fn):
    """Options shared by commands that converge hosts."""
    for opt in reversed([
        click.option("--check", is_flag=True, help="Plan only: show what would change, "
                     "change nothing (exit 3 when changes are pending)."),
        click.option("--diff", is_flag=True, help="Show unified diffs of files and templates."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable report on "
                     "stdout."),
        click.option("-v", "--verbose", count=True, help="-v: every task; -vv: diffs too; "
                     "-vvv: the exact commands of each change."),
        click.option("-f", "--forks", type=click.IntRange(1, 500), default=20, show_default=True,
                     help="Hosts worked on in parallel."),
        click.option("--keep-going", is_flag=True, help="On a failing host, let the others "
                     "converge (the default)."),
        click.option("--fail-fast", is_flag=True, help="On a failing host, stop "
                     "everything."),
        click.option("--accept-new-host-keys", is_flag=True, help="Trust SSH host keys seen "
                     "for the first time and record them (a changed key is always refused)."),
        click.option("--roles-path", multiple=True, metavar="DIR",
                     help="Extra folder of roles, searched first; repeatable."),
        click.option("--break-lock", is_flag=True, help="Take the cluster lock even if "
                     "another run holds it (only when that run is gone)."),
        click.option("-e", "--extra-vars", "extra_vars", multiple=True,
                     metavar="KEY=VALUE|@FILE",
                     help="Variables above every other level (as Ansible's -e); "
                     "repeatable; @FILE reads a YAML mapping."),
        click.option("-t", "--tags", "tags", multiple=True, metavar="TAGS",
                     help="Only tasks with one of these tags (comma-separated; "
                     "repeatable)."),
        click.option("--skip-tags", multiple=True, metavar="TAGS",
                     help="Leave out tasks with one of these tags."),
    ]):
        fn = opt(fn)
    return fn


def load_inventory_arg(positional: str | None, option: str | None,
                       extra_vars: dict | None = None):
    from .inventory import load_inventory, resolve_inventory_path
    from .errors import InputError
    if positional and option and positional != option:
        raise InputError(f"two inventories given: {positional} and -i {option}")
    inv = load_inventory(resolve_inventory_path(positional or option), extra_vars=extra_vars)
    for warning in inv.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return inv


def _tag_set(values) -> set[str]:
    return {t.strip() for v in values for t in str(v).split(",") if t.strip()}


def run_playbook_command(inventory_arg, inventory_opt, playbook: str, *, limit, check, diff,
                         as_json, verbose, forks, keep_going, fail_fast, accept_new_host_keys,
                         roles_path, break_lock, extra_vars, tags, skip_tags,
                         fixed_vars: dict | None = None):
    """What bootstrap and apply share: -e parsed and validated with the inventory, the
    playbook run, the exit code."""
    from .errors import InputError
    from .inventory import parse_extra_vars, validate_vars
    if keep_going and fail_fast:
        raise InputError("--keep-going and --fail-fast contradict each other: give one",
                         key="--fail-fast")
    keep_going = not fail_fast
    extra = parse_extra_vars(list(extra_vars)) if extra_vars else {}
    inv = load_inventory_arg(inventory_arg, inventory_opt, extra or None)
    if extra:      # the runner puts them above play vars too: the checked values (typed,
        extra, _warnings = validate_vars(extra)      # secrets masked), not the raw text
    extra = {**(fixed_vars or {}), **extra}
    report = converge(inv, playbook, check=check, diff=diff, as_json=as_json, verbose=verbose,
                      forks=forks, keep_going=keep_going,
                      accept_new_host_keys=accept_new_host_keys, roles_path=roles_path,
                      limit=limit, extra_vars=extra, break_lock=break_lock,
                      tags=_tag_set(tags), skip_tags=_tag_set(skip_tags))
    sys.exit(exit_code_for(report))


def converge(inventory, playbook: str, *, check, diff, as_json, verbose, forks, keep_going,
             accept_new_host_keys, roles_path, limit, extra_vars=None, break_lock=False,
             tags=frozenset(), skip_tags=frozenset()):
    """Run a playbook in one session and render it once, at the end (the JSON carries
    the final exit code); returns the RunReport."""
    from .engine.roles import default_roles_paths, load_playbook
    from .engine.runner import RunOptions, run_playbook
    from rich.markup import escape
    from .render import LineReporter, console, print_json, print_recap
    from .session import Session
    plays = load_playbook(playbook, default_roles_paths(list(roles_path)))
    options = RunOptions(check=check, diff=diff, forks=forks, keep_going=keep_going,
                         accept_new_host_keys=accept_new_host_keys, limit=list(limit) or None,
                         extra_vars=extra_vars or {}, tags=set(tags), skip_tags=set(skip_tags))
    reporter = LineReporter(console(stderr=as_json), verbosity=verbose, diff=diff)
    # role variables against the roles' argument_specs: exit 2 before any connection (the
    # lock below is one), near-miss names as warnings
    from .engine.specs import check_plays
    for warning in check_plays(inventory, plays, inventory.select(list(limit) or None),
                               extra_vars=extra_vars or {}):
        console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(warning)}")
    with Session(inventory, forks=forks, accept_new_host_keys=accept_new_host_keys) as session:
        if not check:
            # what runs, not its whole argv: -e values may hold secrets
            take_cluster_lock(session, f"clusterctl playbook {Path(str(playbook)).name}",
                              break_lock, console(stderr=True))
        report = run_playbook(inventory, plays, options, reporter, session)
    for result in report.results:       # the Ray check's summary, also without -v
        if result.task is not None and result.task.op == "ray_cluster" and \
                result.status == "ok" and result.message.startswith("ray: "):
            console(stderr=as_json).print(f"[green]{result.message}[/green]")
    if as_json:
        print_json(report.to_dict())
    else:
        print_recap(report, console())
    return report


def take_cluster_lock(session, command: str, break_lock: bool, err) -> None:
    """The cluster-wide lock for a command that changes hosts. Held by another run:
    LockBusy naming it. Head unreachable: a warning (a dead head must not block work on
    the other nodes; the run will name it)."""
    from .session import LockBusy
    try:
        session.lock("cluster", command, break_stale=break_lock)
    except LockBusy:
        raise
    except ClusterctlError as exc:
        err.print(f"[yellow]warning:[/yellow] running without the cluster lock: {exc}")


def exit_code_for(report) -> int:
    return report.exit_code


#: capability commands, imported only when used (keeps `clusterctl bootstrap` start-up
#: fast): name -> (module, attribute)
LAZY_COMMANDS = {
    "lab": ("clusterctl.lab.cli", "lab_group"),
    "inventory": ("clusterctl.inventory_cli", "inventory_command"),
    "mirror": ("clusterctl.lab.cli", "mirror_group"),
    "netcheck": ("clusterctl.netcheck.cli", "netcheck_command"),
    "sync-model": ("clusterctl.sync.cli", "sync_model_command"),
    "plan-model": ("clusterctl.deploy.cli", "plan_model_command"),
    "deploy-model": ("clusterctl.deploy.cli", "deploy_model_command"),
    "undeploy": ("clusterctl.deploy.cli", "undeploy_command"),
    "status": ("clusterctl.deploy.cli", "status_command"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            import importlib
            module, attr = LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="clusterctl")
def main():
    """Provision GPU machines into one distributed LLM inference cluster
    (vLLM + Ray, llama.cpp RPC) from one inventory file."""
    raise_on_terminate()


@main.command()
@click.argument("inventory", required=False, metavar="[INVENTORY]")
@inventory_options
@run_options
@click.option("--playbook", default="bootstrap", show_default=True,
              help="Playbook name (in playbooks/) or path.")
@click.option("--skip-verify", is_flag=True, help="Skip the Ray cluster check (the "
              "playbook's ray_cluster task).")
@handle_errors
def bootstrap(inventory, inventory_opt, playbook, skip_verify, **run):
    """Converge every node: packages, network (MTU), NCCL env, Python env with Ray/vLLM,
    llama.cpp RPC, Ray head and workers; then verify the Ray cluster."""
    run_playbook_command(inventory, inventory_opt, playbook,
                         fixed_vars={"ray_verify": False} if skip_verify else None, **run)


@main.command(name="apply")
@click.argument("playbook")
@inventory_options
@run_options
@handle_errors
def apply_cmd(playbook, inventory_opt, **run):
    """Run any PLAYBOOK (a name in playbooks/ or a path) against the inventory."""
    run_playbook_command(None, inventory_opt, playbook, **run)


@main.command()
@click.argument("inventory", required=False, metavar="[INVENTORY]")
@inventory_options
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def verify(inventory, inventory_opt, limit, pytest_args):
    """Check every node read-only with the pytest-testinfra suite: services, MTU, env
    files, venv versions, binaries. Extra arguments after -- go to pytest."""
    from .verify.run import run_verify
    inv = load_inventory_arg(inventory, inventory_opt)
    sys.exit(run_verify(inv, inv.select(list(limit) or None), extra_args=list(pytest_args)))


@main.command(name="example-inventory")
@click.argument("dest", required=False, metavar="[DEST]")
@handle_errors
def example_inventory_cmd(dest):
    """Print the example inventory (every cluster variable with its default and a line
    of doc), or write it to DEST (never over an existing file)."""
    from .errors import InputError
    from .resources import example_inventory
    text = example_inventory().read_text()
    if not dest:
        click.echo(text, nl=False)
        return
    path = Path(dest)
    if path.exists():
        raise InputError(f"{path} exists; choose another name or remove it first",
                         key="DEST")
    path.write_text(text)
    click.echo(f"wrote {path}: list your hosts, mark one `role: head`, set cluster.network")


def _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys):
    from .session import Session
    inv = load_inventory_arg(None, inventory_opt)
    hosts = inv.select(list(limit) or None)
    return Session(inv, forks=forks, accept_new_host_keys=accept_new_host_keys), hosts


def _adhoc_finish(report, as_json):
    from .render import console, print_json
    if as_json:
        print_json(report.to_dict())
    else:
        from .adhoc import render
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


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
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
    from .adhoc import run_exec
    session, hosts = _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys)
    with session:
        report = run_exec(session, hosts, list(command), timeout=timeout, check=check)
    _adhoc_finish(report, as_json)


@main.command(name="task")
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
    from pathlib import Path as _Path
    from .adhoc import find_tasks_file, run_task
    from .errors import InputError
    kwargs = {}
    for item in task_args:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--arg {item!r}: expected KEY=VALUE", key="--arg")
        kwargs[key] = value
    path = find_tasks_file(tasks_file)
    session, hosts = _adhoc_session(inventory_opt, limit, forks, accept_new_host_keys)
    with session:
        report = run_task(session, hosts, _Path(path), name, check=check, kwargs=kwargs)
    _adhoc_finish(report, as_json)


if __name__ == "__main__":
    main()
