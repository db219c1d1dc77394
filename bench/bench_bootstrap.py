"""Benchmark: `clusterctl bootstrap` first converge at 2 and 8 nodes, software fanned out
(the default, `fan_out: true`) next to every node fetching it itself (`fan_out: false`),
in one run, with the bytes the controller sent.

Prints figures, asserts nothing. Needs root (it brings labs up and always down).

    python bench/bench_bootstrap.py [--sizes 2,8] [--link 10gbit] [--name benchboot]
    python bench/bench_bootstrap.py --noop [--nodes 4] [--runs 5]   # no-op converges

Each converge starts from fresh nodes (a new lab) with the controller's caches warm (a
1-node converge primes them first: staged wheels, the Debian archive pool, the llama.cpp
build). The bytes the controller sent are the tx counter of the lab's bridge, the
controller's only way to the nodes: SSH, the mirror's HTTP (apt and pip when nodes fetch
themselves) and the relay chain's stream. Goals of issue #13: first converge at 8 nodes
within 1.3x of 2 nodes, bytes sent by the controller independent of N.

On this lab every node shares the same 2 CPU cores, so what each node does alone
(dpkg unpacking, pip installing the venv, starting Ray) adds up with N here, which real
nodes do side by side: the wall time ratio measures the machine as much as the method.
The bytes do not depend on that.
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import yaml

from clusterctl import lab as labs
from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.inventory import load_inventory


class StepClock:
    """A reporter noting the wall time from one task's first result to the next task's:
    where a converge spends its time (cluster steps included)."""

    def __init__(self):
        self.last = time.monotonic()
        self.steps: dict[str, float] = {}

    def play_start(self, play, hosts):
        pass

    def progress(self, host, line):
        pass

    def task_result(self, result):
        now = time.monotonic()
        self.steps.setdefault(result.title, now - self.last)
        self.last = now


def converge(inv, plays, reporter=None, **opts):
    start = time.monotonic()
    report = run_playbook(inv, plays, RunOptions(**opts), reporter=reporter)
    return time.monotonic() - start, report


def tx_bytes(bridge: str) -> int:
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def inventory_with(state, fan_out: bool) -> Path:
    """The lab's inventory with fan_out set (written beside it: key paths are relative)."""
    path = Path(state.inventory_path)
    data = yaml.safe_load(path.read_text())
    data["all"]["vars"]["fan_out"] = fan_out
    out = path.with_name(f"inventory-fan-{'on' if fan_out else 'off'}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def first_converge(name: str, nodes: int, link: str, fan_out: bool, plays) -> dict:
    labs.down(name)
    try:
        state = labs.up(name, nodes=nodes, link=link, mirror=True, log=lambda *_: None)
        inv = load_inventory(inventory_with(state, fan_out))
        before, load_before = tx_bytes(state.bridge), load()
        clock = StepClock()
        seconds, report = converge(inv, plays, reporter=clock)
        sent = tx_bytes(state.bridge) - before
        slowest = sorted(clock.steps.items(), key=lambda kv: -kv[1])[:3]
        # the slowest hosts' own time in a task (execution only, not a cluster step's
        # staging and transfer)
        own: dict[str, float] = {}
        for r in report.results:
            if r.task is not None:
                own[r.title] = max(own.get(r.title, 0.0), r.elapsed)
        fanned = {}
        for r in report.results:
            if r.task is not None and "the controller sent" in r.message and r.task.name not in fanned:
                fanned[r.task.name] = r.message.split("the controller sent ")[1].split(" for")[0]
        return {"nodes": nodes, "fan_out": fan_out, "seconds": seconds, "sent": sent,
                "failed": sorted(report.failed_hosts), "load": f"{load_before} -> {load()}",
                "fanned": fanned,
                "slowest": [(t, secs, own.get(t, 0.0)) for t, secs in slowest]}
    finally:
        labs.down(name)


def fan_out_bench(args) -> None:
    plays = load_playbook("bootstrap")
    sizes = [int(x) for x in args.sizes.split(",")]
    if not args.no_prime:
        t = time.monotonic()
        r = first_converge(args.name, 1, args.link, True, plays)
        print(f"priming the controller's caches (1 node, fan_out): {time.monotonic() - t:.0f}s, "
              f"failed={r['failed']}")
    rows = []
    for n in sizes:
        for fan_out in (False, True):
            r = first_converge(args.name, n, args.link, fan_out, plays)
            rows.append(r)
            print(f"{n} nodes, fan_out={str(fan_out).lower():5}: first converge "
                  f"{r['seconds']:.1f}s, controller sent {r['sent'] / 1e6:.0f} MB "
                  f"({r['sent'] / 1e6 / n:.0f} MB per node), failed={r['failed']}, "
                  f"load {r['load']}", flush=True)
            for task, mb in r["fanned"].items():
                print(f"    {task}: the controller sent {mb} through the chain")
            for task, secs, own in r["slowest"]:
                print(f"    {task}: {secs:.1f}s (the slowest node's own install {own:.1f}s)")
    print()
    print("| nodes | software | first converge | controller sent | per node | load (1/5/15 min) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        how = "fanned out (default)" if r["fan_out"] else "each node fetches (fan_out: false)"
        print(f"| {r['nodes']} | {how} | {r['seconds']:.1f} s | {r['sent'] / 1e6:.0f} MB | "
              f"{r['sent'] / 1e6 / r['nodes']:.0f} MB | {r['load']} |")
    by = {(r["nodes"], r["fan_out"]): r for r in rows}
    lo, hi = min(sizes), max(sizes)
    for fan_out in (True, False):
        a, b = by.get((lo, fan_out)), by.get((hi, fan_out))
        if a and b:
            print(f"fan_out={str(fan_out).lower()}: {hi} vs {lo} nodes: time "
                  f"{b['seconds'] / a['seconds']:.2f}x (goal 1.3x), controller bytes "
                  f"{b['sent'] / a['sent']:.2f}x (goal: independent of N)")


def noop_bench(args) -> None:
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
        noop = []
        for _ in range(args.runs):
            elapsed, report = converge(inv, plays)
            if report.changed:
                print(f"warning: not a no-op run: changed={report.changed}")
            noop.append(elapsed)
        check = [converge(inv, plays, check=True)[0] for _ in range(args.runs)]
        print(f"no-op converge ({args.nodes} nodes, {len(plays)} plays incl. the Ray check): "
              f"median {statistics.median(noop):.2f}s (min {min(noop):.2f}, "
              f"max {max(noop):.2f})")
        print(f"--check on the converged cluster: median {statistics.median(check):.2f}s")
    finally:
        labs.down(args.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,8", help="node counts to compare (default 2,8)")
    ap.add_argument("--link", default="10gbit")
    ap.add_argument("--no-prime", action="store_true", help="skip the 1-node priming run")
    ap.add_argument("--noop", action="store_true", help="no-op converges instead")
    ap.add_argument("--nodes", type=int, default=4, help="with --noop")
    ap.add_argument("--runs", type=int, default=5, help="with --noop")
    ap.add_argument("--name", default="benchboot")
    args = ap.parse_args()
    (noop_bench if args.noop else fan_out_bench)(args)


if __name__ == "__main__":
    main()
