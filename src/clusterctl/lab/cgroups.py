"""A cgroup of its own for every node.

systemd-nspawn --keep-unit --register=no creates the container's cgroups (`payload`,
`supervisor`) below the cgroup it was started in. Started from the same cgroup, every
node would share them, and each node's systemd would manage (and at shutdown, kill) the
others' services. So each nspawn is started inside its own cgroup,
`<hierarchy>/clusterctl-lab/NAME/nodeK`, in the cgroup2 hierarchy and in the v1
`name=systemd` hierarchy when the host has one (hybrid layout); `lab down` removes them.
"""
from __future__ import annotations

import os
from pathlib import Path

TOP = "clusterctl-lab"


def parse_mountinfo(text: str) -> list[str]:
    """Mount points of the hierarchies nspawn and systemd use: every cgroup2 mount, and a
    cgroup v1 mount with `name=systemd`. Pure."""
    points = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, options = rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            points.append(fields[4].replace("\\040", " "))
    return points


def hierarchies() -> list[Path]:
    try:
        return [Path(p) for p in parse_mountinfo(Path("/proc/self/mountinfo").read_text())]
    except OSError:
        return []


def node_cgroups(lab: str, node_short: str) -> list[str]:
    return [str(h / TOP / lab / node_short) for h in hierarchies()]


def create(paths: list[str]) -> list[str]:
    """Create the node's cgroups; returns the `cgroup.procs` files to join."""
    procs = []
    for p in paths:
        os.makedirs(p, exist_ok=True)
        procs.append(str(Path(p) / "cgroup.procs"))
    return procs


def launcher(procs_files: list[str], argv: list[str]) -> list[str]:
    """argv that joins the cgroups and then execs `argv` (the process keeps its PID)."""
    script = 'for f in $CLUSTERCTL_CGROUPS; do echo $$ > "$f" || exit 97; done; exec "$@"'
    return ["/bin/sh", "-c", script, "clusterctl-lab-node", *argv]


def launcher_env(procs_files: list[str]) -> dict[str, str]:
    return dict(os.environ, CLUSTERCTL_CGROUPS=" ".join(procs_files))


def remove(paths: list[str]) -> list[str]:
    """Remove the node's cgroup trees (deepest first); the lab's and the top directory too
    when empty. Returns the cgroups that could not be removed (still populated)."""
    left = []
    for p in paths:
        root = Path(p)
        if not root.exists():
            continue
        for dirpath, dirnames, _ in sorted(os.walk(root, topdown=False),
                                           key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(dirpath)
        for parent in (root.parent, root.parent.parent):
            if parent.name in (TOP,) or parent.parent.name == TOP:
                try:
                    os.rmdir(parent)
                except OSError:
                    pass
    return left
