"""command: run a command unless a guard says it is not needed.

argv as a list runs as given; argv as a string runs via ["bash", "-c", STRING]
(the one place where a user-written shell string is executed, by design).
Guards (evaluated on the gathered facts, in this order): creates PATH exists ->
skip; removes PATH missing -> skip; unless CMD exits 0 -> skip; only_if CMD exits
non-zero -> skip. unless/only_if are read-only shell commands run by the fact
script (kind `check`).
"""
from __future__ import annotations

import shlex

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Command, Noop, Op, Param, check_abs_path


def _short(cmd: str, limit: int = 60) -> str:
    return cmd if len(cmd) <= limit else cmd[:limit - 3] + "..."


class CommandOp(Op):
    name = "command"
    deadline = 1800.0
    params = {
        "argv": Param((list, str), required=True, help="argv list, or a bash command string"),
        "creates": Param(str, help="skip when this path exists"),
        "removes": Param(str, help="skip when this path does not exist"),
        "unless": Param(str, help="skip when this shell command succeeds"),
        "only_if": Param(str, help="skip when this shell command fails"),
    }

    def normalize(self, args: dict) -> dict:
        argv = args["argv"]
        if isinstance(argv, list):
            if not argv or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in argv):
                raise ValueError(f"argv: expected a non-empty list of strings, got {argv!r}")
            args["argv"] = [str(a) for a in argv]
        elif not argv.strip():
            raise ValueError("argv: expected a command, got an empty string")
        for key in ("creates", "removes"):
            if args[key] is not None:
                args[key] = check_abs_path(key, args[key])
        for key in ("unless", "only_if"):
            if args[key] is not None and (not args[key].strip() or "\x00" in args[key]):
                raise ValueError(f"{key}: expected a shell command, got {args[key]!r}")
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        args = self.validate(args)
        reqs = []
        if args["creates"]:
            reqs.append(FactRequest("path", args["creates"]))
        if args["removes"]:
            reqs.append(FactRequest("path", args["removes"]))
        if args["unless"]:
            reqs.append(FactRequest("check", args["unless"]))
        if args["only_if"]:
            reqs.append(FactRequest("check", args["only_if"]))
        return reqs

    @staticmethod
    def argv(args: dict) -> Command:
        argv = args["argv"]
        return ["bash", "-c", argv] if isinstance(argv, str) else list(argv)

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        argv = self.argv(args)
        target = _short(args["argv"] if isinstance(args["argv"], str) else shlex.join(argv))
        if args["creates"] and facts.get(FactRequest("path", args["creates"]))["exists"]:
            return Noop(self.name, target, f"creates {args['creates']} exists")
        if args["removes"] and not facts.get(FactRequest("path", args["removes"]))["exists"]:
            return Noop(self.name, target, f"removes {args['removes']} does not exist")
        if args["unless"] and facts.get(FactRequest("check", args["unless"])) == 0:
            return Noop(self.name, target, f"unless `{_short(args['unless'])}` succeeded")
        if args["only_if"]:
            rc = facts.get(FactRequest("check", args["only_if"]))
            if rc != 0:
                return Noop(self.name, target, f"only_if `{_short(args['only_if'])}` failed (exit {rc})")
        return Change(self.name, target, [argv], None, f"run {shlex.join(argv)}")


OP = CommandOp()
