#!/usr/bin/env python3
"""Benchmark: sync-model fan-out vs a naive copy from the controller, on a lab whose links
are shaped to 1 Gbit/s. Prints figures; asserts nothing.

    sudo python bench/bench_sync.py                     # 2 GB to 4 and to 8 nodes, 1 Gbit/s
    sudo python bench/bench_sync.py --size 500M --nodes 4 --repeat 2
    sudo python bench/bench_sync.py --link 250mbit      # links slowed with the lab's
                                                        # slow-link fault
    python bench/bench_sync.py --relay-only             # relay CPU only (no lab, no root)
    sudo python bench/bench_sync.py --link 10gbit --nodes 1 4

First, without a lab: the relay's CPU cost. Two real relays (node_agent.py relay, each
its own process) on loopback, fed by the controller's sender (sendfile, sha256 known):
the first relay receives, writes, hashes (sha256) and forwards, the second receives,
writes and hashes. Printed per relay in CPU-seconds per GB (10^9 bytes) for the buffer
path (recv_into / sendall / write, the relay before the low-copy one) and the kernel
path (splice socket -> pipe -> file, sendfile file -> socket, sha256 read back behind
the stream), beside the goal (<= 0.9 CPU-s/GB including sha256) and the sha256 cost
alone on this machine, with the load average before each run.

For each node count N it prints time / (size / link rate) for
  cold     sync_model() of a model never hashed before (the controller's sha256 cache is
           cleared: the controller hashes while it sends)
  warm     sync_model() of a model already hashed (cache kept: the controller sends with
           sendfile); the nodes' copies are removed before each run either way
  naive    the controller copies to every node at once (tar | ssh | tar, N streams)
  re-sync  sync_model() again with nothing changed (time in seconds)
1.0 is the size crossing one link at line rate. The controller's own link is shaped to
the same rate (tbf on the lab bridge's egress), as it would be on a real network: the
naive copy pushes N copies through it, the chain one.

Everything runs on this machine: all nodes share its CPU cores and its disk. Each relay
hashes (sha256), writes and forwards what it receives, so N nodes at line rate need N
times that work from the same cores. The script prints, per run, how busy the machine's
CPUs were and the relays' CPU time, so a CPU-bound figure can be told from a network-bound
one; --link with a lower rate measures the scaling where the lab is not CPU-bound.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clusterctl import lab as labapi                        # noqa: E402
from clusterctl.inventory import load_inventory             # noqa: E402
from clusterctl.lab import netplan                          # noqa: E402
from clusterctl.remote import Connection                    # noqa: E402
from clusterctl.sync import sync_model                      # noqa: E402
from clusterctl.cli.common import parse_rate              # noqa: E402
from clusterctl.sync.run import local_hash_cache            # noqa: E402

WORK = Path(os.environ.get("CLUSTERCTL_BENCH_DIR", "/var/tmp/clusterctl-bench-sync"))


def make_model(size: int) -> Path:
    """Two weight shards (random bytes, so nothing compresses) and a config."""
    root = WORK / "model"
    config = b'{"architectures": ["LlamaForCausalLM"]}\n'
    half = (size - len(config)) // 2
    sizes = {"model-00001-of-00002.safetensors": half,
             "model-00002-of-00002.safetensors": size - len(config) - half}
    ok = root.is_dir() and all((root / n).is_file() and (root / n).stat().st_size == s
                               for n, s in sizes.items())
    if not ok:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        (root / "config.json").write_bytes(config)
        for name, n in sizes.items():
            with open(root / name, "wb") as fh:
                while n > 0:
                    chunk = os.urandom(min(n, 16 << 20))
                    fh.write(chunk)
                    n -= len(chunk)
    return root


GOAL_CPU_PER_GB = 0.9


def relay_source(size: int) -> tuple[Path, str]:
    """One file of `size` random bytes and its sha256 (cached beside it)."""
    import hashlib
    path = WORK / "relay-src.bin"
    sha = WORK / "relay-src.sha256"
    if not (path.is_file() and path.stat().st_size == size and sha.is_file()):
        WORK.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(path, "wb") as fh:
            left = size
            while left > 0:
                chunk = os.urandom(min(left, 16 << 20))
                fh.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        sha.write_text(h.hexdigest())
    return path, sha.read_text().strip()


def sha256_cost() -> float:
    """CPU-seconds per GB of hashlib's sha256 here (the floor of a verifying relay)."""
    import hashlib
    data = os.urandom(1 << 20)
    h = hashlib.sha256()
    t = time.process_time()
    for _ in range(256):
        h.update(data)
    return (time.process_time() - t) / (256 * (1 << 20) / 1e9)


def write_cost() -> float:
    """CPU-seconds per GB of writing to the page cache here (1 MiB writes, 512 MiB):
    what any relay that keeps a copy pays on top of sha256."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "write-floor.bin"
    data = os.urandom(1 << 20)
    t0 = os.times()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(512):
            os.write(fd, data)
    finally:
        os.close(fd)
        t1 = os.times()
        path.unlink()
    return (t1.user + t1.system - t0.user - t0.system) / (512 * (1 << 20) / 1e9)


def relay_run(src: Path, digest: str, size: int, splice: bool) -> dict:
    """Feeder -> relay 1 -> relay 2 on loopback; each relay its own process."""
    import json
    from clusterctl.sync import node_agent
    agent = Path(node_agent.__file__)
    base = WORK / ("relay-splice" if splice else "relay-buffers")
    shutil.rmtree(base, ignore_errors=True)
    hops, rundirs = [], []
    stream = [{"path": "w.bin", "size": size, "offset": 0, "sha256": digest,
               "mtime_ns": 1_700_000_000_000_000_000}]
    key = node_agent.partial_key("w.bin", size, stream[0]["mtime_ns"])
    for i in (1, 2):
        rundir = base / f"run{i}"
        root = base / f"dest{i}"
        rundir.mkdir(parents=True)
        root.mkdir()
        cfg = {"name": f"r{i}", "listen": "127.0.0.1", "token": f"t{i}", "root": str(root),
               "staging": str(root / node_agent.STAGING), "want": {"w.bin": {"key": key}},
               "accept_timeout": 60, "idle_timeout": 60, "splice": splice}
        (rundir / "relay.json").write_text(json.dumps(cfg))
        out = subprocess.run([sys.executable, str(agent), "relay", str(rundir)],
                             capture_output=True, text=True, check=True)
        port = json.loads(out.stdout.splitlines()[-1])["port"]
        hops.append({"name": f"r{i}", "ip": "127.0.0.1", "port": port, "token": f"t{i}"})
        rundirs.append(rundir)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    sock = node_agent.connect("127.0.0.1", hops[0]["port"])
    node_agent.send_stream(sock, stream, hops[0], hops[1:], {"w.bin": str(src)},
                           want={"r1": {"w.bin": {"key": key}}, "r2": {"w.bin": {"key": key}}})
    sock.shutdown(socket.SHUT_WR)
    finals = []
    for rundir in rundirs:
        deadline = time.monotonic() + 600
        while True:
            st = json.loads((rundir / "relay.status").read_text())
            if st.get("state") in ("done", "failed") and "cpu_seconds" in st:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay in {rundir} did not finish: {st}")
            time.sleep(0.05)
        finals.append(st)
    took = time.monotonic() - t0
    sock.close()
    for st in finals:
        if st.get("state") != "done" or not st["files"]["w.bin"].get("ok"):
            raise RuntimeError(f"relay failed: {st.get('error')} {st.get('files')}")
    shutil.rmtree(base, ignore_errors=True)
    gb = size / 1e9
    return {"load": load, "seconds": took, "mb_s": size / took / 1e6,
            "path": finals[0].get("path", "buffers"),
            "middle": finals[0]["cpu_seconds"] / gb, "last": finals[1]["cpu_seconds"] / gb,
            "middle_user": finals[0].get("cpu_user", 0) / gb,
            "middle_system": finals[0].get("cpu_system", 0) / gb}


def relay_costs(size: int, repeat: int) -> None:
    src, digest = relay_source(size)
    sha, write = sha256_cost(), write_cost()
    print(f"relay CPU, {size / 1e9:.2f} GB on loopback (feeder -> relay 1 -> relay 2; "
          f"{os.cpu_count()} cores); floors here: sha256 {sha:.2f}, page-cache write "
          f"{write:.2f}, together {sha + write:.2f} CPU-s/GB")
    print(f"  {'path':<26} {'relay 1 (fwd)':>13} {'relay 2 (last)':>14} {'goal':>5} "
          f"{'MB/s':>6} {'load':>5}")
    for rep in range(repeat):
        for splice, label in ((False, "buffers (before)"), (True, "splice/sendfile (now)")):
            flush_disks()
            r = relay_run(src, digest, size, splice)
            if splice and r["path"] != "splice":
                label = "splice unavailable: buffers"
            print(f"  {label:<26} {r['middle']:>13.2f} {r['last']:>14.2f} "
                  f"{GOAL_CPU_PER_GB:>5.1f} {r['mb_s']:>6.0f} {r['load']:>5.1f}", flush=True)
    print("  CPU-s/GB per relay, incl. sha256 of everything it writes; MB/s: the two-hop "
          "stream on loopback, CPU-bound here (every process shares the same cores)")
    print()


def shape_controller(state, bps: int | None) -> None:
    """tbf on the bridge's egress = traffic leaving the controller towards the nodes."""
    subprocess.run(netplan.shape_command(state.bridge, bps, state.mtu), check=bps is not None,
                   capture_output=True)


def clear(hosts, path: str) -> None:
    def one(h):
        with Connection(h) as c:
            c.run(["rm", "-rf", path])
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(one, hosts))


def flush_disks() -> None:
    """Data written by the previous run must not be flushed during the next one."""
    subprocess.run(["sync"], check=False)


class CpuMeter:
    """How busy the machine's CPUs were between start() and stop() (all processes)."""

    @staticmethod
    def _read() -> tuple[int, int]:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    def start(self) -> "CpuMeter":
        self.busy0, self.total0 = self._read()
        self.own0 = os.times()
        return self

    def stop(self) -> "CpuMeter":
        busy, total = self._read()
        own = os.times()
        self.busy = (busy - self.busy0) / max(1, total - self.total0)
        self.controller = (own.user + own.system + own.children_user + own.children_system
                           - self.own0.user - self.own0.system - self.own0.children_user
                           - self.own0.children_system)
        return self


def naive_copy(state, hosts, src: Path, dest: str) -> float:
    """tar | ssh | tar from the controller to every node at the same time."""
    procs = []
    started = time.monotonic()
    for h in hosts:
        ssh = labapi.ssh_argv(state, h.name, ["mkdir", "-p", dest, "&&", "tar", "-C", dest,
                                             "-xf", "-"])
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        ssh_p = subprocess.Popen(ssh, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        tar.stdout.close()
        procs += [tar, ssh_p]
    codes = [p.wait() for p in procs]
    took = time.monotonic() - started
    if any(codes):
        raise RuntimeError(f"naive copy failed: exit codes {codes}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2G", help="model size (default 2G = 2*10^9 bytes)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--link", default="1gbit",
                    help="link rate: 1gbit (the lab's class) or lower, e.g. 250mbit")
    ap.add_argument("--name", default="syncbench", help="lab name (brought up and down)")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--relay-size", default="1G", help="stream size of the relay CPU runs")
    ap.add_argument("--relay-only", action="store_true",
                    help="only the relay CPU runs (no lab, no root needed)")
    args = ap.parse_args()
    relay_costs(parse_rate(args.relay_size), args.repeat)
    if args.relay_only:
        return 0
    if os.geteuid() != 0:
        print("needs root (it brings up a lab)", file=sys.stderr)
        return 2
    size = parse_rate(args.size)
    link_bps = netplan.parse_rate(args.link)
    ideal = size / (link_bps / 8)
    src = make_model(size)
    print(f"model: {size / 1e9:.2f} GB in 3 files; links {netplan.format_rate(link_bps)} "
          f"({link_bps / 8e6:.0f} MB/s): size / link rate = {ideal:.1f}s; "
          f"{os.cpu_count()} cores shared by all nodes", flush=True)
    rows = []
    state = None
    try:
        base_link = "10gbit" if link_bps > netplan.link_rate("1gbit") else "1gbit"
        state = labapi.up(args.name, nodes=max(args.nodes), link=base_link, mirror=False,
                          log=lambda m: None)
        if link_bps != netplan.link_rate(base_link):
            for node in state.nodes:
                labapi.fault(args.name, node.name, "slow-link", args.link)
        shape_controller(state, link_bps)
        inv = load_inventory(state.inventory_path)
        all_hosts = list(inv.hosts.values())
        dest = f"{all_hosts[0].vars['models_dir']}/bench-model"
        for n in args.nodes:
            hosts = all_hosts[:n]
            for rep in range(args.repeat):
                row = {"nodes": n, "load": os.getloadavg()[0]}
                for kind in ("cold", "warm"):
                    clear(all_hosts, dest)
                    flush_disks()
                    if kind == "cold":
                        Path(local_hash_cache()).unlink(missing_ok=True)
                    cpu = CpuMeter().start()
                    t0 = time.monotonic()
                    report = sync_model(inv, str(src), "bench-model", hosts=hosts)
                    row[kind] = time.monotonic() - t0
                    cpu.stop()
                    row[kind + "_cpu"] = (cpu.busy, sum(r.cpu_seconds for r in
                                                        report.nodes.values()), cpu.controller)
                    per_gb = [r.cpu_seconds_per_gb for r in report.nodes.values()
                              if r.cpu_seconds_per_gb is not None]
                    row[kind + "_relay_gb"] = max(per_gb) if per_gb else None
                    if not report.ok:
                        print(f"  clusterctl sync FAILED on {report.failed}", file=sys.stderr)
                t1 = time.monotonic()
                again = sync_model(inv, str(src), "bench-model", hosts=hosts)
                row["resync"] = time.monotonic() - t1
                assert again.ok and not again.rounds
                row["naive"] = None
                if not args.no_naive:
                    clear(all_hosts, dest)
                    flush_disks()
                    cpu = CpuMeter().start()
                    row["naive"] = naive_copy(state, hosts, src, dest)
                    row["naive_cpu"] = cpu.stop().busy
                rows.append(row)
                line = f"  {n} nodes run {rep + 1} (load {row['load']:.1f}):"
                for kind in ("cold", "warm"):
                    busy, relays, ctl = row[kind + "_cpu"]
                    line += (f" {kind} {row[kind]:.1f}s ratio {row[kind] / ideal:.2f} "
                             f"[cpu busy {busy:.0%}, relays {relays:.1f} cpu-s, controller "
                             f"{ctl:.1f} cpu-s];")
                if row["naive"]:
                    line += (f" naive {row['naive']:.1f}s ratio {row['naive'] / ideal:.2f} "
                             f"[cpu busy {row['naive_cpu']:.0%}];")
                worst = row["warm_relay_gb"]
                if worst is not None:
                    line += (f" relay CPU (warm, worst) {worst:.2f} CPU-s/GB (goal "
                             f"{GOAL_CPU_PER_GB});")
                line += f" re-sync {row['resync']:.2f}s"
                print(line, flush=True)
        clear(all_hosts, dest)
    finally:
        if state is not None:
            shape_controller(state, None)
            labapi.down(args.name, log=lambda m: None)
    print()
    print(f"time / (size / link rate), best of {args.repeat}; load = 1-min load average "
          "before the run")
    print(f"{'nodes':>5}  {'cold':>5}  {'warm':>5}  {'naive':>5}  {'re-sync':>7}  {'load':>4}")
    best = {}
    for n in args.nodes:
        mine = [r for r in rows if r["nodes"] == n]
        cold = min(r["cold"] for r in mine)
        warm = min(r["warm"] for r in mine)
        naive = [r["naive"] for r in mine if r["naive"]]
        best[n] = (cold, warm)
        print(f"{n:>5}  {cold / ideal:>5.2f}  {warm / ideal:>5.2f}  "
              + (f"{min(naive) / ideal:>5.2f}" if naive else f"{'-':>5}")
              + f"  {min(r['resync'] for r in mine):>6.2f}s  {mine[0]['load']:>4.1f}")
    if len(args.nodes) >= 2:
        a, b = args.nodes[0], args.nodes[-1]
        print(f"{b} nodes vs {a} nodes: cold {best[b][0] / best[a][0]:.2f}x, "
              f"warm {best[b][1] / best[a][1]:.2f}x the time")
    print("goals (issue 13): 1 hop at 10 Gbit/s >= 900 MB/s (here: 1 node warm "
          + (f"{size / best[1][1] / 1e6:.0f} MB/s" if 1 in best else "not run")
          + "); 4 nodes at 10 Gbit/s within 2x 1 hop"
          + (f" (here {best[4][1] / best[1][1]:.2f}x)" if 1 in best and 4 in best else "")
          + "; at 1 Gbit/s 4 and 8 nodes within 1.1x the link limit (ratio column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
