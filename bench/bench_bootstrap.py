"""Benchmark: `clusterctl bootstrap` on a 4-node lab — first converge, then no-op converges.

Prints figures, asserts nothing. Needs root (it brings a lab up and always down).
Goal from the issue: the no-op run of the whole bootstrap on 4 nodes in at most 2 s.

    python bench/bench_bootstrap.py [--nodes 4] [--runs 5] [--name benchboot]
"""
import argparse
import statistics
import time

from clusterctl import lab as labs
from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.inventory import load_inventory


def converge(inv, plays, **opts):
    start = time.monotonic()
    report = run_playbook(inv, plays, RunOptions(**opts))
    return time.monotonic() - start, report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--name", default="benchboot")
    args = ap.parse_args()
    labs.down(args.name)
    try:
        t = time.monotonic()
        state = labs.up(args.name, nodes=args.nodes, link="10gbit", mirror=True)
        print(f"lab up ({args.nodes} nodes): {time.monotonic() - t:.1f}s")
        inv = load_inventory(state.inventory_path)
        plays = load_playbook("bootstrap")
        first, report = converge(inv, plays)
        print(f"first converge: {first:.1f}s, changed={report.changed}, "
              f"failed={report.failed_hosts}")
        ray = [r for r in report.results if r.task is not None and r.task.op == "ray_cluster"]
        print(f"ray cluster check (a task of the run): "
              f"{max((r.elapsed for r in ray), default=0):.2f}s, "
              f"{sorted({r.status for r in ray})}")
        noop = []
        for _ in range(args.runs):
            elapsed, report = converge(inv, plays)
            if report.changed:
                print(f"warning: not a no-op run: changed={report.changed}")
            noop.append(elapsed)
        check = [converge(inv, plays, check=True)[0] for _ in range(args.runs)]
        print(f"no-op converge ({args.nodes} nodes, {len(plays)} plays incl. the Ray check): median "
              f"{statistics.median(noop):.2f}s (min {min(noop):.2f}, max {max(noop):.2f})")
        print(f"--check on the converged cluster: median {statistics.median(check):.2f}s")
    finally:
        labs.down(args.name)


if __name__ == "__main__":
    main()
