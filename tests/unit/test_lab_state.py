"""Lab state: JSON round trip, atomic save, paths under the configurable roots."""
import json

import pytest

from clusterctl.lab.state import FaultState, LabState, NodeState, list_labs, load_state
from clusterctl.mirror import ServedMirror


@pytest.fixture(autouse=True)
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_LAB_ROOT", str(tmp_path / "labs"))
    monkeypatch.setenv("CLUSTERCTL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def make_state(mirror=True) -> LabState:
    st = LabState(name="t", subnet="198.18.4.0/24", bridge="cc-t", bridge_ip="198.18.4.1",
                  link="1gbit", mtu=9000, node_mtu=9000, image="/img/rootfs",
                  nft_table="clusterctl_lab_t", phase="up")
    for k in (1, 2, 3):
        st.nodes.append(NodeState(name=f"t-node{k}", index=k, ip=f"198.18.4.{10 + k}",
                                  port=f"cc-t-{k}", pid=1000 + k, pid_start=5000 + k,
                                  nspawn_pid=900 + k, nspawn_start=4000 + k,
                                  machine_id=f"{k:032x}", role="head" if k == 1 else "worker"))
    st.interfaces = ["cc-t", "cc-t-1", "cc-t-2", "cc-t-3"]
    st.nft_tables = ["inet clusterctl_lab_t", "bridge clusterctl_lab_t"]
    st.faults = [FaultState("t-node2", "block-port", "22"), FaultState("t-node3", "down")]
    if mirror:
        st.mirror = ServedMirror(pid=77, pid_start=88, address="198.18.4.1", port=8080,
                                 directory="/cache/mirror/lab")
    return st


def test_round_trip(roots):
    st = make_state()
    st.save()
    back = load_state("t")
    assert back == st
    assert back.nodes[0].short == "node1"
    assert back.mirror_url == "http://198.18.4.1:8080"
    assert back.mirror_apt_url == "http://198.18.4.1:8080/apt"
    assert back.mirror_pip_url == "http://198.18.4.1:8080/pip/"


def test_paths_follow_the_lab_root(roots):
    st = make_state()
    assert st.dir == roots / "labs" / "t"
    assert st.inventory_path == roots / "labs/t/inventory.yaml"
    assert st.key_path.name == "id_ed25519" and st.known_hosts_path.name == "known_hosts"
    assert st.node_dir(st.nodes[1]) == roots / "labs/t/nodes/node2"


def test_state_file_is_readable_json_with_the_inventory_path(roots):
    st = make_state()
    st.save()
    data = json.loads((roots / "labs/t/state.json").read_text())
    assert data["inventory_path"].endswith("labs/t/inventory.yaml")
    assert data["nodes"][0]["pid"] == 1001 and data["bridge"] == "cc-t"
    assert not list((roots / "labs/t").glob(".state.*"))    # no temp file left


def test_unknown_keys_from_a_newer_version_are_ignored(roots):
    data = make_state(mirror=False).to_dict()
    data["something_new"] = 1
    assert LabState.from_dict(data).mirror is None


def test_no_state(roots):
    assert load_state("nope") is None
    assert list_labs() == []
    make_state().save()
    assert list_labs() == ["t"]


def test_lookups():
    st = make_state()
    assert st.node(2).name == "t-node2"
    assert st.node_by_name("t-node3").index == 3
    assert [f.describe() for f in st.faults_of("t-node2")] == ["block-port 22"]
    assert st.faults_of("t-node3")[0].describe() == "down"


# -- read-only binds (a CUDA toolkit for GPU-less build nodes) -------------------------

def test_binds_round_trip_and_old_state_files_have_none(roots):
    st = make_state()
    st.binds = [["/var/cache/clusterctl/cuda/cuda-13.0-x", "/usr/local/cuda-13.0"]]
    st.save()
    assert load_state("t").binds == st.binds
    data = make_state().to_dict()
    del data["binds"]                        # written before binds existed
    assert LabState.from_dict(data).binds == []


def test_binds_reach_the_nspawn_command_line(roots):
    from clusterctl.lab.node import nspawn_argv
    st = make_state()
    assert not any(a.startswith("--bind") for a in nspawn_argv(st, st.nodes[0]))
    st.binds = [["/srv/cuda", "/usr/local/cuda-13.0"], ["/srv/x", "/opt/x"]]
    argv = nspawn_argv(st, st.nodes[1])
    assert [a for a in argv if a.startswith("--bind")] == [
        "--bind-ro=/srv/cuda:/usr/local/cuda-13.0", "--bind-ro=/srv/x:/opt/x"]


def test_check_binds_normalises_and_refuses_bad_pairs(roots):
    from clusterctl.errors import InputError
    from clusterctl.lab.core import check_binds
    src = roots / "toolkit"
    src.mkdir()
    assert check_binds([(str(src) + "/", "/usr/local/cuda-13.0/")]) == \
        [[str(src), "/usr/local/cuda-13.0"]]
    assert check_binds([]) == []
    bad = {
        "absolute path": [("toolkit", "/x")],
        "without ':'": [(str(src), "/a:b")],
        "node's root": [(str(src), "/")],
        "does not exist": [(str(roots / "missing"), "/x")],
        "bound twice": [(str(src), "/x"), (str(src), "/x/")],
        "pair": [(str(src),)],
    }
    for words, binds in bad.items():
        with pytest.raises(InputError, match=words) as err:
            check_binds(binds)
        assert err.value.key == "binds"
