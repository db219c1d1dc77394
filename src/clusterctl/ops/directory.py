"""directory: a directory present (mkdir -p, then chmod/chown) or absent (rm -rf)."""
from __future__ import annotations

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import (Change, Command, Noop, Op, Param, PlanError, check_abs_path,
                                 check_owner, fmt_mode, metadata_steps, parse_mode)


class DirectoryOp(Op):
    name = "directory"
    params = {
        "path": Param(str, required=True),
        "mode": Param((int, str), help='octal mode, e.g. "0755"'),
        "owner": Param(str),
        "group": Param(str),
        "state": Param(str, default="present", choices=("present", "absent")),
    }

    def normalize(self, args: dict) -> dict:
        args["path"] = check_abs_path("path", args["path"])
        args["mode"] = parse_mode("mode", args["mode"])
        args["owner"] = check_owner("owner", args["owner"])
        args["group"] = check_owner("group", args["group"])
        if args["state"] == "absent" and args["path"] == "/":
            raise ValueError("path: refusing to remove /")
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("dir", self.validate(args)["path"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path = args["path"]
        current = facts.get(FactRequest("dir", path))
        if args["state"] == "absent":
            if current.get("kind") is None:
                return Noop(self.name, path, f"{path} already absent")
            if current["kind"] != "directory":
                raise PlanError(f"{path} is a {current['kind']}, not a directory; refusing to remove it")
            return Change(self.name, path, [["rm", "-rf", "--", path]], f"- {path}/ (recursively)",
                          f"remove directory {path}")
        if current.get("kind") not in (None, "directory"):
            raise PlanError(f"{path} exists and is a {current['kind']}, not a directory")
        if not current.get("exists"):
            steps: list[Command] = [["mkdir", "-p", path]]
            meta, _ = metadata_steps(path, None, args["mode"], args["owner"], args["group"])
            diff = [f"+ {path}/"] + ([f"mode: {fmt_mode(args['mode'])}"] if args["mode"] is not None else [])
            diff += [f"owner: {args['owner']}"] if args["owner"] else []
            diff += [f"group: {args['group']}"] if args["group"] else []
            return Change(self.name, path, steps + meta, "\n".join(diff), f"create directory {path}")
        steps, diff = metadata_steps(path, current, args["mode"], args["owner"], args["group"])
        if not steps:
            return Noop(self.name, path, f"directory {path} exists" +
                        (" with the desired metadata" if (args["mode"], args["owner"], args["group"]) != (None, None, None) else ""))
        return Change(self.name, path, steps, "\n".join(f"{path}: {d}" for d in diff),
                      f"set {', '.join(d.split(':')[0] for d in diff)} of {path}")


OP = DirectoryOp()
