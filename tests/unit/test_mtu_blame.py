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
