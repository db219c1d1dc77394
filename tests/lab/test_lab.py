"""`clusterctl lab` against itself: real nodes, real links, real faults.

The Done-when list of the lab: ssh into each node; nodes reach each other and the mirror
and nothing else; jumbo frames pass; links are shaped both ways to the lab's class (the
measured rates are figures of bench/bench_lab_links.py, not asserted here); every fault
shows its effect and `lab heal` removes it, returning once the paths answer again; `lab
down` leaves no trace (also after a crash).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterctl import lab as labs
from clusterctl.errors import ClusterctlError, InputError
from clusterctl.lab import host, naming, procs

pytestmark = pytest.mark.lab


# ----------------------------------------------------------------------------- helpers

def ssh(lab, node, command: str, *, timeout: float = 60, check: bool = True):
    """Log in like a user would: the ssh client, the lab key, strict host key checking."""
    argv = ["ssh", "-i", str(lab.key_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"root@{node.ip}", command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ssh {node.name} {command!r} -> {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def in_node(node, *argv: str, timeout: float = 30):
    """Run the node's own binaries in its network and mount namespaces (no SSH needed:
    works while a fault makes the node unreachable)."""
    return subprocess.run(["nsenter", "-t", str(node.pid), "-m", "-n", "--", *argv],
                          capture_output=True, text=True, timeout=timeout)


def ping(src, dst_ip: str, *, size: int | None = None, count: int = 1) -> bool:
    argv = ["ping", "-n", "-c", str(count), "-W", "1"]
    if size is not None:
        argv += ["-M", "do", "-s", str(size)]
    return in_node(src, *argv, dst_ip).returncode == 0


def tcp_open(ip: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def iperf(lab, client, server, *, reverse: bool = False, seconds: int = 4) -> float:
    """Gbit/s from client to server (or back with reverse), measured with the host's iperf3
    in the nodes' network namespaces (the nodes need nothing installed)."""
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed on this host: apt-get install iperf3")
    port = "5299"
    srv = subprocess.Popen(["nsenter", "-t", str(server.pid), "-n", "--",
                            "iperf3", "-s", "-p", port],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listening = subprocess.run(["nsenter", "-t", str(server.pid), "-n", "--",
                                        "ss", "-Hltn", f"sport = :{port}"],
                                       capture_output=True, text=True).stdout
            if listening.strip():
                break
            time.sleep(0.05)
        argv = ["nsenter", "-t", str(client.pid), "-n", "--", "iperf3", "-c", server.ip,
                "-p", port, "-t", str(seconds), "-O", "1", "-J"] + (["-R"] if reverse else [])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def node(lab, k: int):
    return lab.nodes[k - 1]


# ----------------------------------------------------------------------------- nodes

def test_ssh_into_each_node_with_verified_host_keys(lab):
    machine_ids = set()
    for n in lab.nodes:
        out = ssh(lab, n, "hostname; cat /etc/machine-id; systemctl is-system-running --wait; "
                          "ps -o comm= -p 1; python3 --version").stdout.split()
        assert out[0] == n.name
        machine_ids.add(out[1])
        assert out[2] == "running"
        assert out[3] == "systemd"
        assert out[4] == "Python"
    assert len(machine_ids) == len(lab.nodes)


def test_known_hosts_is_what_protects_the_login(lab, tmp_path):
    """A known_hosts without the node's key makes strict SSH refuse (no trust on first use)."""
    n = node(lab, 1)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = ["ssh", "-i", str(lab.key_path), "-o", f"UserKnownHostsFile={empty}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{n.ip}", "true"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "Host key verification failed" in proc.stderr


def test_inventory_is_the_documented_file(lab):
    inv = pytest.importorskip("clusterctl.inventory").load_inventory(lab.inventory_path)
    assert [h.name for h in inv.hosts.values()] == [n.name for n in lab.nodes]
    assert inv.head.name == f"{lab.name}-node1"
    assert inv.hosts[node(lab, 2).name].address == node(lab, 2).ip
    assert Path(inv.hosts[node(lab, 2).name].known_hosts_file) == lab.known_hosts_path
    assert lab.inventory_path.read_text().startswith("# Inventory of clusterctl lab")
    assert labs.status(lab.name).inventory_path == lab.inventory_path


def test_nodes_reach_each_other(lab):
    for a in lab.nodes:
        for b in lab.nodes:
            if a is not b:
                assert ssh(lab, a, f"ping -n -c1 -W2 {b.name} >/dev/null && echo ok").stdout \
                    .strip() == "ok", (a.name, b.name)


def test_jumbo_frames_pass_between_nodes(lab):
    a, b = node(lab, 1), node(lab, 2)
    assert ssh(lab, a, f"ping -n -c2 -W2 -M do -s 8972 {b.ip}").returncode == 0
    assert "mtu 9000" in ssh(lab, b, "ip link show eth0").stdout


def test_nodes_reach_the_mirror_and_nothing_else(lab):
    n = node(lab, 3)
    if lab.mirror_url:
        fetch = ("python3 -c \"import urllib.request,sys; "
                 "print(len(urllib.request.urlopen(sys.argv[1], timeout=5).read()))\" ")
        assert int(ssh(lab, n, fetch + f"{lab.mirror_apt_url}/Packages").stdout) > 1000
        assert int(ssh(lab, n, fetch + lab.mirror_pip_url).stdout) > 1000
    # the internet, the host's gateway and the host's own addresses: no route
    gateway = re.search(r"default via (\S+)", host.run(["ip", "-4", "route"]).stdout)
    targets = ["1.1.1.1", "8.8.8.8"] + ([gateway.group(1)] if gateway else [])
    targets += [a.split("/")[0] for a in re.findall(
        r"inet (\S+)", host.run(["ip", "-4", "addr", "show", "scope", "global"]).stdout)
        if not a.startswith("198.18.") and not a.startswith("198.19.")]
    for ip in targets:
        assert not ping(n, ip), ip
    assert ssh(lab, n, "ip route").stdout.count("default") == 0
    # the controller answers ping and the mirror, nothing else it listens on
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert tcp_open(lab.bridge_ip, port)                        # from the host: yes
        probe = in_node(n, "bash", "-c",
                        f"timeout 3 bash -c 'exec 3<>/dev/tcp/{lab.bridge_ip}/{port}'")
        assert probe.returncode != 0                                # from a node: no
    assert ping(n, lab.bridge_ip)


def test_nodes_install_from_the_mirror_with_apt_and_pip(lab):
    """What the roles will do: apt from the flat repo, pip from the wheelhouse only.
    Leaves the node as it found it (removes only the packages it installed)."""
    if lab.mirror is None:
        pytest.skip("the session lab has no mirror")
    n = node(lab, 3)
    wanted = ["iperf3", "python3-venv"]
    had = ssh(lab, n, "dpkg-query -W -f '${Package} ${Status}\\n' " + " ".join(wanted)
              + " 2>/dev/null | awk '/ installed$/ {print $1}'", check=False).stdout.split()
    apt = (f"echo 'deb [trusted=yes] {lab.mirror_apt_url} ./' "
           ">/etc/apt/sources.list.d/clusterctl-test.list && "
           "apt-get -q update -o Dir::Etc::sourcelist=sources.list.d/clusterctl-test.list "
           "-o Dir::Etc::sourceparts=- && "
           "DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(wanted))
    try:
        ssh(lab, n, apt, timeout=300)
        assert "iperf 3" in ssh(lab, n, "iperf3 --version").stdout
        from urllib.parse import urlsplit
        from clusterctl.mirror import read_package_lists
        from clusterctl.lab.core import PACKAGES_FILE
        reqs = " ".join(f"'{r}'" for r in read_package_lists(PACKAGES_FILE)[1])
        pip = (f"python3 -m venv /tmp/mirror-venv && /tmp/mirror-venv/bin/pip install -q "
               f"--dry-run --no-index --find-links {lab.mirror_pip_url} "
               f"--trusted-host {urlsplit(lab.mirror_url).hostname} {reqs}")
        ssh(lab, n, pip, timeout=300)
    finally:
        added = [p for p in wanted if p not in had]
        ssh(lab, n, "rm -rf /tmp/mirror-venv /etc/apt/sources.list.d/clusterctl-test.list; "
                    + ("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --auto-remove "
                       + " ".join(added) + " >/dev/null 2>&1; " if added else "") + "true",
            timeout=300, check=False)


# ----------------------------------------------------------------------------- links

def shaping(node) -> tuple[int | None, int | None]:
    """Bits per second of the tbf on the node's switch port (traffic to the node) and on
    its eth0 (traffic from it); None where the direction is not shaped."""
    def rate(argv):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        tbf = [q for q in json.loads(out or "[]") if q.get("kind") == "tbf" and q.get("root")]
        return tbf[0]["options"]["rate"] * 8 if tbf else None
    return (rate(["tc", "-j", "qdisc", "show", "dev", node.port]),
            rate(["nsenter", "-t", str(node.pid), "-n", "--",
                  "tc", "-j", "qdisc", "show", "dev", "eth0"]))


def test_links_are_shaped_both_ways_to_the_lab_class(lab):
    """Every node's link carries the lab's class in both directions, and traffic flows
    through it both ways (the rate it reaches is a figure of bench/bench_lab_links.py)."""
    expected = labs.LINK_CLASSES[lab.link]
    for n in lab.nodes:
        assert shaping(n) == (expected, expected), n.name
    a, b = node(lab, 1), node(lab, 2)
    forward, back = iperf(lab, a, b), iperf(lab, a, b, reverse=True)
    print(f"{lab.link} class: {forward:.3f} Gbit/s node1->node2, {back:.3f} Gbit/s back")
    assert forward > 0 and back > 0


# ----------------------------------------------------------------------------- faults

def test_fault_slow_link_and_heal(lab):
    """slow-link shapes both directions of the node's link to its rate, the link is then
    clearly slower than after heal (200mbit against the lab's class, or unshaped), and
    heal puts the lab's class back."""
    a, b = node(lab, 1), node(lab, 2)
    labs.fault(lab.name, b.name, "slow-link", "200mbit")
    try:
        assert shaping(b) == (200_000_000, 200_000_000)
        assert shaping(a) == (labs.LINK_CLASSES[lab.link],) * 2      # the others keep theirs
        slow = iperf(lab, a, b)
        slow_back = iperf(lab, a, b, reverse=True)
    finally:
        healed = labs.heal(lab.name, b.name)
    assert [f.kind for f in healed] == ["slow-link"]
    assert shaping(b) == (labs.LINK_CLASSES[lab.link],) * 2
    after = iperf(lab, a, b)
    print(f"slow-link 200mbit: {slow:.3f} / {slow_back:.3f} Gbit/s; healed: {after:.3f}")
    assert 0 < slow < after / 2 and 0 < slow_back < after / 2, (slow, slow_back, after)


def test_fault_port_mtu_blackholes_jumbo_frames_and_heal(lab):
    a, b = node(lab, 1), node(lab, 2)
    labs.fault(lab.name, "2", "port-mtu", "1500")
    try:
        assert host.link(b.port)["mtu"] == 1500
        assert host.link(lab.bridge)["mtu"] == lab.mtu          # the switch keeps its MTU
        assert "mtu 9000" in in_node(b, "ip", "link", "show", "eth0").stdout  # node asks 9000
        assert ping(a, b.ip, size=1472)                          # small frames pass
        assert not ping(a, b.ip, size=8972)                      # jumbo frames vanish
    finally:
        labs.heal(lab.name, "2")
    assert host.link(b.port)["mtu"] == lab.mtu
    assert ping(a, b.ip, size=8972)


def _probe_port(lab, src, dst, port: int) -> tuple[bool, bool]:
    """(tcp, udp): does traffic from `src` to `dst`:port arrive? A listener in dst's netns
    (the host's python, so the node needs nothing) reports what it got."""
    server = subprocess.Popen(
        ["nsenter", "-t", str(dst.pid), "-n", "--", sys.executable, "-c", f"""
import select, socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", {port})); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {port}))
print("ready", flush=True)
got = set()
for _ in range(2):
    ready, _, _ = select.select([t, u], [], [], 4)
    if t in ready: t.accept(); got.add("tcp")
    if u in ready: u.recvfrom(100); got.add("udp")
    if not ready: break
print(" ".join(sorted(got)) or "none", flush=True)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        in_node(src, "bash", "-c",
                f"timeout 2 bash -c 'exec 3<>/dev/tcp/{dst.ip}/{port}'; "
                f"echo hi >/dev/udp/{dst.ip}/{port}; echo hi >/dev/udp/{dst.ip}/{port}")
        got = server.communicate(timeout=15)[0].split()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return "tcp" in got, "udp" in got


def test_fault_block_port_drops_tcp_and_udp_and_heal(lab):
    a, b = node(lab, 1), node(lab, 2)
    assert _probe_port(lab, a, b, 5301) == (True, True)
    labs.fault(lab.name, b.name, "block-port", 5301)
    labs.fault(lab.name, b.name, "block-port", "22")
    try:
        assert _probe_port(lab, a, b, 5301) == (False, False)     # from another node
        assert not tcp_open(b.ip, 22)                              # from the controller
        assert _probe_port(lab, a, b, 5302) == (True, True)       # other ports still open
        assert ping(a, b.ip)
    finally:
        healed = labs.heal(lab.name, b.name)
    assert sorted(f.arg for f in healed) == ["22", "5301"]
    assert _probe_port(lab, a, b, 5301) == (True, True)
    assert tcp_open(b.ip, 22)
    labs.check_ssh(lab, b)


def test_fault_down_makes_the_node_unreachable_and_heal(lab):
    a, c = node(lab, 1), node(lab, 3)
    labs.fault(lab.name, c.name, "down")
    try:
        assert not tcp_open(c.ip, 22)
        assert not ping(a, c.ip)
        health = labs.node_health(labs.status(lab.name), c)
        assert health["running"] and health["port"] == "down" and health["faults"] == ["down"]
    finally:
        labs.heal(lab.name, c.name)
    assert ping(a, c.ip)                         # heal returns once the path answers
    labs.check_ssh(lab, c)


def test_fault_partition_cuts_the_node_off_other_nodes_only_and_heal(lab):
    a, b, c = lab.nodes
    labs.fault(lab.name, c.name, "partition")
    try:
        assert not ping(a, c.ip) and not ping(c, b.ip)
        assert ping(c, lab.bridge_ip)            # still reaches the controller...
        assert tcp_open(c.ip, 22)                # ...and the controller reaches it
        assert ping(a, b.ip)                     # the others still talk
    finally:
        labs.heal(lab.name)
    assert ping(a, c.ip) and ping(c, b.ip)


def _neigh_setting(node, key: str) -> int:
    return int(in_node(node, "cat", f"/proc/sys/net/ipv4/neigh/eth0/{key}").stdout)


def test_heal_returns_once_a_lookup_that_failed_during_the_partition_works_again(lab):
    """The way the partition test failed in a full run: the node asked for a peer's MAC
    (ARP) while cut off; heal came after the last of its ARP probes went out, and the
    node's next packet waited on that lookup, which then failed and dropped it. `heal`
    must return only once the healed node's paths answer."""
    a, b, c = lab.nodes
    assert in_node(c, "ip", "neigh", "flush", "to", b.ip).returncode == 0
    labs.fault(lab.name, c.name, "partition")
    try:
        retrans = _neigh_setting(c, "retrans_time_ms") / 1000
        probes = _neigh_setting(c, "mcast_solicit") + _neigh_setting(c, "app_solicit")
        started = time.monotonic()
        assert not ping(c, b.ip)                 # the lookup starts; its probes vanish
        time.sleep(max(0.0, started + (probes - 1) * retrans + 0.2 - time.monotonic()))
    finally:
        labs.heal(lab.name, c.name)              # after the last probe, before the failure
    assert ping(c, b.ip) and ping(b, c.ip) and ping(a, c.ip)


def test_heal_without_faults_and_unknown_nodes(lab):
    assert labs.heal(lab.name) == []
    with pytest.raises(InputError, match="unknown node"):
        labs.fault(lab.name, "node9", "down")
    with pytest.raises(InputError, match="unknown fault"):
        labs.fault(lab.name, "node1", "meteor")


def test_status_json_from_the_cli(lab):
    from click.testing import CliRunner
    from clusterctl.cli.lab import lab_group
    result = CliRunner().invoke(lab_group, ["status", "--name", lab.name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema_version"] == 1
    assert data["name"] == lab.name and data["phase"] == "up"
    assert [n["health"]["running"] for n in data["nodes"]] == [True] * len(lab.nodes)
    assert all(n["health"]["ssh"] for n in data["nodes"])
    result = CliRunner().invoke(lab_group, ["inventory", lab.name])
    assert result.output.strip() == str(lab.inventory_path)


def test_a_taken_subnet_is_refused(lab, lab_name_for):
    name = lab_name_for("taken")
    with pytest.raises(InputError, match=f"subnet {lab.subnet} is taken"):
        labs.up(name, nodes=1, mirror=False, subnet=lab.subnet)
    assert labs.load_state(name) is None


# ----------------------------------------------------------------------------- lifecycle

def _traces(name: str, state_before) -> list[str]:
    """Everything of lab `name` still on this host."""
    found = []
    ifaces = host.links()
    for ifname in [naming.bridge_name(name)] + [n.port for n in state_before.nodes]:
        if ifname in ifaces:
            found.append(f"interface {ifname}")
    for pid_dir in Path("/proc").glob("[0-9]*"):
        pid = int(pid_dir.name)
        args = procs.cmdline(pid)
        if not args or not procs.alive(pid):
            continue
        if any(f"{name}-node" in a for a in args) and "systemd-nspawn" in args[0]:
            found.append(f"process {pid} {' '.join(args[:3])}")
        if state_before.mirror and "http.server" in args and \
                "--bind" in args and state_before.bridge_ip in args:
            found.append(f"mirror server {pid}")
    for n in state_before.nodes:
        if procs.is_ours(n.pid, n.pid_start):
            found.append(f"node init {n.pid}")
        if Path("/run/systemd/nspawn/propagate", n.name).exists():
            found.append(f"/run/systemd/nspawn/propagate/{n.name}")
    tables = host.run(["nft", "list", "tables"]).stdout
    if state_before.nft_table in tables:
        found.append(f"nft table {state_before.nft_table}")
    if (labs.load_state(name) is not None) or (Path(state_before.dir)).exists():
        found.append(f"state dir {state_before.dir}")
    return found


def test_a_second_lab_coexists_and_down_leaves_no_trace(lab, lab_name_for):
    name = lab_name_for("2nd")
    labs.down(name)
    second = labs.up(name, nodes=2, link="none", mirror=lab.mirror is not None)
    try:
        assert second.subnet != lab.subnet and second.bridge != lab.bridge
        labs.check_ssh(second, second.nodes[1], "true")
        # the labs do not see each other
        assert not ping(second.nodes[0], node(lab, 1).ip)
        labs.fault(name, "node2", "partition")       # leaves nft rules to clean up
    finally:
        assert labs.down(name) is True
    assert _traces(name, second) == []
    assert labs.down(name) is False                  # idempotent
    assert ping(node(lab, 1), node(lab, 2).ip)       # the session lab is untouched


def test_down_after_a_crash_of_lab_up_leaves_no_trace(lab, lab_name_for):
    """kill -9 `lab up` while the nodes boot: `lab down` still removes everything."""
    name = lab_name_for("crash")
    labs.down(name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(labs.__file__).parents[2])] + sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "clusterctl.cli.lab", "lab", "up",
                             "--name", name, "--nodes", "2", "--no-mirror"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = labs.load_state(name)
        if state and state.nodes and all(n.nspawn_pid for n in state.nodes):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = labs.load_state(name)
    assert state is not None and state.phase != "up"
    time.sleep(1)                   # let the orphaned nodes finish plugging in or booting
    assert labs.down(name) is True
    assert _traces(name, state) == []


def test_failed_up_cleans_up_after_itself(lab, lab_name_for, monkeypatch):
    name = lab_name_for("fail")
    labs.down(name)
    from clusterctl.lab import node as node_mod

    def broken(state, n, timeout):
        raise ClusterctlError(f"{n.name}: simulated boot failure")
    monkeypatch.setattr(node_mod, "wait_sshd", broken)
    seen = {}
    real_new_state = labs.core._new_state

    def spy(*a, **kw):
        seen["state"] = real_new_state(*a, **kw)
        return seen["state"]
    monkeypatch.setattr(labs.core, "_new_state", spy)
    with pytest.raises(ClusterctlError, match="simulated boot failure"):
        labs.up(name, nodes=2, mirror=False)
    assert _traces(name, seen["state"]) == []
