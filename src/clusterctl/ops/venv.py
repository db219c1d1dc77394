"""venv: a Python virtual environment created with `PYTHON -m venv PATH` when missing."""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop, Op, Param, check_abs_path

_PYTHON_RE = re.compile(r"^[A-Za-z0-9_./+\-]+$")


class VenvOp(Op):
    name = "venv"
    deadline = 600.0
    params = {
        "path": Param(str, required=True, help="absolute path of the venv"),
        "python": Param(str, default="python3", help="interpreter creating the venv"),
        "system_site_packages": Param(bool, default=False),
    }

    def normalize(self, args: dict) -> dict:
        args["path"] = check_abs_path("path", args["path"])
        if not _PYTHON_RE.match(args["python"]):
            raise ValueError(f"python: expected an interpreter name or path, got {args['python']!r}")
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("pip", self.validate(args)["path"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path = args["path"]
        venv = facts.get(FactRequest("pip", path))
        if venv["exists"]:
            ver = f" (python {venv['python']})" if venv.get("python") else ""
            return Noop(self.name, path, f"venv {path} exists{ver}")
        argv = [args["python"], "-m", "venv"]
        if args["system_site_packages"]:
            argv.append("--system-site-packages")
        argv.append(path)
        return Change(self.name, path, [argv], f"+ venv {path}", f"create venv {path}")


OP = VenvOp()
