"""lineinfile: ensure one line is present in (or absent from) a text file.

present: the last line matching `regexp` is replaced by `line`; without a match
(or without regexp) `line` is appended unless already there. absent: every line
matching `regexp` (or equal to `line`) is removed. The new content is computed
from the file fact's content, so the file must be <= 256 KiB.
"""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import (Change, Noop, Op, Param, PlanError, check_abs_path, check_owner,
                                 parse_mode)
from clusterctl.ops.file import plan_file


class LineInFileOp(Op):
    name = "lineinfile"
    params = {
        "path": Param(str, required=True),
        "line": Param(str, help="the whole line (required for state=present)"),
        "regexp": Param(str, help="Python regex (re.search) selecting the line to replace/remove"),
        "state": Param(str, default="present", choices=("present", "absent")),
        "create": Param(bool, default=True, help="create the file when missing (state=present)"),
        "mode": Param((int, str), help="mode when creating; an existing file keeps its mode unless given"),
        "owner": Param(str),
        "group": Param(str),
    }

    def normalize(self, args: dict) -> dict:
        args["path"] = check_abs_path("path", args["path"])
        args["mode"] = parse_mode("mode", args["mode"])
        args["owner"] = check_owner("owner", args["owner"])
        args["group"] = check_owner("group", args["group"])
        if args["line"] is not None and ("\n" in args["line"] or "\r" in args["line"]):
            raise ValueError(f"line: expected a single line, got {args['line']!r}")
        if args["regexp"] is not None:
            try:
                re.compile(args["regexp"])
            except re.error as exc:
                raise ValueError(f"regexp: invalid regular expression {args['regexp']!r}: {exc}") from None
        if args["state"] == "present" and args["line"] is None:
            raise ValueError("line: required parameter of lineinfile is missing (state=present)")
        if args["state"] == "absent" and args["line"] is None and args["regexp"] is None:
            raise ValueError("line: state=absent needs line or regexp")
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("file", self.validate(args)["path"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path, line, regexp = args["path"], args["line"], args["regexp"]
        current = facts.get(FactRequest("file", path))
        if current.get("kind") not in (None, "file"):
            raise PlanError(f"{path} exists and is a {current['kind']}, not a regular file")
        if not current.get("exists"):
            if args["state"] == "absent":
                return Noop(self.name, path, f"{path} does not exist")
            if not args["create"]:
                raise PlanError(f"{path} does not exist (set create: true to create it)")
            text = ""
        else:
            if current.get("content") is None:
                raise PlanError(f"{path}: content unavailable (larger than 256 KiB or unreadable); "
                                "lineinfile needs it")
            try:
                text = current["content"].decode("utf-8")
            except UnicodeDecodeError:
                raise PlanError(f"{path} is not a UTF-8 text file") from None
        lines = text.splitlines()
        pattern = re.compile(regexp) if regexp is not None else None
        what = f"/{regexp}/" if regexp is not None else repr(line)

        if args["state"] == "present":
            matches = [i for i, ln in enumerate(lines) if pattern and pattern.search(ln)]
            if matches:
                idx = matches[-1]
                if lines[idx] == line:
                    return Noop(self.name, path, f"line already present in {path}")
                lines[idx] = line
            elif line in lines:
                return Noop(self.name, path, f"line already present in {path}")
            else:
                lines.append(line)
        else:
            kept = [ln for ln in lines if not (pattern.search(ln) if pattern else ln == line)]
            if len(kept) == len(lines):
                return Noop(self.name, path, f"no line matching {what} in {path}")
            lines = kept
        new_text = "\n".join(lines) + ("\n" if lines else "")
        return plan_file(self.name, path, new_text.encode("utf-8"), current, mode=args["mode"],
                         owner=args["owner"], group=args["group"])


OP = LineInFileOp()
