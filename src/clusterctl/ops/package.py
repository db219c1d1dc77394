"""package: Debian packages via apt-get (present/absent), installing only what is missing."""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Command, Noop, Op, Param, as_list, plural

APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive"]
# name, optional :arch, optional =version (apt-get's pin syntax)
_PKG_RE = re.compile(r"^([a-z0-9][a-z0-9+.\-]+)(?::([a-z0-9\-]+))?(?:=([A-Za-z0-9.+~:\-]+))?$")


def apt_get(*args: str) -> Command:
    return [*APT_ENV, "apt-get", *args]


def apt_update(only_source: str | None = None) -> Command:
    """apt-get update; with `only_source` (a .list file) refresh just that source, e.g. an
    offline mirror on nodes whose other sources are unreachable."""
    if not only_source:
        return apt_get("update")
    return apt_get("update", "-o", f"Dir::Etc::SourceList={only_source}",
                   "-o", "Dir::Etc::SourceParts=-", "-o", "APT::Get::List-Cleanup=0")


class PackageOp(Op):
    name = "package"
    deadline = 3600.0
    params = {
        "names": Param((list, str), required=True, help="package names; name=version pins a version"),
        "state": Param(str, default="present", choices=("present", "absent")),
        "update_cache": Param(bool, default=False, help="apt-get update before installing (only when installing)"),
        "update_source": Param((str, type(None)), help="refresh only this sources .list file"),
        "fan_out": Param(bool, default=False,
                         help="the archives the nodes would fetch are fetched once by the "
                              "controller and sent through the relay chain (engine/debs.py)"),
    }

    def normalize(self, args: dict) -> dict:
        names = as_list("names", args["names"])
        if not names:
            raise ValueError("names: expected at least one package name, got an empty list")
        for n in names:
            if not isinstance(n, str) or not _PKG_RE.match(n):
                raise ValueError(f"names: expected Debian package names (name, name=version), got {n!r}")
        args["names"] = list(dict.fromkeys(names))
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("packages")]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        installed = facts.packages
        names = args["names"]
        target = ", ".join(names)
        if args["state"] == "present":
            todo, diff = [], []
            for spec in names:
                name, _, want = _PKG_RE.match(spec).group(1, 2, 3)
                have = installed.get(name)
                if have is None:
                    todo.append(spec)
                    diff.append(f"+ {name}" + (f" {want}" if want else ""))
                elif want and have != want:
                    todo.append(spec)
                    diff.append(f"~ {name} {have} -> {want}")
            if not todo:
                return Noop(self.name, target, f"all {plural(len(names), 'package')} present"
                            if len(names) > 1 else f"{names[0]} present")
            steps: list[Command] = [apt_update(args["update_source"])] \
                if args["update_cache"] else []
            steps.append(apt_get("install", "-y", "--no-install-recommends", *todo))
            return Change(self.name, target, steps, "\n".join(diff),
                          f"install {len(todo)} of {plural(len(names), 'package')}: {' '.join(todo)}")
        present = [n for n in names if _PKG_RE.match(n).group(1) in installed]
        if not present:
            return Noop(self.name, target, f"none of {plural(len(names), 'package')} installed"
                        if len(names) > 1 else f"{names[0]} not installed")
        present_names = [_PKG_RE.match(n).group(1) for n in present]
        return Change(self.name, target, [apt_get("remove", "-y", *present_names)],
                      "\n".join(f"- {n} {installed[n]}" for n in present_names),
                      f"remove {len(present_names)} of {plural(len(names), 'package')}: {' '.join(present_names)}")


OP = PackageOp()
