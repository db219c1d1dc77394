"""Unit tests for clusterctl.facts: parsers from recorded output, markers, the real script.

Fixtures (tests/unit/fixtures):
  debian12_base.*  BASE_REQUESTS recorded on a Debian 12 machine (record.py)
  debian12_node.*  file/dir/path/pip/sysctl/check/link/unit recorded on a sandbox (record.py)
  gpu_node.*       hand-written: 4 GPUs, InfiniBand, netplan, systemd units, a login banner
  lab_node.*       hand-written: a systemd-nspawn lab node (networkd, veth, no GPU)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from clusterctl.facts import (BASE_KINDS, BASE_REQUESTS, CONTENT_LIMIT, GPU, END_MARKER, MARKER,
                              NET_MANAGERS, FactRequest, Facts, IBPort, Interface, Route,
                              build_script, canonical_name, parse_output)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NODE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "HOME": "/root"}


def fixture_requests(name: str) -> list[FactRequest]:
    lines = (FIXTURES / f"{name}.requests").read_text().splitlines()
    return [FactRequest(*ln.split(":", 1)) for ln in lines if ln]


def load(name: str) -> Facts:
    return parse_output((FIXTURES / f"{name}.out").read_text(), fixture_requests(name))


def run_bash(script: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=NODE_ENV,
                          timeout=60, **kw)


@pytest.fixture(scope="module")
def base() -> Facts:
    return load("debian12_base")


@pytest.fixture(scope="module")
def node() -> Facts:
    return load("debian12_node")


@pytest.fixture(scope="module")
def gpu() -> Facts:
    return load("gpu_node")


@pytest.fixture(scope="module")
def lab() -> Facts:
    return load("lab_node")


def F(kind: str, arg: str = "") -> FactRequest:
    return FactRequest(kind, arg)


# ------------------------------------------------------------------ base facts (recorded)

def test_base_requests_cover_every_base_kind():
    assert [r.kind for r in BASE_REQUESTS] == list(BASE_KINDS)
    assert all(r.arg == "" for r in BASE_REQUESTS)
    for kind in ("os", "kernel", "arch", "interfaces", "routes", "packages", "gpus", "infiniband",
                 "python", "net_manager", "nvcc", "cpus", "memory"):
        assert kind in BASE_KINDS


def test_recorded_os_kernel_arch(base):
    assert base.os["id"] == "debian"
    assert base.os["version_id"] == "12"
    assert base.os["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert base.os["version_codename"] == "bookworm"
    assert base.kernel and " " not in base.kernel
    assert base.arch == "x86_64"


def test_recorded_interfaces(base):
    by_name = {i.name: i for i in base.interfaces}
    lo = by_name["lo"]
    assert isinstance(lo, Interface)
    assert lo.kind == "loopback" and lo.mtu == 65536 and lo.state == "UNKNOWN"
    assert ("127.0.0.1", 8) in lo.addresses and ("::1", 128) in lo.addresses
    eth0 = by_name["eth0"]
    assert eth0.kind == "ether" and eth0.state == "UP"
    assert eth0.mac and eth0.mac.count(":") == 5
    assert any(":" not in ip for ip, _ in eth0.addresses)
    assert by_name["ifb0"].kind == "ifb"              # linkinfo kind wins over link_type


def test_recorded_routes(base):
    assert all(isinstance(r, Route) for r in base.routes)
    default = base.default_route
    assert default is not None and default.gateway and default.dev == "eth0"
    kernel_routes = [r for r in base.routes if r.protocol == "kernel"]
    assert kernel_routes and all(r.prefsrc for r in kernel_routes)


def test_recorded_packages_only_installed(base):
    pkgs = base.packages
    assert len(pkgs) > 100
    for name in ("bash", "dpkg", "iproute2", "python3"):
        assert pkgs[name][0].isdigit(), name
    assert all("\t" not in k and " " not in k for k in pkgs)


def test_recorded_small_base_facts(base):
    assert base.gpus == []                            # no nvidia-smi on the recording machine
    assert base.infiniband == []
    assert base.python.startswith("3.11.")
    assert base.net_manager in NET_MANAGERS
    assert base.networkd_files == {}
    assert base.nvcc == "13.0.88"                     # CUDA 13.0 is installed there
    assert isinstance(base.cpus, int) and base.cpus >= 1
    assert isinstance(base.memory_mib, int) and base.memory_mib > 1024


# ------------------------------------------------------------------ parameterised kinds (recorded)

def test_file_fact_small_text(node):
    f = node.get(F("file", "/etc/hosts"))
    assert f["exists"] and f["kind"] == "file"
    assert f["content"] == b"127.0.0.1\tlocalhost\n198.18.0.11\tnode1\n198.18.0.12\tnode2\n"
    assert f["size"] == len(f["content"])
    assert f["mode"] == 0o644 and f["owner"] == "root" and f["group"] == "root"
    import hashlib
    assert f["sha256"] == hashlib.sha256(f["content"]).hexdigest()


def test_file_fact_mode_binary_large_absent_and_directory(node):
    env = node.get(F("file", "/etc/clusterctl/ray.env"))
    assert env["mode"] == 0o600
    blob = node.get(F("file", "/opt/blob.bin"))
    assert blob["content"] == bytes(range(256))
    big = node.get(F("file", "/opt/models/big.gguf"))
    assert big["exists"] and big["content"] is None and big["size"] > CONTENT_LIMIT
    assert len(big["sha256"]) == 64                   # computed on the node for large files
    absent = node.get(F("file", "/etc/clusterctl/absent.conf"))
    assert absent == {"exists": False, "kind": None, "sha256": None, "size": None, "mode": None,
                      "owner": None, "group": None, "content": None}
    d = node.get(F("file", "/var/lib/clusterctl"))
    assert d["exists"] is False and d["kind"] == "directory" and d["content"] is None


def test_dir_fact(node):
    assert node.get(F("dir", "/var/lib/clusterctl")) == {
        "exists": True, "kind": "directory", "mode": 0o755, "owner": "root", "group": "root"}
    assert node.get(F("dir", "/models"))["mode"] == 0o750
    assert node.get(F("dir", "/srv/absent"))["exists"] is False
    on_file = node.get(F("dir", "/etc/hosts"))
    assert on_file["exists"] is False and on_file["kind"] == "file"


def test_path_fact(node):
    assert node.get(F("path", "/opt/ray/bin/python")) == {"exists": True, "kind": "symlink"}
    assert node.get(F("path", "/opt/ray/bin/ray")) == {"exists": False, "kind": None}
    assert node.get(F("path", "/var/lib/clusterctl")) == {"exists": True, "kind": "directory"}
    assert node.get(F("path", "/etc/hosts")) == {"exists": True, "kind": "file"}
    assert node.get(F("path", "/opt/dangling")) == {"exists": False, "kind": "symlink"}


def test_pip_fact_reads_dist_info(node):
    venv = node.get(F("pip", "/opt/ray"))
    assert venv["exists"] is True
    assert venv["python"] == "3.11.2"
    assert venv["packages"] == {"numpy": "1.26.4", "pip": "23.0.1", "pyyaml": "6.0.1",
                                "ray": "2.59.0", "torch": "2.13.0+cpu",
                                "typing-extensions": "4.12.2"}
    assert node.get(F("pip", "/opt/absent-venv")) == {"exists": False, "python": None, "packages": {}}


def test_sysctl_fact(node):
    assert node.get(F("sysctl", "net.core.rmem_max")).isdigit()
    assert node.get(F("sysctl", "net.ipv4.tcp_rmem")) == "4096 131072 33554432"   # tabs normalised
    assert node.get(F("sysctl", "net/ipv4/conf/lo/forwarding")) in ("0", "1")
    assert node.get(F("sysctl", "net.nonexistent.key")) is None


def test_check_fact_is_exit_code(node):
    assert node.get(F("check", "test -x /opt/ray/bin/ray")) == 1
    assert node.get(F("check", "grep -q node1 /etc/hosts")) == 0
    assert node.get(F("check", "exit 3")) == 3
    assert node.get(F("check", "if then fi")) == 2             # syntax error stays contained


def test_link_fact(node):
    assert node.get(F("link", "lo")) == {"exists": True, "mtu": 65536, "operstate": "unknown"}
    eth0 = node.get(F("link", "eth0"))
    assert eth0["exists"] and eth0["operstate"] == "up" and eth0["mtu"] >= 68
    assert node.get(F("link", "nope0")) == {"exists": False, "mtu": None, "operstate": None}


def test_unit_fact_without_systemd(node):
    unit = node.get(F("unit", "ray-head.service"))
    assert unit["available"] is False and unit["active_state"] is None
    assert node.exit_code(F("unit", "ssh")) != 0


# ------------------------------------------------------------------ hand-written samples

def test_gpu_node_gpus(gpu):
    assert gpu.gpus == [GPU(i, "NVIDIA H100 80GB HBM3", 81559, "9.0") for i in range(4)]


def test_gpu_node_infiniband(gpu):
    ib = gpu.infiniband
    assert [p.device for p in ib] == ["mlx5_0", "mlx5_1", "mlx5_2"]
    assert ib[0] == IBPort("mlx5_0", 1, "ACTIVE", "LinkUp", "400 Gb/sec (4X NDR)", 400.0,
                           "InfiniBand", ["ib0"])
    assert ib[1].state == "DOWN" and ib[1].phys_state == "Disabled" and ib[1].netdevs == []
    assert ib[2].link_layer == "Ethernet" and ib[2].rate_gbps == 100.0


def test_gpu_node_misc(gpu):
    assert gpu.nvcc == "12.4.131"
    assert gpu.net_manager == "netplan"               # netplan wins over the networkd it drives
    assert gpu.networkd_files["ib0"] == "/run/systemd/network/10-netplan-ib0.network"
    assert gpu.cpus == 128 and gpu.memory_mib == 1056335600 // 1024
    assert gpu.kernel == "6.1.0-27-amd64"
    kinds = {i.name: i.kind for i in gpu.interfaces}
    assert kinds == {"lo": "loopback", "enp65s0f0": "ether", "enp65s0f1np1": "ether",
                     "ib0": "ipoib", "docker0": "bridge"}
    assert gpu.default_route.gateway == "10.10.0.1" and gpu.default_route.metric == 100


def test_gpu_node_packages_status(gpu):
    pkgs = gpu.packages
    assert pkgs["nvidia-driver"] == "535.183.01-1~deb12u1"     # held but installed
    assert "opensm" not in pkgs                                 # rc: config files only
    assert "half-configured-pkg" not in pkgs                    # iU: unpacked, not installed
    assert pkgs["libc6"] == "2.36-9+deb12u8"                    # multi-arch duplicate


def test_gpu_node_units_batched(gpu):
    head = gpu.get(F("unit", "ray-head.service"))
    assert head == {"available": True, "id": "ray-head.service", "load_state": "loaded",
                    "active_state": "active", "sub_state": "running", "unit_file_state": "enabled",
                    "fragment_path": "/etc/systemd/system/ray-head.service"}
    assert gpu.get(F("unit", "ray-worker.service"))["active_state"] == "failed"
    opensm = gpu.get(F("unit", "opensm.service"))
    assert opensm["id"] == "opensm.service" and opensm["load_state"] == "not-found"
    assert opensm["fragment_path"] is None and opensm["unit_file_state"] is None
    assert gpu.get(F("unit", "nvidia-fabricmanager.service"))["unit_file_state"] == "masked"


def test_lab_node(lab):
    assert lab.net_manager == "networkd"
    assert lab.networkd_files == {"host0": "/etc/systemd/network/10-host0.network"}
    assert lab.gpus == [] and lab.nvcc is None and lab.infiniband == []
    assert lab.get(F("link", "host0"))["mtu"] == 1500
    assert lab.interface_for("198.18.0.0/24", "198.18.0.12").kind == "veth"


def test_gpus_old_driver_and_failures():
    reqs = [F("gpus")]
    old = "\n@@clusterctl-fact 0 0 gpus\n0, Tesla V100-SXM2-16GB, 16160\n1, Tesla V100-SXM2-16GB, [N/A]\n" \
          "@@clusterctl-facts-end 1\n"
    assert parse_output(old, reqs).gpus == [GPU(0, "Tesla V100-SXM2-16GB", 16160, None),
                                            GPU(1, "Tesla V100-SXM2-16GB", None, None)]
    broken = ("\n@@clusterctl-fact 0 9 gpus\nNVIDIA-SMI has failed because it couldn't communicate "
              "with the NVIDIA driver.\n@@clusterctl-facts-end 1\n")
    facts = parse_output(broken, reqs)
    assert facts.gpus == [] and facts.exit_code(F("gpus")) == 9
    with pytest.raises(ValueError, match="fact gpus: nvidia-smi: unexpected line"):
        parse_output("\n@@clusterctl-fact 0 0 gpus\nsomething else\n@@clusterctl-facts-end 1\n", reqs)


def test_net_manager_decisions():
    def nm(body: str) -> str:
        return parse_output(f"\n{MARKER} 0 0 net_manager\n{body}\n{END_MARKER} 1\n",
                            [F("net_manager")]).net_manager
    assert nm("netplan_files 0\nnetworkd_files 0\nifupdown_ifaces 2\nifup") == "ifupdown"
    assert nm("netplan_files 0\nnetworkd_files 0\nifupdown_ifaces 0\nifup") == "none"
    assert nm("netplan_files 0\nnetworkd_files 2\nifupdown_ifaces 1\nifup") == "networkd"
    assert nm("netplan_files 0\nnetworkd_files 0\nnetworkd_running\nifupdown_ifaces 0") == "networkd"
    assert nm("netplan_files 2\nnetworkd_files 2\nnetworkd_running\nifupdown_ifaces 0") == "netplan"


def test_python_and_nvcc_absent():
    out = f"\n{MARKER} 0 127 python\n\n{MARKER} 1 0 nvcc\n\n{END_MARKER} 2\n"
    facts = parse_output(out, [F("python"), F("nvcc")])
    assert facts.python is None and facts.nvcc is None
    assert facts.exit_code(F("python")) == 127


def test_canonical_name():
    assert canonical_name("PyYAML") == "pyyaml"
    assert canonical_name("typing_extensions") == "typing-extensions"
    assert canonical_name("zope.interface") == "zope-interface"
    assert canonical_name("A__b--C") == "a-b-c"


# ------------------------------------------------------------------ interface_for

def test_interface_for_cidr(gpu):
    assert gpu.interface_for("192.168.100.0/24", "10.10.0.11").name == "enp65s0f1np1"
    assert gpu.interface_for("172.16.0.0/16", "10.10.0.11").name == "ib0"
    assert gpu.interface_for("172.16.5.0/24", "10.10.0.11") is None
    assert gpu.interface_for("172.16.0.1/16", "10.10.0.11").name == "ib0"   # strict=False
    assert gpu.interface_for("10.99.0.0/16", "10.10.0.11") is None


def test_interface_for_cidr_prefers_the_address_holder():
    ifaces = [Interface("eth0", 1500, "UP", None, [("10.0.0.5", 8)], "ether"),
              Interface("eth1", 9000, "UP", None, [("10.1.0.5", 16)], "ether")]
    facts = Facts({F("interfaces"): ifaces})
    assert facts.interface_for("10.0.0.0/8", "10.1.0.5").name == "eth1"
    assert facts.interface_for("10.0.0.0/8", "node1.example").name == "eth0"


def test_interface_for_name_and_address(gpu):
    assert gpu.interface_for("ib0", "10.10.0.11").name == "ib0"
    assert gpu.interface_for("nope0", "10.10.0.11") is None
    assert gpu.interface_for(None, "10.10.0.11").name == "enp65s0f0"
    assert gpu.interface_for(None, "172.17.0.1").name == "docker0"
    assert gpu.interface_for(None, "gpu01.example") is None     # a host name: no guess
    assert gpu.interface_for(None, "10.10.0.99") is None


def test_interface_for_ipv6():
    facts = Facts({F("interfaces"): [Interface("eth0", 1500, "UP", None,
                                               [("fd00::2", 64), ("fe80::1", 64)], "ether")]})
    assert facts.interface_for("fd00::/64", "fd00::2").name == "eth0"
    assert facts.interface_for(None, "fd00::2").name == "eth0"


def test_interface_for_bad_cidr(gpu):
    with pytest.raises(ValueError, match="neither a CIDR"):
        gpu.interface_for("10.0.0.0/99", "10.10.0.11")


# ------------------------------------------------------------------ Facts object

def test_get_unrequested_raises_keyerror(lab):
    with pytest.raises(KeyError, match="file:/etc/x was not gathered"):
        lab.get(F("file", "/etc/x"))
    with pytest.raises(KeyError):
        lab.os


def test_to_dict_is_json(base, node, gpu, lab):
    for facts in (base, node, gpu, lab):
        text = json.dumps(facts.to_dict())
        assert json.loads(text).keys() == {str(r) for r in facts.requests}
    d = node.to_dict()
    assert d["file:/etc/hosts"]["content"] == "MTI3LjAuMC4xCWxvY2FsaG9zdAoxOTguMTguMC4xMQlub2RlMQoxOTguMTguMC4xMglub2RlMgo="
    assert gpu.to_dict()["gpus"][0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3",
                                        "memory_mib": 81559, "compute_cap": "9.0"}
    assert base.to_dict()["interfaces"][0]["addresses"][0] == ["127.0.0.1", 8]


def test_merged(node, gpu):
    both = node.merged(gpu)
    assert both.gpus == gpu.gpus
    assert both.get(F("file", "/etc/hosts")) == node.get(F("file", "/etc/hosts"))


def test_fact_request_str_and_hash():
    assert str(F("file", "/etc/x")) == "file:/etc/x"
    assert str(F("os")) == "os"
    assert len({F("os"), F("os"), F("file", "/x")}) == 2


# ------------------------------------------------------------------ markers and garbage

SIMPLE = [F("kernel"), F("arch")]
SIMPLE_OUT = f"\n{MARKER} 0 0 kernel\n6.1.0-27-amd64\n{MARKER} 1 0 arch\nx86_64\n{END_MARKER} 2\n"


def test_parse_simple_and_crlf():
    assert parse_output(SIMPLE_OUT, SIMPLE).arch == "x86_64"
    crlf = parse_output(SIMPLE_OUT.replace("\n", "\r\n"), SIMPLE)
    assert crlf.kernel == "6.1.0-27-amd64" and crlf.arch == "x86_64"


def test_parse_ignores_preamble_and_section_order():
    out = ("motd line\n" + f"\n{MARKER} 1 0 arch\naarch64\n{MARKER} 0 0 kernel\n6.1\n{END_MARKER} 2\n")
    facts = parse_output(out, SIMPLE)
    assert facts.arch == "aarch64" and facts.kernel == "6.1"


@pytest.mark.parametrize("out, message", [
    ("", "no '@@clusterctl-fact' markers"),
    ("bash: line 1: syntax error\n", "no '@@clusterctl-fact' markers"),
    (SIMPLE_OUT.replace(f"{END_MARKER} 2\n", ""), "truncated"),
    (SIMPLE_OUT.replace(f"{END_MARKER} 2", f"{END_MARKER} 3"), "for 3 requests, expected 2"),
    (SIMPLE_OUT.replace("1 0 arch", "1 0 kernel"), "is 'kernel' but request 1 is arch"),
    (SIMPLE_OUT.replace("1 0 arch", "7 0 arch"), "index 7 out of range"),
    (SIMPLE_OUT.replace("1 0 arch", "0 0 kernel"), "appears twice"),
    (SIMPLE_OUT.replace(f"{MARKER} 1 0 arch\nx86_64\n", ""), "lacks 1 requested facts: arch"),
    (SIMPLE_OUT.replace("1 0 arch", "1 x arch"), "malformed fact marker"),
    (SIMPLE_OUT.replace("0 0 kernel", "0,1 0 kernel"), "only unit facts can share"),
    (SIMPLE_OUT + f"{MARKER} 1 0 arch\nx\n", "section after the end marker"),
])
def test_parse_garbage(out, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        parse_output(out, SIMPLE)


@pytest.mark.parametrize("kind, arg, body, message", [
    ("interfaces", "", "[{not json", "fact interfaces: ip -j addr: not JSON"),
    ("interfaces", "", '{"a": 1}', "expected a JSON list"),
    ("routes", "", "[1, 2]", "fact routes: ip -j route: unexpected entry"),
    ("os", "", "this is not os-release", "unexpected os-release line"),
    ("packages", "", "ii bash", "dpkg-query: unexpected line"),
    ("cpus", "", "many", "nproc: expected an integer"),
    ("file", "/x", "stat 81a4 3 644 root root\nbase64 ***", "not valid base64"),
    ("file", "/x", "garbage", "unexpected stat line"),
    ("pip", "/v", "not-venv", "unexpected first line"),
    ("pip", "/v", "venv\nrandom text", "unexpected line"),
    ("path", "/x", "weird thing", "unexpected line"),
    ("link", "eth0", "speed 100", "unexpected line"),
    ("infiniband", "", "mlx5_0 1", "infiniband: unexpected line"),
    ("unit", "a.service", "Id=a.service\nBogus=1", "unexpected line"),
    ("net_manager", "", "hello world", "net_manager: unexpected line"),
])
def test_parse_garbage_per_kind(kind, arg, body, message):
    out = f"\n{MARKER} 0 0 {kind}\n{body}\n{END_MARKER} 1\n"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_output(out, [F(kind, arg)])


def test_unit_block_count_mismatch():
    out = f"\n{MARKER} 0,1 0 unit\nId=a.service\nLoadState=loaded\n{END_MARKER} 2\n"
    with pytest.raises(ValueError, match="1 blocks for 2 units"):
        parse_output(out, [F("unit", "a.service"), F("unit", "b.service")])


def test_parse_validates_requests():
    with pytest.raises(ValueError, match="unknown fact kind 'bogus'"):
        parse_output(SIMPLE_OUT, [F("bogus")])


# ------------------------------------------------------------------ build_script

@pytest.mark.parametrize("req, message", [
    (F("bogus"), "unknown fact kind"),
    (F("os", "x"), "takes no argument"),
    (F("file"), "needs an argument"),
    (F("file", "/x\x00y"), "NUL"),
    (F("unit", "a b.service"), "not a valid systemd unit name"),
    (F("sysctl", "net/../../etc"), "not a valid sysctl key"),
    (F("link", "../eth0"), "not a valid interface name"),
    ("os", "expected a FactRequest"),
])
def test_build_script_rejects(req, message):
    with pytest.raises(ValueError, match=message):
        build_script([req])


def test_build_script_dedupes_and_counts():
    script = build_script([F("os"), F("os"), F("file", "/etc/hosts"), F("file", "/etc/hosts")])
    assert script.count("_emit ") == 2
    assert f"{END_MARKER} 2" in script


def test_build_script_single_python_and_batched_units():
    reqs = list(BASE_REQUESTS) + [F("pip", "/opt/a"), F("pip", "/opt/b"), F("unit", "a.service"),
                                  F("unit", "b.service"), F("unit", "c")]
    script = build_script(reqs)
    assert script.count("python3 ") == 1              # only `python3 --version` runs python
    assert script.count("systemctl show") == 1
    assert "_emit 16,17,18 $? unit" in script


def test_build_script_quotes_hostile_args(tmp_path):
    canary = tmp_path / "pwned"
    evil = f"/nonexistent'; touch {canary}; echo '"
    reqs = [F("file", evil), F("dir", evil), F("path", evil), F("pip", evil),
            F("sysctl", "net.core.rmem_max"), F("check", f"test -e {canary}")]
    facts = parse_output(run_bash(build_script(reqs)).stdout, reqs)
    assert not canary.exists()
    assert facts.get(F("file", evil))["exists"] is False
    assert facts.get(F("check", f"test -e {canary}")) == 1


# ------------------------------------------------------------------ the real script under bash

def test_base_script_runs_and_round_trips():
    script = build_script(BASE_REQUESTS)
    start = time.perf_counter()
    res = run_bash(script)
    elapsed = time.perf_counter() - start
    print(f"\nbase fact script: {elapsed * 1000:.0f} ms")   # a figure, not an assertion
    assert res.returncode == 0, res.stderr
    facts = parse_output(res.stdout, BASE_REQUESTS)
    assert facts.os["id"] == "debian"
    assert any(i.name == "lo" for i in facts.interfaces)
    assert facts.packages["bash"]
    assert facts.python and facts.python.startswith("3.")
    assert facts.cpus >= 1 and facts.memory_mib > 0
    assert facts.net_manager in NET_MANAGERS


def make_venv(root: Path) -> Path:
    venv = root / "venv"
    site = venv / "lib/python3.11/site-packages"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to("/usr/bin/python3")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.2\n")
    for name, version in (("Ray", "2.60.0"), ("zope.interface", "6.0")):
        d = site / f"{name}-{version}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: x\n")
    egg = site / "legacy_pkg-0.1.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: legacy_pkg\nVersion: 0.1\n")
    return venv


def test_param_script_round_trip(tmp_path):
    text = tmp_path / "a b.conf"                  # a space in the path
    text.write_bytes(b"x = 1\nno trailing newline")
    text.chmod(0o640)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (CONTENT_LIMIT + 1))
    venv = make_venv(tmp_path)
    reqs = [F("file", str(text)), F("file", str(empty)), F("file", str(big)),
            F("dir", str(tmp_path)), F("path", str(venv / "bin/python")), F("pip", str(venv)),
            F("sysctl", "kernel.ostype"), F("check", "true"), F("check", "exit 7"),
            F("check", "ls /nonexistent-clusterctl/*.conf"),
            F("link", "lo"), F("unit", "ssh.service")]
    res = run_bash(build_script(reqs))
    assert res.returncode == 0, res.stderr
    facts = parse_output(res.stdout, reqs)
    f = facts.get(F("file", str(text)))
    assert f["content"] == b"x = 1\nno trailing newline" and f["mode"] == 0o640
    e = facts.get(F("file", str(empty)))
    assert e["exists"] and e["content"] == b"" and e["size"] == 0
    import hashlib
    assert facts.get(F("file", str(big)))["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert facts.get(F("file", str(big)))["content"] is None
    assert facts.get(F("dir", str(tmp_path)))["exists"]
    assert facts.get(F("path", str(venv / "bin/python"))) == {"exists": True, "kind": "symlink"}
    assert facts.get(F("pip", str(venv))) == {
        "exists": True, "python": "3.11.2",
        "packages": {"legacy-pkg": "0.1", "ray": "2.60.0", "zope-interface": "6.0"}}
    assert facts.get(F("sysctl", "kernel.ostype")) == "Linux"
    assert facts.get(F("check", "true")) == 0 and facts.get(F("check", "exit 7")) == 7
    # an unmatched glob stays literal in checks (bash defaults, not the script's nullglob)
    assert facts.get(F("check", "ls /nonexistent-clusterctl/*.conf")) == 2
    assert facts.get(F("link", "lo"))["mtu"] == 65536
    assert "available" in facts.get(F("unit", "ssh.service"))


def test_script_is_safe_on_stdin():
    """Fed to `bash -s`, a snippet reading stdin must not eat the rest of the script."""
    reqs = [F("check", "cat >/dev/null; read -r x; exit 4"), F("arch"), F("kernel")]
    res = subprocess.run(["bash", "-s"], input=build_script(reqs), capture_output=True,
                         text=True, env=NODE_ENV, timeout=60)
    facts = parse_output(res.stdout, reqs)
    assert facts.get(reqs[0]) == 4 and facts.arch and facts.kernel


def _rebase(script: str, root: Path, prefixes: tuple[str, ...]) -> str:
    for p in prefixes:
        script = script.replace(p, f"{root}{p}")
    return script


def test_infiniband_snippet_on_fake_sysfs(tmp_path):
    base = tmp_path / "sys/class/infiniband"
    for dev, state, phys, rate, layer, netdev in (
            ("mlx5_0", "4: ACTIVE", "5: LinkUp", "200 Gb/sec (4X HDR)", "InfiniBand", "ib0"),
            ("mlx5_1", "1: DOWN", "3: Disabled", "10 Gb/sec (4X SDR)", "InfiniBand", None)):
        port = base / dev / "ports/1"
        port.mkdir(parents=True)
        for fname, value in (("state", state), ("phys_state", phys), ("rate", rate),
                             ("link_layer", layer)):
            (port / fname).write_text(value + "\n")
        (base / dev / "device/net").mkdir(parents=True)
        if netdev:
            (base / dev / "device/net" / netdev).mkdir()
    reqs = [F("infiniband")]
    res = run_bash(_rebase(build_script(reqs), tmp_path, ("/sys/class/infiniband",)))
    ib = parse_output(res.stdout, reqs).infiniband
    assert ib == [IBPort("mlx5_0", 1, "ACTIVE", "LinkUp", "200 Gb/sec (4X HDR)", 200.0, "InfiniBand", ["ib0"]),
                  IBPort("mlx5_1", 1, "DOWN", "Disabled", "10 Gb/sec (4X SDR)", 10.0, "InfiniBand", [])]


def test_networkd_snippets_on_fake_tree(tmp_path):
    (tmp_path / "run/systemd/netif/links").mkdir(parents=True)
    (tmp_path / "run/systemd/netif/state").write_text("OPER_STATE=routable\n")
    (tmp_path / "run/systemd/netif/links/2").write_text(
        "ADMIN_STATE=configured\nOPER_STATE=routable\nNETWORK_FILE=/etc/systemd/network/10-host0.network\n")
    (tmp_path / "run/systemd/netif/links/1").write_text("ADMIN_STATE=unmanaged\nNETWORK_FILE=\n")
    for name, idx in (("lo", 1), ("host0", 2), ("dummy9", 9)):
        (tmp_path / f"sys/class/net/{name}").mkdir(parents=True)
        (tmp_path / f"sys/class/net/{name}/ifindex").write_text(f"{idx}\n")
    (tmp_path / "etc/systemd/network").mkdir(parents=True)
    (tmp_path / "etc/systemd/network/10-host0.network").write_text("[Match]\nName=host0\n")
    reqs = [F("networkd_files"), F("net_manager")]
    script = _rebase(build_script(reqs), tmp_path, ("/sys/class/net", "/run/systemd/", "/etc/"))
    facts = parse_output(run_bash(script).stdout, reqs)
    assert facts.networkd_files == {"host0": "/etc/systemd/network/10-host0.network"}
    assert facts.net_manager == "networkd"
    # no networkd state file: nothing, and no error
    (tmp_path / "run/systemd/netif/state").unlink()
    (tmp_path / "etc/systemd/network/10-host0.network").unlink()
    facts = parse_output(run_bash(script).stdout, reqs)
    assert facts.networkd_files == {} and facts.net_manager in ("none", "ifupdown")


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_interfaces_match_sysfs():
    reqs = [F("interfaces")]
    facts = parse_output(run_bash(build_script(reqs)).stdout, reqs)
    names = {i.name for i in facts.interfaces}
    assert names == set(os.listdir("/sys/class/net"))


@pytest.mark.parametrize("where", ["path", "cuda-folder", "none"])
def test_the_nvcc_snippet_looks_on_path_then_in_the_cuda_folder(tmp_path, where):
    """NVIDIA's packages put nvcc in /usr/local/cuda/bin, which is not on PATH over SSH;
    the fact falls back to it (here a stand-in folder in its place)."""
    from clusterctl.facts import _BASE_SNIPPETS
    fake = tmp_path / "cuda" / "bin" / "nvcc"
    snippet = _BASE_SNIPPETS["nvcc"].replace("/usr/local/cuda/bin/nvcc", str(fake))
    assert snippet != _BASE_SNIPPETS["nvcc"]
    on_path = tmp_path / "onpath"
    on_path.mkdir()
    tool = {"path": on_path / "nvcc", "cuda-folder": fake}.get(where)
    if tool is not None:
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release 13.0, {where}'\n")
        tool.chmod(0o755)
    shell = shutil.which("sh")
    proc = subprocess.run([shell, "-c", snippet], capture_output=True, text=True,
                          env={"PATH": f"{on_path}:/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("" if where == "none" else
                                   f"Cuda compilation tools, release 13.0, {where}")
