"""systemd_unit: a unit file under /etc/systemd/system, with daemon-reload when it changed."""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop, Op, Param, Upload, parse_mode
from clusterctl.ops.file import content_bytes, plan_file
from clusterctl.secret import Secret

UNIT_DIR = "/etc/systemd/system"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".mount", ".path", ".slice",
                 ".automount", ".swap", ".device", ".scope")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")


def unit_name(value: str, param: str = "name") -> str:
    """'ray-head' -> 'ray-head.service'; validates the characters systemd allows."""
    if not isinstance(value, str) or not _UNIT_RE.match(value) or value.startswith("."):
        raise ValueError(f"{param}: expected a systemd unit name like 'ray-head.service', got {value!r}")
    return value if value.endswith(UNIT_SUFFIXES) else value + ".service"


class SystemdUnitOp(Op):
    name = "systemd_unit"
    params = {
        "name": Param(str, required=True, help="unit name; '.service' is added when no suffix"),
        "content": Param((str, bytes, Secret), required=True),
        "mode": Param((int, str), default="0644"),
        "secret": Param(bool, default=False, help="hide the content in diffs"),
    }

    def normalize(self, args: dict) -> dict:
        args["name"] = unit_name(args["name"])
        args["mode"] = parse_mode("mode", args["mode"])
        if isinstance(args["content"], Secret):
            args["secret"] = True
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("file", f"{UNIT_DIR}/{self.validate(args)['name']}")]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path = f"{UNIT_DIR}/{args['name']}"
        result = plan_file(self.name, path, content_bytes(args["content"]),
                           facts.get(FactRequest("file", path)), mode=args["mode"],
                           owner="root", group="root", secret=args["secret"], target=args["name"])
        if isinstance(result, Change) and any(isinstance(s, Upload) for s in result.steps):
            result.steps.append(["systemctl", "daemon-reload"])
        return result


OP = SystemdUnitOp()
