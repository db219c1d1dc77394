"""Pure network planning: subnets, rates, tc commands, faults, the nft ruleset."""
import ipaddress

import pytest

from clusterctl.errors import ClusterctlError, InputError
from clusterctl.lab import netplan

N = ipaddress.IPv4Network


def test_first_free_subnet_skips_the_first_and_used_ones():
    assert netplan.allocate_subnet([]) == N("198.18.1.0/24")
    used = [N("198.18.1.0/24"), N("198.18.2.77/32")]
    assert netplan.allocate_subnet(used) == N("198.18.3.0/24")


def test_a_default_route_does_not_count_as_overlap():
    assert netplan.allocate_subnet([N("0.0.0.0/0"), N("192.0.2.0/24")]) == N("198.18.1.0/24")


def test_a_wider_host_route_blocks_every_subnet_inside_it():
    with pytest.raises(ClusterctlError, match="no free /24"):
        netplan.allocate_subnet([N("198.16.0.0/12")])


def test_requested_subnet_taken_is_refused():
    with pytest.raises(InputError, match="198.18.5.0/24 is taken: it overlaps 198.18.0.0/16"):
        netplan.allocate_subnet([N("198.18.0.0/16")], "198.18.5.0/24")


@pytest.mark.parametrize("bad", ["10.0.0.0/24", "198.18.5.0/25", "198.18.5.1/24", "nope"])
def test_requested_subnet_must_be_a_lab_24(bad):
    with pytest.raises(InputError):
        netplan.allocate_subnet([], bad)


def test_addresses():
    net = N("198.18.7.0/24")
    assert str(netplan.bridge_address(net)) == "198.18.7.1"
    assert str(netplan.node_address(net, 1)) == "198.18.7.11"
    assert str(netplan.node_address(net, 3)) == "198.18.7.13"


@pytest.mark.parametrize("text,bps", [("1gbit", 10**9), ("250mbit", 250 * 10**6),
                                      ("1.5gbit", 1_500_000_000), ("100Mbit", 10**8),
                                      ("64kbit", 64_000)])
def test_parse_rate(text, bps):
    assert netplan.parse_rate(text) == bps


@pytest.mark.parametrize("text", ["1gb", "fast", "", "1 gigabit", "1kbit"])
def test_bad_rates_are_refused(text):
    with pytest.raises(InputError):
        netplan.parse_rate(text)


def test_format_rate_round_trips():
    for text in ("1gbit", "250mbit", "1.5gbit", "64kbit"):
        assert netplan.format_rate(netplan.parse_rate(text)) == text
    assert netplan.format_rate(None) == "unshaped"


def test_link_classes():
    assert netplan.link_rate("100mbit") == 10**8
    assert netplan.link_rate("1gbit") == 10**9
    assert netplan.link_rate("100gbit") == 100 * 10**9
    assert netplan.link_rate("none") is None
    with pytest.raises(InputError, match="unknown link class"):
        netplan.link_rate("40gbit")


def test_shape_command_is_tbf_with_enough_burst():
    argv = netplan.shape_command("cc-lab-1", 10**9, 9000)
    assert argv[:8] == ["tc", "qdisc", "replace", "dev", "cc-lab-1", "root", "tbf", "rate"]
    assert argv[8] == "1000000000bit"
    burst = int(argv[argv.index("burst") + 1])
    assert burst >= 2 * 9000 and burst >= 128 * 1024
    assert netplan.shape_command("eth0", None, 9000) == ["tc", "qdisc", "del", "dev", "eth0",
                                                         "root"]


def test_burst_grows_with_rate():
    assert netplan.tbf_burst(100 * 10**9, 9000) > netplan.tbf_burst(10**9, 9000)


def test_every_link_class_is_a_lab_up_choice_and_shapes_sanely():
    from clusterctl.cli.lab import LINK_CHOICES
    assert set(LINK_CHOICES) == set(netplan.LINK_CLASSES)
    # 100mbit: the floor of 128 KiB is ~10 ms at the rate, under tbf's 20 ms latency,
    # so a full bucket never forces drops on its own
    burst = netplan.tbf_burst(10**8, 9000)
    assert burst == 128 * 1024
    assert burst * 8 / 10**8 < 0.020
    argv = netplan.shape_command("p", 10**8, 9000)
    assert argv[argv.index("rate") + 1] == "100000000bit"


@pytest.mark.parametrize("kind,arg,norm", [("slow-link", "100mbit", "100mbit"),
                                           ("port-mtu", "1500", "1500"),
                                           ("block-port", " 22", "22"),
                                           ("down", None, None), ("partition", "", None)])
def test_check_fault(kind, arg, norm):
    assert netplan.check_fault(kind, arg) == norm


@pytest.mark.parametrize("kind,arg,msg", [("flaky", None, "unknown fault"),
                                          ("slow-link", None, "needs a RATE"),
                                          ("port-mtu", "big", "not a number"),
                                          ("port-mtu", "70000", "outside"),
                                          ("block-port", "0", "outside"),
                                          ("down", "now", "takes no argument")])
def test_bad_faults_are_refused(kind, arg, msg):
    with pytest.raises(InputError, match=msg):
        netplan.check_fault(kind, arg)


def test_desired_port_baseline_and_faults():
    assert netplan.desired_port(9000, 10**9, []) == netplan.PortConfig(9000, 10**9, True)
    got = netplan.desired_port(9000, 10**9, [("slow-link", "100mbit"), ("port-mtu", "1500"),
                                             ("down", None), ("block-port", "22")])
    assert got == netplan.PortConfig(1500, 10**8, False)


def test_ruleset_without_faults_guards_the_controller():
    text = netplan.render_ruleset("clusterctl_lab_x", "cc-x", "198.18.1.1", 8080,
                                  {"x-node1": "cc-x-1"}, [])
    assert "table inet clusterctl_lab_x {" in text
    assert 'iifname "cc-x" ct state established,related accept' in text
    assert 'iifname "cc-x" ip daddr 198.18.1.1 tcp dport 8080 accept' in text
    assert text.index("tcp dport 8080 accept") < text.index('iifname "cc-x" drop')
    # re-applying replaces the whole table atomically
    assert "table bridge clusterctl_lab_x\ndelete table bridge clusterctl_lab_x\n" in text
    assert "drop comment \"x-node1" not in text


def test_ruleset_without_mirror_accepts_no_port():
    text = netplan.render_ruleset("t", "cc-x", "198.18.1.1", None, {}, [])
    assert "dport" not in text


def test_ruleset_faults():
    ports = {"x-node1": "cc-x-1", "x-node2": "cc-x-2"}
    text = netplan.render_ruleset("t", "cc-x", "198.18.1.1", 8080, ports,
                                  [("x-node2", "partition", None),
                                   ("x-node1", "block-port", "5201")])
    fwd = text[text.index("chain lab_forward"):text.index("chain lab_output")]
    out = text[text.index("chain lab_output"):]
    assert 'iifname "cc-x-2" drop' in fwd and 'oifname "cc-x-2" drop' in fwd
    rule = 'oifname "cc-x-1" meta l4proto { tcp, udp } th dport 5201 drop'
    assert rule in fwd and rule in out
    assert "cc-x-2" not in out       # a partitioned node still reaches the controller


def test_delete_ruleset_is_idempotent_script():
    assert netplan.delete_ruleset("t", ["inet"]) == "table inet t\ndelete table inet t\n"
