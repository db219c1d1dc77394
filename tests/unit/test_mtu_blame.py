"""Who to roll back after a failed jumbo-frame check."""
from clusterctl.engine.mtu import arm_rollback_script, blame, jumbo_ping_argv


def test_one_bad_port_blames_only_that_host():
    pairs = {("n2", "n1"), ("n2", "n3"), ("n2", "n4"), ("n1", "n2"), ("n3", "n2")}
    assert blame(pairs) == {"n2"}


def test_two_nodes_failing_blames_both():
    assert blame({("a", "b")}) == {"a", "b"}


def test_two_bad_hosts_among_many():
    bad = {"n1", "n4"}
    hosts = ["n1", "n2", "n3", "n4", "n5"]
    pairs = {(a, b) for a in hosts for b in hosts if a != b and (a in bad or b in bad)}
    assert blame(pairs) == bad


def test_no_failures_blames_nobody():
    assert blame(set()) == set()


def test_ping_is_dont_fragment_at_mtu_minus_28():
    argv = jumbo_ping_argv("198.18.0.12", 9000)
    assert argv[:5] == ["ping", "-M", "do", "-s", "8972"]
    assert argv[-1] == "198.18.0.12"


def test_rollback_timer_quotes_interface():
    script = arm_rollback_script("eth1; rm -rf /", 1500, 60)
    assert "'ip link set dev '\"'\"'eth1; rm -rf /'\"'\"' mtu 1500'" in script
    assert "--on-active=60" in script


# -- a black hole under a node already at the target MTU (issue 16) ----------------------

from clusterctl.engine.mtu import (PATH_PROBE_BYTES, black_hole_message,  # noqa: E402
                                   controller_path, jumbo_ping_script, parse_path_check,
                                   path_check_script, path_probe_command)


def test_path_probe_is_large_both_ways():
    cmd = path_probe_command()
    assert len(cmd) > PATH_PROBE_BYTES > 2 * 1500 and f"head -c {PATH_PROBE_BYTES}" in cmd


def test_path_check_script_is_small_quotes_and_caps_the_size_at_the_controller_mtu():
    script = path_check_script("198.18.1.1", 9000)
    assert len(script) < 700
    assert "-M do -s $((s-28))" in script and "-M do -s 1472" in script
    assert '[ "$s" -gt 9000 ] && s=9000' in script
    assert "c='a;b'" in path_check_script("a;b", 9000)


def test_parse_path_check_reads_interface_mtu_size_and_paths():
    text = "noise\ndev eth0 9000 9000\nto 198.18.1.1 1 1 0\nto x 1 2 0\n"
    assert parse_path_check(text) == ("eth0", 9000, 9000, {"198.18.1.1": (True, True, False)})
    assert parse_path_check("dev eth0 1500 1500\n") == ("eth0", 1500, 1500, {})


def test_black_hole_named_when_small_packets_pass_and_large_do_not():
    paths = {"198.18.1.1": (True, True, False)}
    msg = black_hole_message("n2", "eth0", 9000, 9000, paths, "198.18.1.1")
    assert msg.startswith("jumbo-frame black hole: n2's eth0 is at mtu 9000")
    assert "198.18.1.1 (the controller)" in msg and "1500-byte packets pass" in msg


def test_no_black_hole_when_everything_or_nothing_passes_or_packets_are_small():
    assert black_hole_message("n", "eth0", 9000, 9000, {"a": (True, True, True)}, None) is None
    assert black_hole_message("n", "eth0", 9000, 9000, {"a": (False, False, False)},
                              None) is None      # no ping at all: not this check's call
    assert black_hole_message("n", "eth0", 9000, 1500, {"a": (True, True, False)},
                              None) is None      # the controller is at 1500: MSS fits
    assert black_hole_message("n", None, None, None, {}, None) is None


def test_controller_path_of_loopback_is_none():
    assert controller_path("127.0.0.1") is None


def test_jumbo_ping_script_pings_every_peer_at_once_and_names_the_silent():
    script = jumbo_ping_script(["10.0.0.2", "10.0.0.3"], 9000)
    assert script.count("ping -M do -s 8972") == 2 and script.endswith("wait")
    assert "|| echo 10.0.0.3) &" in script
