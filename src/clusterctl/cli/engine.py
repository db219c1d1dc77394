"""`clusterctl bootstrap | apply | verify`: converge hosts with a playbook through the
engine (one session, one render at the end), or check them read-only with the testinfra
suite."""
from __future__ import annotations

from pathlib import Path
import sys

import click

from ..errors import ClusterctlError
from .common import handle_errors, inventory_options, load_inventory_arg


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


def _tag_set(values) -> set[str]:
    return {t.strip() for v in values for t in str(v).split(",") if t.strip()}


def run_playbook_command(inventory_arg, inventory_opt, playbook: str, *, limit, check, diff,
                         as_json, verbose, forks, keep_going, fail_fast, accept_new_host_keys,
                         roles_path, break_lock, extra_vars, tags, skip_tags,
                         fixed_vars: dict | None = None):
    """What bootstrap and apply share: -e parsed and validated with the inventory, the
    playbook run, the exit code."""
    from ..errors import InputError
    from ..inventory import parse_extra_vars, validate_vars
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
    from ..engine.roles import default_roles_paths, load_playbook
    from ..engine.runner import RunOptions, run_playbook
    from rich.markup import escape
    from ..render import LineReporter, console, print_json, print_recap
    from ..session import Session
    plays = load_playbook(playbook, default_roles_paths(list(roles_path)))
    options = RunOptions(check=check, diff=diff, forks=forks, keep_going=keep_going,
                         accept_new_host_keys=accept_new_host_keys, limit=list(limit) or None,
                         extra_vars=extra_vars or {}, tags=set(tags), skip_tags=set(skip_tags))
    reporter = LineReporter(console(stderr=as_json), verbosity=verbose, diff=diff)
    # role variables against the roles' argument_specs: exit 2 before any connection (the
    # lock below is one), near-miss names as warnings
    from ..engine.specs import check_plays
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
    from rich.markup import escape
    from ..session import LockBusy
    try:
        session.lock("cluster", command, break_stale=break_lock)
    except LockBusy:
        raise
    except ClusterctlError as exc:
        err.print(f"[yellow]warning:[/yellow] running without the cluster lock: "
                  f"{escape(str(exc))}")


def exit_code_for(report) -> int:
    return report.exit_code


@click.command()
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


@click.command(name="apply")
@click.argument("playbook")
@inventory_options
@run_options
@handle_errors
def apply_cmd(playbook, inventory_opt, **run):
    """Run any PLAYBOOK (a name in playbooks/ or a path) against the inventory."""
    run_playbook_command(None, inventory_opt, playbook, **run)


@click.command()
@click.argument("inventory", required=False, metavar="[INVENTORY]")
@inventory_options
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def verify(inventory, inventory_opt, limit, pytest_args):
    """Check every node read-only with the pytest-testinfra suite: services, MTU, env
    files, venv versions, binaries. Extra arguments after -- go to pytest."""
    from ..verify.run import run_verify
    inv = load_inventory_arg(inventory, inventory_opt)
    sys.exit(run_verify(inv, inv.select(list(limit) or None), extra_args=list(pytest_args)))


__all__ = ["bootstrap", "apply_cmd", "verify", "run_options", "run_playbook_command",
           "converge", "take_cluster_lock", "exit_code_for"]
