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
                                   diagnose_script, jumbo_ping_script, parse_diagnosis,
                                   path_probe_command)


def test_path_probe_is_a_short_command_with_a_long_answer():
    cmd = path_probe_command()
    assert len(cmd) < 100 and str(PATH_PROBE_BYTES) in cmd and PATH_PROBE_BYTES > 2 * 1500


def test_diagnosis_script_fits_one_small_packet_and_quotes_targets():
    script = diagnose_script(["198.18.1.1", "198.18.1.11", "198.18.1.12", "198.18.1.13"])
    assert len(script) < 1000
    assert "-M do -s 1472" in script and "$((m-28))" in script
    assert "'a;b'" in diagnose_script(["a;b"])


def test_parse_diagnosis_reads_interface_mtu_and_paths():
    text = "to 198.18.1.11 1 1 0\ndev eth0 9000\nto 198.18.1.1 1 1 0\nnoise\nto x 1 2 0\n"
    iface, mtu, paths = parse_diagnosis(text)
    assert (iface, mtu) == ("eth0", 9000)
    assert paths == {"198.18.1.11": (True, True, False), "198.18.1.1": (True, True, False)}


def test_black_hole_named_when_small_packets_pass_and_large_do_not():
    paths = {"198.18.1.1": (True, True, False), "198.18.1.11": (True, True, False)}
    msg = black_hole_message("n2", "eth0", 9000, paths, "198.18.1.1")
    assert msg.startswith("jumbo-frame black hole: n2's eth0 is at mtu 9000")
    assert "198.18.1.1 (the controller)" in msg and "1500-byte packets pass" in msg


def test_no_black_hole_when_everything_or_nothing_passes_or_mtu_is_small():
    assert black_hole_message("n", "eth0", 9000, {"a": (True, True, True)}, None) is None
    assert black_hole_message("n", "eth0", 9000, {"a": (False, False, False)}, None) is None
    assert black_hole_message("n", "eth0", 1500, {"a": (True, False, False)}, None) is None
    assert black_hole_message("n", None, None, {}, None) is None


def test_jumbo_ping_script_pings_every_peer_at_once_and_names_the_silent():
    script = jumbo_ping_script(["10.0.0.2", "10.0.0.3"], 9000)
    assert script.count("ping -M do -s 8972") == 2 and script.endswith("wait")
    assert "|| echo 10.0.0.3) &" in script
