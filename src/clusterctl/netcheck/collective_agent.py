#!/usr/bin/env python3
"""netcheck --collective: the rank that runs on each node (sent there as a file).

Run with the cluster venv's python (the one with torch), one process per node:

    python agent.py --rank R --world N --master-addr IP --master-port P
                    --backend gloo|nccl --sizes 8192,1048576 --iters 50,20
                    [--ifname NIC] [--join-timeout S] [--ops all_reduce,all_gather]

It joins a torch.distributed group (TCP store on the head's cluster IP), then for each
message size times all_reduce and all_gather. Every line it prints is one JSON object:

    {"event": "start", "rank", "host", "pid", "torch", "backend", "ifname": {...}}
    {"event": "joined", "rank", "seconds"}
    {"event": "result", "op", "bytes", "iters", "seconds"}   seconds: per operation, the
                                                             slowest rank's (all ranks agree)
    {"event": "done", "rank"}
    {"event": "error", "rank", "phase": "import|init|op|cuda", "type", "message"}

Standard library and torch only: it runs in the nodes' venv, not in clusterctl's.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

IFNAME_KEYS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
OPS = ("all_reduce", "all_gather")
EXIT_NO_TORCH, EXIT_FAILED = 3, 4


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="collective_agent")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--master-addr", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    p.add_argument("--sizes", required=True, help="bytes per message, comma separated")
    p.add_argument("--iters", required=True, help="timed iterations per size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ifname", default="", help="the cluster NIC, used where the env "
                   "file sets no GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME")
    p.add_argument("--join-timeout", type=float, default=60.0)
    p.add_argument("--host", default="")
    p.add_argument("--ops", default=",".join(OPS), help="operations to time, comma "
                   "separated (the bisect of a slow group times all_reduce alone)")
    args = p.parse_args(argv)
    args.ops = [o for o in args.ops.split(",") if o]
    if not args.ops or any(o not in OPS for o in args.ops):
        p.error(f"--ops: choose from {', '.join(OPS)}")
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.iters = [int(s) for s in args.iters.split(",") if s]
    if len(args.iters) != len(args.sizes):
        p.error("--iters needs one count per size")
    return args


def init_method(addr: str, port: int) -> str:
    host = f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
    return f"tcp://{host}:{port}"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rank = args.rank
    if args.ifname:
        for key in IFNAME_KEYS:
            if not os.environ.get(key):
                os.environ[key] = args.ifname
    try:
        import torch
        import torch.distributed as dist
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        emit(event="error", rank=rank, phase="import", type=type(exc).__name__,
             message=str(exc)[:500])
        return EXIT_NO_TORCH
    emit(event="start", rank=rank, host=args.host or socket.gethostname(), pid=os.getpid(),
         torch=str(torch.__version__), backend=args.backend,
         ifname={k: os.environ.get(k) for k in IFNAME_KEYS})
    device = torch.device("cpu")
    if args.backend == "nccl":
        if not torch.cuda.is_available():
            emit(event="error", rank=rank, phase="cuda", type="RuntimeError",
                 message="NCCL asked for but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__})")
            return EXIT_FAILED
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
    from datetime import timedelta
    t0 = time.monotonic()
    try:
        dist.init_process_group(args.backend, init_method=init_method(args.master_addr,
                                                                      args.master_port),
                                rank=rank, world_size=args.world,
                                timeout=timedelta(seconds=args.join_timeout))
        # a first collective proves every pair connects (Gloo's full mesh is made here
        # at the latest; NCCL makes its communicator lazily, at the first operation)
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        sync(torch, device)
        if int(probe.item()) != args.world:
            raise RuntimeError(f"all_reduce of ones gave {probe.item()}, not {args.world}")
    except Exception as exc:  # noqa: BLE001
        emit(event="error", rank=rank, phase="init", type=type(exc).__name__,
             message=" ".join(str(exc).split())[:1500])
        return EXIT_FAILED
    emit(event="joined", rank=rank, seconds=round(time.monotonic() - t0, 3))
    try:
        for size, iters in zip(args.sizes, args.iters):
            for op in args.ops:
                seconds = timed(torch, dist, device, op, size, iters, args.warmup, args.world)
                emit(event="result", rank=rank, op=op, bytes=size, iters=iters,
                     seconds=seconds)
    except Exception as exc:  # noqa: BLE001
        emit(event="error", rank=rank, phase="op", type=type(exc).__name__,
             message=" ".join(str(exc).split())[:1500])
        return EXIT_FAILED
    emit(event="done", rank=rank)
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the figures are out already
        pass
    return 0


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(torch, dist, device, op: str, size: int, iters: int, warmup: int,
          world: int) -> float:
    """Seconds per operation: each rank times `iters` operations after a barrier; the
    slowest rank's mean is what the group achieved (an all_reduce MAX tells every rank)."""
    numel = max(1, size // 4)                         # float32
    if op == "all_reduce":
        buf = torch.zeros(numel, dtype=torch.float32, device=device)

        def once():
            dist.all_reduce(buf)
    else:                                             # `size` is the gathered whole
        part = torch.zeros(max(1, numel // world), dtype=torch.float32, device=device)
        out = [torch.empty_like(part) for _ in range(world)]

        def once():
            dist.all_gather(out, part)
    for _ in range(max(0, warmup)):
        once()
    sync(torch, device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    sync(torch, device)
    mine = (time.perf_counter() - t0) / max(1, iters)
    slowest = torch.tensor([mine], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest.item())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
