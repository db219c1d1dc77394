"""Benchmark: the CUDA build of llama.cpp by the `llamacpp` role, on a lab with no GPU.

Brings up its own lab (default `he`, 2 nodes: one GPU class), binds a CUDA toolkit into
the nodes read-only (the controller's toolkit merged with the cuBLAS wheel and a driver
stub by `clusterctl.lab.cuda.cuda_root`), runs the plays the role needs (base packages,
llama.cpp) with `llamacpp: {cuda: true, cuda_architectures: [ARCH]}` and prints: the
flags, configure and build time on the builder node, the copy to the other node, what the
second node's binaries link against, and the load average beside the times. The nodes have
no GPU: nothing runs on CUDA here; the bench shows that the build compiles and links.

It builds exactly what the role builds (no option that shrinks the CUDA compile). It runs
at the lowest CPU priority (nice 19, inherited by the nodes) so other work on the machine
is not starved; a run takes tens of minutes on 2 cores. Needs root; prints figures, asserts
nothing; brings its lab down at the end unless --keep.

    python bench/bench_cuda_build.py --wheel nvidia_cublas-13.0.2.14-...whl \\
        [--toolkit /usr/local/cuda-13.0] [--arch 90] [--name he] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

import yaml

from clusterctl import lab as labs
from clusterctl.engine import build
from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.inventory import load_inventory
from clusterctl.lab.core import check_ssh
from clusterctl.lab.cuda import cuda_root

PLAYS = ("base packages", "llama.cpp with RPC")
# README: a CPU-only build of the same source on 2 cores (the lab's CPU class build is
# cached on the controller, so the same run would not rebuild it)
CPU_BASELINE_CACHED = "6-10 min on 2 cores (README, earlier runs)"


class LoadSampler(threading.Thread):
    """The controller's 1-minute load average every `every` seconds."""

    def __init__(self, every: float = 15.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._stop = every, [], threading.Event()

    def run(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def stop(self) -> str:
        self._stop.set()
        s = self.samples or [os.getloadavg()[0]]
        return (f"load average (1 min, {os.cpu_count()} CPUs): mean {statistics.mean(s):.1f}, "
                f"min {min(s):.1f}, max {max(s):.1f} over {len(s)} samples")


class Progress:
    """A reporter: play names, changed and failed tasks, and the build's progress lines
    (at most one a minute)."""

    def __init__(self):
        self.last = 0.0

    def play_start(self, play, hosts):
        print(f"[{time.strftime('%H:%M:%S')}] PLAY {play.name} ({len(hosts)} hosts)", flush=True)

    def task_result(self, result):
        if result.status in ("changed", "failed", "unreachable"):
            print(f"  [{time.strftime('%H:%M:%S')}] {result.status} {result.host} "
                  f"{result.title}: {result.message[:300]}", flush=True)

    def progress(self, host, text):
        now = time.monotonic()
        if now - self.last >= 60 or "configur" in text:
            self.last = now
            print(f"  [{time.strftime('%H:%M:%S')}] {host}: {text} "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)


def sh(state, node, command: str, timeout: float = 120.0) -> str:
    return check_ssh(state, node, command, timeout=timeout)


def lower_cpu_weight(state) -> list[str]:
    """cpu.weight 1 (of 10000; default 100) on the nodes' cgroup2 cgroups, where the cpu
    controller is enabled for them; returns what was set."""
    done = []
    for n in state.nodes:
        for path in n.cgroups:
            f = Path(path) / "cpu.weight"
            try:
                f.write_text("1\n")
                done.append(str(f))
            except OSError:
                pass
    return done


def cpu_seconds(node) -> float | None:
    """CPU time used by everything in the node so far (its cgroup2 cpu.stat), or None."""
    for path in node.cgroups:
        try:
            for line in (Path(path) / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except OSError:
            continue
    return None


def run_role(state, inv_path: Path, cuda: bool, archs: list[str]):
    data = yaml.safe_load(state.inventory_path.read_text())
    data["all"]["vars"]["llamacpp"] = {"cuda": cuda, **({"cuda_architectures": archs}
                                                        if cuda else {})}
    inv_path.write_text(yaml.safe_dump(data, sort_keys=False))
    inv = load_inventory(inv_path)
    plays = [p for p in load_playbook("bootstrap") if p.name in PLAYS]
    start = time.monotonic()
    report = run_playbook(inv, plays, RunOptions(), Progress())
    return time.monotonic() - start, report


def build_log(state, node, build_id: str) -> dict[str, float]:
    """STEP timestamps from the builder's log (configure, build, install) and BUILD-DONE."""
    log = f"{build.REMOTE_CACHE}/llamacpp-build-{build_id}.log"
    text = sh(state, node, f"grep -E '^STEP ' {shlex.quote(log)}; stat -c %Y {shlex.quote(log)}")
    lines = text.split()
    steps = {lines[i + 1]: float(lines[i + 2]) for i in range(len(lines))
             if lines[i] == "STEP" and i + 2 < len(lines)}
    steps["done"] = float(lines[-1])
    return steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="he")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--toolkit", default="/usr/local/cuda-13.0")
    ap.add_argument("--wheel", action="append", default=[],
                    help="an NVIDIA wheel to merge into the toolkit (e.g. nvidia-cublas)")
    ap.add_argument("--arch", action="append", default=None,
                    help="CUDA architecture (repeatable; default 90)")
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    args = ap.parse_args()
    archs = args.arch or ["90"]
    os.nice(19 - os.nice(0))                  # lowest priority; the nodes inherit it
    print(f"bench_cuda_build: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
          f"{os.cpu_count()} CPUs, nice {os.nice(0)}, "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    root = cuda_root(args.toolkit, args.wheel)
    release = json.loads((root / "CLUSTERCTL-CUDA.json").read_text())["release"]
    dest = f"/usr/local/cuda-{release}"
    print(f"CUDA root {root} -> {dest} (read-only bind)", flush=True)
    t = time.monotonic()
    state = labs.up(args.name, nodes=args.nodes, mirror=True, binds=[(str(root), dest)])
    print(f"lab up ({args.nodes} nodes): {time.monotonic() - t:.1f}s", flush=True)
    try:
        weights = lower_cpu_weight(state)
        print(f"cpu.weight 1 on {len(weights)} node cgroup(s)"
              if weights else "cpu.weight: not settable here (cpu controller not enabled "
              "for the lab's cgroups); nice 19 only", flush=True)
        for n in state.nodes:     # what a GPU node's toolkit install does: nvcc on PATH
            sh(state, n, f"ln -sfn {dest} /usr/local/cuda && rm -f /usr/local/bin/nvcc && "
                         "printf '%s\\n' '#!/bin/sh' 'exec /usr/local/cuda/bin/nvcc \"$@\"' "
                         "> /usr/local/bin/nvcc && chmod 755 /usr/local/bin/nvcc")
        first, second = state.nodes[0], state.nodes[1]
        print(f"{first.name}: " + sh(state, first, "nvcc --version | tail -n 2 | head -n 1; "
                                     "echo nice $(nice)").replace("\n", "; "), flush=True)

        load = LoadSampler()
        load.start()
        cpu0 = [cpu_seconds(n) for n in (first, second)]
        elapsed, report = run_role(state, state.dir / "inventory-cuda.yaml", True, archs)
        load_text = load.stop()
        cpu1 = [cpu_seconds(n) for n in (first, second)]
        llama = [r for r in report.results
                 if r.task is not None and r.task.op == "llamacpp_build"]
        bad = [r for r in report.results if r.status in ("failed", "unreachable")]
        for r in bad:
            print(f"FAILED {r.host} {r.title}: {r.message}")
        print(f"\nplays {', '.join(PLAYS)}: {elapsed:.0f}s; {load_text}")
        for r in llama:
            print(f"  {r.host}: {r.status}: {r.message}")
        if bad or not llama:
            sys.exit(1)

        info = json.loads(sh(state, second, "cat /opt/clusterctl/llama.cpp/BUILD-INFO.json"))
        print(f"\nflags: {' '.join(info['flags'])}")
        print(f"class: {info['class']}, built on {info['built_on']}")
        steps = build_log(state, first, info["id"])
        cpu_line = (f"grep -h '^CPU of the build' {build.REMOTE_CACHE}/llamacpp-build-"
                    f"{info['id']}.log || echo '(not in this log)'")
        configure = steps["build"] - steps["configure"]
        compile_ = steps["install"] - steps["build"]
        print(f"configure: {configure:.0f}s, build: {compile_:.0f}s "
              f"({compile_ / 60:.1f} min; ggml-rpc-server, llama-server, llama-cli), "
              f"configure+build {(configure + compile_) / 60:.1f} min on "
              f"{sh(state, first, 'nproc').strip()} cores, nice 19; {load_text}")
        if None not in cpu0 + cpu1:
            # the builder's CPU time less the other node's (which only installed the same
            # packages and unpacked the copy): the build's CPU time, whatever the load
            build_cpu = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
            print(f"CPU time of the build on {first.name}: {build_cpu / 60:.0f} CPU-min "
                  f"(about {build_cpu / 60 / 2:.0f} min of wall time on 2 idle cores); "
                  f"the build log's own count: {sh(state, first, cpu_line).strip()}")
        copy = [r.message for r in llama if r.host == second.name]
        m = re.search(r"\(([\d.]+ MB in [\d.]+s)\)", copy[0] if copy else "")
        print(f"copy to {second.name}: {m.group(1) if m else copy}")
        linked = sh(state, second,
                    "cd /opt/clusterctl/llama.cpp/bin && ls -l && for b in ggml-rpc-server "
                    "llama-server; do echo \"$b NEEDED: $(readelf -d $b | "
                    "sed -n 's/.*Shared library: \\[\\(.*\\)\\]/\\1/p' | tr '\\n' ' ')\"; "
                    "echo \"$b CUDA backend symbols: $(nm -C $b 2>/dev/null | "
                    "grep -c 'ggml_backend_cuda_init\\|ggml_cuda_')\"; done")
        print(f"\n{second.name}: /opt/clusterctl/llama.cpp/bin\n{linked}")
        print("nodes have no GPU: nothing ran on CUDA (the binaries would load the driver's "
              "libcuda.so.1 on a GPU node)")

        print(f"CPU-only build of the same source (cached figure): {CPU_BASELINE_CACHED}")
        print(f"\nCUDA build: configure+build {(configure + compile_) / 60:.1f} min | "
              f"CPU-only: {CPU_BASELINE_CACHED}")
    finally:
        if not args.keep:
            labs.down(args.name)


if __name__ == "__main__":
    main()
