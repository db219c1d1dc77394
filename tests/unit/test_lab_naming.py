"""Names of what a lab creates: interfaces fit in 15 characters and never collide."""
import pytest

from clusterctl.errors import InputError
from clusterctl.lab import naming


@pytest.mark.parametrize("name", ["lab", "citest", "a", "my-lab-2", "x" * 32])
def test_valid_names(name):
    assert naming.validate_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "Lab", "-lab", "lab-", "la_b", "la b", "x" * 33, "lab.1"])
def test_invalid_names_are_refused(name):
    with pytest.raises(InputError, match="bad lab name"):
        naming.validate_lab_name(name)


def test_short_names_are_kept():
    assert naming.bridge_name("citest") == "cc-citest"
    assert naming.port_name("citest", 3) == "cc-citest-3"
    assert naming.node_name("lab", 1) == "lab-node1"


@pytest.mark.parametrize("name", ["a", "abcdefgh", "abcdefghi", "x" * 32, "a-b-c-d-e-f-g-h"])
def test_interface_names_fit_ifnamsiz(name):
    assert len(naming.bridge_name(name)) <= 15
    assert len(naming.port_name(name, naming.MAX_NODES)) <= 15


def test_long_names_sharing_a_prefix_get_different_interfaces():
    a, b = "production-rehearsal", "production-rehearsal-2"
    assert naming.bridge_name(a) != naming.bridge_name(b)
    assert naming.port_name(a, 1) != naming.port_name(b, 1)
    assert naming.lab_tag(a) == naming.lab_tag(a)          # stable


def test_port_index_out_of_range():
    with pytest.raises(InputError):
        naming.port_name("lab", 0)
    with pytest.raises(InputError):
        naming.port_name("lab", naming.MAX_NODES + 1)


def test_nft_table_is_an_identifier():
    assert naming.nft_table("my-lab") == "clusterctl_lab_my_lab"


@pytest.mark.parametrize("typed,index", [("2", 2), ("node2", 2), ("lab-node2", 2),
                                         ("node3", 3)])
def test_node_index_accepts_what_users_type(typed, index):
    assert naming.node_index("lab", typed, 3) == index


@pytest.mark.parametrize("typed", ["node4", "0", "other-node1", "nodeX", ""])
def test_unknown_node_is_refused_with_the_known_ones(typed):
    with pytest.raises(InputError, match="lab-node1, lab-node2, lab-node3"):
        naming.node_index("lab", typed, 3)
