"""deploy.layout: which unit runs where with which command, for llama.cpp RPC and vLLM
(Ray across GPU nodes, mp across nodes, GPU subsets for replicas, CPU), load balancer,
records, port conflicts. These cover the GPU/Ray paths the CPU-only lab cannot run."""
from __future__ import annotations

import pytest

from clusterctl.deploy.layout import (Deployment, HostInfo, choose_executor, layout_llamacpp,
                                      layout_vllm, parse_record, port_conflicts, record_json)
from clusterctl.deploy.planner import NodeGPUs, plan_model
from clusterctl.errors import InputError

from standins import model_info

H100 = 81559


def model(name, params, layers, heads, kv, hidden, vocab, max_pos, dtype="bfloat16"):
    return model_info(name, params, layers, heads, kv, hidden, vocab, max_pos, dtype=dtype)


LLAMA_8B = model("Llama-3.1-8B", 8_030_261_248, 32, 32, 8, 4096, 128256, 131072)
LLAMA_70B = model("Llama-3.1-70B", 70_553_706_496, 80, 64, 8, 8192, 128256, 131072)
LLAMA_405B = model("Llama-3.1-405B", 405_853_388_800, 126, 128, 8, 16384, 128256, 131072)
TINY = model("tiny", 400_000, 2, 4, 4, 128, 258, 1024)


def hosts(n, gpus=0, mem=None, ram=24000):
    return [HostInfo(f"n{i + 1}", f"10.0.0.{i + 1}", is_head=(i == 0), gpus=gpus,
                     gpu_memory_mib=mem, ram_mib=ram) for i in range(n)]


def gpu_plan(info, hs, **kw):
    return plan_model(info, [NodeGPUs(h.name, h.gpus, h.gpu_memory_mib or 0) for h in hs], **kw)


def cpu_plan(info, hs, **kw):
    return plan_model(info, [NodeGPUs(h.name, 0, 0, ram_mib=h.ram_mib) for h in hs], **kw)


# --------------------------------------------------------------------------- llama.cpp

def test_llamacpp_rpc_on_workers_server_on_head():
    dep = layout_llamacpp("tiny", "tiny.gguf", "/opt/models/tiny.gguf", "tiny", hosts(3),
                          port=8000, rpc_port=50052, ctx_size=2048)
    assert [(u.host, u.kind, u.phase) for u in dep.units] == [
        ("n2", "rpc", 0), ("n3", "rpc", 0), ("n1", "llama-server", 1), ("n1", "rpc-watch", 2)]
    rpc2, rpc3, server, watch = dep.units
    assert rpc2.argv == ["/opt/clusterctl/llama.cpp/bin/rpc-server", "--host", "10.0.0.2",
                         "--port", "50052", "--cache"]
    assert rpc2.env == {"LLAMA_CACHE": "/var/cache/clusterctl/llama.cpp"}
    assert rpc2.cache_dir == "/var/cache/clusterctl/llama.cpp"
    assert server.argv[server.argv.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    assert server.argv[server.argv.index("--host") + 1] == "10.0.0.1"
    assert server.argv[server.argv.index("--model") + 1] == "/opt/models/tiny.gguf"
    assert "--n-gpu-layers" in server.argv
    assert dep.endpoint == "http://10.0.0.1:8000/v1"
    assert dep.lb is None and len(dep.groups) == 1
    assert dep.groups[0].units == [rpc2.name, rpc3.name, server.name, watch.name]
    # the watchdog beside the server: which unit to stop, which workers to watch
    assert watch.argv[:2] == ["/usr/bin/python3", "/usr/local/lib/clusterctl/rpcwatch.py"]
    assert watch.argv[watch.argv.index("--unit") + 1] == server.name
    workers = [watch.argv[i + 1] for i, a in enumerate(watch.argv) if a == "--worker"]
    assert workers == ["n2=10.0.0.2:50052", "n3=10.0.0.3:50052"]
    assert watch.argv[watch.argv.index("--state") + 1] == \
        "/run/clusterctl/deployments/clusterctl-tiny-rpc-watch.json"
    assert watch.bind == "" and watch.after == [server.name]
    assert dep.hosts == ["n2", "n3", "n1"]
    assert dep.warnings == []


def test_llamacpp_server_unit_changes_when_an_rpc_server_does():
    a = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052)
    b = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052,
                        rpc_cache=False)
    assert a.units[2].argv == b.units[2].argv
    assert a.units[2].depends != b.units[2].depends        # so the server restarts too


def test_llamacpp_rpc_on_head_and_tensor_split():
    dep = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052,
                          rpc_on_head=True, tensor_split=[1, 2, 2])
    server = next(u for u in dep.units if u.kind == "llama-server")
    assert server.argv[server.argv.index("--rpc") + 1].split(",") == [
        "10.0.0.2:50052", "10.0.0.3:50052", "10.0.0.1:50052"]
    assert server.after == ["clusterctl-t-rpc.service"]
    with pytest.raises(InputError, match="tensor-split"):
        layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052,
                        tensor_split=[1, 1, 1])


def test_llamacpp_replicas_behind_nginx():
    dep = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052,
                          replicas=3)
    assert [u.kind for u in dep.units] == ["llama-server"] * 3
    assert [g.endpoint for g in dep.groups] == ["http://10.0.0.1:8001/v1",
                                                "http://10.0.0.2:8002/v1",
                                                "http://10.0.0.3:8003/v1"]
    assert dep.units[0].name == "clusterctl-t-llama-server-0.service"
    assert dep.lb.host == "n1" and dep.endpoint == "http://10.0.0.1:8000/v1"
    assert "least_conn" in dep.lb.config and "listen 10.0.0.1:8000;" in dep.lb.config
    assert dep.lb.config_path == "/etc/nginx/conf.d/clusterctl-t.conf"
    two = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(5), port=8000, rpc_port=50052,
                          replicas=2, lb_host="n5")
    assert [g.hosts for g in two.groups] == [["n1", "n2", "n3"], ["n4", "n5"]]
    assert two.lb.host == "n5" and two.lb.ip == "10.0.0.5"
    with pytest.raises(InputError, match="replicas"):
        layout_llamacpp("t", "m", "/m.gguf", "t", hosts(2), port=8000, rpc_port=1, replicas=3)


def test_missing_cluster_ip_is_an_input_error():
    hs = hosts(2)
    hs[1].cluster_ip = ""
    with pytest.raises(InputError, match="n2"):
        layout_llamacpp("t", "m", "/m.gguf", "t", hs, port=8000, rpc_port=1)


def test_public_cluster_network_is_warned_in_the_layout():
    hs = [HostInfo("a", "81.2.3.4", True), HostInfo("b", "81.2.3.5")]
    dep = layout_llamacpp("t", "m", "/m.gguf", "t", hs, port=8000, rpc_port=1)
    assert dep.warnings and dep.warnings[0].startswith("WARNING")


# --------------------------------------------------------------------------- vLLM

def test_vllm_ray_over_two_gpu_nodes():
    hs = hosts(2, gpus=8, mem=H100)
    plan = gpu_plan(LLAMA_405B, hs)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    dep = layout_vllm("llama", "meta/Llama-405B", "/opt/models/Llama-405B", "llama", plan, hs,
                      port=8000, ray_port=6379)
    assert dep.executor == "ray"
    [unit] = dep.units
    assert unit.host == "n1" and unit.kind == "vllm"
    argv = unit.argv
    assert argv[:3] == ["/opt/clusterctl/venv/bin/vllm", "serve", "/opt/models/Llama-405B"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.90"
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--host") + 1] == "10.0.0.1"
    assert unit.env["RAY_ADDRESS"] == "10.0.0.1:6379"
    assert unit.env["VLLM_HOST_IP"] == "10.0.0.1"
    assert unit.env_files == ["/etc/clusterctl/nccl.env"]
    assert unit.after == ["ray-head.service"]
    assert "CUDA_VISIBLE_DEVICES" not in unit.env
    assert dep.plan["nodes"] == ["n1", "n2"]


def test_vllm_mp_across_gpu_nodes_has_headless_ranks():
    hs = hosts(2, gpus=8, mem=H100)
    plan = gpu_plan(LLAMA_405B, hs)
    dep = layout_vllm("llama", "m", "/opt/models/m", "llama", plan, hs, port=8000,
                      executor="mp")
    server, rank1 = sorted(dep.units, key=lambda u: -u.phase)
    assert server.kind == "vllm" and rank1.kind == "vllm-headless"
    assert rank1.phase == 0 and rank1.argv[-1] == "--headless"
    assert rank1.argv[rank1.argv.index("--master-addr") + 1] == "10.0.0.1"
    assert rank1.argv[rank1.argv.index("--node-rank") + 1] == "1"
    assert rank1.name == "clusterctl-llama-vllm-rank.service"
    assert "RAY_ADDRESS" not in server.env
    assert dep.groups[0].units == [rank1.name, server.name]


def test_vllm_gpu_subsets_for_replicas():
    hs = hosts(2, gpus=8, mem=H100)
    plan = gpu_plan(LLAMA_70B, hs)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 1)
    dep = layout_vllm("l70", "m", "/opt/models/m", "l70", plan, hs, port=8000, replicas=5)
    gpus = [(u.host, u.env["CUDA_VISIBLE_DEVICES"]) for u in dep.units]
    assert gpus == [("n1", "0,1"), ("n1", "2,3"), ("n1", "4,5"), ("n1", "6,7"), ("n2", "0,1")]
    assert dep.executor == "mp"
    assert [g.port for g in dep.groups] == [8001, 8002, 8003, 8004, 8005]
    assert len({u.name for u in dep.units}) == 5
    assert dep.lb.servers[0] == "10.0.0.1:8001" and dep.lb.port == 8000
    with pytest.raises(InputError, match="replicas"):
        layout_vllm("l70", "m", "/m", "l70", plan, hs, port=8000, replicas=9)


def test_vllm_single_gpu_runs_one_process():
    hs = hosts(1, gpus=1, mem=H100)
    plan = gpu_plan(LLAMA_8B, hs)
    dep = layout_vllm("l8", "m", "/m", "l8", plan, hs, port=8000)
    assert dep.executor is None
    assert "--distributed-executor-backend" not in dep.units[0].argv


def test_vllm_ray_replicas_across_nodes_are_refused():
    hs = hosts(4, gpus=8, mem=H100)
    plan = gpu_plan(LLAMA_405B, hs)
    with pytest.raises(InputError, match="executor mp"):
        layout_vllm("l", "m", "/m", "l", plan, hs, port=8000, replicas=2)
    dep = layout_vllm("l", "m", "/m", "l", plan, hs, port=8000, replicas=2, executor="mp")
    assert [g.hosts for g in dep.groups] == [["n1", "n2"], ["n3", "n4"]]
    assert dep.units[0].argv[dep.units[0].argv.index("--master-port") + 1] != \
        dep.units[2].argv[dep.units[2].argv.index("--master-port") + 1]


def test_vllm_cpu_one_node():
    hs = hosts(3)
    plan = cpu_plan(TINY, hs, max_model_len=512)
    dep = layout_vllm("tiny", "tiny", "/opt/models/tiny", "tiny", plan, hs, port=8000)
    [unit] = dep.units
    assert unit.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert unit.env["HF_HUB_OFFLINE"] == "1"
    assert "--gpu-memory-utilization" not in unit.argv
    assert dep.executor is None


def test_vllm_cpu_pipeline_over_two_nodes_uses_mp_nnodes():
    hs = hosts(3)
    plan = cpu_plan(TINY, hs, max_model_len=512)
    from clusterctl.deploy.launch import override_plan
    plan2 = override_plan(plan, hs, None, 2)
    assert plan2.nodes == ["n1", "n2"] and any("by hand" in w for w in plan2.warnings)
    dep = layout_vllm("tiny", "tiny", "/opt/models/tiny", "tiny", plan2, hs, port=8000)
    assert dep.executor == "mp"
    hosts_kinds = [(u.host, u.kind) for u in dep.units]
    assert hosts_kinds == [("n1", "vllm"), ("n2", "vllm-headless")]
    assert dep.units[0].argv[dep.units[0].argv.index("--nnodes") + 1] == "2"
    with pytest.raises(InputError, match="Ray"):
        layout_vllm("tiny", "t", "/t", "t", plan2, hs, port=8000, executor="ray")


def test_choose_executor():
    hs = hosts(2, gpus=8, mem=H100)
    assert choose_executor(gpu_plan(LLAMA_405B, hs), None) == "ray"
    assert choose_executor(gpu_plan(LLAMA_70B, hs), None) == "mp"
    assert choose_executor(gpu_plan(LLAMA_8B, hs), None) is None
    assert choose_executor(gpu_plan(LLAMA_8B, hs), "ray") is None


# --------------------------------------------------------------------------- records

def test_record_round_trip():
    dep = layout_llamacpp("t", "m", "/m.gguf", "t", hosts(3), port=8000, rpc_port=50052,
                          replicas=2)
    dep.ready_seconds = 3.5
    again = parse_record(record_json(dep))
    assert isinstance(again, Deployment)
    assert again == dep
    assert again.endpoint == dep.endpoint
    with pytest.raises(InputError):
        parse_record("{not json")


def test_port_conflicts_between_deployments():
    a = layout_llamacpp("a", "m", "/m.gguf", "a", hosts(3), port=8000, rpc_port=50052)
    b = layout_llamacpp("b", "m", "/m.gguf", "b", hosts(3), port=8000, rpc_port=50052)
    kinds = {k for _b, k, _w in port_conflicts(b, [a])}
    assert kinds == {"api", "rpc"}
    c = layout_llamacpp("c", "m", "/m.gguf", "c", hosts(3), port=8010, rpc_port=50053)
    assert port_conflicts(c, [a]) == []
    assert port_conflicts(a, [a]) == []               # a redeploy of itself is no conflict
