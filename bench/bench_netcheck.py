"""netcheck wall time and accuracy on lab clusters: both directions at once (the default,
N-1 rounds) next to one direction at a time (the previous default, 2(N-1) phases).

    sudo PYTHONPATH=src python bench/bench_netcheck.py                 # 4 and 8 nodes
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 32 --lab nc13
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 4 --link 10gbit --serial

For each size it brings up a lab (`clusterctl lab`, links shaped to --link), installs
iperf3 on the nodes from the lab's apt mirror, then runs netcheck on the same lab, one
after the other in this process:

  bidir     the default: tournament rounds, each pair full duplex (iperf3 --bidir)
            with --streams streams, then a 1 s single-stream run in the same slot
  one-way   the previous default: tournament rounds split into a->b and b->a halves,
            one stream per run
  serial    (with --serial) one pair at a time, one direction at a time
  bidir-P   (with --modes) bidir without the single-stream run: the schedule alone

It prints wall times (whole run and bandwidth step), iperf3 phases, the Gbit/s of every
link against the shaped rate (how many within 10%), the single-stream figures, the
warnings/errors, and the load average of the machine around each run. It asserts
nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from clusterctl import lab
from clusterctl.inventory import load_inventory
from clusterctl.lab.netplan import LINK_CLASSES
from clusterctl.netcheck.run import NetcheckOptions, run_netcheck
from clusterctl.remote import Connection

GOALS = {8: 25.0, 32: 120.0}      # seconds end to end for the default mode (issue #13)


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


MODES = {
    # name: (schedule, bidir, streams (None: --streams), single-stream seconds)
    "bidir": ("tournament", True, None, 1.0),
    "bidir-P": ("tournament", True, None, 0.0),       # without the single-stream run
    "one-way": ("tournament", False, 1, 0.0),
    "serial": ("serial", False, 1, 0.0),
}


def modes(args) -> list[tuple[str, NetcheckOptions]]:
    names = args.modes + (["serial"] if args.serial and "serial" not in args.modes else [])
    out = []
    for name in names:
        schedule, bidir, streams, single = MODES[name]
        out.append((name, NetcheckOptions(duration=args.duration, schedule=schedule,
                                          bidir=bidir, streams=streams or args.streams,
                                          single_stream_seconds=single)))
    return out


def within(rates: list[float], shaped: float) -> int:
    return sum(1 for r in rates if abs(r - shaped) <= 0.1 * shaped)


def bench_size(n: int, args) -> list[dict]:
    name = f"{args.lab}{n}"
    t = time.monotonic()
    state = lab.up(name, nodes=n, link=args.link, log=lambda m: None)
    print(f"lab {name}: {n} nodes up in {time.monotonic() - t:.1f}s ({args.link})",
          file=sys.stderr)
    try:
        inv = load_inventory(state.inventory_path)
        apt = (inv.head.vars.get("mirror") or {}).get("apt")
        with ThreadPoolExecutor(min(n, 16)) as ex:
            list(ex.map(lambda h: install_iperf3(h, apt), inv.hosts.values()))
        shaped = (LINK_CLASSES.get(args.link) or 0) / 1e9
        rows = []
        for mode, opts in modes(args):
            load0 = os.getloadavg()[0]
            t = time.monotonic()
            result = run_netcheck(inv, list(inv.hosts.values()), opts)
            wall = time.monotonic() - t
            load1 = os.getloadavg()[0]
            rates = [ln.gbps for ln in result.links if ln.gbps is not None]
            single = [ln.single_stream_gbps for ln in result.links
                      if ln.single_stream_gbps is not None and (ln.streams or 1) > 1]
            codes = sorted({f.code for f in result.findings if f.severity != "info"})
            rows.append({
                "nodes": n, "mode": mode, "rounds": result.rounds, "phases": result.phases,
                "bidir": result.bidir, "wall_s": wall,
                "bandwidth_s": result.timings.get("bandwidth", 0.0),
                "links": len(rates), "want": n * (n - 1),
                "mean": statistics.mean(rates) if rates else 0.0,
                "min": min(rates, default=0.0), "max": max(rates, default=0.0),
                "within10": within(rates, shaped) if shaped else None,
                "single_mean": statistics.mean(single) if single else None,
                "single_min": min(single, default=None),
                "single_within10": within(single, shaped) if shaped and single else None,
                "singles": len(single), "codes": codes, "load": (load0, load1),
            })
            print(f"  {n} nodes {mode}: {wall:.1f}s", file=sys.stderr)
        return rows
    finally:
        if not args.keep:
            lab.down(name, log=lambda m: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--link", default="1gbit", choices=sorted(LINK_CLASSES))
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per iperf3 run")
    ap.add_argument("--streams", type=int, default=4, help="iperf3 -P of the bidir mode")
    ap.add_argument("--serial", action="store_true", help="also one pair at a time")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["bidir", "one-way"],
                    help="what to run on each lab (bidir-P: bidir without the 1-stream run)")
    ap.add_argument("--lab", default=os.environ.get("CLUSTERCTL_TEST_LAB", "ncbench"),
                    help="lab name prefix (the node count is appended)")
    ap.add_argument("--keep", action="store_true", help="leave the labs up")
    args = ap.parse_args()
    rows = [r for n in args.nodes for r in bench_size(n, args)]
    shaped = LINK_CLASSES.get(args.link)
    print(f"\nnetcheck on lab clusters, links shaped to {args.link}, {args.duration:g}s per "
          f"iperf3 run; bidir = --bidir -P {args.streams} + 1 s -P 1, one-way = the previous "
          f"default (halves, -P 1)\n")
    head = (f"{'nodes':>5} {'mode':<8} {'phases':>6} {'total s':>8} {'iperf3 s':>8} "
            f"{'links':>7} {'mean':>6} {'min':>6} {'max':>6} {'±10%':>7} "
            f"{'1-str mean':>10} {'1-str min':>9} {'1-str ±10%':>10} {'load':>9}  findings")
    print(head)
    print("-" * len(head))
    for r in rows:
        w10 = "-" if r["within10"] is None else f"{r['within10']}/{r['links']}"
        s10 = "-" if r["single_within10"] is None else f"{r['single_within10']}/{r['singles']}"
        sm = "-" if r["single_mean"] is None else f"{r['single_mean']:.3f}"
        smin = "-" if r["single_min"] is None else f"{r['single_min']:.3f}"
        print(f"{r['nodes']:>5} {r['mode']:<8} {r['phases']:>6} {r['wall_s']:>8.1f} "
              f"{r['bandwidth_s']:>8.1f} {r['links']:>3}/{r['want']:<3} {r['mean']:>6.3f} "
              f"{r['min']:>6.3f} {r['max']:>6.3f} {w10:>7} {sm:>10} {smin:>9} {s10:>10} "
              f"{r['load'][0]:>4.1f}-{r['load'][1]:<4.1f}  {', '.join(r['codes']) or '-'}")
    by = {(r["nodes"], r["mode"]): r for r in rows}
    print()
    for n in args.nodes:
        b, o = by.get((n, "bidir")), by.get((n, "one-way"))
        if b and o and b["bandwidth_s"]:
            print(f"{n} nodes: bidir {b['phases']} phases in {b['bandwidth_s']:.1f}s vs one-way "
                  f"{o['phases']} phases in {o['bandwidth_s']:.1f}s "
                  f"({o['bandwidth_s'] / b['bandwidth_s']:.2f}x); whole run {b['wall_s']:.1f}s "
                  f"vs {o['wall_s']:.1f}s" + (f"; goal {GOALS[n]:g}s: "
                                              f"{'met' if b['wall_s'] <= GOALS[n] else 'MISSED'}"
                                              if n in GOALS else ""))
    if shaped:
        print(f"±10%: links measured within 10% of the shaped {shaped / 1e9:g} Gbit/s")


if __name__ == "__main__":
    main()
