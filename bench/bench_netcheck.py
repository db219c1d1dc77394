"""netcheck wall time on lab clusters: the tournament schedule next to the serial one.

    sudo PYTHONPATH=src python bench/bench_netcheck.py                 # 4 and 8 nodes
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 4 --link 10gbit --keep

For each size it brings up a lab (`clusterctl lab`, links shaped to --link), installs
iperf3 on the nodes from the lab's apt mirror, then runs netcheck twice in the same
process: rounds of disjoint pairs (tournament), and one pair at a time (serial). It
prints wall times (whole run and bandwidth step), the number of iperf3 phases, and the
measured Gbit/s against the shaped rate. It prints figures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from clusterctl import lab
from clusterctl.inventory import load_inventory
from clusterctl.lab.netplan import LINK_CLASSES
from clusterctl.netcheck.run import NetcheckOptions, run_netcheck
from clusterctl.netcheck.schedule import phases, serial, tournament
from clusterctl.remote import Connection


def install_iperf3(host, apt_url: str | None) -> None:
    with Connection(host) as c:
        if c.run("command -v iperf3", check=False).exit_code == 0:
            return
        if not apt_url:
            raise SystemExit(f"{host.name}: no iperf3 and no lab mirror (lab up without "
                             "--no-mirror)")
        c.put(f"deb [trusted=yes] {apt_url} ./\n",
              "/etc/apt/sources.list.d/clusterctl-mirror.list")
        c.run("export DEBIAN_FRONTEND=noninteractive; "
              "apt-get update -o Dir::Etc::sourcelist=sources.list.d/clusterctl-mirror.list "
              "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 -qq && "
              "apt-get install -y -qq --no-install-recommends iperf3 >/dev/null", timeout=300)


def bench_size(n: int, args) -> list[dict]:
    name = f"ncbench{n}"
    t = time.monotonic()
    state = lab.up(name, nodes=n, link=args.link, log=lambda m: None)
    print(f"lab {name}: {n} nodes up in {time.monotonic() - t:.1f}s ({args.link})",
          file=sys.stderr)
    try:
        inv = load_inventory(state.inventory_path)
        apt = (inv.head.vars.get("mirror") or {}).get("apt")
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda h: install_iperf3(h, apt), inv.hosts.values()))
        rows = []
        for schedule in ("tournament", "serial"):
            opts = NetcheckOptions(duration=args.duration, schedule=schedule,
                                   bidir=args.bidir)
            t = time.monotonic()
            result = run_netcheck(inv, list(inv.hosts.values()), opts)
            wall = time.monotonic() - t
            rates = [ln.gbps for ln in result.links if ln.gbps is not None]
            names = list(inv.hosts)
            plan = phases(tournament(names) if schedule == "tournament" else serial(names),
                          bidir=args.bidir)
            shaped = (LINK_CLASSES.get(args.link) or 0) / 1e9
            rows.append({
                "nodes": n, "schedule": schedule, "phases": len(plan),
                "wall_s": wall, "bandwidth_s": result.timings.get("bandwidth", 0.0),
                "links": len(rates), "mean": statistics.mean(rates) if rates else 0.0,
                "min": min(rates, default=0.0), "max": max(rates, default=0.0),
                "within10": (sum(1 for r in rates if abs(r - shaped) <= 0.1 * shaped)
                             if shaped else None),
                "errors": sum(f.severity == "error" for f in result.findings),
            })
        return rows
    finally:
        if not args.keep:
            lab.down(name, log=lambda m: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--link", default="1gbit", choices=sorted(LINK_CLASSES))
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per iperf3 run")
    ap.add_argument("--bidir", action="store_true", help="iperf3 --bidir (both directions "
                    "at once)")
    ap.add_argument("--keep", action="store_true", help="leave the labs up")
    args = ap.parse_args()
    rows = [r for n in args.nodes for r in bench_size(n, args)]
    print(f"\nnetcheck wall time, links shaped to {args.link}, {args.duration:g}s per iperf3 "
          f"run, {'--bidir' if args.bidir else 'one direction at a time'}\n")
    head = (f"{'nodes':>5} {'schedule':<10} {'phases':>6} {'total s':>8} {'iperf3 s':>8} "
            f"{'links':>5} {'mean':>6} {'min':>6} {'max':>6} {'±10%':>6} {'errors':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        w10 = "-" if r["within10"] is None else f"{r['within10']}/{r['links']}"
        print(f"{r['nodes']:>5} {r['schedule']:<10} {r['phases']:>6} {r['wall_s']:>8.1f} "
              f"{r['bandwidth_s']:>8.1f} {r['links']:>5} {r['mean']:>6.3f} {r['min']:>6.3f} "
              f"{r['max']:>6.3f} {w10:>6} {r['errors']:>6}")
    by = {(r["nodes"], r["schedule"]): r for r in rows}
    for n in args.nodes:
        t, s = by.get((n, "tournament")), by.get((n, "serial"))
        if t and s and t["bandwidth_s"]:
            print(f"{n} nodes: tournament bandwidth step {s['bandwidth_s'] / t['bandwidth_s']:.1f}x "
                  f"faster than serial ({t['bandwidth_s']:.1f}s vs {s['bandwidth_s']:.1f}s)")


if __name__ == "__main__":
    main()
