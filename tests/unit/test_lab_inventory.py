"""The inventory `lab up` writes: the documented structure, loadable by clusterctl."""
import pytest
import yaml

from clusterctl.lab.inventory_file import inventory_data, render_inventory, render_known_hosts
from clusterctl.lab.node import node_files, nspawn_argv

from test_lab_state import make_state


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_LAB_ROOT", str(tmp_path / "labs"))
    monkeypatch.setenv("CLUSTERCTL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_inventory_structure(roots):
    st = make_state()
    data = inventory_data(st)
    assert data == {"all": {
        "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": "id_ed25519",
                 "ssh_known_hosts_file": "known_hosts",
                 "cluster": {"name": "t", "network": "198.18.4.0/24", "mtu": 9000},
                 "mirror": {"apt": "http://198.18.4.1:8080/apt",
                            "pip": "http://198.18.4.1:8080/pip/"}},
        "children": {
            "head": {"hosts": {"t-node1": {"ansible_host": "198.18.4.11"}}},
            "workers": {"hosts": {"t-node2": {"ansible_host": "198.18.4.12"},
                                  "t-node3": {"ansible_host": "198.18.4.13"}}}}}}


def test_no_mirror_no_mirror_var(roots):
    assert "mirror" not in inventory_data(make_state(mirror=False))["all"]["vars"]


def test_one_node_lab_has_only_a_head(roots):
    st = make_state()
    st.nodes = st.nodes[:1]
    assert set(inventory_data(st)["all"]["children"]) == {"head"}


def test_rendered_file_has_a_header_and_parses_back(roots):
    st = make_state()
    text = render_inventory(st, when="2026-01-01 00:00:00")
    assert text.startswith("# Inventory of clusterctl lab 't'")
    assert "clusterctl lab up --name t" in text and "2026-01-01" in text
    assert yaml.safe_load(text) == inventory_data(st)


def test_rendered_inventory_loads_with_clusterctl_inventory(roots):
    inventory = pytest.importorskip("clusterctl.inventory")
    st = make_state()
    st.dir.mkdir(parents=True)
    st.inventory_path.write_text(render_inventory(st))
    inv = inventory.load_inventory(st.inventory_path)
    assert list(inv.hosts) == ["t-node1", "t-node2", "t-node3"]
    assert inv.head.name == "t-node1"
    node2 = inv.hosts["t-node2"]
    assert node2.address == "198.18.4.12" and node2.user == "root"
    assert str(node2.known_hosts_file) == str(st.known_hosts_path)
    assert str(node2.key_file) == str(st.key_path)
    assert node2.vars["mirror"]["apt"] == "http://198.18.4.1:8080/apt"
    assert not inv.warnings


def test_known_hosts_lines(roots):
    st = make_state()
    text = render_known_hosts(st, {"t-node1": "ssh-ed25519 AAAAkey1 root@t-node1",
                                   "t-node3": "ssh-ed25519 AAAAkey3 root@t-node3"})
    assert text == ("t-node1,198.18.4.11 ssh-ed25519 AAAAkey1\n"
                    "t-node3,198.18.4.13 ssh-ed25519 AAAAkey3\n")


def test_node_files(roots):
    st = make_state()
    node = st.nodes[1]
    files = node_files(st, node, "ssh-ed25519 AAAApub lab")
    assert files["etc/hostname"][0] == "t-node2\n"
    assert files["etc/machine-id"][0] == f"{2:032x}\n"
    net = files["etc/systemd/network/10-clusterctl-lab.network"][0]
    assert "Name=eth0" in net and "Address=198.18.4.12/24" in net and "MTUBytes=9000" in net
    assert "Gateway" not in net                    # no way out of the lab
    assert "198.18.4.13\tt-node3" in files["etc/hosts"][0]
    assert files["root/.ssh/authorized_keys"] == ("ssh-ed25519 AAAApub lab\n", 0o600)
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in \
        files["etc/ssh/sshd_config.d/10-clusterctl-lab.conf"][0]


def test_nspawn_argv(roots):
    st = make_state()
    argv = nspawn_argv(st, st.nodes[0])
    assert argv[0] == "systemd-nspawn" and "--boot" in argv
    assert "--register=no" in argv and "--keep-unit" in argv
    assert "--network-veth-extra=cc-t-1:eth0" in argv
    assert f"--overlay=/img/rootfs:{st.node_dir(st.nodes[0]) / 'upper'}:/" in argv
    assert argv[argv.index("--machine") + 1] == "t-node1"
