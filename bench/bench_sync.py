#!/usr/bin/env python3
"""Benchmark: sync-model fan-out vs a naive copy from the controller, on a lab whose links
are shaped to 1 Gbit/s. Prints figures; asserts nothing.

    sudo python bench/bench_sync.py                 # 2 GB to 4 and to 8 nodes
    sudo python bench/bench_sync.py --size 500M --nodes 4 --repeat 2

For each node count N it prints time / (size / link rate) for
  clusterctl  sync_model(): one stream from the controller, forwarded node to node
              (first sync: the controller hashes while it sends; its sha256 cache is
              cleared before each run so every run pays that)
  naive       the controller copies to every node at once (tar | ssh | tar, N streams)
  resync      sync_model() again with nothing changed (time in seconds)
1.0 is the size crossing one link at line rate. The controller's own link is shaped to
the same rate (tbf on the lab bridge's egress), as it would be on a real network: the
naive copy pushes N copies through it, the chain one.

Everything runs on this machine: all nodes share its CPU cores and disk, so at high
node counts the figures also measure that (the script prints the load average and the
relays' CPU time).
"""
from __future__ import annotations

import argparse
import os
import shutil
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
from clusterctl.sync.cli import parse_rate                  # noqa: E402
from clusterctl.sync.run import local_hash_cache            # noqa: E402

LINK = "1gbit"
WORK = Path(os.environ.get("CLUSTERCTL_BENCH_DIR", "/var/tmp/clusterctl-bench-sync"))


def make_model(size: int) -> Path:
    """Two weight shards (random bytes, so nothing compresses) and a config."""
    root = WORK / "model"
    want = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}\n'}
    half = (size - len(want["config.json"])) // 2
    sizes = {"model-00001-of-00002.safetensors": half,
             "model-00002-of-00002.safetensors": size - len(want["config.json"]) - half}
    ok = root.is_dir() and all((root / n).is_file() and (root / n).stat().st_size == s
                               for n, s in sizes.items())
    if not ok:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        (root / "config.json").write_bytes(want["config.json"])
        for name, n in sizes.items():
            with open(root / name, "wb") as fh:
                while n > 0:
                    chunk = os.urandom(min(n, 16 << 20))
                    fh.write(chunk)
                    n -= len(chunk)
    return root


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
    ap.add_argument("--name", default="syncbench", help="lab name (brought up and down)")
    ap.add_argument("--no-naive", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (it brings up a lab)", file=sys.stderr)
        return 2
    size = parse_rate(args.size)
    link_bytes = netplan.link_rate(LINK) / 8
    ideal = size / link_bytes
    src = make_model(size)
    print(f"model: {size / 1e9:.2f} GB in 3 files; link {LINK} ({link_bytes / 1e6:.0f} MB/s): "
          f"size / link rate = {ideal:.1f}s; {os.cpu_count()} cores shared by all nodes")
    rows = []
    biggest = max(args.nodes)
    state = None
    try:
        state = labapi.up(args.name, nodes=biggest, link=LINK, mirror=False,
                          log=lambda m: None)
        shape_controller(state, netplan.link_rate(LINK))
        inv = load_inventory(state.inventory_path)
        all_hosts = list(inv.hosts.values())
        dest = f"{all_hosts[0].vars['models_dir']}/bench-model"
        for n in args.nodes:
            hosts = all_hosts[:n]
            for rep in range(args.repeat):
                clear(all_hosts, dest)
                flush_disks()
                Path(local_hash_cache()).unlink(missing_ok=True)
                load0 = os.getloadavg()[0]
                t0 = time.monotonic()
                report = sync_model(inv, str(src), "bench-model", hosts=hosts)
                took = time.monotonic() - t0
                if not report.ok:
                    print(f"  clusterctl sync FAILED on {report.failed}", file=sys.stderr)
                t1 = time.monotonic()
                again = sync_model(inv, str(src), "bench-model", hosts=hosts)
                resync = time.monotonic() - t1
                assert again.ok and not again.rounds
                naive = None
                if not args.no_naive:
                    clear(all_hosts, dest)
                    flush_disks()
                    naive = naive_copy(state, hosts, src, dest)
                rows.append((n, took, naive, resync, load0, report))
                print(f"  {n} nodes run {rep + 1}: clusterctl {took:.1f}s "
                      f"(ratio {took / ideal:.2f}, {report.rounds[0].chain if report.rounds else ''})"
                      + (f", naive {naive:.1f}s (ratio {naive / ideal:.2f})" if naive else "")
                      + f", resync {resync:.2f}s, load {load0:.1f}", flush=True)
        clear(all_hosts, dest)
    finally:
        if state is not None:
            shape_controller(state, None)
            labapi.down(args.name, log=lambda m: None)
    print()
    print(f"{'nodes':>5}  {'clusterctl':>10}  {'ratio':>5}  {'naive':>7}  {'ratio':>5}  "
          f"{'re-sync':>7}")
    for n in args.nodes:
        mine = [r for r in rows if r[0] == n]
        best = min(mine, key=lambda r: r[1])
        naive = [r[2] for r in mine if r[2] is not None]
        nv = min(naive) if naive else None
        print(f"{n:>5}  {best[1]:>9.1f}s  {best[1] / ideal:>5.2f}  "
              + (f"{nv:>6.1f}s  {nv / ideal:>5.2f}" if nv else f"{'-':>7}  {'-':>5}")
              + f"  {best[3]:>6.2f}s")
    if len(args.nodes) >= 2:
        a, b = args.nodes[0], args.nodes[-1]
        ta = min(r[1] for r in rows if r[0] == a)
        tb = min(r[1] for r in rows if r[0] == b)
        print(f"clusterctl {b} nodes vs {a} nodes: {tb / ta:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
