"""What `clusterctl bootstrap` promises, checked read-only on every node with testinfra.

Run through `clusterctl verify` (it writes an ssh_config with the inventory's keys and
known_hosts, then runs pytest on this file with --hosts). The inventory comes from
$CLUSTERCTL_VERIFY_INVENTORY.
"""
import ipaddress
import json
import os

import pytest

from clusterctl.inventory import load_inventory

INVENTORY = load_inventory(os.environ["CLUSTERCTL_VERIFY_INVENTORY"])


@pytest.fixture(scope="module")
def node(host):
    """(inventory Host, cluster interface, cluster ip) of the node testinfra talks to."""
    name = host.backend.get_hostname()
    inv_host = INVENTORY.hosts[name]
    network = inv_host.vars["cluster"]["network"]
    links = json.loads(host.check_output("ip -j addr"))
    for link in links:
        for a in link.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            ip = ipaddress.ip_address(a["local"])
            if network and "/" in str(network):
                hit = ip in ipaddress.ip_network(network, strict=False)
            elif network:
                hit = link["ifname"] == network
            else:
                hit = a["local"] == inv_host.address
            if hit:
                return inv_host, link["ifname"], a["local"]
    pytest.fail(f"{name}: no interface in cluster.network {network}")


def test_cluster_nic_mtu(host, node):
    inv_host, iface, _ip = node
    mtu = int(host.file(f"/sys/class/net/{iface}/mtu").content_string.strip())
    assert mtu == inv_host.vars["cluster"]["mtu"], f"{iface} mtu {mtu}"


def test_nccl_env_names_cluster_nic_and_ip(host, node):
    _inv_host, iface, ip = node
    env = host.file("/etc/clusterctl/nccl.env")
    assert env.is_file
    text = env.content_string
    for line in (f"NCCL_SOCKET_IFNAME={iface}", f"GLOO_SOCKET_IFNAME={iface}",
                 f"VLLM_HOST_IP={ip}"):
        assert line in text.splitlines(), line
    assert host.file("/etc/profile.d/clusterctl-nccl.sh").is_file


def test_login_shell_gets_nccl_env(host, node):
    _inv_host, iface, _ip = node
    out = host.check_output("bash -lc 'echo $NCCL_SOCKET_IFNAME'")
    assert out.strip() == iface


def test_venv_has_pinned_ray(host, node):
    inv_host = node[0]
    venv = inv_host.vars["python"]["venv"]
    want = inv_host.vars["python"]["ray"] or inv_host.vars["ray"]["version"]
    pkg = host.pip("ray", pip_path=f"{venv}/bin/pip")
    assert pkg.is_installed and pkg.version == str(want)


def test_llamacpp_binaries(host, node):
    prefix = node[0].vars["llamacpp"]["prefix"]
    for name in ("ggml-rpc-server", "rpc-server", "llama-server", "llama-cli"):
        f = host.file(f"{prefix}/bin/{name}")
        assert f.exists and (f.is_symlink or f.mode & 0o111), name
    assert host.file(f"{prefix}/BUILD-INFO.json").is_file


def test_ray_service(host, node):
    unit = "ray-head.service" if node[0].is_head else "ray-worker.service"
    svc = host.service(unit)
    assert svc.is_running and svc.is_enabled
    env = host.file(f"/etc/systemd/system/{unit}").content_string
    assert "EnvironmentFile=/etc/clusterctl/nccl.env" in env
    assert f"--node-ip-address={node[2]}" in env
