"""sync planning: chain order, what the stream carries, seeds, disk space (pure)."""
from clusterctl.sync.manifest import Manifest, NodeNeed, RemoteFile, diff
from clusterctl.sync.plan import (CONTROLLER, chain_order, choose_seed, human_bytes,
                                  node_stream_bytes, plan_chain, relay_want, space_message,
                                  space_problem, stream_files)

ORDER = ["head", "w1", "w2", "w3"]


def _manifest():
    return Manifest.from_scan({"kind": "dir", "files": [
        {"path": "a.bin", "size": 100, "mtime_ns": 1, "sha256": "a" * 64},
        {"path": "b.bin", "size": 50, "mtime_ns": 1, "sha256": "b" * 64},
        {"path": "c.json", "size": 5, "mtime_ns": 1, "sha256": "c" * 64},
    ]}, "m")


def _all(m):
    return {p: RemoteFile(e.size, e.mtime_ns) for p, e in m.files.items()}


def test_chain_follows_inventory_order_and_skips_complete_nodes():
    m = _manifest()
    needs = {"w2": diff(m, {}), "head": diff(m, {}), "w1": diff(m, _all(m)), "w3": diff(m, {})}
    chain = plan_chain(m, needs, ORDER)
    assert chain.feeder == CONTROLLER
    assert chain.nodes == ["head", "w2", "w3"]               # w1 has everything
    assert chain.describe() == "controller -> head -> w2 -> w3"
    assert chain.upstream_of("head") == CONTROLLER and chain.upstream_of("w3") == "w2"
    assert chain.stream_bytes == 155


def test_nothing_to_do_gives_no_chain():
    m = _manifest()
    assert plan_chain(m, {"head": diff(m, _all(m))}, ORDER) is None


def test_source_node_that_also_receives_goes_first():
    m = _manifest()
    needs = {n: diff(m, {}) for n in ("head", "w1", "w2")}
    chain = plan_chain(m, needs, ORDER, feeder="w2", first="w2")
    assert chain.nodes == ["w2", "head", "w1"] and chain.feeder == "w2"


def test_stream_carries_the_union_from_the_smallest_resume_point():
    m = _manifest()
    have = _all(m)
    key_a = m.files["a.bin"].partial_key
    needs = {
        "head": diff(m, {k: v for k, v in have.items() if k != "a.bin"}, {key_a: 60}),
        "w1": diff(m, {k: v for k, v in have.items() if k != "a.bin"}, {key_a: 40}),
        "w2": diff(m, {k: v for k, v in have.items() if k != "c.json"}),
    }
    files = stream_files(m, needs, ["head", "w1", "w2"])
    assert [(f.path, f.offset) for f in files] == [("a.bin", 40), ("c.json", 0)]
    chain = plan_chain(m, needs, ORDER)
    assert chain.stream_bytes == 60 + 5
    # each receiver writes what the stream carries of its own files
    assert node_stream_bytes(chain, needs["head"]) == 60
    assert node_stream_bytes(chain, needs["w2"]) == 5


def test_relay_want_names_partial_files():
    m = _manifest()
    need = diff(m, {})
    want = relay_want(m, need)
    assert set(want) == {"a.bin", "b.bin", "c.json"}
    assert want["a.bin"]["key"] == m.files["a.bin"].partial_key


def test_seed_is_the_first_complete_candidate():
    needs = {"head": NodeNeed(send={"a": 0}), "w1": NodeNeed(), "w2": NodeNeed()}
    assert choose_seed(needs, ["head", "w2", "w1"]) == "w2"
    assert choose_seed({"head": NodeNeed(send={"a": 0})}, ["head"]) is None
    assert choose_seed({}, ["head"]) is None


def test_chain_order_unknown_names_last():
    assert chain_order(["x", "w1", "head"], ORDER) == ["head", "w1", "x"]


def test_space():
    assert space_problem(101, 100)
    assert not space_problem(100, 100)
    assert not space_problem(10**12, None)                    # unknown: the relay will tell
    msg = space_message("w2", "/opt/models", 2_500_000_000, 20_971_520)
    assert "w2" in msg and "/opt/models" in msg
    assert "2.5 GB" in msg and "21.0 MB" in msg and "2500000000 bytes" in msg


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(2_147_483_648) == "2.1 GB"
    assert human_bytes(None) == "?"
