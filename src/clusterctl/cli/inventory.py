"""`clusterctl inventory`: show the inventory as clusterctl reads it (like
ansible-inventory): --list (JSON of groups, hosts and their merged variables), --graph
(the tree of groups), --host NAME (one host's variables, each with the file:line it came
from). Secrets show as ***. And `clusterctl example-inventory`. Nothing here connects to
a host."""
from __future__ import annotations

import json
import os
from pathlib import Path
import sys

import click

from ..errors import InputError
from ..secret import MASK, Secret, to_jsonable
from .common import CONTEXT, handle_errors, inventory_options, load_inventory_arg


def inventory_list(inv, selected: list[str]) -> dict:
    """ansible-inventory --list's shape: each group's direct hosts and child groups, and
    `_meta.hostvars` with every selected host's merged variables (secrets masked)."""
    chosen = set(selected)
    out: dict = {"_meta": {"hostvars": {name: to_jsonable(inv.hosts[name].vars)
                                        for name in selected}}}
    for group, (hosts, children) in inv.tree.items():
        entry: dict = {}
        shown_hosts = [h for h in hosts if h in chosen]
        shown_children = [c for c in children if _has_any(inv, c, chosen)]
        if group == "all":
            shown_children = _top_groups(inv, chosen)
        if shown_hosts:
            entry["hosts"] = shown_hosts
        if shown_children:
            entry["children"] = shown_children
        if entry or group == "all":
            out[group] = entry
    return out


def _has_any(inv, group: str, chosen: set[str]) -> bool:
    return any(h in chosen for h in inv.groups.get(group, ()))


def _top_groups(inv, chosen: set[str]) -> list[str]:
    """Groups shown under all: those that are no other group's child."""
    nested = {c for g, (_, children) in inv.tree.items() if g != "all" for c in children}
    return [g for g in inv.tree if g != "all" and g not in nested and _has_any(inv, g, chosen)]


def inventory_graph(inv, selected: list[str]) -> list[str]:
    """ansible-inventory --graph's tree. A group shown once already is not expanded
    again (so shared subgroups cannot multiply the output)."""
    chosen = set(selected)
    lines: list[str] = []
    expanded: set[str] = set()
    # explicit stack of (group, depth): a chain of thousands of groups needs no recursion
    stack: list[tuple[str, int]] = [("all", 0)]
    while stack:
        group, depth = stack.pop()
        prefix = "  |" * depth
        if group in expanded:
            lines.append(f"{prefix}--@{group}: (shown above)")
            continue
        expanded.add(group)
        lines.append(f"{prefix}--@{group}:" if depth else f"@{group}:")
        hosts, children = inv.tree.get(group, ([], []))
        if group == "all":
            children = _top_groups(inv, chosen)
            hosts = [h for h in hosts if h in chosen]
        else:
            children = [c for c in children if _has_any(inv, c, chosen)]
        for child in reversed(children):
            stack.append((child, depth + 1))
        for host in hosts:
            if host in chosen:
                lines.append(f"{'  |' * (depth + 1)}--{host}")
    return lines


def _flatten(value, prefix: tuple = ()):
    """(path, leaf value) for every leaf of nested dicts; lists are leaves."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _flatten(sub, prefix + (key,))
    else:
        yield prefix, value


def _schema_dict(path: tuple) -> bool:
    """Whether `path` is a dict-valued variable of the schema (ray, cluster...): its keys
    are merged one by one, so a key set nowhere keeps its default."""
    from ..inventory import KNOWN_VARS
    spec = KNOWN_VARS
    for part in path:
        if not isinstance(spec, dict) or part not in spec:
            return False
        spec = spec[part]
    return isinstance(spec, dict)


def _origin(origins: dict, path: tuple) -> str:
    for n in range(len(path), 0, -1):
        where = origins.get(path[:n])
        if n < len(path) and _schema_dict(path[:n]):
            return "default"  # the leaf itself was set nowhere
        if where is not None:
            file, line, col = where
            return file + (f":{line}" if line is not None else "") + \
                (f":{col}" if line is not None and col is not None else "")
    return "default"


def host_vars_with_origins(inv, name: str) -> list[tuple[str, object, str]]:
    """(dotted name, value, where it was set) of each leaf of a host's variables."""
    if name not in inv.hosts:
        import difflib
        close = difflib.get_close_matches(name, list(inv.hosts), n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"--host: no host {name!r} in the inventory{hint}", key="--host")
    host = inv.hosts[name]
    origins = inv.origins.get(name, {})
    return [(".".join(map(str, path)), value, _origin(origins, path))
            for path, value in _flatten(host.vars)]


def _shown(value) -> str:
    if isinstance(value, Secret):
        return MASK
    return json.dumps(to_jsonable(value), default=str, ensure_ascii=False)


@click.command(name="inventory", context_settings=CONTEXT)
@click.argument("inventory", required=False, metavar="[INVENTORY]")
@inventory_options
@click.option("--list", "as_list", is_flag=True,
              help="JSON of every group (its hosts and child groups) and every host's merged "
                   "variables, like ansible-inventory --list.")
@click.option("--graph", is_flag=True, help="The tree of groups and their hosts.")
@click.option("--host", "host_name", metavar="NAME",
              help="One host's merged variables, each with the file:line it came from.")
@click.option("--json", "as_json", is_flag=True, help="With --host: JSON instead of text.")
@click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="KEY=VALUE|@FILE",
              help="Variables above every other level (as Ansible's -e); repeatable.")
@handle_errors
def inventory_command(inventory, inventory_opt, limit, as_list, graph, host_name, as_json,
                      extra_vars):
    """Show the inventory as clusterctl reads it (YAML or INI, with host_vars/ and
    group_vars/): --list, --graph or --host NAME. Secrets show as ***."""
    try:
        _show(inventory, inventory_opt, limit, as_list, graph, host_name, as_json, extra_vars)
    except BrokenPipeError:  # `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _show(inventory, inventory_opt, limit, as_list, graph, host_name, as_json, extra_vars):
    if sum(bool(x) for x in (as_list, graph, host_name)) != 1:
        raise click.UsageError("give exactly one of --list, --graph or --host NAME")
    from ..inventory import parse_extra_vars
    extra = parse_extra_vars(list(extra_vars)) if extra_vars else None
    inv = load_inventory_arg(inventory, inventory_opt, extra_vars=extra) if extra \
        else load_inventory_arg(inventory, inventory_opt)
    selected = [h.name for h in inv.select(list(limit) or None)]
    if as_list:
        click.echo(json.dumps(inventory_list(inv, selected), indent=2, default=str,
                              ensure_ascii=False))
    elif graph:
        click.echo("\n".join(inventory_graph(inv, selected)))
    else:
        rows = host_vars_with_origins(inv, host_name)
        if as_json:
            host = inv.hosts[host_name]
            from ..render import print_json
            print_json({"host": host_name, "vars": to_jsonable(host.vars),
                        "origins": {k: where for k, _, where in rows}})
        else:
            width = max(len(k) + len(_shown(v)) for k, v, _ in rows) + 4
            for key, value, where in rows:
                text = f"{key}: {_shown(value)}"
                click.echo(f"{text:<{width}}# {where}")


@click.command(name="example-inventory")
@click.argument("dest", required=False, metavar="[DEST]")
@handle_errors
def example_inventory_cmd(dest):
    """Print the example inventory (every cluster variable with its default and a line
    of doc), or write it to DEST (never over an existing file)."""
    from ..resources import example_inventory
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


__all__ = ["inventory_command", "example_inventory_cmd", "inventory_list", "inventory_graph",
           "host_vars_with_origins"]
