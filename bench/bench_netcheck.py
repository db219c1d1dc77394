"""netcheck wall time and accuracy on lab clusters: the default (N-1 rounds, both directions
at once, each pair starting when its two nodes are free) next to the same rounds with a
barrier after each phase (the previous schedule) and one direction at a time (2(N-1) phases).

    sudo PYTHONPATH=src python bench/bench_netcheck.py                 # 4 and 8 nodes, 1gbit
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 8 --link 100mbit
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 32 --link 100mbit \\
        --modes bidir barrier --lab nc --wait-load 4
    sudo PYTHONPATH=src python bench/bench_netcheck.py --nodes 4 --link 10gbit --serial

At 32 nodes use `--link 100mbit`: 16 full-duplex pairs at once are 3.2 Gbit/s of veth
traffic, which a 2-core machine carries; at 1gbit (32 Gbit/s) the lab measures the
machine, not netcheck.

For each size it brings up a lab (`clusterctl lab`, links shaped to --link), installs
iperf3 on the nodes from the lab's apt mirror, then runs netcheck on the same lab, one
after the other in this process:

  bidir     the default: tournament rounds, each pair full duplex (iperf3 --bidir)
            with --streams streams, then a 1 s single-stream run in the same slot (one
            command); a pair starts as soon as its two nodes are free
  barrier   the same, but each phase starts when the whole phase before it ended (the
            schedule before the pipeline)
  one-way   the default before --bidir: tournament rounds split into a->b and b->a
            halves, one stream per run, a barrier after each phase
  serial    (with --serial) one pair at a time, one direction at a time
  bidir-P   (with --modes) bidir without the single-stream run: the schedule alone

It prints wall times (whole run, the checks before iperf3, the bandwidth step), iperf3
phases, the Gbit/s of every link against the shaped rate (how many within 10%), the
single-stream figures, the warnings/errors, the load average of the machine around each
run, and the issue's goals (met or missed). It asserts nothing.
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
    # name: (schedule, bidir, streams (None: --streams), single-stream seconds, pipeline)
    "bidir": ("tournament", True, None, 1.0, True),
    "barrier": ("tournament", True, None, 1.0, False),
    "bidir-P": ("tournament", True, None, 0.0, True),       # without the single-stream run
    "one-way": ("tournament", False, 1, 0.0, False),
    "serial": ("serial", False, 1, 0.0, False),
}


def modes(args) -> list[tuple[str, NetcheckOptions]]:
    names = args.modes + (["serial"] if args.serial and "serial" not in args.modes else [])
    out = []
    for name in names:
        schedule, bidir, streams, single, pipeline = MODES[name]
        out.append((name, NetcheckOptions(duration=args.duration, schedule=schedule,
                                          bidir=bidir, streams=streams or args.streams,
                                          single_stream_seconds=single,
                                          pipeline=pipeline)))
    return out


def within(rates: list[float], shaped: float) -> int:
    return sum(1 for r in rates if abs(r - shaped) <= 0.1 * shaped)


def quiet(args) -> None:
    """With --wait-load L: wait (at most --wait-max seconds) for a 1-minute load average
    below L, so a run does not share the machine with a burst of other work."""
    if not args.wait_load:
        return
    t = time.monotonic()
    while os.getloadavg()[0] >= args.wait_load and time.monotonic() - t < args.wait_max:
        time.sleep(5)
    waited = time.monotonic() - t
    if waited >= 5:
        print(f"  waited {waited:.0f}s for load < {args.wait_load:g} (now "
              f"{os.getloadavg()[0]:.1f})", file=sys.stderr)


def bench_size(n: int, args) -> list[dict]:
    name = f"{args.lab}{n}"
    quiet(args)
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
            quiet(args)
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
                "checks_s": sum(result.timings.get(k, 0.0) for k in ("connect", "facts",
                                                                       "checks")),
                "links": len(rates), "want": n * (n - 1),
                "mean": statistics.mean(rates) if rates else 0.0,
                "min": min(rates, default=0.0), "max": max(rates, default=0.0),
                "within10": within(rates, shaped) if shaped else None,
                "single_mean": statistics.mean(single) if single else None,
                "single_min": min(single, default=None),
                "single_within10": within(single, shaped) if shaped and single else None,
                "singles": len(single), "codes": codes, "load": (load0, load1),
            })
            print(f"  {n} nodes {mode}: {wall:.1f}s (load {load0:.1f}-{load1:.1f})",
                  file=sys.stderr)
        return rows
    finally:
        if not args.keep:
            lab.down(name, log=lambda m: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--link", default="1gbit", choices=sorted(LINK_CLASSES))
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per pair (the whole slot: -P run, then 1 s -P 1)")
    ap.add_argument("--streams", type=int, default=4, help="iperf3 -P of the bidir mode")
    ap.add_argument("--serial", action="store_true", help="also one pair at a time")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES),
                    default=["bidir", "barrier", "one-way"],
                    help="what to run on each lab, in this order (bidir-P: bidir without "
                         "the 1-stream run)")
    ap.add_argument("--lab", default=os.environ.get("CLUSTERCTL_TEST_LAB", "ncbench"),
                    help="lab name prefix (the node count is appended)")
    ap.add_argument("--keep", action="store_true", help="leave the labs up")
    ap.add_argument("--wait-load", type=float, default=0.0, metavar="L",
                    help="before each run wait for a 1-minute load average below L")
    ap.add_argument("--wait-max", type=float, default=600.0, metavar="S",
                    help="wait at most S seconds for --wait-load (then run anyway)")
    args = ap.parse_args()
    rows = [r for n in args.nodes for r in bench_size(n, args)]
    shaped = LINK_CLASSES.get(args.link)
    print(f"\nnetcheck on lab clusters, links shaped to {args.link}, {args.duration:g}s per "
          f"pair; bidir = --bidir -P {args.streams} + 1 s -P 1, pairs pipelined; barrier = "
          f"the same, a barrier after each phase; one-way = halves, -P 1, barrier\n")
    head = (f"{'nodes':>5} {'mode':<8} {'phases':>6} {'total s':>8} {'checks s':>8} "
            f"{'iperf3 s':>8} "
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
              f"{r['checks_s']:>8.1f} {r['bandwidth_s']:>8.1f} {r['links']:>3}/{r['want']:<3} {r['mean']:>6.3f} "
              f"{r['min']:>6.3f} {r['max']:>6.3f} {w10:>7} {sm:>10} {smin:>9} {s10:>10} "
              f"{r['load'][0]:>4.1f}-{r['load'][1]:<4.1f}  {', '.join(r['codes']) or '-'}")
    by = {(r["nodes"], r["mode"]): r for r in rows}
    print()
    for n in args.nodes:
        b = by.get((n, "bidir"))
        if not b:
            continue
        line = (f"{n} nodes: bidir {b['phases']} phases, whole run {b['wall_s']:.1f}s "
                f"(bandwidth {b['bandwidth_s']:.1f}s)")
        for base in ("barrier", "one-way", "serial"):
            o = by.get((n, base))
            if o and o["bandwidth_s"] and b["bandwidth_s"]:
                line += (f"; {base} {o['phases']} phases {o['wall_s']:.1f}s "
                         f"({o['wall_s'] / b['wall_s']:.2f}x)")
        if n in GOALS:
            line += f"; goal {GOALS[n]:g}s: {'met' if b['wall_s'] <= GOALS[n] else 'MISSED'}"
        if b["within10"] is not None:
            ok = b["within10"] == b["want"] and b["links"] == b["want"]
            line += (f"; links within 10%: {b['within10']}/{b['want']} "
                     f"({'met' if ok else 'MISSED'})")
        print(line)
    if shaped:
        print(f"±10%: links measured within 10% of the shaped {shaped / 1e9:g} Gbit/s")


if __name__ == "__main__":
    main()
