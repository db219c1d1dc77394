"""Ops: pure planners (facts, desired args) -> Change | Noop. One module per op.

    op = OPS["file"]
    args = op.validate(task_args)          # ValueError "param: expected ..., got ..."
    facts = gather(op.requests(args))      # engine: one round trip per host
    result = op.plan(facts, args)          # Change(steps, diff, summary) | Noop(reason)

`plan` may raise PlanError (a ValueError) when the desired state is impossible
given the facts (e.g. a directory where a file should be).
"""
from __future__ import annotations

from clusterctl.ops import (apt_source, command, directory, file, lineinfile, link_mtu, package,
                            pip, service, sysctl, systemd_unit, venv)
from clusterctl.ops.base import (Change, Command, Noop, Op, Param, PlanError, Step, Upload)

OPS: dict[str, Op] = {m.OP.name: m.OP for m in (
    package, apt_source, venv, pip, file, lineinfile, directory, systemd_unit, service,
    command, sysctl, link_mtu)}

__all__ = ["OPS", "Op", "Param", "Change", "Noop", "Upload", "Command", "Step", "PlanError"]
