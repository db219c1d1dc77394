"""service: a systemd unit started/stopped/restarted and enabled/disabled, from the unit fact."""
from __future__ import annotations

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Command, Noop, Op, Param, PlanError
from clusterctl.ops.systemd_unit import unit_name

RUNNING = ("active", "activating", "reloading")
# unit file states for which `enabled: true` holds (static/generated units cannot be enabled)
ENABLED = ("enabled", "enabled-runtime", "static", "generated", "alias", "indirect")


class ServiceOp(Op):
    name = "service"
    deadline = 300.0
    params = {
        "name": Param(str, required=True, help="unit name; '.service' is added when no suffix"),
        "state": Param(str, default="started", choices=("started", "stopped", "restarted")),
        "enabled": Param(bool, help="enable/disable at boot; null leaves it as is"),
    }

    def normalize(self, args: dict) -> dict:
        args["name"] = unit_name(args["name"])
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("unit", self.validate(args)["name"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        unit, state, enabled = args["name"], args["state"], args["enabled"]
        fact = facts.get(FactRequest("unit", unit))
        if not fact.get("available"):
            raise PlanError(f"{unit}: systemd did not answer on this host (systemctl show failed)")
        if fact.get("load_state") == "masked" or fact.get("unit_file_state") == "masked":
            raise PlanError(f"{unit} is masked; unmask it before managing it")
        # not-found is planned like stopped+disabled: an earlier task may install the unit
        running = fact.get("active_state") in RUNNING
        is_enabled = fact.get("unit_file_state") in ENABLED
        start = state == "started" and not running
        stop = state == "stopped" and running
        enable = enabled is True and not is_enabled
        disable = enabled is False and is_enabled
        steps: list[Command] = []
        diff: list[str] = []
        if enable or disable:
            diff.append(f"enabled: {fact.get('unit_file_state') or '-'} -> "
                        f"{'enabled' if enable else 'disabled'}")
        if start:
            steps.append(["systemctl", "enable", "--now", unit] if enable else ["systemctl", "start", unit])
            diff.append(f"active: {fact.get('active_state') or '-'} -> active")
        elif stop:
            steps.append(["systemctl", "disable", "--now", unit] if disable else ["systemctl", "stop", unit])
            diff.append(f"active: {fact.get('active_state')} -> inactive")
        if enable and not start:
            steps.insert(0, ["systemctl", "enable", unit])
        if disable and not stop:
            steps.insert(0, ["systemctl", "disable", unit])
        if state == "restarted":
            steps.append(["systemctl", "restart", unit])
            diff.append("restart")
        if not steps:
            words = {"started": "active", "stopped": "inactive"}[state]
            if enabled is not None:
                words += " and " + ("enabled" if enabled else "disabled")
            return Noop(self.name, unit, f"{unit} already {words}")
        summary = "; ".join(" ".join(s[1:-1]) + f" {unit}" for s in steps)
        return Change(self.name, unit, steps, "\n".join(diff), summary)


OP = ServiceOp()
