"""apt_source: one line in /etc/apt/sources.list.d/NAME.list, then apt-get update."""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop, Op, Param, Upload
from clusterctl.ops.file import plan_file
from clusterctl.ops.package import apt_update

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def source_path(name: str) -> str:
    return f"/etc/apt/sources.list.d/{name}.list"


class AptSourceOp(Op):
    name = "apt_source"
    deadline = 600.0
    params = {
        "name": Param(str, required=True, help="file name under sources.list.d (without .list)"),
        "line": Param(str, required=True, help='e.g. "deb [trusted=yes] http://10.0.0.1:8080/ ./"'),
        "only": Param(bool, default=False,
                      help="refresh only this source after writing it (nodes without internet)"),
    }

    def normalize(self, args: dict) -> dict:
        name = args["name"]
        if name.endswith(".list"):
            name = name[:-5]
        if not _NAME_RE.match(name):
            raise ValueError(f"name: expected letters, digits, '_', '-', '.', got {args['name']!r}")
        line = args["line"].strip()
        if not line or "\n" in line:
            raise ValueError(f"line: expected one non-empty sources.list line, got {args['line']!r}")
        if not re.match(r"^(deb|deb-src)\s", line):
            raise ValueError(f"line: expected a line starting with 'deb ' or 'deb-src ', got {line!r}")
        args.update(name=name, line=line)
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("file", source_path(self.validate(args)["name"]))]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path = source_path(args["name"])
        result = plan_file(self.name, path, (args["line"] + "\n").encode(),
                           facts.get(FactRequest("file", path)), mode=0o644, target=args["name"])
        if isinstance(result, Change) and any(isinstance(s, Upload) for s in result.steps):
            result.steps.append(apt_update(path if args["only"] else None))
        return result


OP = AptSourceOp()
