"""sysctl: a kernel parameter set now (`sysctl -w`) and persisted in a sysctl.d file."""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop, Op, Param, PlanError, check_abs_path
from clusterctl.ops.file import plan_file

DEFAULT_FILE = "/etc/sysctl.d/90-clusterctl.conf"
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+\-/]*$")


def normalise_value(value: object) -> str:
    return " ".join(str(value).split())


class SysctlOp(Op):
    name = "sysctl"
    params = {
        "key": Param(str, required=True, help="e.g. net.core.rmem_max"),
        "value": Param((str, int), required=True),
        "persist": Param(bool, default=True, help="also write the setting to `file`"),
        "file": Param(str, default=DEFAULT_FILE),
    }

    def normalize(self, args: dict) -> dict:
        key = args["key"].strip()
        if not _KEY_RE.match(key) or ".." in key.split("/"):
            raise ValueError(f"key: expected a sysctl key like net.core.rmem_max, got {args['key']!r}")
        value = normalise_value(args["value"])
        if not value:
            raise ValueError("value: expected a non-empty value")
        args.update(key=key, value=value, file=check_abs_path("file", args["file"]))
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        args = self.validate(args)
        reqs = [FactRequest("sysctl", args["key"])]
        if args["persist"]:
            reqs.append(FactRequest("file", args["file"]))
        return reqs

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        key, value, path = args["key"], args["value"], args["file"]
        current = facts.get(FactRequest("sysctl", key))
        steps: list = []
        diff: list[str] = []
        if current != value:
            steps.append(["sysctl", "-w", f"{key}={value}"])
            diff.append(f"{key}: {current if current is not None else '(missing)'} -> {value}")
        persisted = None
        if args["persist"]:
            persisted = self._plan_persist(facts, key, value, path)
            if isinstance(persisted, Change):
                steps += persisted.steps
                diff.append(persisted.diff or "")
        if not steps:
            where = f" (persisted in {path})" if args["persist"] else ""
            return Noop(self.name, key, f"{key} already {value}{where}")
        parts = [f"set {key}={value}"] if current != value else []
        if isinstance(persisted, Change):
            parts.append(f"persist in {path}")
        return Change(self.name, key, steps, "\n".join(d for d in diff if d), "; ".join(parts))

    def _plan_persist(self, facts: Facts, key: str, value: str, path: str) -> Change | Noop:
        current = facts.get(FactRequest("file", path))
        text = ""
        if current.get("exists"):
            if current.get("content") is None:
                raise PlanError(f"{path}: content unavailable (larger than 256 KiB or unreadable)")
            try:
                text = current["content"].decode("utf-8")
            except UnicodeDecodeError:
                raise PlanError(f"{path} is not a UTF-8 text file") from None
        pattern = re.compile(rf"^\s*-?{re.escape(key)}\s*=(.*)$")
        lines, found = [], False
        for ln in text.splitlines():
            m = pattern.match(ln)
            if m:
                if not found:
                    lines.append(ln if normalise_value(m.group(1)) == value else f"{key} = {value}")
                    found = True
                continue                    # later duplicates of the key are dropped
            lines.append(ln)
        if not found:
            lines.append(f"{key} = {value}")
        new = ("\n".join(lines) + "\n").encode("utf-8")
        return plan_file(self.name, path, new, current, mode=None if current.get("exists") else 0o644)


OP = SysctlOp()
