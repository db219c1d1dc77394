"""After the bootstrap playbook: prove the Ray cluster is whole.

`ray status` on the head must list every inventory node (matched by cluster IP
through Ray's state API) and the total GPUs. A missing node is named, with the
tail of its Ray unit's journal.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field

from .errors import ClusterctlError, HostError
from .remote import Connection

FETCH_JSON = ("import json,sys,urllib.request;"
              "print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())")


@dataclass
class RayCheck:
    head: str
    expected: dict[str, str]              # host -> cluster ip
    alive: dict[str, dict] = field(default_factory=dict)   # ip -> node record
    total_gpus: float = 0.0
    total_cpus: float = 0.0
    status_text: str = ""

    @property
    def missing(self) -> list[str]:
        return [h for h, ip in self.expected.items() if ip not in self.alive]

    @property
    def ok(self) -> bool:
        return not self.missing


def parse_state_nodes(text: str) -> list[dict]:
    """Nodes from Ray's state API (/api/v0/nodes) JSON."""
    data = json.loads(text)
    inner = data.get("data", {}).get("result", {})
    nodes = inner.get("result", inner) if isinstance(inner, dict) else inner
    return [n for n in nodes if isinstance(n, dict)]


def parse_ray_status_totals(text: str) -> dict[str, float]:
    """Totals from the `Usage:` block of `ray status`: '0.0/4.0 CPU' -> {'CPU': 4.0}."""
    totals = {}
    for m in re.finditer(r"^\s*[\d.]+[A-Za-z]*/([\d.]+)[A-Za-z]* (\S+)", text, re.M):
        totals[m.group(2)] = float(m.group(1))
    return totals


def check_ray(conn: Connection, expected: dict[str, str], *, head_ip: str, venv: str,
              ray_port: int, dashboard_port: int, wait: float = 90.0,
              run_status: bool = True) -> RayCheck:
    """Nodes from Ray's state API (polled until every expected IP is alive or `wait`
    passes); totals from `ray status` (run_status) or else from the state API."""
    check = RayCheck(conn.name, expected)
    url = f"http://{head_ip}:{dashboard_port}/api/v0/nodes?limit=10000"
    deadline = time.monotonic() + wait
    last_error = ""
    while True:
        res = conn.run(["python3", "-c", FETCH_JSON, url], check=False, timeout=15)
        if res.ok:
            try:
                nodes = parse_state_nodes(res.stdout)
                check.alive = {n.get("node_ip"): n for n in nodes if n.get("state") == "ALIVE"}
                last_error = ""
            except (ValueError, AttributeError) as exc:
                last_error = f"unexpected answer from Ray's state API: {exc}"
        else:
            last_error = (res.stderr.strip().splitlines() or ["no answer"])[-1]
        if check.ok or time.monotonic() > deadline:
            break
        time.sleep(2)
    if run_status or not check.ok:
        status = conn.run([f"{venv}/bin/ray", "status", f"--address={head_ip}:{ray_port}"],
                          check=False, timeout=60)
        check.status_text = status.stdout
        totals = parse_ray_status_totals(status.stdout)
    else:
        totals = {}
        for node in check.alive.values():
            for key, value in (node.get("resources_total") or {}).items():
                totals[key] = totals.get(key, 0.0) + float(value)
    check.total_gpus = totals.get("GPU", 0.0)
    check.total_cpus = totals.get("CPU", 0.0)
    if not check.alive and last_error:
        raise HostError(conn.name, f"Ray state API at {url} did not answer: {last_error}")
    return check


def verify_ray_cluster(inventory, report, out, *, accept_new_host_keys=False,
                       wait: float = 90.0) -> RayCheck:
    """Check the cluster after bootstrap; raises HostError naming missing nodes."""
    from .engine.runner import cluster_address
    head = inventory.head
    facts = report.facts
    expected = {}
    for name, f in facts.items():
        host = inventory.hosts[name]
        _iface, ip = cluster_address(host, f)
        if ip:
            expected[name] = ip
    head_ip = expected.get(head.name)
    if not head_ip:
        raise HostError(head.name, "no cluster IP for the head: cannot check Ray")
    ray = head.vars["ray"]
    venv = head.vars["python"]["venv"]
    with Connection(head, accept_new_host_keys=accept_new_host_keys) as conn:
        check = check_ray(conn, expected, head_ip=head_ip, venv=venv, ray_port=ray["port"],
                          dashboard_port=ray["dashboard_port"], wait=wait,
                          run_status=report.changed > 0)
    if check.ok:
        out.print(f"[green]ray: {len(check.alive)} node(s) alive[/green], "
                  f"{check.total_cpus:g} CPU, {check.total_gpus:g} GPU "
                  f"(head {head.name} {head_ip}:{ray['port']})")
        return check
    lines = []
    for name in check.missing:
        host = inventory.hosts[name]
        unit = "ray-head.service" if host.is_head else "ray-worker.service"
        tail = ""
        try:
            with Connection(host, accept_new_host_keys=accept_new_host_keys) as c:
                tail = c.run(f"journalctl -u {shlex.quote(unit)} -n 15 --no-pager -o cat",
                             check=False, timeout=15).stdout
        except ClusterctlError as exc:
            tail = str(exc)
        lines.append(f"{name} ({expected[name]}) has not joined the Ray cluster; "
                     f"last lines of {unit}:\n" + "\n".join("    " + ln for ln in
                                                          tail.rstrip().splitlines()))
    raise HostError(head.name, "ray status: " + f"{len(check.alive)}/{len(expected)} nodes "
                    "alive.\n" + "\n".join(lines))
