"""deploy-model time to ready: a first deploy (cold llama.cpp RPC caches) against redeploys
with the caches warm.

    sudo PYTHONPATH=src python bench/bench_deploy.py --lab dep                  # existing lab
    sudo PYTHONPATH=src python bench/bench_deploy.py --lab dep --link 1gbit --embd 4096

Needs a lab that is up and bootstrapped (`clusterctl lab up --name dep --nodes 3`,
`clusterctl bootstrap $(clusterctl lab inventory dep)`). It writes a GGUF with random
weights big enough for the RPC cache to matter (llama.cpp caches tensors above 10 MiB; the
default n_embd 4096 / n_ff 11008 / 2 layers makes every weight matrix qualify, ~1.3 GB),
optionally shapes the workers' links (`lab fault slow-link`), then measures, each as the
tool reports it (from starting the units to a real chat completion):

1. first deploy: RPC caches emptied, units new;
   then the same deploy again with nothing changed (units kept running; the old lab
   test asserted its time to ready stays within 5 s of the first);
2. redeploy with `--restart`: llama-server and RPC servers restart, caches warm;
3. undeploy + deploy: units new, caches warm;
4. `--restart --no-rpc-cache`: the same restart without the cache, for comparison.

It prints figures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from clusterctl import lab as labs
from clusterctl.deploy.tinymodels import find_vocab_gguf, write_tiny_gguf
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection

CACHE = "/var/cache/clusterctl/llama.cpp/rpc"


def cli(*args, timeout=3600) -> dict:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "clusterctl.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"clusterctl {' '.join(map(str, args))} failed (exit "
                         f"{proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout) if "--json" in args else {}
    out["wall"] = wall
    return out


def cache_bytes(inv) -> int:
    total = 0
    for h in list(inv.hosts.values())[1:]:
        with Connection(h) as c:
            out = c.run(f"du -sb {CACHE} 2>/dev/null | cut -f1", check=False).stdout.strip()
            total += int(out or 0)
    return total


def clear_caches(inv) -> None:
    for h in inv.hosts.values():
        with Connection(h) as c:
            c.run(["rm", "-rf", CACHE], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", default="dep", help="name of a bootstrapped lab (default dep)")
    ap.add_argument("--link", default=None, help="shape the workers' links, e.g. 1gbit")
    ap.add_argument("--embd", type=int, default=4096)
    ap.add_argument("--ff", type=int, default=11008)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--port", type=int, default=8600)
    args = ap.parse_args()

    state = labs.load_state(args.lab)
    if state is None:
        raise SystemExit(f"no lab named {args.lab}: clusterctl lab up --name {args.lab}")
    inv_path = state.inventory_path
    inv = load_inventory(inv_path)
    vocab = find_vocab_gguf()
    if vocab is None:
        raise SystemExit("no llama.cpp source tarball cached: bootstrap the lab first")
    model = Path.home() / ".cache" / "clusterctl" / "deploy" / \
        f"bench-{args.embd}x{args.ff}x{args.layers}.gguf"
    if not model.is_file():
        t = time.monotonic()
        write_tiny_gguf(model, vocab, n_embd=args.embd, n_ff=args.ff, n_layers=args.layers,
                        n_head=32 if args.embd % 32 == 0 else 4, name="bench")
        print(f"model: wrote {model} ({model.stat().st_size / 1e9:.2f} GB) in "
              f"{time.monotonic() - t:.1f}s", file=sys.stderr)
    size = model.stat().st_size
    workers = [n for n in state.nodes if n.index != 1]
    if args.link:
        for n in workers:
            subprocess.run([sys.executable, "-m", "clusterctl.cli", "lab", "fault", "--name",
                            args.lab, n.short, "slow-link", args.link], check=True,
                           capture_output=True)
    deploy = ("deploy-model", model, "-i", inv_path, "--name", "bench", "--port", args.port,
              "--json", "--timeout", "1800")
    rows = []
    try:
        subprocess.run([sys.executable, "-m", "clusterctl.cli", "undeploy", "bench", "-i",
                        inv_path], capture_output=True)
        clear_caches(inv)
        first = cli(*deploy)
        rows.append(("first deploy (cold RPC cache)", first, cache_bytes(inv)))
        rows.append(("redeploy, nothing changed", cli(*deploy), cache_bytes(inv)))
        rows.append(("redeploy --restart (warm cache)", cli(*deploy, "--restart"),
                     cache_bytes(inv)))
        cli("undeploy", "bench", "-i", inv_path)
        rows.append(("undeploy + deploy (warm cache)", cli(*deploy), cache_bytes(inv)))
        rows.append(("redeploy --restart --no-rpc-cache", cli(*deploy, "--restart",
                                                              "--no-rpc-cache"),
                     cache_bytes(inv)))
    finally:
        subprocess.run([sys.executable, "-m", "clusterctl.cli", "undeploy", "bench", "-i",
                        inv_path], capture_output=True)
        if args.link:
            subprocess.run([sys.executable, "-m", "clusterctl.cli", "lab", "heal", "--name",
                            args.lab], capture_output=True)
    print(f"\nmodel {size / 1e9:.2f} GB (n_embd {args.embd}, n_ff {args.ff}, {args.layers} "
          f"layers), lab {args.lab}, {len(state.nodes)} nodes, worker links "
          f"{args.link or state.link}")
    print(f"{'run':<38} {'ready s':>8} {'sync s':>7} {'wall s':>7} {'RPC cache MB':>13}")
    for label, r, cached in rows:
        print(f"{label:<38} {r['ready_seconds']:>8.1f} {r['sync_seconds']:>7.1f} "
              f"{r['wall']:>7.1f} {cached / 1e6:>13.0f}")


if __name__ == "__main__":
    main()
