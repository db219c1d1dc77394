#!/usr/bin/env python3
"""Benchmark: what the lab's shaped links measure, next to the rate they are shaped to.
Prints figures; asserts nothing (tests/lab/test_lab.py checks that the shaping is in
place and that a slowed link is slower; the figures live here).

    sudo python bench/bench_lab_links.py                      # a 2-node lab at 1gbit
    sudo python bench/bench_lab_links.py --link 10gbit --slow 100mbit 500mbit
    sudo python bench/bench_lab_links.py --lab citest         # an existing lab, untouched
                                                              # but for a fault it heals

For the lab's class and for each --slow rate (the `slow-link` fault on node2) it runs
iperf3 from node1 to node2 and back, with the host's iperf3 inside the nodes' network
namespaces (the nodes need nothing installed), and prints the Gbit/s of each direction,
the shaped rate, and measured / shaped. The old test asserted 0.9-1.1 of the rate; a
healthy 2-core machine shows ~0.95-0.99 at 1gbit.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clusterctl import lab  # noqa: E402
from clusterctl.lab.netplan import LINK_CLASSES, parse_rate  # noqa: E402

PORT = "5298"


def iperf(client, server, *, reverse: bool, seconds: int) -> float:
    srv = subprocess.Popen(["nsenter", "-t", str(server.pid), "-n", "--",
                            "iperf3", "-s", "-p", PORT],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listening = subprocess.run(["nsenter", "-t", str(server.pid), "-n", "--",
                                        "ss", "-Hltn", f"sport = :{PORT}"],
                                       capture_output=True, text=True).stdout
            if listening.strip():
                break
            time.sleep(0.05)
        argv = ["nsenter", "-t", str(client.pid), "-n", "--", "iperf3", "-c", server.ip,
                "-p", PORT, "-t", str(seconds), "-O", "1", "-J"] + (["-R"] if reverse else [])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        if out.returncode != 0:
            raise SystemExit(f"iperf3 failed: {out.stdout[-2000:]}{out.stderr}")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def measure(state, label: str, shaped_bps: int | None, args) -> dict:
    a, b = state.nodes[0], state.nodes[1]
    fwd = [iperf(a, b, reverse=False, seconds=args.seconds) for _ in range(args.repeat)]
    back = [iperf(a, b, reverse=True, seconds=args.seconds) for _ in range(args.repeat)]
    return {"label": label, "shaped": shaped_bps / 1e9 if shaped_bps else None,
            "fwd": statistics.median(fwd), "back": statistics.median(back)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", help="use this existing lab (at least 2 nodes) instead of "
                    "bringing one up")
    ap.add_argument("--name", default="linkbench", help="name of the lab brought up")
    ap.add_argument("--link", default="1gbit", choices=sorted(LINK_CLASSES))
    ap.add_argument("--slow", nargs="*", default=["200mbit"],
                    help="slow-link rates to measure on node2 (default 200mbit)")
    ap.add_argument("--seconds", type=int, default=4, help="seconds per iperf3 run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed on this host: apt-get install iperf3")

    if args.lab:
        state = lab.status(args.lab)
        if len(state.nodes) < 2:
            raise SystemExit(f"lab {args.lab} has fewer than 2 nodes")
    else:
        lab.down(args.name, log=lambda m: None)
        state = lab.up(args.name, nodes=2, link=args.link, mirror=False, log=lambda m: None)
    rows = []
    try:
        rows.append(measure(state, f"{state.link} (lab class)", LINK_CLASSES[state.link],
                            args))
        victim = state.nodes[1].name
        for rate in args.slow:
            lab.fault(state.name, victim, "slow-link", rate)
            try:
                rows.append(measure(state, f"slow-link {rate}", parse_rate(rate), args))
            finally:
                lab.heal(state.name, victim)
    finally:
        if not args.lab:
            lab.down(args.name, log=lambda m: None)

    print(f"\nlab link rates, node1 <-> node2, iperf3 {args.seconds}s, median of "
          f"{args.repeat}\n")
    head = (f"{'link':<24} {'shaped':>8} {'fwd':>7} {'back':>7} {'fwd/shaped':>10} "
            f"{'back/shaped':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        shaped = r["shaped"]
        shown = f"{shaped:g}" if shaped else "none"

        def ratio(v: float) -> str:
            return f"{v / shaped:.3f}" if shaped else "-"
        print(f"{r['label']:<24} {shown:>8} {r['fwd']:>7.3f} {r['back']:>7.3f} "
              f"{ratio(r['fwd']):>10} {ratio(r['back']):>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
