"""`clusterctl lab ...` (lab_group, over clusterctl.lab) and `clusterctl mirror ...`
(mirror_group, over clusterctl.mirror). Each command parses options, calls one function,
renders the result: rich on a terminal, plain lines otherwise, JSON with --json."""
from __future__ import annotations

import os
import sys

import click

from ..errors import ClusterctlError, InputError
from .common import CONTEXT, ExpectedErrorsGroup

LINK_CHOICES = ["100mbit", "1gbit", "10gbit", "25gbit", "100gbit", "none"]


def _default_name() -> str:
    return os.environ.get("CLUSTERCTL_LAB") or "lab"


def name_option(fn):
    return click.option("-n", "--name", default=_default_name, show_default="lab, or "
                        "$CLUSTERCTL_LAB", help="Name of the lab.")(fn)


def _fancy() -> bool:
    return sys.stdout.isatty()


# ----------------------------------------------------------------------------- lab

@click.group(name="lab", cls=ExpectedErrorsGroup, context_settings=CONTEXT)
def lab_group():
    """A real multi-node cluster on this machine: systemd-nspawn nodes with systemd, sshd,
    their own network namespace and disk, on a shaped bridge, with an offline mirror."""


@lab_group.command()
@click.option("--nodes", "nodes", type=click.IntRange(1, 200), default=3, show_default=True)
@name_option
@click.option("--link", type=click.Choice(LINK_CHOICES), default="10gbit", show_default=True,
              help="Class every link is shaped to (both directions).")
@click.option("--mirror/--no-mirror", default=True, show_default=True,
              help="Build (cached) and serve the offline apt/pip mirror to the nodes.")
@click.option("--subnet", metavar="CIDR", help="A /24 from 198.18.0.0/15 "
              "(default: the first free one).")
@click.option("--mtu", type=click.IntRange(1280, 65535), default=9000, show_default=True,
              help="MTU of the switch (bridge and ports).")
@click.option("--node-mtu", type=click.IntRange(576, 65535), default=None,
              help="MTU the nodes configure on eth0 at boot (default: --mtu). Use 1500 to "
                   "rehearse an MTU change.")
@click.option("--bind-ro", "binds", metavar="SRC:DEST", multiple=True,
              help="Bind a folder (or file) of this machine read-only into every node at "
                   "DEST, e.g. a CUDA toolkit for a GPU-class build. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the lab's state as JSON.")
def up(nodes, name, link, mirror, subnet, mtu, node_mtu, binds, as_json):
    """Boot NODES nodes (builds the node image and the mirror the first time)."""
    from ..lab import core
    log = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    pairs = []
    for bind in binds:
        src, sep, dst = bind.partition(":")
        if not sep or not src or not dst:
            raise click.BadParameter(f"{bind!r}: expected SRC:DEST (two absolute paths)",
                                     param_hint="--bind-ro")
        pairs.append((src, dst))
    state = core.up(name, nodes, link, mirror, subnet=subnet, mtu=mtu, node_mtu=node_mtu,
                    binds=pairs, log=log)
    if as_json:
        from ..render import print_json
        print_json(state.to_dict())
        return
    _print_summary(state)


def _print_summary(state) -> None:
    lines = [
        f"lab {state.name}: {len(state.nodes)} nodes on {state.bridge} ({state.subnet}), "
        f"link {state.link}, MTU {state.mtu}",
    ]
    for n in state.nodes:
        lines.append(f"  {n.name:<20} {n.ip:<15} {n.role:<7} port {n.port}")
    lines += [
        f"inventory:  {state.inventory_path}",
        f"  clusterctl bootstrap -i {state.inventory_path}",
        f"ssh:        clusterctl lab ssh --name {state.name} node1",
        f"            {' '.join(_ssh_display(state))}",
    ]
    if state.mirror is not None:
        lines += [f"mirror:     apt {state.mirror_apt_url}   pip {state.mirror_pip_url}"]
    lines += [f"faults:     clusterctl lab fault --name {state.name} node2 slow-link 100mbit "
              f"(heal: clusterctl lab heal --name {state.name})",
              f"down:       clusterctl lab down --name {state.name}"]
    if _fancy():
        from rich.console import Console
        console = Console()
        console.print(f"[bold green]{lines[0]}[/]")
        for ln in lines[1:]:
            console.print(ln, highlight=False, markup=False)
    else:
        for ln in lines:
            click.echo(ln)


def _ssh_display(state) -> list[str]:
    from ..lab.core import ssh_argv
    return ssh_argv(state, "1")


@lab_group.command()
@name_option
@click.option("--all", "all_labs", is_flag=True, help="Every lab on this machine.")
def down(name, all_labs):
    """Remove the lab: nodes, ports, bridge, nft tables, mirror server, state. Safe to
    repeat, also after a crash."""
    from ..lab import core
    from ..lab.state import list_labs
    names = list_labs() if all_labs else [name]
    for lab_name in names:
        if core.down(lab_name):
            click.echo(f"lab {lab_name} is down")
        else:
            click.echo(f"lab {lab_name}: nothing to remove")


@lab_group.command()
@click.option("-n", "--name", default=None, help="Name of the lab (default: every lab).")
@click.option("--json", "as_json", is_flag=True)
def status(name, as_json):
    """Nodes, addresses, ports, faults and whether each node answers."""
    from ..lab import core
    from ..lab.state import list_labs
    names = [name] if name else list_labs()
    if name is None and not names:
        if as_json:
            from ..render import print_json
            print_json({"labs": []})
        else:
            click.echo("no labs")
        return
    states = [core.status(n) for n in names]
    healths = [core.health(s) for s in states]
    if as_json:
        out = []
        for s, h in zip(states, healths):
            d = s.to_dict()
            for node in d["nodes"]:
                node["health"] = h[node["name"]]
            out.append(d)
        from ..render import print_json
        print_json(out[0] if name else {"labs": out})      # one lab: its object
        return
    for s, h in zip(states, healths):
        _print_status(s, h)


def _print_status(state, health) -> None:
    head = (f"lab {state.name} ({state.phase}): {state.subnet} on {state.bridge}, link "
            f"{state.link}, MTU {state.mtu}, mirror {state.mirror_url or 'off'}")
    rows = []
    for n in state.nodes:
        h = health[n.name]
        rows.append([n.name, n.ip, n.role, n.port,
                     "running" if h["running"] else "stopped",
                     f"{h['port']} (mtu {h['port_mtu']})" if h["port_mtu"] else h["port"],
                     {True: "yes", False: "no", None: "-"}[h["ssh"]],
                     ", ".join(h["faults"]) or "-"])
    if _fancy():
        from rich.console import Console
        from rich.table import Table
        table = Table(title=head, title_justify="left")
        for col in ("node", "ip", "role", "port", "process", "port state", "ssh", "faults"):
            table.add_column(col)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    else:
        click.echo(head)
        header = ["node", "ip", "role", "port", "process", "port state", "ssh", "faults"]
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"inventory: {state.inventory_path}")


@lab_group.command()
@click.argument("name", required=False)
def inventory(name):
    """Print the path of the lab's inventory file."""
    from ..lab import core
    state = core.status(name or _default_name())
    if not state.inventory_path.exists():
        raise ClusterctlError(f"lab {state.name} has no inventory yet (phase {state.phase})")
    click.echo(str(state.inventory_path))


@lab_group.command(context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name, node, command):
    """Log into NODE (node1, 1 or NAME-node1) with the lab's key and known_hosts."""
    from ..lab import core
    argv = core.ssh_argv(core.status(name), node, list(command))
    os.execvp(argv[0], argv)


@lab_group.command()
@name_option
@click.argument("node")
@click.argument("kind", type=click.Choice(["slow-link", "port-mtu", "block-port", "down",
                                           "partition"]))
@click.argument("arg", required=False)
def fault(name, node, kind, arg):
    """Inject a fault on NODE's link or switch port.

    \b
      slow-link RATE   shape the node's link to RATE (e.g. 100mbit), both directions
      port-mtu MTU     set the node's switch port MTU (the node keeps its own)
      block-port PORT  drop TCP and UDP to PORT on the node
      down             take the node's switch port down (node unreachable)
      partition        the node reaches the controller, no other node
    """
    from ..lab import core
    f = core.fault(name, node, kind, arg)
    click.echo(f"{f.node}: {f.describe()} (undo: clusterctl lab heal --name {name} {node})")


@lab_group.command()
@name_option
@click.argument("node", required=False)
def heal(name, node):
    """Remove the faults of NODE (default: of every node)."""
    from ..lab import core
    removed = core.heal(name, node)
    if not removed:
        click.echo("no faults to heal")
    for f in removed:
        click.echo(f"{f.node}: healed {f.describe()}")


# ----------------------------------------------------------------------------- mirror

@click.group(name="mirror", cls=ExpectedErrorsGroup, context_settings=CONTEXT)
def mirror_group():
    """Offline apt repository + pip wheelhouse for hosts without internet."""


def _split(values) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [x for x in v.replace(",", " ").split() if x]
    return out


@mirror_group.command()
@click.option("--apt", "apt", multiple=True, metavar="PKG",
              help="apt package(s); repeatable, or comma/space separated.")
@click.option("--pip", "pip", multiple=True, metavar="REQ",
              help="pip requirement(s); repeatable.")
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with `apt:` and `pip:` lists (default when neither --apt nor "
                   "--pip is given: the lab's list).")
@click.option("--dest", required=True, type=click.Path(file_okay=False),
              help="Mirror directory (created; rebuilt only when the lists change).")
@click.option("--image", type=click.Path(exists=True, file_okay=False),
              help="Root file system of the target hosts: download only what it lacks "
                   "(default: the packages with their whole dependency closure).")
@click.option("--force", is_flag=True, help="Rebuild even if the lists did not change.")
def build(apt, pip, from_file, dest, image, force):
    """Download packages with apt-get and pip into a servable mirror."""
    from .. import mirror
    from ..lab.core import PACKAGES_FILE
    apt_list, pip_list = _split(apt), list(pip)
    if from_file or not (apt_list or pip_list):
        file_apt, file_pip = mirror.read_package_lists(from_file or PACKAGES_FILE)
        apt_list, pip_list = apt_list + file_apt, pip_list + file_pip
    manifest = mirror.build_mirror(dest, apt_list, pip_list, image=image, force=force,
                                   log=click.echo)
    click.echo(f"mirror {dest}: {len(manifest.get('apt_files', []))} apt packages, "
               f"{len(manifest.get('pip_files', []))} pip files (built {manifest.get('built')})")
    click.echo(f"serve it: clusterctl mirror serve {dest} --bind ADDR:{mirror.DEFAULT_PORT}")


@mirror_group.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--bind", "bind", required=True, metavar="ADDR:PORT",
              help="Address and port to serve on (an address of this host).")
def serve(directory, bind):
    """Serve a mirror over HTTP in the foreground (Ctrl-C stops it)."""
    from .. import mirror
    addr, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not addr:
        raise InputError(f"--bind {bind!r}: expected ADDR:PORT, e.g. 10.0.0.1:8080")
    url = f"http://{addr}:{port}"
    click.echo(f"apt: echo '{mirror.apt_source_line(url + '/apt')}' "
               "> /etc/apt/sources.list.d/clusterctl-mirror.list")
    click.echo(f"pip: pip install {' '.join(mirror.pip_install_args(url + '/pip/'))} ...")
    sys.stdout.flush()
    mirror.serve_foreground(directory, addr, int(port))


def main() -> None:
    """`python -m clusterctl.cli.lab lab ...` / `... mirror ...` without the main CLI."""
    root = click.Group(name="clusterctl", context_settings=CONTEXT)
    root.add_command(lab_group)
    root.add_command(mirror_group)
    root()


if __name__ == "__main__":
    main()
