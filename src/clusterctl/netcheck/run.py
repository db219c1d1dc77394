"""Orchestration: connect, gather, probe, measure, conclude.

    run_netcheck(inventory, hosts, options) -> NetcheckResult

Steps, each in parallel over the nodes (threads; 3, 4 and the start of 5 at once):
 1. connect to every node; an unreachable node becomes a finding, the rest go on
 2. facts: one batched script per node (facts module + netcheck's extra snippet)
 3. from every node to every peer: route, RTT, don't-fragment ping at MTU-28
 4. ports: temporary listeners where nothing listens yet, connects from the peers
    (at the same time as 3: neither loads the nodes or links much)
 5. bandwidth: iperf3 servers on every node (started while 3 and 4 run), then the
    tournament's rounds of disjoint pairs, each pair both directions at once (iperf3
    --bidir; one direction at a time with an iperf3 older than 3.7 or bidir=False), a
    multi-stream run then a short single-stream run in the same slot, one command per
    pair; a pair starts as soon as its two nodes are done with the pairs of the phases
    before (no barrier between phases); then the servers are killed by PID
Everything netcheck starts on a node is also bounded by `timeout`.
"""
from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..errors import ClusterctlError, UnreachableError
from ..facts import parse_output
from ..remote import Connection
from ..session import Session, parallel_map
from ..sshconfig import login_hint
from . import probe
from .findings import analyze, in_network
from .model import INFO, SEVERITY_ORDER, WARNING, Finding, Link, NetcheckResult, NodeInfo, PortCheck, Settings
from .schedule import phases, serial, tournament

GCS, WORKER_RANGE, RPC, VLLM_API = ("Ray GCS", "Ray worker port range", "llama.cpp RPC",
                                    "vLLM API")


@dataclass
class NetcheckOptions:
    duration: float = 3.0               # seconds per iperf3 run
    schedule: str = "tournament"        # "tournament" (rounds of disjoint pairs) | "serial"
    bandwidth: bool = True
    bidir: bool = True                  # iperf3 --bidir: both directions of a pair at once
    #                                     (N-1 phases, not 2(N-1)) when every node's iperf3
    #                                     has it (3.7+); False: one direction at a time
    streams: int = 4                    # iperf3 -P of the main figure (Link.gbps)
    single_stream_seconds: float = 1.0  # then a one-stream run of this long in the same
    #                                     slot (Link.single_stream_gbps); 0: none
    pipeline: bool = True               # a pair starts when its two nodes are free; False:
    #                                     when the whole phase before it ended (a barrier
    #                                     after every phase: the earlier way, to compare);
    #                                     the serial schedule always runs one at a time
    port_timeout: float = 2.0
    connect_timeout: float = 10.0
    facts_timeout: float = 30.0         # a node whose facts take longer counts as unreachable
    accept_new_host_keys: bool = False
    forks: int = 64
    progress: Callable[[str], None] | None = None
    collective: bool = False            # then an all_reduce/all_gather across the nodes
    #                                     (torch.distributed from the cluster venv)
    collective_sizes: tuple[int, ...] | None = None   # bytes; None: collective.DEFAULT_SIZES
    collective_join_timeout: float = 60.0
    collective_bisect_seconds: float = 300.0  # a slow group's bisect: at most this long; 0: off


@dataclass
class _Run:
    options: NetcheckOptions
    settings: Settings
    nodes: dict[str, NodeInfo]
    conns: dict[str, Connection]
    problems: list[Finding] = field(default_factory=list)
    dropped: list[Connection] = field(default_factory=list)   # closed at the end
    extras: dict[str, probe.Extra] = field(default_factory=dict)

    def say(self, msg: str) -> None:
        if self.options.progress:
            self.options.progress(msg)

    def up(self) -> list[str]:
        return [n for n, info in self.nodes.items() if info.reachable and n in self.conns]

    def lost(self, name: str, exc: Exception) -> None:
        """Record a failure on one node; the run goes on without it where needed."""
        info = self.nodes[name]
        if isinstance(exc, UnreachableError):
            info.reachable = False
            info.error = _short(str(exc).split(": ", 1)[-1])
            conn = self.conns.pop(name, None)
            if conn is not None:
                self.dropped.append(conn)
            return
        text = str(exc) if isinstance(exc, ClusterctlError) else f"{type(exc).__name__}: {exc}"
        self.problems.append(Finding(
            "probe-failed", WARNING, [name], f"netcheck could not finish a check on {name}: "
            f"{text}", f"run the command shown by hand on {name}; re-run with fewer "
            f"nodes (--limit) to narrow it down"))

    def parallel(self, fn: Callable[[Any], Any], items: Iterable[Any], *, timeout: float,
                 node_of: Callable[[Any], str] = lambda x: x) -> dict[Any, Any]:
        """fn(item) for each item in its own thread, all at once; returns the results.

        Exceptions are recorded with lost(), not raised. `timeout` is a hard bound: an
        SSH command's own timeout cannot fire while the connection stalls (a path that
        drops large frames stalls TCP, and paramiko then waits for the kernel's
        retransmission timeout, ~15 minutes). A node still busy at the deadline has its
        connection aborted and is recorded as unreachable.
        """
        items = list(items)

        def abort(name: str) -> None:
            conn = self.conns.get(name)
            if conn is not None:
                _abort(conn)
        group = parallel_map(lambda pair: fn(pair[1]), list(enumerate(items)),
                             forks=max(1, len(items)), deadline=timeout, grace=5.0,
                             name=lambda pair: str(pair[0]),
                             host=lambda pair: node_of(pair[1]), abort=abort)
        out: dict[Any, Any] = {}
        for i, item in enumerate(items):
            name = node_of(item)
            if str(i) in group.succeeded:
                out[item] = group.succeeded[str(i)]
                continue
            failure = group.failed[str(i)]
            if failure.reason.startswith("timed out after"):
                self.lost(name, UnreachableError(
                    name, f"SSH connects but commands stall (no answer within {timeout:g}s): "
                    f"large frames dropped on the way, or the node is overloaded"))
            elif isinstance(failure.exception, Exception):
                self.lost(name, failure.exception)
            else:
                raise failure.exception
        return out


    def pipeline(self, fn: Callable[[tuple[str, str]], Any],
                 plan: list[list[tuple[str, str]]], *, timeout: float,
                 node_of: Callable[[tuple[str, str]], str],
                 started: Callable[[int], None] | None = None) -> None:
        """fn(pair) for every pair of the plan's phases, each pair as soon as the pairs
        before it on both of its nodes are done, not when its whole phase is.

        Per node the phases' order is kept and a node is in one run at a time, so the
        measurements running at any moment are still disjoint pairs, as in a phase; but a
        pair that ends late holds up only the later pairs of its own two nodes, where a
        barrier after every phase waits for the slowest of N/2 pairs N-1 times.
        `started(i)` is called when the first pair of phase i starts. Failures and the
        hard per-pair `timeout` are handled as in parallel().
        """
        order = [(i, pair) for i, ph in enumerate(plan) for pair in ph]
        if not order:
            return
        waiting: dict[int, int] = {}
        after: dict[int, list[int]] = {k: [] for k in range(len(order))}
        last: dict[str, int] = {}
        for k, (_, pair) in enumerate(order):
            before = {last[n] for n in pair if n in last}
            waiting[k] = len(before)
            for b in before:
                after[b].append(k)
            for n in pair:
                last[n] = k
        shown: set[int] = set()
        lock = threading.Lock()
        begun: dict[int, float] = {}

        def one(k: int) -> Any:
            i, pair = order[k]
            with lock:
                begun[k] = time.monotonic()
                first = i not in shown
                shown.add(i)
            if first and started is not None:
                started(i)
            return fn(pair)

        width = max(len(ph) for ph in plan)
        pool = ThreadPoolExecutor(max_workers=max(1, width))
        running: dict[Future, int] = {}
        cut: dict[int, float] = {}

        def submit(k: int) -> None:
            running[pool.submit(one, k)] = k

        def finish(k: int) -> None:
            for c in after[k]:
                waiting[c] -= 1
                if waiting[c] == 0:
                    submit(c)

        def stalled(k: int) -> None:
            name = node_of(order[k][1])
            self.lost(name, UnreachableError(
                name, f"SSH connects but commands stall (no answer within {timeout:g}s): "
                f"large frames dropped on the way, or the node is overloaded"))

        try:
            for k in range(len(order)):
                if waiting[k] == 0:
                    submit(k)
            while running:
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = running.pop(fut)
                    exc = fut.exception()
                    if k in cut:
                        stalled(k)
                    elif isinstance(exc, Exception):
                        self.lost(node_of(order[k][1]), exc)
                    elif exc is not None:
                        raise exc
                    finish(k)
                now = time.monotonic()
                for fut, k in list(running.items()):
                    t0 = begun.get(k)
                    if t0 is None or now - t0 <= timeout:
                        continue
                    if k not in cut:            # wake the thread: cut its connection
                        cut[k] = now
                        conn = self.conns.get(node_of(order[k][1]))
                        if conn is not None:
                            _abort(conn)
                    elif now - cut[k] > 5.0:    # it did not wake up: leave it behind
                        del running[fut]
                        stalled(k)
                        finish(k)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _short(text: str) -> str:
    """One line of an error: remote's messages quote the whole command (our scripts)."""
    if text.startswith("connection lost running") and "\n" in text:
        why = text.rsplit(": ", 1)[-1].strip() if "\n" not in text.rsplit(": ", 1)[-1] else ""
        return "connection lost while a command ran" + (f": {why}" if why else "")
    first = text.splitlines()[0] if text else text
    return first[:300]


def _abort(conn: Connection) -> None:
    """Cut a stalled SSH connection so the thread blocked on it returns at once.

    shutdown(2) on the socket wakes a thread blocked in send/recv (close(2) would not).
    `Connection.abort()` is used when the remote layer has one.
    """
    abort = getattr(conn, "abort", None)
    if callable(abort):
        abort()
        return
    fab = getattr(conn, "_conn", None)
    client = getattr(fab, "client", None)
    try:
        transport = client.get_transport() if client is not None else None
        sock = getattr(transport, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def run_netcheck(inventory, hosts: Sequence, options: NetcheckOptions | None = None,
                 session: Session | None = None) -> NetcheckResult:
    """The network check over the command's session (one is made, and closed at the
    end, when none is given)."""
    options = options or NetcheckOptions()
    own_session = False
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    hosts = list(hosts)
    head = getattr(inventory, "head", None)
    settings = Settings.from_vars((head or hosts[0]).vars if (head or hosts) else {})
    nodes = {h.name: NodeInfo(name=h.name, address=h.address, is_head=bool(h.is_head))
             for h in hosts}
    for h in hosts:
        nodes[h.name].ssh_command, nodes[h.name].ssh_port = login_hint(h)
    run = _Run(options, settings, nodes, {})

    run.say(f"connecting to {len(hosts)} nodes")
    if session is None:
        session = Session(inventory, forks=options.forks,
                          accept_new_host_keys=options.accept_new_host_keys,
                          connect_timeout=options.connect_timeout)
        own_session = True
    connected = session.connect(hosts)
    run.conns = dict(connected.succeeded)
    for name, failure in connected.failed.items():
        nodes[name].reachable = False
        nodes[name].error = failure.reason
    timings["connect"] = time.monotonic() - t0
    links: dict[tuple[str, str], Link] = {}
    ports: list[PortCheck] = []
    rounds = n_phases = 0
    bidir = False
    collective = None
    servers: _Servers | None = None
    try:
        t = time.monotonic()
        _gather(run, {h.name: h for h in hosts})
        timings["facts"] = time.monotonic() - t
        if options.collective:              # no torch: say so now, before the long steps
            from .collective import no_torch_error, torch_missing
            missing = torch_missing([run.nodes[n] for n in run.up()
                                     if run.nodes[n].cluster_ip])
            if missing:
                raise no_torch_error(missing, settings.venv or "/opt/clusterctl/venv")
        # the pings, the port checks and the start of the iperf3 servers at once: they
        # use the nodes lightly and do not depend on each other (the iperf3 step waits
        # for the pings: it measures only pairs that ping)
        t = time.monotonic()
        side = ThreadPoolExecutor(max_workers=2, thread_name_prefix="netcheck")
        servers_f = None
        try:
            ports_f = side.submit(_timed, _ports, run, head)
            servers_f = (side.submit(_timed, _start_servers, run, _iperf_nodes(run))
                         if options.bandwidth else None)
            _pings(run, links, {h.name: h for h in hosts})
            timings["ping"] = time.monotonic() - t
            ports, timings["ports"] = ports_f.result()
        finally:
            side.shutdown(wait=True)
            if servers_f is not None and servers_f.exception() is None:
                servers, timings["servers"] = servers_f.result()   # stopped below, always
        timings["checks"] = time.monotonic() - t
        if options.bandwidth:
            t = time.monotonic()
            rounds, n_phases, bidir = _bandwidth(run, links, servers)
            timings["bandwidth"] = time.monotonic() - t
        if servers is not None:
            done, servers = servers, None
            _stop_servers(run, done)
        if options.collective:
            from .collective import run_collective
            t = time.monotonic()
            collective = run_collective(run, list(links.values()),
                                        options.collective_sizes,
                                        options.collective_join_timeout,
                                        bisect_seconds=options.collective_bisect_seconds)
            timings["collective"] = time.monotonic() - t
    finally:
        try:
            if servers is not None and servers.pids:
                _stop_servers(run, servers)
        finally:
            if own_session:
                session.close()
    node_list = [nodes[h.name] for h in hosts]
    link_list = [links[k] for k in sorted(links, key=lambda k: (_idx(hosts, k[0]),
                                                                _idx(hosts, k[1])))]
    findings = analyze(node_list, link_list, ports, settings) + run.problems
    if collective is not None:
        findings += collective.findings
    findings.sort(key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
    timings["total"] = time.monotonic() - t0
    return NetcheckResult(nodes=node_list, links=link_list, ports=ports, findings=findings,
                          settings=settings, schedule=options.schedule, rounds=rounds,
                          timings=timings, bidir=bidir, phases=n_phases,
                          streams=max(1, int(options.streams)),
                          single_stream=options.single_stream_seconds > 0
                          and options.streams > 1, collective=collective)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(fn(*args), the seconds it took)."""
    t = time.monotonic()
    return fn(*args), time.monotonic() - t


def _idx(hosts, name):
    return next((i for i, h in enumerate(hosts) if h.name == name), len(hosts))


# -- 2. facts ---------------------------------------------------------------------
PING_TIMEOUT = 45.0               # the pings of one node run in parallel: ~2s when healthy
MAX_PING_PAYLOAD = 65507          # IPv4: 65535 - 20 (IP) - 8 (ICMP); loopback has MTU 65536


def _gather(run: _Run, hosts: dict) -> None:
    run.say("gathering facts")
    script, reqs = probe.gather_script(run.settings)

    def one(name: str) -> None:
        try:
            res = run.conns[name].run(script, timeout=run.options.facts_timeout, check=False)
        except UnreachableError:
            raise
        except ClusterctlError as exc:
            # connected, but a command stalls: large frames dropped on the way (MTU), or
            # the node is wedged. Without facts nothing else can run there.
            why = (f"no answer within {run.options.facts_timeout:g}s" if "timed out" in str(exc)
                   else str(exc).splitlines()[0][:200])
            raise UnreachableError(name, f"SSH connects but commands stall ({why})") from None
        facts_text, extra_text = probe.split_gather_output(res.stdout)
        facts = parse_output(facts_text, reqs)
        extra = probe.parse_extra(extra_text)
        run.extras[name] = extra
        info = probe.node_info(hosts[name], facts, extra, run.settings)
        info.is_head = run.nodes[name].is_head
        run.nodes[name] = info

    run.parallel(one, run.up(), timeout=run.options.facts_timeout + 5)


# -- 3. pings -------------------------------------------------------------------------
def _ping_target(run: _Run, name: str, hosts: dict) -> str | None:
    """The address peers ping: the cluster IP, or for a node netcheck could not log in
    to, its inventory address when that lies in the cluster network."""
    info = run.nodes[name]
    if info.cluster_ip:
        return info.cluster_ip
    if info.reachable:
        return None
    address = hosts[name].address
    net = run.settings.network
    if net and "/" in net and not in_network(address, net):
        return None
    return address if _is_ip(address) else None


def _is_ip(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _pings(run: _Run, links: dict[tuple[str, str], Link], hosts: dict) -> None:
    up = [n for n in run.up() if run.nodes[n].cluster_ip]
    targets = {n: ip for n in run.nodes if (ip := _ping_target(run, n, hosts))}
    if not up or len(targets) < 2:
        return
    run.say("routes, RTT and jumbo-frame path between every pair")

    def one(name: str) -> None:
        mtu = run.nodes[name].mtu or 1500
        size = min(max(mtu - 28, 0), MAX_PING_PAYLOAD)
        peers = [(p, ip, size) for p, ip in targets.items() if p != name]
        res = run.conns[name].run(probe.ping_command(peers), timeout=PING_TIMEOUT, check=False)
        got = probe.parse_ping_output(res.stdout)
        for peer, ip, _ in peers:
            pp = got.get(peer)
            ln = links.setdefault((name, peer), Link(name, peer))
            ln.jumbo_size = size
            if pp is None:
                continue
            ln.ping_ok, ln.rtt_ms, ln.jumbo_ok = pp.ping_ok, pp.rtt_ms, pp.jumbo_ok
            if pp.route_dev:
                run.nodes[name].route_interfaces[ip] = pp.route_dev
            if pp.route_src:
                run.nodes[name].route_sources[ip] = pp.route_src

    run.parallel(one, up, timeout=PING_TIMEOUT)


# -- 4. ports -------------------------------------------------------------------------
def _ports(run: _Run, head) -> list[PortCheck]:
    s = run.settings
    if head is None or head.name not in run.nodes:
        return []
    h = head.name
    up = [n for n in run.up() if run.nodes[n].cluster_ip]
    if h not in up:
        return []
    workers = [n for n in up if n != h]
    if not workers:
        return []
    run.say("ports from the workers to the head (and head to the RPC workers)")
    # what listens where: (node -> [(port, purpose)])
    wanted: dict[str, list[tuple[int, str]]] = {h: []}
    if s.ray_port:
        wanted[h].append((int(s.ray_port), GCS))
    if s.ray_worker_ports:
        wanted[h] += [(p, WORKER_RANGE) for p in probe.sample_ports(*s.ray_worker_ports)]
    if s.vllm_port:
        wanted[h].append((int(s.vllm_port), VLLM_API))
    if s.rpc_port:
        for w in workers:
            wanted[w] = [(int(s.rpc_port), RPC)]
    wanted = {n: v for n, v in wanted.items() if v and "python3" in run.extras[n].tools}
    lifetime = 30 + 2 * run.options.port_timeout
    token = uuid.uuid4().hex[:10]
    listeners: dict[str, probe.ListenerStart] = {}

    def start(name: str) -> None:
        ports_ = sorted({p for p, _ in wanted[name]})
        cmd = probe.listener_cmd(run.nodes[name].cluster_ip, ports_, lifetime, token)
        res = run.conns[name].run(cmd, timeout=30, check=False)
        listeners[name] = probe.parse_listener_start(res.stdout)

    checks: list[PortCheck] = []
    try:
        run.parallel(start, list(wanted), timeout=35)
        # who connects to what
        plan: dict[str, list[tuple[str, int, str]]] = {}
        for dst, items in wanted.items():
            ls = listeners.get(dst)
            if ls is None:
                continue
            testable = set(ls.bound) | set(ls.busy)
            srcs = workers if dst == h else [h]
            for src in srcs:
                if src not in run.conns or "python3" not in run.extras[src].tools:
                    continue
                for port, purpose in items:
                    if port in testable:
                        plan.setdefault(src, []).append((dst, port, purpose))
        results: dict[str, dict] = {}

        def connect(src: str) -> None:
            targets = [(run.nodes[d].cluster_ip, p) for d, p, _ in plan[src]]
            res = run.conns[src].run(probe.connector_cmd(targets, run.options.port_timeout),
                                     timeout=run.options.port_timeout + 30, check=False)
            results[src] = probe.parse_connector(res.stdout)

        run.parallel(connect, list(plan), timeout=run.options.port_timeout + 35)
        for src, items in plan.items():
            got = results.get(src)
            if got is None:
                continue
            for dst, port, purpose in items:
                state = got.get((run.nodes[dst].cluster_ip, port))
                if state is None:
                    continue
                kind = ("open" if state == "open" else "blocked" if state == "timeout"
                        else "refused")
                checks.append(PortCheck(src, dst, port, purpose, kind,
                                        "" if kind == "open" else state))
    finally:
        def stop(name: str) -> None:
            ls = listeners.get(name)
            if ls and ls.pid:
                run.conns[name].run(probe.stop_cmd(ls.pid, "clusterctl-netcheck"),
                                    timeout=30, check=False)
        run.parallel(stop, [n for n in listeners if n in run.conns], timeout=35)
    return _collapse_ranges(checks)


def _collapse_ranges(checks: list[PortCheck]) -> list[PortCheck]:
    """Keep one check per (src, dst, purpose) for a port range: the worst one."""
    out: list[PortCheck] = []
    worst: dict[tuple[str, str], PortCheck] = {}
    rank = {"blocked": 0, "refused": 1, "open": 2}
    for pc in checks:
        if pc.purpose != WORKER_RANGE:
            out.append(pc)
            continue
        key = (pc.src, pc.dst)
        cur = worst.get(key)
        if cur is None or rank.get(pc.state, 3) < rank.get(cur.state, 3):
            worst[key] = pc
    return out + list(worst.values())


# -- 5. bandwidth ---------------------------------------------------------------------
def bandwidth_plan(nodes: list[str], options: NetcheckOptions,
                   versions: dict[str, str | None]) -> tuple[list[list[tuple[str, str]]],
                                                             list[list[tuple[str, str]]],
                                                             bool, list[str]]:
    """(rounds, phases, bidir, nodes whose iperf3 lacks --bidir) for these nodes (pure).

    --bidir is used when asked for and every node's iperf3 has it (3.7 and later): then a
    phase is a round, N-1 of them for even N. Otherwise each round is split in two
    one-direction halves.
    """
    old = [n for n in nodes if not probe.iperf_supports_bidir(versions.get(n) or "")]
    bidir = options.bidir and not old
    rounds = tournament(nodes) if options.schedule == "tournament" else serial(nodes)
    return rounds, phases(rounds, bidir=bidir), bidir, (old if options.bidir else [])


@dataclass
class _Slot:
    """How long a pair's slot is and what runs in it (from the options)."""
    streams: int
    single: bool                # a one-stream run follows the multi-stream one
    main_seconds: float
    slot: int                   # whole seconds of iperf3 -t in one slot
    pair_seconds: float         # the longest a slot's command takes when all goes well


def _slot(o: NetcheckOptions) -> _Slot:
    streams = max(1, int(o.streams))
    single = o.single_stream_seconds > 0 and streams > 1
    # --duration is the whole slot of a pair: the single-stream second comes out of it
    main_seconds = max(1.0, o.duration - o.single_stream_seconds) if single else o.duration
    slot = probe.iperf_seconds(main_seconds) + (probe.iperf_seconds(o.single_stream_seconds)
                                                if single else 0)
    return _Slot(streams, single, main_seconds, slot, probe.iperf_pair_seconds(
        main_seconds, o.single_stream_seconds if single else 0))


def _iperf_nodes(run: _Run) -> list[str]:
    """The nodes an iperf3 server is started on: logged in, a cluster address, iperf3."""
    return [n for n in run.up() if run.nodes[n].cluster_ip and run.nodes[n].iperf3]


@dataclass
class _Servers:
    pids: dict[str, int] = field(default_factory=dict)      # node -> iperf3 server PID
    failed: dict[str, str] = field(default_factory=dict)    # node -> why it did not start


def _start_servers(run: _Run, names: list[str]) -> _Servers:
    """`iperf3 -s` on these nodes, under `timeout` long enough for every phase the
    bandwidth step could have with them (it can only have fewer nodes)."""
    o, s = run.options, run.settings
    _, plan, _, _ = bandwidth_plan(names, o, {n: run.extras[n].iperf3_version
                                              if n in run.extras else None for n in names})
    lifetime = len(plan) * (_slot(o).slot + 15) + 60
    out = _Servers()

    def start(name: str) -> None:
        res = run.conns[name].run(probe.iperf_server_cmd(run.nodes[name].cluster_ip,
                                                         s.iperf_port, lifetime),
                                  timeout=30, check=False)
        pid = probe.parse_pid(res.stdout)
        if res.exit_code != 0 or pid is None:
            msg = " ".join((res.stdout + res.stderr).split())
            out.failed[name] = msg[:300] or f"exit {res.exit_code}"
        else:
            out.pids[name] = pid

    run.parallel(start, names, timeout=35)
    return out


def _stop_servers(run: _Run, servers: _Servers) -> None:
    def stop(name: str) -> None:
        run.conns[name].run(probe.stop_cmd(servers.pids[name], "iperf3"), timeout=30,
                            check=False)
    run.parallel(stop, [n for n in servers.pids if n in run.conns], timeout=35)


def _bandwidth(run: _Run, links: dict[tuple[str, str], Link],
               servers: _Servers | None = None) -> tuple[int, int, bool]:
    """iperf3 over every pair; returns (rounds, phases, bidir).

    With `servers` (started beforehand with _start_servers, stopped by the caller) the
    step uses them; without, it starts its own and stops them at the end.
    """
    o, s = run.options, run.settings
    up = [n for n in run.up() if run.nodes[n].cluster_ip and run.nodes[n].iperf3
          and any(links.get((n, p)) and links[(n, p)].ping_ok for p in run.up())]
    if len(up) < 2:
        return 0, 0, False
    rounds, plan, bidir, old = bandwidth_plan(
        up, o, {n: run.extras[n].iperf3_version if n in run.extras else None for n in up})
    if old:
        run.problems.append(Finding(
            "iperf3-old", INFO, old,
            f"iperf3 on {', '.join(old)} has no --bidir (it needs iperf3 3.7 or later): "
            f"bandwidth was measured one direction at a time, {len(plan)} phases instead of "
            f"{len(rounds)}",
            f"install iperf3 3.7 or later on {', '.join(old)} (Debian 11 ships 3.9, Debian 12 "
            f"3.12), or run with --no-bidir to ask for one direction at a time"))
    sl = _slot(o)
    streams, single, main_seconds = sl.streams, sl.single, sl.main_seconds
    how = "both directions at once" if bidir else "one direction at a time"
    what = f"{streams} streams" + (" then 1 stream" if single else "")
    run.say(f"bandwidth: {len(plan)} {o.schedule} phases of {sl.slot}s ({how}, {what})")
    own = servers is None
    if servers is None:
        servers = _start_servers(run, up)
    pids = servers.pids

    def roles(pair: tuple[str, str]) -> tuple[str, str]:
        client, server = pair
        if server not in pids and client in pids:
            client, server = server, client          # use whichever side has a server
        return client, server

    def measure(pair: tuple[str, str]) -> None:
        client, server = roles(pair)
        fwd_link = links.setdefault((client, server), Link(client, server))
        rev_link = links.setdefault((server, client), Link(server, client))
        if server not in pids:
            fwd_link.error = rev_link.error = "no iperf3 server on either node"
            return
        conn = run.conns.get(client)
        if conn is None:
            fwd_link.error = rev_link.error = f"{client} unreachable"
            return
        # both runs of the slot in one command: one round trip, busy retries on the node
        cmd = probe.iperf_pair_script(run.nodes[client].cluster_ip,
                                      run.nodes[server].cluster_ip, s.iperf_port,
                                      main_seconds, bidir=bidir, streams=streams,
                                      single_seconds=o.single_stream_seconds if single else 0)
        res = conn.run(cmd, timeout=sl.pair_seconds + 30, check=False)
        main, one = probe.parse_iperf_pair(res.stdout, bidir=bidir)
        if main.error is not None:
            one = None
        sides = [(fwd_link, main.fwd, main.fwd_streams, one.fwd if one else None)]
        if bidir:
            sides.append((rev_link, main.rev, main.rev_streams, one.rev if one else None))
        for ln, gbps, per_stream, one_gbps in sides:
            ln.gbps, ln.stream_gbps, ln.streams, ln.bidir = gbps, per_stream, streams, bidir
            ln.single_stream_gbps = gbps if streams == 1 else one_gbps
            if gbps is None:
                ln.error = main.error

    try:
        for n in up:
            msg = servers.failed.get(n)
            if msg:
                run.problems.append(Finding(
                    "iperf3-server-failed", WARNING, [n], f"iperf3 server on {n} did not "
                    f"start: {msg}", f"free port {s.iperf_port} on {n} or set "
                    f"netcheck.iperf_port in the inventory"))

        def started(i: int) -> None:
            run.say(f"  phase {i + 1}/{len(plan)}: " + ", ".join(
                f"{a}<->{b}" if bidir else f"{a}->{b}" for a, b in plan[i]))
        if o.pipeline and o.schedule == "tournament":    # serial stays one at a time
            run.pipeline(measure, plan, timeout=sl.pair_seconds + 45,
                         node_of=lambda pair: roles(pair)[0], started=started)
        else:
            for i, ph in enumerate(plan):
                started(i)
                run.parallel(measure, ph, timeout=sl.pair_seconds + 45,
                             node_of=lambda pair: roles(pair)[0])
    finally:
        if own:
            _stop_servers(run, servers)
    return len(rounds), len(plan), bidir
