"""A single replica redeployed beside the old one (issue 15, item 3): the other slot's
unit names and ports, whether the new version may start next to the old one (same
endpoint, no port or unit shared, a second copy fits in the free memory), and what
happens when it never becomes ready (removed, the old one keeps serving)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from clusterctl.deploy import launch
from clusterctl.deploy.commands import FreeMemory, parse_free_memory, unit_name
from clusterctl.deploy.launch import (BesideFailed, DeployFailed, DeployOptions,
                                      choose_beside, deploy_beside)
from clusterctl.deploy.layout import (SLOT_PORT_OFFSET, Access, HostInfo, beside_fit,
                                      beside_obstacle, beside_probe_hosts, layout_llamacpp,
                                      layout_vllm, other_slot, parse_record, public_address,
                                      record_json)
from clusterctl.deploy.planner import (NodeGPUs, llamacpp_second_copy,
                                       plan_model, vllm_second_copy)

from standins import model_info

H100 = 81559


def gguf(name, params, layers, heads, kv, hidden, vocab, max_pos, dtype="f16"):
    return model_info(name, params, layers, heads, kv, hidden, vocab, max_pos, fmt="gguf",
                      dtype=dtype)


TINY = gguf("tiny", 400_000, 4, 4, 4, 64, 258, 1024)
LLAMA_8B = gguf("Llama-3.1-8B", 8_030_261_248, 32, 32, 8, 4096, 128256, 131072)


def hosts(n, gpus=0, mem=None):
    return [HostInfo(f"n{i + 1}", f"10.0.0.{i + 1}", is_head=(i == 0), gpus=gpus,
                     gpu_memory_mib=mem, ram_mib=24000) for i in range(n)]


def llama(slot="", access=None, port=8000, rpc_port=50052, hs=None):
    return layout_llamacpp("tiny", "tiny.gguf", "/m/tiny.gguf", "tiny", hs or hosts(3),
                           port=port, rpc_port=rpc_port, ctx_size=1024, access=access,
                           slot=slot)


def free(ram_mib, gpus=(), total=H100, nginx="installed"):
    return FreeMemory(ram_available_mib=ram_mib, gpu_free_mib=list(gpus),
                      gpu_total_mib=[total] * len(gpus), nginx=nginx)


# --------------------------------------------------------------------------- slots


def test_slots_alternate_and_name_their_units():
    assert other_slot("") == "b" and other_slot("b") == ""
    assert unit_name("tiny", "llama-server", "b") == "clusterctl-tiny-llama-server-b.service"
    assert unit_name("tiny", "llama-server", "") == "clusterctl-tiny-llama-server.service"
    with pytest.raises(ValueError):
        unit_name("tiny", "rpc", "b;rm")


def test_slot_b_has_its_own_units_ports_and_key_file_behind_the_gateway():
    a = llama(access=Access(["k"]))
    b = llama("b", access=Access(["k"]))
    assert a.slot == "" and b.slot == "b"
    assert [u.name for u in b.units] == [
        "clusterctl-tiny-rpc-b.service", "clusterctl-tiny-rpc-b.service",
        "clusterctl-tiny-llama-server-b.service", "clusterctl-tiny-rpc-watch-b.service"]
    # the gateway keeps the endpoint; the groups of the two slots differ by one port
    assert public_address(a) == public_address(b) == "10.0.0.1:8000"
    assert a.groups[0].port == 8001 and b.groups[0].port == 8002
    assert [u.bind for u in b.units if u.kind == "rpc"] == [
        f"10.0.0.2:{50052 + SLOT_PORT_OFFSET}", f"10.0.0.3:{50052 + SLOT_PORT_OFFSET}"]
    [server] = [u for u in b.units if u.kind == "llama-server"]
    assert server.argv[server.argv.index("--rpc") + 1] == "10.0.0.2:50152,10.0.0.3:50152"
    assert server.key_file == "/etc/clusterctl/keys/tiny-b.keys"
    assert [u.key_file for u in a.units if u.kind == "llama-server"] == [
        "/etc/clusterctl/keys/tiny.keys"]
    watch = b.units[-1]
    assert watch.argv[watch.argv.index("--unit") + 1] == server.name
    assert watch.argv[watch.argv.index("--state") + 1].endswith("rpc-watch-b.json")
    assert b.lb.servers == ["10.0.0.1:8002"]
    # the same gateway file and site: one door, whichever slot serves
    assert a.lb.config_path == b.lb.config_path and a.lb.auth_path == b.lb.auth_path


def test_slot_b_always_has_a_gateway_and_only_for_one_replica():
    b = llama("b")                                   # no key: a gateway all the same
    assert b.lb is not None and b.endpoint == "http://10.0.0.1:8000/v1"
    with pytest.raises(ValueError):
        layout_llamacpp("tiny", "t", "/m", "tiny", hosts(3), port=8000, rpc_port=50052,
                        replicas=2, slot="b")
    kept = llama(access=Access(keep_gateway=True))   # a single replica keeps its gateway
    assert kept.lb is not None and kept.groups[0].port == 8001


def test_record_keeps_the_slot_and_old_records_read_as_slot_a():
    b = llama("b")
    assert parse_record(record_json(b)).slot == "b"
    data = b.to_record()
    del data["slot"]
    from clusterctl.deploy.layout import Deployment
    assert Deployment.from_record(data).slot == ""


def test_vllm_copy_on_chosen_gpus_in_slot_b():
    hs = hosts(1, gpus=4, mem=H100)
    plan = plan_model(LLAMA_8B, [NodeGPUs("n1", 4, H100)])
    assert plan.tensor_parallel_size == 1
    b = layout_vllm("llama", "m", "/m", "llama", plan, hs, port=8000, slot="b", gpu_ids=[2])
    [u] = b.units
    assert u.name == "clusterctl-llama-vllm-b.service" and u.env["CUDA_VISIBLE_DEVICES"] == "2"
    assert u.bind == "10.0.0.1:8002" and b.lb.port == 8000
    with pytest.raises(ValueError):
        layout_vllm("llama", "m", "/m", "llama", plan, hs, port=8000, gpu_ids=[7])


# --------------------------------------------------------------------------- may it start


def test_a_new_version_beside_the_old_one_is_allowed_when_nothing_is_shared():
    old = llama(access=Access(["k"]))
    new = llama("b", access=Access(["k"]))
    assert beside_obstacle(old, new) is None
    assert beside_probe_hosts(new) == ["n1", "n2", "n3"]
    # a deployment without a gateway: the new version's gateway takes its address
    assert beside_obstacle(llama(), llama("b")) is None


def test_what_keeps_the_new_version_from_starting_beside():
    old = llama(access=Access(["k"]))
    assert "endpoint moves" in beside_obstacle(old, llama("b", port=9000))
    # RPC servers of the new version on the old one's port (another --rpc-port)
    clash = llama("b", rpc_port=50052 - SLOT_PORT_OFFSET)
    assert "in use by the running clusterctl-tiny-rpc.service" in beside_obstacle(old, clash)
    assert "no slot of its own" in beside_obstacle(old, llama(access=Access(["k"])))
    two = layout_llamacpp("tiny", "t", "/m", "tiny", hosts(3), port=8000, rpc_port=50052,
                          replicas=2)
    assert "more than one replica" in beside_obstacle(two, llama("b"))


def test_vllm_over_several_nodes_is_not_started_beside():
    hs = hosts(2, gpus=1, mem=12000)
    plan = plan_model(LLAMA_8B, [NodeGPUs(h.name, 1, 12000) for h in hs],
                      max_model_len=4096)
    assert len(plan.nodes) == 2
    old = layout_vllm("l", "m", "/m", "l", plan, hs, port=8000, executor="mp")
    new = layout_vllm("l", "m", "/m", "l", plan, hs, port=8000, executor="mp", slot="b")
    assert "spans several nodes" in beside_obstacle(old, new)
    ray = layout_vllm("l", "m", "/m", "l", plan, hs, port=8000, slot="b")
    assert "Ray" in beside_obstacle(old, ray)


# --------------------------------------------------------------------------- does it fit


def test_free_memory_probe_is_parsed():
    f = parse_free_memory("mem 4194304\ngpu 1, 100, 81559\ngpu 0, 80000, 81559\n"
                          "nginx candidate\nnoise\ngpu x, y\n")
    assert f.ram_available_mib == 4096
    assert f.gpu_free_mib == [80000, 100] and f.gpu_total_mib == [81559, 81559]
    assert f.nginx == "candidate"
    assert parse_free_memory("").ram_available_mib is None


def test_llamacpp_second_copy_fits_or_not_on_every_host_that_takes_layers():
    roomy = {h: free(16000) for h in ("n1", "n2", "n3")}
    assert llamacpp_second_copy(TINY, ["n1", "n2", "n3"], roomy, max_model_len=1024).fits
    # 8B f16 (~16 GB) over two RPC workers with 6 GB free each: no room for a copy
    tight = {"n1": free(30000), "n2": free(6000), "n3": free(6000)}
    got = llamacpp_second_copy(LLAMA_8B, ["n1", "n2", "n3"], tight, max_model_len=4096)
    assert not got.fits and "n2/RAM (RPC) needs" in got.why and "n3/RAM (RPC)" in got.why
    # the same with 20 GB free on each worker fits
    ok = {"n1": free(30000), "n2": free(20000), "n3": free(20000)}
    assert llamacpp_second_copy(LLAMA_8B, ["n1", "n2", "n3"], ok, max_model_len=4096).fits
    # GPU workers: their free GPU memory counts, not the RAM
    gpus = {"n1": free(64000), "n2": free(64000, gpus=[3000]), "n3": free(64000, gpus=[3000])}
    assert not llamacpp_second_copy(LLAMA_8B, ["n1", "n2", "n3"], gpus,
                                    max_model_len=4096).fits
    unknown = {"n1": free(16000), "n2": FreeMemory()}
    got = llamacpp_second_copy(TINY, ["n1", "n2"], unknown)
    assert not got.fits and got.why == "n2: free memory unknown"


def test_vllm_second_copy_needs_gpus_with_their_share_free():
    plan = plan_model(LLAMA_8B, [NodeGPUs("n1", 4, H100)])
    busy = {"n1": free(64000, gpus=[8000, 8000, 80000, 80000])}    # the old copy on 0, 1
    got = vllm_second_copy(plan, "n1", busy)
    assert got.fits and got.gpu_ids == [2]
    full = {"n1": free(64000, gpus=[8000, 8000, 8000, 60000])}      # 60000 < 0.9 x 81559
    got = vllm_second_copy(plan, "n1", full)
    assert not got.fits and "1 GPU(s) with 90% of their memory free" in got.why
    cpu = plan_model(TINY, [NodeGPUs("n1", 0, 0, ram_mib=24000)])
    assert vllm_second_copy(cpu, "n1", {"n1": free(12000)}, cpu_kvcache_gib=4).fits
    got = vllm_second_copy(cpu, "n1", {"n1": free(3000)}, cpu_kvcache_gib=4)
    assert not got.fits and "does not fit in the free memory" in got.why


def test_beside_fit_uses_the_group_hosts_in_order():
    b = llama("b")
    roomy = {h: free(16000) for h in ("n1", "n2", "n3")}
    plan = plan_model(TINY, [NodeGPUs(h, 0, 0, ram_mib=24000) for h in ("n1", "n2", "n3")])
    assert beside_fit(b, roomy, info=TINY, plan=plan).fits
    del roomy["n3"]
    assert beside_fit(b, roomy, info=TINY, plan=plan).why == "n3: free memory unknown"


# --------------------------------------------------------------------------- choose


def _chooser(old, free_by_host, *, info=TINY, same=False):
    plan = plan_model(info, [NodeGPUs(h, 0, 0, ram_mib=24000) for h in ("n1", "n2", "n3")])
    probed = []

    def make(slot, gpu_ids=None):
        return llama(old.slot if same else slot, access=Access(["k"], keep_gateway=True))

    def probe(hs):
        probed.append(list(hs))
        return {h: free_by_host[h] for h in hs if h in free_by_host}
    got = choose_beside(old, make, probe, info=info, plan=plan, opts=DeployOptions())
    return got, probed


def test_choose_beside_when_it_fits():
    old = llama(access=Access(["k"]))
    (new, why), probed = _chooser(old, {h: free(16000) for h in ("n1", "n2", "n3")})
    assert new is not None and new.slot == "b" and "fits" in why
    assert probed == [["n1", "n2", "n3"]]


def test_choose_beside_falls_back_when_memory_or_nginx_is_missing():
    old = llama(access=Access(["k"]))
    (new, why), _ = _chooser(old, {"n1": free(16000), "n2": free(16000), "n3": free(100)},
                             info=LLAMA_8B)
    assert new is None and "does not fit" in why and "n2/RAM (RPC) needs" in why
    (new, why), _ = _chooser(llama(), {h: free(16000, nginx="none")
                                       for h in ("n1", "n2", "n3")})
    assert new is None and "nginx is not installed on n1" in why
    # a layout in the running version's own slot is never started beside it (no probe)
    (new, why), probed = _chooser(llama("b", access=Access(["k"])),
                                  {h: free(16000) for h in ("n1", "n2", "n3")}, same=True)
    assert new is None and "no slot of its own" in why and probed == []


def test_from_slot_b_the_next_version_goes_back_to_the_first_slot():
    (new, why), _ = _chooser(llama("b", access=Access(["k"])),
                             {h: free(16000) for h in ("n1", "n2", "n3")})
    assert new is not None and new.slot == "" and new.groups[0].port == 8001, why
    assert [u.name for u in new.units if u.kind == "llama-server"] == [
        "clusterctl-tiny-llama-server.service"]


# --------------------------------------------------------------------------- never ready


class Conn:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, cmd, check=True, **kw):
        self.log.append((self.name, cmd))
        from clusterctl.remote import RunResult
        return RunResult("x", 0, "", "")

    def put(self, data, path, mode=0o644, **kw):
        self.log.append((self.name, ("put", path)))


def test_a_new_version_that_never_answers_is_removed_and_the_old_one_serves(monkeypatch):
    old = llama(access=Access(["k"]))
    new = llama("b", access=Access(["k"]))
    calls, records, stopped, installed = [], [], [], []
    conns = {h: Conn(h, calls) for h in ("n1", "n2", "n3")}

    def fake_run_units(inventory, dep, opts, reporter=None, session=None):
        installed.append([u.name for u in dep.units])
        return type("R", (), {"failed_hosts": [], "changed": len(dep.units), "recap": {}})()

    def never_ready(dep, conns, **kw):
        raise DeployFailed("tiny: not ready after 5s (journal of clusterctl-tiny-llama-server"
                           "-b.service on n1: error: bad flag)")

    monkeypatch.setattr(launch, "run_units", fake_run_units)
    monkeypatch.setattr(launch, "wait_ready", never_ready)
    monkeypatch.setattr(launch, "install_secret_files", lambda *a, **k: {})
    monkeypatch.setattr(launch, "write_record", lambda conn, dep: records.append(dep))
    monkeypatch.setattr(launch, "_stop_units", lambda units, conns: stopped.append(
        sorted({u.name for u in units})))
    with pytest.raises(BesideFailed) as exc:
        deploy_beside(None, old, new, conns, DeployOptions(timeout=5), [], None,
                      lambda s: None)
    text = str(exc.value)
    assert "did not become ready beside the old one" in text
    assert "old one keeps serving http://10.0.0.1:8000/v1" in text and "bad flag" in text
    assert isinstance(exc.value, DeployFailed)          # exit 1 like every deploy failure
    # while both ran, the record named both; at the end it names the old one only
    assert {u.name for u in records[0].units} == {u.name for u in old.units + new.units}
    assert records[-1] is old
    assert installed == [[u.name for u in new.units]]   # only the new units were installed
    assert stopped == [sorted({u.name for u in new.units})]   # and only they were stopped
    removed = [c for _h, c in calls if isinstance(c, list) and c[:2] == ["rm", "-f"]]
    assert removed == [["rm", "-f", "/etc/clusterctl/keys/tiny-b.keys"]]
    assert not any("nginx" in str(c) for _h, c in calls)      # the gateway was not touched


def test_a_new_version_that_answers_takes_over_and_the_old_one_stops(monkeypatch):
    old = llama(access=Access(["k"]))
    new = llama("b", access=Access(["k"]))
    calls, records, stopped, installed, ready = [], [], [], [], []
    conns = {h: Conn(h, calls) for h in ("n1", "n2", "n3")}

    def fake_run_units(inventory, dep, opts, reporter=None, session=None):
        installed.append(([u.name for u in dep.units], dep.lb is not None))
        return type("R", (), {"failed_hosts": [], "changed": 1, "recap": {}})()

    def fake_ready(dep, conns, **kw):
        ready.append((dep.lb is not None, [g.endpoint for g in dep.groups]))
        return 1.0, "hello"

    monkeypatch.setattr(launch, "run_units", fake_run_units)
    monkeypatch.setattr(launch, "wait_ready", fake_ready)
    monkeypatch.setattr(launch, "install_secret_files", lambda *a, **k: {})
    monkeypatch.setattr(launch, "write_record", lambda conn, dep: records.append(
        replace(dep)))
    monkeypatch.setattr(launch, "_stop_units", lambda units, conns: stopped.append(
        sorted({u.name for u in units})))
    monkeypatch.setattr(launch, "drain_after_switch", lambda *a, **k: None)
    monkeypatch.setattr(launch, "register_metrics", lambda *a, **k: None)
    result = deploy_beside(None, old, new, conns, DeployOptions(), [], None, lambda s: None)
    # new units alone (no gateway), proved directly; then the gateway alone; then all
    assert installed == [([u.name for u in new.units], False), ([], True)]
    assert ready == [(False, ["http://10.0.0.1:8002/v1"]),
                     (True, ["http://10.0.0.1:8002/v1"])]
    assert stopped == [sorted({u.name for u in old.units})]
    assert records[-1].slot == "b" and result.deployment is new and result.reply == "hello"
    removed = [c for _h, c in calls if isinstance(c, list) and c[:2] == ["rm", "-f"]]
    assert removed == [["rm", "-f", "/etc/clusterctl/keys/tiny.keys"]]
