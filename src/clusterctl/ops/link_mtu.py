"""link_mtu: the MTU of one interface (`ip link set dev IF mtu N`).

The plan is the plain command. `safe` and `rollback_after` are read by the
engine's MTU executor (verify the new MTU, roll back on failure); they do not
change the plan.
"""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop, Op, Param, PlanError

_IFNAME_RE = re.compile(r"^[^/\s:]{1,15}$")


class LinkMtuOp(Op):
    name = "link_mtu"
    params = {
        "interface": Param(str, required=True),
        "mtu": Param(int, required=True, help="68..65535"),
        "safe": Param(bool, default=True, help="engine: verify the path at the new MTU, roll back on failure"),
        "rollback_after": Param(int, default=60, help="engine: seconds before an unconfirmed change is undone"),
    }

    def normalize(self, args: dict) -> dict:
        if not _IFNAME_RE.match(args["interface"]) or args["interface"] in (".", ".."):
            raise ValueError(f"interface: expected an interface name (at most 15 characters), got {args['interface']!r}")
        if not 68 <= args["mtu"] <= 65535:
            raise ValueError(f"mtu: expected 68..65535, got {args['mtu']}")
        if args["rollback_after"] < 5:
            raise ValueError(f"rollback_after: expected at least 5 seconds, got {args['rollback_after']}")
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        return [FactRequest("link", self.validate(args)["interface"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        iface, mtu = args["interface"], args["mtu"]
        link = facts.get(FactRequest("link", iface))
        if not link["exists"]:
            raise PlanError(f"no interface {iface} on this host")
        if link["mtu"] == mtu:
            return Noop(self.name, iface, f"mtu already {mtu} on {iface}")
        return Change(self.name, iface, [["ip", "link", "set", "dev", iface, "mtu", str(mtu)]],
                      f"{iface} mtu: {link['mtu']} -> {mtu}", f"set mtu {mtu} on {iface}")


OP = LinkMtuOp()
