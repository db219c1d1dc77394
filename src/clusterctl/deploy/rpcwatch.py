"""Watchdog of a llama.cpp RPC deployment, run on the node that serves the API.

llama.cpp's RPC client has no timeout: when a worker's node dies (power, link, switch
port), llama-server blocks in a send or receive to it until the kernel gives up on the
TCP connection (about 15 minutes with Linux defaults) and every request meanwhile hangs,
while `/health` keeps saying ok. This watchdog turns that into a fast, named failure:

* every `--interval` seconds it reads the kernel's TCP table (/proc/net/tcp, tcp6): an
  established connection to a worker whose unacknowledged data has already been
  retransmitted `--retransmits` times means the worker stopped answering (this needs no
  probe of the worker at all: rpc-server serves one client at a time);
* it pings each worker (one ICMP echo, 1 s): `--misses` misses in a row mean the node is
  gone even while no request is in flight;
* a lost worker makes it stop the llama-server unit (SIGKILL first: a process blocked in
  a socket call does not honour SIGTERM promptly), so in-flight requests end at once and
  new ones are refused (or answered 502 by the gateway) instead of hanging, and it writes
  the state file (`degraded`, the lost workers, since when) that `clusterctl status` reads;
* when every worker answers again (ping and its RPC port accepting) for two rounds in a
  row it starts llama-server again and writes `ok`.

Standard library only, so it runs with the node's /usr/bin/python3. The pure parts
(`parse_proc_tcp`, `Tracker`) are unit-tested; `main` is what the unit runs.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

TCP_ESTABLISHED = "01"


@dataclass(frozen=True)
class Worker:
    name: str
    ip: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def parse_worker(text: str) -> Worker:
    """NAME=IP:PORT (IPv6 in brackets: NAME=[::1]:PORT)."""
    name, sep, rest = text.partition("=")
    host, sep2, port = rest.rpartition(":")
    if not sep or not sep2 or not name or not host:
        raise ValueError(f"worker {text!r}: expected NAME=IP:PORT")
    host = host.strip("[]")
    ipaddress.ip_address(host)
    port_n = int(port)
    if not 0 < port_n < 65536:
        raise ValueError(f"worker {text!r}: port out of range")
    return Worker(name, host, port_n)


def _proc_address(hexaddr: str) -> tuple[str, int]:
    """'0100007F:1F90' -> ('127.0.0.1', 8080); IPv6 (32 hex digits) likewise."""
    addr, _, port = hexaddr.partition(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    elif len(raw) == 16:
        # four 32-bit words, each in host (little-endian) order
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = str(ipaddress.ip_address(words))
        mapped = ipaddress.ip_address(ip)
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
            ip = str(mapped.ipv4_mapped)
    else:
        raise ValueError(f"bad address {hexaddr!r}")
    return ip, int(port, 16)


def parse_proc_tcp(text: str) -> list[dict]:
    """The established connections of /proc/net/tcp or tcp6: remote (ip, port), the
    number of unrecovered retransmission timeouts and the bytes waiting for an ACK."""
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 7:
            continue
        try:
            remote = _proc_address(parts[2])
            state = parts[3]
            tx_queue = int(parts[4].split(":")[0], 16)
            retransmits = int(parts[6], 16)
        except (ValueError, IndexError):
            continue
        if state != TCP_ESTABLISHED:
            continue
        rows.append({"remote": remote, "retransmits": retransmits, "tx_queue": tx_queue})
    return rows


def stalled_workers(rows: list[dict], workers: list[Worker], retransmits: int) -> set[str]:
    """Names of workers that hold an established connection whose data has been
    retransmitted at least `retransmits` times without an ACK."""
    by_addr = {(w.ip, w.port): w.name for w in workers}
    out = set()
    for row in rows:
        name = by_addr.get(tuple(row["remote"]))
        if name and row["retransmits"] >= retransmits:
            out.add(name)
    return out


@dataclass
class Tracker:
    """The watchdog's decisions, free of I/O: feed it each round's observations."""

    workers: list[Worker]
    misses: int = 3
    recover_rounds: int = 2
    state: str = "ok"                          # ok | degraded
    lost: dict[str, str] = field(default_factory=dict)   # name -> why
    since: float | None = None
    _missed: dict[str, int] = field(default_factory=dict)
    _good_rounds: int = 0

    def observe(self, now: float, *, pinged: dict[str, bool], stalled: set[str],
                port_open: dict[str, bool] | None = None) -> str | None:
        """One round. Returns 'stop' when llama-server must be stopped, 'start' when it
        may run again, None otherwise."""
        newly: dict[str, str] = {}
        for w in self.workers:
            if pinged.get(w.name, False):
                self._missed[w.name] = 0
            else:
                self._missed[w.name] = self._missed.get(w.name, 0) + 1
            if w.name in stalled:
                newly[w.name] = (f"TCP to {w.address} unacknowledged (the connection's "
                                 f"data retransmitted without an answer)")
            elif self._missed[w.name] >= self.misses:
                newly[w.name] = (f"no answer to ping from {w.ip} for {self._missed[w.name]} "
                                 f"rounds")
        if self.state == "ok":
            if newly:
                self.state, self.lost, self.since = "degraded", newly, now
                self._good_rounds = 0
                return "stop"
            return None
        # degraded: every worker must answer (ping and RPC port) for recover_rounds rounds
        healthy = all(pinged.get(w.name, False) and (port_open or {}).get(w.name, False)
                      for w in self.workers)
        for name, why in newly.items():
            self.lost.setdefault(name, why)
        self._good_rounds = self._good_rounds + 1 if healthy else 0
        if self._good_rounds >= self.recover_rounds:
            self.state, self.lost, self.since = "ok", {}, now
            self._good_rounds = 0
            return "start"
        return None

    def to_dict(self, unit: str) -> dict:
        return {"state": self.state, "unit": unit,
                "lost": [{"name": n, "why": why} for n, why in sorted(self.lost.items())],
                "since": self.since,
                "workers": [w.name for w in self.workers]}


# ----------------------------------------------------------------------------- I/O

def read_tcp_rows() -> list[dict]:
    rows: list[dict] = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows += parse_proc_tcp(f.read())
        except OSError:
            pass
    return rows


def ping(ip: str, timeout: float = 1.0) -> bool:
    argv = ["ping", "-n", "-q", "-c", "1", "-W", str(max(1, int(timeout))), ip]
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout + 2).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def port_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def write_state(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60, check=False)


def _worker_arg(text: str) -> Worker:
    try:
        return parse_worker(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def log(msg: str) -> None:
    print(msg, flush=True)               # to the journal of the watchdog's unit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rpcwatch", description="Stop llama-server at once when an RPC worker "
                                            "is lost; start it again when all are back.")
    p.add_argument("--unit", required=True, help="the llama-server unit")
    p.add_argument("--worker", action="append", default=[], type=_worker_arg,
                   help="NAME=IP:PORT of an RPC worker (repeat)")
    p.add_argument("--state", required=True, help="JSON state file for clusterctl status")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--misses", type=int, default=3)
    p.add_argument("--retransmits", type=int, default=3)
    args = p.parse_args(argv)
    if not args.worker:
        p.error("at least one --worker")
    tracker = Tracker(list(args.worker), misses=args.misses)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    write_state(args.state, tracker.to_dict(args.unit))
    log(f"watching {len(tracker.workers)} RPC worker(s) of {args.unit}: "
        + ", ".join(f"{w.name} {w.address}" for w in tracker.workers))
    while not stop:
        started = time.monotonic()
        pinged = {w.name: ping(w.ip) for w in tracker.workers}
        stalled = stalled_workers(read_tcp_rows(), tracker.workers, args.retransmits)
        ports = ({w.name: port_open(w.ip, w.port) for w in tracker.workers}
                 if tracker.state == "degraded" else None)
        action = tracker.observe(time.time(), pinged=pinged, stalled=stalled, port_open=ports)
        if action == "stop":
            why = "; ".join(f"{n}: {w}" for n, w in sorted(tracker.lost.items()))
            log(f"RPC worker lost ({why}): stopping {args.unit}")
            systemctl("kill", "--signal=SIGKILL", args.unit)
            systemctl("stop", args.unit)
        elif action == "start":
            log(f"every RPC worker answers again: starting {args.unit}")
            systemctl("reset-failed", args.unit)
            systemctl("start", args.unit)
        if action:
            write_state(args.state, tracker.to_dict(args.unit))
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
