"""One node's side of a sync, over its SSH connection: upload the agent, find the cluster
IP, scan, survey, start/poll/stop the relay or sender, clean up."""
from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import shlex
import socket
from pathlib import Path
from typing import Any

from ..errors import CommandFailed, HostError
from ..facts import FactRequest, Facts, build_script, parse_output
from ..remote import Connection
from ..session import cluster_address

AGENT_FILE = Path(__file__).with_name("node_agent.py")
RUN_PREFIX = "/tmp/clusterctl-sync-"
NODE_HASH_CACHE = "/var/cache/clusterctl/sync-sha256.json"
_FACTS = [FactRequest("interfaces"), FactRequest("python")]
SURVEY_MARKER = "@@clusterctl-sync-survey"
INLINE_LIMIT = 40 * 1024      # gzip bytes sent inside a command (the limit is 128 KiB)
FINAL_STATES = ("done", "failed")


def agent_source() -> bytes:
    return AGENT_FILE.read_bytes()


def cluster_ip_of(host, facts: Facts) -> str | None:
    """The host's cluster IP (see session.cluster_address). Pure."""
    return cluster_address(host, facts)[1]


def guess_cluster_ip(host) -> str | None:
    """The cluster IP when it can be told before looking at the node: ansible_host is an
    IP inside cluster.network (or there is no cluster.network). Else None. Pure."""
    try:
        ip = ipaddress.ip_address(host.address)
    except ValueError:
        return None
    network = (host.vars.get("cluster") or {}).get("network")
    if network is None:
        return str(ip)
    if "/" in str(network) and ip in ipaddress.ip_network(str(network), strict=False):
        return str(ip)
    return None


class SyncNode:
    """A node taking part in one sync (run id `run_id`)."""

    def __init__(self, host, conn: Connection, run_id: str, sync_name: str = ""):
        self.host, self.conn = host, conn
        self.name = host.name
        self.run_id, self.sync_name = run_id, sync_name
        self.rundir = f"{RUN_PREFIX}{run_id}-{host.name}"
        # run folders of other runs on this node: folder -> (sync name, untouched long)
        self.other_runs: dict[str, tuple[str, bool]] = {}
        self.cluster_ip: str | None = None
        self.python = "python3"
        self.pids: dict[str, int] = {}       # role -> pid of this sync's relay / sender

    # -- plumbing
    def _agent(self, *args: str) -> list[str]:
        return [self.python, f"{self.rundir}/agent.py", *args]

    def _write_file(self, name: str, data: bytes) -> str:
        """A shell step writing `data` to RUNDIR/name: inline (base64 in the command, no
        extra round trip) when small, else uploaded now over SFTP."""
        path = f"{self.rundir}/{name}"
        packed = gzip.compress(data, compresslevel=6, mtime=0)
        if len(packed) <= INLINE_LIMIT:
            b64 = base64.b64encode(packed).decode()
            return f"printf %s {b64} | base64 -d | gzip -dc > {shlex.quote(path)}"
        self.conn.put(data, path, mode=0o600)
        return "true"

    def run_json(self, argv: list[str] | str, *, timeout: float | None = None) -> dict:
        """Run an agent command; its last stdout line is JSON. An {"error"} answer or a
        failed command is a HostError naming the command."""
        res = self.conn.run(argv, check=False, timeout=timeout)
        return self._json(res)

    def _json(self, res) -> dict:
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        data: Any = None
        if lines:
            try:
                data = json.loads(lines[-1])
            except ValueError:
                data = None
        if isinstance(data, dict) and "error" in data:
            raise HostError(self.name, str(data["error"]))
        if res.exit_code != 0 or not isinstance(data, dict):
            raise CommandFailed(self.name, res.command, res.exit_code, res.stderr, res.stdout)
        return data

    # -- setup
    def prepare(self, agent: bytes, survey_spec: dict | None = None,
                relay_cfg: dict | None = None) -> tuple[dict | None, int | None]:
        """One round trip: upload the agent, learn python3 and the cluster IP and, when the
        manifest is known already, survey the destination and start a relay (listening on
        relay_cfg["listen"]). Returns (survey, relay port); the relay may fail to start
        (port None) and is then started later."""
        # run folders of earlier runs: those of this sync name are stale (we hold its
        # lock) and go now; the others are listed, to go at the end if their run is gone
        steps = [stale_runs_script(RUN_PREFIX, self.run_id, self.sync_name),
                 "set -e", "umask 077", f"mkdir -p {shlex.quote(self.rundir)}",
                 f"printf %s {shlex.quote(self.sync_name)} > {shlex.quote(self.rundir)}/name",
                 self._write_file("agent.py", agent)]
        if survey_spec is not None:
            steps.append(self._write_file("survey.json", json.dumps(survey_spec).encode()))
        if relay_cfg is not None:
            steps.append(self._write_file("relay.json", json.dumps(relay_cfg).encode()))
        steps.append("set +e")
        if survey_spec is not None:
            # the survey starts a relay itself when this node needs anything
            argv = self._agent("survey", self.rundir + "/survey.json")
            if relay_cfg is not None:
                argv += ["--relay", self.rundir]
            steps.append(f"S=$({shlex.join(argv)} 2>&1)")
        steps.append(build_script(_FACTS))
        if survey_spec is not None:
            steps.append(f"printf '\\n%s\\n%s\\n' {SURVEY_MARKER} \"$S\"")
        res = self.conn.run("\n".join(steps), check=False)
        stdout = res.stdout
        self.other_runs = {}
        while stdout.startswith(OTHER_RUN_MARKER):
            line, _, stdout = stdout.partition("\n")
            parts = line.split(" ", 3) + ["", "", ""]
            if parts[1].startswith(RUN_PREFIX):
                self.other_runs[parts[1]] = (parts[3], parts[2] == "1")
        facts_text, _, survey_text = stdout.partition(f"\n{SURVEY_MARKER}\n")
        port = None
        try:
            facts = parse_output(facts_text, _FACTS)
        except ValueError:
            raise CommandFailed(self.name, "upload the sync agent and gather facts",
                                res.exit_code, res.stderr, res.stdout) from None
        if not facts.python:
            raise HostError(self.name, "python3 is not installed (the sync agent needs it; "
                            "Debian: apt-get install python3)")
        self.cluster_ip = cluster_ip_of(self.host, facts)
        if self.cluster_ip is None:
            network = (self.host.vars.get("cluster") or {}).get("network")
            raise HostError(self.name, "no address inside cluster.network "
                            f"({network or 'the interface of ' + self.host.address})")
        survey = None
        if survey_spec is not None:
            survey = self._json(_Output(survey_text, res.stderr, res.exit_code,
                                        "sync agent survey"))
            relay = survey.pop("relay", None) or {}
            if "pid" in relay:
                self.pids["relay"] = int(relay["pid"])
                port = int(relay["port"])
        if port is not None and relay_cfg.get("listen") != self.cluster_ip:
            # started on a guessed address that was wrong: stop it, start another later
            self.conn.run(["kill", str(self.pids.pop("relay"))], check=False)
            port = None
        return survey, port

    # -- agent commands
    def scan(self, root: str, *, want_hash: bool, timeout: float | None = None) -> dict:
        args = ["scan", root, "--cache", NODE_HASH_CACHE] + (["--hash"] if want_hash else [])
        return self.run_json(self._agent(*args), timeout=timeout)

    def survey(self, spec: dict) -> dict:
        step = self._write_file("survey.json", json.dumps(spec).encode())
        cmd = step + " && " + shlex.join(self._agent("survey", f"{self.rundir}/survey.json"))
        return self.run_json(cmd)

    def _start(self, role: str, cfg: dict) -> dict:
        step = self._write_file(f"{role}.json", json.dumps(cfg).encode())
        out = self.run_json(f"umask 077; {step} && "
                            + shlex.join(self._agent(role, self.rundir)), timeout=60)
        self.pids[role] = int(out["pid"])
        return out

    def start_relay(self, cfg: dict) -> int:
        return int(self._start("relay", cfg)["port"])

    def start_sender(self, cfg: dict) -> None:
        self._start("send", cfg)

    def status(self, role: str, timeout: float = 30) -> dict:
        """The role's status file plus "alive" (is its process still running), "age"
        (seconds since the process last wrote the file: a live process writes it four
        times a second, so a large age means it is frozen) and "node_time" (the node's
        clock, for the sender's "seen" times). A node that does not answer within
        `timeout` raises (its connection is cut)."""
        pid = self.pids.get(role, 0)
        path = shlex.quote(f"{self.rundir}/{role}.status")
        script = (f"cat {path} 2>/dev/null; echo; "
                  f"echo T $(date +%s.%N) $(stat -c %Y {path} 2>/dev/null || echo 0); "
                  f"if kill -0 {int(pid)} 2>/dev/null; then echo ALIVE; else echo DEAD; fi")
        res = self.conn.run(script, check=False, timeout=timeout)
        return parse_status(res.stdout)

    def stop(self) -> None:
        """Stop this sync's relay/sender (partial files stay for the next run)."""
        if self.pids:
            self.conn.run(self._agent("kill", self.rundir), check=False, timeout=30)
            self.pids.clear()

    def remove_file(self, path: str) -> None:
        self.conn.run(["rm", "-f", "--", path], check=False)

    def finish(self, staging: str | None, *, in_sync: bool = False,
               stale: list[str] | None = None) -> None:
        """Stop what still runs (SIGTERM: a relay keeps its partial file), wait until it
        has exited (a stopping relay still writes its last status into the run folder),
        then remove the run folder and an empty staging folder (the whole staging folder
        when the node is `in_sync`: what is left there are partial files of versions that
        are not wanted any more). `stale`: run folders of runs that are over (their
        processes are stopped too). Shell only: no python start-up."""
        script = finish_script(self.rundir, list(self.pids.values()), staging,
                               clean_staging=in_sync)
        for folder in stale or []:
            script += "; " + finish_script(folder, [], None)
        self.conn.run(script, check=False, timeout=30)
        self.pids.clear()

    # -- a byte pipe to a relay, for the controller's own stream
    def open_stream(self, ip: str, port: int, timeout: float) -> Any:
        """A socket to the relay at ip:port: directly when this machine reaches the cluster
        network, else tunnelled through this node's SSH connection (direct-tcpip)."""
        try:
            sock = socket.create_connection((ip, port), timeout=3)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            return sock
        except OSError:
            pass
        # remote.Connection has no tunnel API yet; use its paramiko transport
        transport = self.conn._conn.client.get_transport()  # noqa: SLF001
        chan = transport.open_channel("direct-tcpip", (ip, port), ("127.0.0.1", 0),
                                      timeout=15)
        chan.settimeout(timeout)
        return _ChannelStream(chan)


def parse_status(stdout: str) -> dict:
    """SyncNode.status's output: the status JSON, a "T NOW MTIME" line, ALIVE/DEAD."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    st: dict = {}
    if lines and lines[0].startswith("{"):
        try:
            st = json.loads(lines[0])
        except ValueError:
            st = {}
    for ln in lines:
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "T":
            try:
                now, mtime = float(parts[1]), float(parts[2])
            except ValueError:
                continue
            st["node_time"] = now
            if mtime > 0:
                st["age"] = max(0.0, now - mtime)
    st["alive"] = bool(lines) and lines[-1] == "ALIVE"
    return st


OTHER_RUN_MARKER = "@@clusterctl-sync-other"
LEGACY_STALE_MIN = 60         # a run folder without a name file: stale after this long


def stale_runs_script(prefix: str, run_id: str, sync_name: str) -> str:
    """Shell run before a sync sets up on a node. Run folders (PREFIX<run>-<node>) of
    other runs: one whose `name` file is this sync's name belongs to a run that is over
    (this run holds the sync-NAME lock), so its processes are stopped and it is removed
    now; the others are printed as `MARKER FOLDER OLD NAME` lines (NAME empty for a
    folder without a name file, of an older clusterctl; OLD 1 when the folder was not
    touched for LEGACY_STALE_MIN minutes) for the controller to judge (other_run_stale)."""
    pat = shlex.quote(prefix) + "*"
    ours = shlex.quote(f"{prefix}{run_id}-")
    reap = finish_script("$d", [], None)
    return (f"for d in {pat}; do [ -d \"$d\" ] || continue; "
            f"case \"$d\" in {ours}*) continue;; esac; "
            f"n=$(cat \"$d/name\" 2>/dev/null); "
            f"if [ -n \"$n\" ] && [ \"$n\" = {shlex.quote(sync_name)} ]; then "
            f"( {reap} ) >/dev/null 2>&1; "
            f"else o=0; [ -n \"$(find \"$d\" -maxdepth 0 -mmin +{LEGACY_STALE_MIN})\" ] && o=1; "
            f"printf '%s %s %s %s\\n' {OTHER_RUN_MARKER} \"$d\" \"$o\" \"$n\"; fi; done")


def finish_script(rundir: str, pids: list[int], staging: str | None,
                  wait_s: float = 5.0, *, clean_staging: bool = False) -> str:
    """Shell that stops this sync's processes on a node and removes its run folder.

    The processes are the recorded PIDs and those in the run folder's pid files; one
    counts as running while its command line names the run folder (not a reused PID, not
    a zombie). SIGTERM, up to `wait_s` for them to exit, then SIGKILL; only then `rm -rf`:
    removing the folder while a relay still writes into it leaves the folder behind."""
    q = shlex.quote(rundir)
    if rundir == "$d":                   # inside stale_runs_script's loop
        q = '"$d"'
    steps = int(wait_s * 10)
    running = f'grep -qsF -- {q} "/proc/$p/cmdline"'
    wait = (f'i=0; while [ -n "$R" ] && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); '
            f'L=""; for p in $R; do {running} && L="$L $p"; done; R=$L; done; ')
    cmd = (f'P="{" ".join(str(int(p)) for p in pids)}"; '
           f'for f in {q}/relay.pid {q}/send.pid; do '
           f'[ -f "$f" ] && P="$P $(tr -cd 0-9 < "$f")"; done; '
           f'R=""; for p in $P; do {running} && kill "$p" 2>/dev/null && R="$R $p"; done; '
           + wait +
           'for p in $R; do kill -9 "$p" 2>/dev/null; done; '
           + wait +
           f"rm -rf -- {q}")
    if staging and clean_staging:
        cmd += f"; rm -rf -- {shlex.quote(staging)}"
    elif staging:
        cmd += f"; rmdir -- {shlex.quote(staging)} 2>/dev/null"
    return cmd + "; true"


class _ChannelStream:
    """A paramiko channel with the socket calls send_stream uses."""

    def __init__(self, chan):
        self.chan = chan

    def sendall(self, data) -> None:
        self.chan.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.chan.recv(n)

    def shutdown(self, how) -> None:
        self.chan.shutdown_write()

    def close(self) -> None:
        self.chan.close()


class _Output:
    """A RunResult-like view of part of a command's output."""

    def __init__(self, stdout: str, stderr: str, exit_code: int, command: str):
        self.stdout, self.stderr, self.exit_code, self.command = stdout, stderr, exit_code, command
