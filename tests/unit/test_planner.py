"""planner: TP/PP choice, fit math, refusals and what they suggest.

Model shapes are the public configs (layers, heads, KV heads, hidden, vocab, context);
sizes are checked against the seed sizing tables (docs/planner.md lists them).
GPU memory is what nvidia-smi reports (MiB): H100 80GB = 81559, H100 NVL = 95830,
L40S = 46068, RTX 4090 = 24564; "96 GB" cards are taken as 98304.
"""
from __future__ import annotations

import pytest

from clusterctl.deploy.modelinfo import ModelInfo
from clusterctl.deploy.planner import (
    DEFAULT_MAX_MODEL_LEN_CAP,
    GB,
    NodeGPUs,
    PlanError,
    estimate_weight_bytes,
    kv_cache_bytes,
    plan_model,
    render_plan,
)
from clusterctl.errors import EXIT_BAD_INPUT, InputError

H100, H100_NVL, L40S, RTX4090, GB96 = 81559, 95830, 46068, 24564, 98304
GIB = 2**30


def model(name, params, layers, heads, kv, hidden, vocab, max_pos, *, dtype="bfloat16",
          quant=None, weight_bytes=None, fmt="hf", **extra) -> ModelInfo:
    if weight_bytes is None:
        weight_bytes = estimate_weight_bytes(params, quant or dtype)
    return ModelInfo(name=name, format=fmt, params=params, weight_bytes=weight_bytes,
                     dtype=dtype, quantization=quant, num_layers=layers,
                     num_attention_heads=heads, num_kv_heads=kv, hidden_size=hidden,
                     head_dim=hidden // heads, vocab_size=vocab, max_position_embeddings=max_pos,
                     **extra)


LLAMA_70B = model("Llama-3.1-70B", 70_553_706_496, 80, 64, 8, 8192, 128256, 131072)
QWEN_72B = model("Qwen2.5-72B", 72_706_203_648, 80, 64, 8, 8192, 152064, 32768)
QWEN_72B_AWQ = model("Qwen2.5-72B-AWQ", 72_706_203_648, 80, 64, 8, 8192, 152064, 32768,
                     dtype="float16", quant="awq")
LLAMA_405B = model("Llama-3.1-405B", 405_853_388_800, 126, 128, 8, 16384, 128256, 131072)
MIXTRAL_8X7B = model("Mixtral-8x7B", 46_702_792_704, 32, 32, 8, 4096, 32000, 32768,
                     num_experts=8)
MIXTRAL_8X22B = model("Mixtral-8x22B", 140_620_634_112, 56, 48, 8, 6144, 32768, 65536,
                      num_experts=8)
DEEPSEEK_V3 = model("DeepSeek-V3", 671_026_419_200, 61, 128, 128, 7168, 129280, 163840,
                    dtype="float8_e4m3fn", quant="fp8", mla_kv_dim=512 + 64, num_experts=256)


def gpus(count, mib, host="gpu1", name=None):
    return NodeGPUs(host, count, mib, name)


def rule(plan) -> str:
    return next(r for r in plan.reasons if r.startswith("rule: "))


# --------------------------------------------------------------- sizes vs the seed tables

@pytest.mark.parametrize("info,dtype,seed_gb,unit,tol", [
    # seed 000 ("Min VRAM" Q4/FP16) and seed 004 ("GPU Memory Requirements by Model")
    (LLAMA_70B, "bfloat16", 140, GB, 0.02),
    (LLAMA_70B, "awq", 37, GB, 0.02),            # 000: Q4 37 GB (AWQ-style 4-bit)
    (LLAMA_70B, "Q4_K_M", 42, GB, 0.03),         # 004: Q4 42 GB (GGUF Q4_K_M)
    (QWEN_72B, "bfloat16", 144, GB, 0.02),
    (QWEN_72B, "awq", 38, GB, 0.02),
    (LLAMA_405B, "bfloat16", 810, GB, 0.01),
    (LLAMA_405B, "Q4_0", 230, GB, 0.02),         # 004: Q4 230 GB
    (MIXTRAL_8X7B, "bfloat16", 87, GIB, 0.01),   # 000's Mixtral figures are GiB
    (MIXTRAL_8X7B, "Q4_K_M", 26, GIB, 0.03),
    (MIXTRAL_8X22B, "bfloat16", 280, GB, 0.01),  # 003: ~280 GB
])
def test_weight_sizes_match_seed_tables(info, dtype, seed_gb, unit, tol):
    size = estimate_weight_bytes(info.params, dtype) / unit
    assert size == pytest.approx(seed_gb, rel=tol)


def test_estimate_weight_bytes_rejects_unknown_dtype():
    with pytest.raises(InputError, match="unknown dtype"):
        estimate_weight_bytes(10, "int3-magic")


def test_kv_cache_formula_and_splits():
    # 2 x 80 layers x 8 KV heads x 128 dims x 2 bytes = 327,680 bytes per token
    assert kv_cache_bytes(LLAMA_70B, 8192) == 327_680 * 8192
    assert kv_cache_bytes(LLAMA_70B, 8192, concurrency=4, kv_dtype_bytes=1) == 327_680 * 8192 * 2
    assert kv_cache_bytes(LLAMA_70B, 1000, tensor_parallel_size=4) == 327_680 * 1000 // 4
    # TP above the KV head count replicates heads: 1 per GPU, not 0.5
    assert kv_cache_bytes(LLAMA_70B, 1000, tensor_parallel_size=16) == 327_680 * 1000 // 8
    # PP splits layers; the largest stage counts (126 layers / 4 stages -> 32)
    assert kv_cache_bytes(LLAMA_405B, 1, pipeline_parallel_size=4) == 2 * 32 * 8 * 128 * 2
    # MLA caches one 576-dim latent per layer, the same on every TP rank
    assert kv_cache_bytes(DEEPSEEK_V3, 1, tensor_parallel_size=8) == 61 * 576 * 2


# --------------------------------------------------------------- the rules

def test_fits_one_gpu_tp1_pp1():
    plan = plan_model(QWEN_72B_AWQ, [gpus(1, L40S)])          # 000: one 48GB GPU, Q4
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 1)
    assert plan.fits and plan.nodes == ["gpu1"] and plan.gpus_used == 1
    assert "rule: fits on one GPU -> TP=1, PP=1" in plan.reasons


def test_qwen_q4_on_two_24gb_gpus_tp2():
    plan = plan_model(QWEN_72B_AWQ, [gpus(2, RTX4090)])       # 000: 2x RTX 4090, Q4
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 1)
    assert plan.weight_gb_per_gpu == pytest.approx(19.1, abs=0.1)


def test_llama70b_fp16_two_h100_is_tight():
    plan = plan_model(LLAMA_70B, [gpus(8, H100)])
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_used) == (2, 1, 2)
    assert plan.weight_gb_per_gpu == pytest.approx(70.5, abs=0.2)
    assert plan.needed_gb_per_gpu <= plan.usable_gb_per_gpu
    assert any(w.startswith("tight:") for w in plan.warnings)
    assert any("uses 2 of 8 GPUs on gpu1" in r for r in plan.reasons)
    assert any(r.startswith("tried TP=1 PP=1") for r in plan.reasons)


@pytest.mark.parametrize("info,mib,expected_tp", [
    # seed 003: "Min GPUs (96 GB)" / "Min GPUs (48 GB)"
    (LLAMA_70B, GB96, 2), (LLAMA_70B, L40S, 4),
    (MIXTRAL_8X22B, GB96, 4), (MIXTRAL_8X22B, L40S, 8),
    (DEEPSEEK_V3, GB96, 8),
])
def test_min_gpus_per_seed_003(info, mib, expected_tp):
    plan = plan_model(info, [gpus(8, mib)])
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (expected_tp, 1)


def test_mla_model_note():
    plan = plan_model(DEEPSEEK_V3, [gpus(8, GB96)])          # 003: DeepSeek-V3 -> 8 x 96 GB
    assert "MLA KV latent is replicated" in rule(plan)
    assert any("(MLA)" in r for r in plan.reasons)


def test_multi_node_tp_per_node_pp_nodes():
    nodes = [gpus(8, H100, "head"), gpus(8, H100, "w1"), gpus(8, H100, "w2")]
    plan = plan_model(LLAMA_405B, nodes)                      # ~810 GB
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    assert plan.nodes == ["head", "w1"] and plan.gpus_used == 16     # fewest nodes
    assert plan.gpus_per_node == {"head": 8, "w1": 8}
    assert "PP = nodes (2)" in rule(plan)
    assert any("netcheck" in w for w in plan.warnings)


def test_multi_node_prefers_nodes_identical_to_head():
    # 405B needs two 8-GPU nodes; the twin of the head is picked over a bigger odd one
    nodes = [gpus(8, H100, "head"), gpus(8, H100_NVL, "big"), gpus(8, H100, "twin")]
    plan = plan_model(LLAMA_405B, nodes)
    assert plan.nodes == ["head", "twin"]
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    assert not any("differ in memory" in w for w in plan.warnings)


def test_heterogeneous_memory_plans_with_smallest_and_warns():
    nodes = [gpus(8, H100, "head"), gpus(8, H100_NVL, "w1")]     # neither holds 405B alone
    plan = plan_model(LLAMA_405B, nodes)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    assert plan.usable_gb_per_gpu == pytest.approx(H100 * 2**20 * 0.9 / GB)
    assert any("GPUs differ in memory" in w and "smallest (head" in w for w in plan.warnings)


def test_different_gpu_counts_warn_idle():
    # ~228 GB (Q4_0) on 24 GB GPUs needs 12: TP = the smallest node's 4, PP = 3
    q4 = model("Llama-3.1-405B-Q4_0", LLAMA_405B.params, 126, 128, 8, 16384, 128256, 131072,
               dtype="Q4_0", quant="Q4_0")
    nodes = [gpus(4, RTX4090, "head"), gpus(8, RTX4090, "w1"), gpus(8, RTX4090, "w2")]
    plan = plan_model(q4, nodes)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 3)
    assert any("idle GPUs: w1 (4), w2 (4)" in w for w in plan.warnings)


def test_a_single_bigger_node_beats_multi_node():
    nodes = [gpus(4, RTX4090, "head"), gpus(8, RTX4090, "w1")]
    plan = plan_model(LLAMA_70B, nodes)
    assert (plan.nodes, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (["w1"], 8, 1)


def test_three_gpus_pipeline_over_gpus():
    # 93 GB: two 48 GB GPUs are not enough, TP=3 is not a power of two -> TP=1, PP=3
    plan = plan_model(MIXTRAL_8X7B, [gpus(3, L40S)])
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 3)
    assert plan.gpus_used == 3
    assert "pipeline over GPUs" in rule(plan)
    assert any("mixture of experts" in r for r in plan.reasons)


def test_heads_not_divisible_falls_back_to_pp():
    # 14 heads (2 KV heads): TP=2 too small, TP=4 does not divide 14 -> TP=1, PP=3
    # (the fewest pipeline stages that fit)
    odd = model("odd-heads-24B", 24_000_000_000, 48, 14, 2, 5376, 32000, 32768)
    plan = plan_model(odd, [gpus(4, RTX4090)])
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 3)
    assert "14 attention heads" in rule(plan) and "pipeline over GPUs" in rule(plan)
    assert any("uses 3 of 4 GPUs" in r for r in plan.reasons)


def test_three_gpus_per_node_across_nodes_pipeline_over_every_gpu():
    nodes = [gpus(3, RTX4090, "a"), gpus(3, RTX4090, "b")]
    plan = plan_model(MIXTRAL_8X7B, nodes)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 6)
    assert plan.gpus_per_node == {"a": 3, "b": 3}
    assert "pipeline over every GPU" in rule(plan)


def test_pp_never_exceeds_layers():
    shallow = model("shallow", 30_000_000_000, 2, 10, 10, 5120, 32000, 4096)
    with pytest.raises(PlanError) as e:
        plan_model(shallow, [gpus(1, RTX4090, f"n{i}") for i in range(4)])
    assert e.value.plan.pipeline_parallel_size <= 2


def test_pp_stage_is_the_largest_with_embeddings():
    # Mixtral over 3 single-GPU nodes: 32 layers -> the largest stage has 11, plus
    # one embedding-sized matrix (embed_tokens on the first stage, lm_head on the last)
    nodes = [gpus(1, L40S, f"n{i}") for i in range(3)]
    plan = plan_model(MIXTRAL_8X7B, nodes)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 3)
    w = MIXTRAL_8X7B.weight_bytes
    embed = 32000 * 4096 * w / MIXTRAL_8X7B.params
    expected = 11 * (w - 2 * embed) / 32 + embed
    assert plan.weight_gb_per_gpu == pytest.approx(expected / GB)
    assert plan.weight_gb_per_gpu > w / 3 / GB


def test_single_gpu_on_a_worker_when_head_is_too_small():
    nodes = [gpus(1, RTX4090, "head"), gpus(1, H100, "w1")]
    plan = plan_model(QWEN_72B_AWQ, nodes)
    assert plan.nodes == ["w1"] and plan.tensor_parallel_size == 1
    assert any("serves from w1, not the head head" in w for w in plan.warnings)


# --------------------------------------------------------------- refusals

def test_qwen_fp16_on_four_4090_refused_with_suggestions():
    # seed 000 says 4x RTX 4090 (96 GB) "can run Qwen2.5-72B FP16": 144 GB of weights
    # cannot fit in 96 GB, so the planner refuses and says what would
    with pytest.raises(PlanError) as e:
        plan_model(QWEN_72B, [gpus(4, RTX4090)])
    msg = str(e.value)
    assert "Qwen2.5-72B does not fit" in msg and "TP=4 PP=1 on gpu1" in msg
    assert "more GPUs: 8 x 24.0 GiB GPUs on one node (TP=8) (you have 4)" in msg
    assert "more nodes: 2 nodes like gpu1" in msg and "TP=4 PP=2" in msg
    assert "AWQ/GPTQ 4-bit ~36 GiB would fit on 2 GPUs (TP=2 PP=1)" in msg
    assert "FP8 8-bit ~68 GiB would fit on 4 GPUs" in msg
    assert isinstance(e.value, InputError) and e.value.exit_code == EXIT_BAD_INPUT
    assert e.value.plan is not None and not e.value.plan.fits


def test_405b_on_one_node_suggests_second_node():
    with pytest.raises(PlanError) as e:
        plan_model(LLAMA_405B, [gpus(8, H100, "dgx", name="H100")])
    assert "2 nodes like dgx (2 x 8 = 16 x H100 GPUs (79.6 GiB), TP=8 PP=2)" in str(e.value)


def test_lower_max_model_len_suggestion_is_the_largest_that_fits():
    nodes = [gpus(1, H100)]
    info = model("Llama-3.1-8B", 8_030_261_248, 32, 32, 8, 4096, 128256, 131072)
    with pytest.raises(PlanError) as e:
        plan_model(info, nodes, max_model_len=600_000)
    line = next(s for s in e.value.plan.suggestions if s.startswith("lower max_model_len"))
    suggested = int(line.split("--max-model-len ")[1].split()[0])
    assert 400_000 < suggested < 600_000
    assert plan_model(info, nodes, max_model_len=suggested).fits
    with pytest.raises(PlanError):
        plan_model(info, nodes, max_model_len=suggested + 2048)


def test_fp8_kv_cache_suggestion():
    info = model("Llama-3.1-8B", 8_030_261_248, 32, 32, 8, 4096, 128256, 131072)
    with pytest.raises(PlanError) as e:
        plan_model(info, [gpus(1, H100)], max_model_len=131072, concurrency=4)
    assert any(s.startswith("--kv-cache-dtype fp8 halves the KV cache")
               for s in e.value.plan.suggestions)
    assert plan_model(info, [gpus(1, H100)], max_model_len=131072, concurrency=4,
                      kv_cache_dtype="fp8").fits


def test_non_strict_returns_plan_with_suggestions():
    plan = plan_model(QWEN_72B, [gpus(4, RTX4090)], strict=False)
    assert not plan.fits and plan.suggestions
    text = render_plan(plan)
    assert "Plan: DOES NOT FIT" in text and "What would fit:" in text
    assert "vLLM:" not in text


# --------------------------------------------------------------- CPU-only

def test_cpu_single_node_when_ram_is_enough():
    nodes = [NodeGPUs("c1", 0, 0, ram_mib=512 * 1024), NodeGPUs("c2", 0, 0, ram_mib=512 * 1024)]
    plan = plan_model(MIXTRAL_8X7B, nodes)
    assert plan.device == "cpu" and plan.nodes == ["c1"]
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_used) == (1, 1, 0)
    assert any("no GPUs: CPU plan" in r for r in plan.reasons)
    assert any("VLLM_CPU_KVCACHE_SPACE" in r for r in plan.reasons)
    assert "--gpu-memory-utilization" not in plan.vllm_args()


def test_cpu_pipeline_over_nodes_when_one_is_too_small():
    nodes = [NodeGPUs("c1", 0, 0, ram_mib=64 * 1024), NodeGPUs("c2", 0, 0, ram_mib=64 * 1024),
             NodeGPUs("c3", 0, 0, ram_mib=64 * 1024)]
    plan = plan_model(MIXTRAL_8X7B, nodes)                    # 93 GB over 2 x ~55 GB
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 2)
    assert plan.nodes == ["c1", "c2"]


def test_cpu_ram_unknown_uses_every_node_and_warns():
    plan = plan_model(QWEN_72B_AWQ, [NodeGPUs("c1", 0, 0), NodeGPUs("c2", 0, 0)])
    assert plan.device == "cpu" and plan.pipeline_parallel_size == 2
    assert any("host RAM unknown: fit not checked" in w for w in plan.warnings)


def test_cpu_refusal_says_how_much_ram():
    with pytest.raises(PlanError, match="more RAM or nodes"):
        plan_model(LLAMA_405B, [NodeGPUs("c1", 0, 0, ram_mib=256 * 1024)])


def test_cpu_nodes_left_out_when_gpus_exist():
    nodes = [NodeGPUs("cpu-head", 0, 0), gpus(2, RTX4090, "g1")]
    plan = plan_model(QWEN_72B_AWQ, nodes)
    assert plan.device == "cuda" and plan.nodes == ["g1"]
    assert any("CPU-only nodes left out" in w for w in plan.warnings)
    assert any("head cpu-head has no GPU" in w for w in plan.warnings)


# --------------------------------------------------------------- options and inputs

def test_default_max_model_len_is_capped_and_explained():
    plan = plan_model(LLAMA_70B, [gpus(4, H100)])
    assert plan.max_model_len == DEFAULT_MAX_MODEL_LEN_CAP
    assert "--max-model-len 8192" in " ".join(plan.vllm_args())
    assert any("the model allows 131072" in r for r in plan.reasons)
    small = model("small-ctx", 1_000_000_000, 16, 16, 16, 2048, 32000, 2048)
    assert plan_model(small, [gpus(1, RTX4090)]).max_model_len == 2048


def test_explicit_max_model_len_above_model_max_warns():
    plan = plan_model(QWEN_72B_AWQ, [gpus(1, H100)], max_model_len=40000)
    assert plan.max_model_len == 40000
    assert any("above the model's max_position_embeddings 32768" in w for w in plan.warnings)


def test_float32_checkpoint_served_as_float16():
    fp32 = model("fp32-7B", 7_000_000_000, 32, 32, 32, 4096, 32000, 4096, dtype="float32")
    plan = plan_model(fp32, [gpus(1, L40S)])
    assert plan.weight_gb_per_gpu == pytest.approx(14.0, abs=0.05)
    assert any("float32 checkpoint" in r for r in plan.reasons)


@pytest.mark.parametrize("kwargs,nodes,match", [
    ({}, [], "no nodes"),
    ({"gpu_memory_utilization": 0}, None, "gpu_memory_utilization"),
    ({"gpu_memory_utilization": 1.5}, None, "gpu_memory_utilization"),
    ({"kv_cache_dtype": "int2"}, None, "unknown kv_cache_dtype"),
    ({"max_model_len": 0}, None, "max_model_len must be"),
    ({}, [NodeGPUs("bad", 2, 0)], "bad: 2 GPUs but memory_mib=0"),
])
def test_bad_arguments_are_plan_errors(kwargs, nodes, match):
    with pytest.raises(PlanError, match=match):
        plan_model(LLAMA_70B, [gpus(8, H100)] if nodes is None else nodes, **kwargs)


def test_gguf_model_gets_a_vllm_warning():
    info = model("Llama-70B-Q4_K_M", 70_553_706_496, 80, 64, 8, 8192, 128256, 131072,
                 dtype="Q4_K_M", quant="Q4_K_M", fmt="gguf", files=["a.gguf"])
    plan = plan_model(info, [gpus(2, L40S)])
    assert plan.tensor_parallel_size == 2
    assert any("GGUF in vLLM is experimental" in w for w in plan.warnings)


def test_render_plan_shows_layout_math_and_flags():
    text = render_plan(plan_model(LLAMA_70B, [gpus(4, L40S, name="NVIDIA L40S")]))
    assert "Plan: FITS" in text
    assert "tensor_parallel_size=4 pipeline_parallel_size=1 (4 GPUs, 180.0 GiB) on gpu1" in text
    assert "per GPU: 32.9 GiB weights + 0.6 GiB KV cache + 1.4 GiB overhead" in text
    assert ("vLLM: --tensor-parallel-size 4 --pipeline-parallel-size 1 --max-model-len 8192 "
            "--gpu-memory-utilization 0.90") in text
    assert "Why:" in text and "KV cache: 0.328 MB per token" in text


# ------------------------------------------------------------------ llama.cpp plans

import json as _json  # noqa: E402
import math as _math  # noqa: E402
import xml.etree.ElementTree as _ET  # noqa: E402

from clusterctl.deploy.planner import (  # noqa: E402
    LLAMA_MAX_DEVICES,
    MAX_NODES,
    plan_llamacpp,
    plan_to_dict,
    render_bars,
    render_svg,
)

QWEN_7B_Q4 = model("Qwen2.5-7B-Q4_K_M", 7_615_616_512, 28, 28, 4, 3584, 152064, 32768,
                   dtype="Q4_K_M", quant="Q4_K_M", fmt="gguf")


def _layers(plan):
    return [(d["host"], d["device"], d["layers"], d["output"]) for d in plan.devices]


def test_llamacpp_layers_follow_llama_cpp_split_rule():
    # 3 equal devices, 32 layers + output = 33 units: cumulative split 1/3, 2/3, 1
    info = model("m32", 8_000_000_000, 32, 32, 8, 4096, 32000, 8192, dtype="Q4_K_M",
                 quant="Q4_K_M", fmt="gguf")
    plan = plan_llamacpp(info, [gpus(1, RTX4090, "head"), gpus(1, RTX4090, "w1"),
                                gpus(1, RTX4090, "w2")])
    assert _layers(plan) == [("w1", "GPU0 (RPC)", 11, False), ("w2", "GPU0 (RPC)", 11, False),
                             ("head", "GPU0", 10, True)]
    assert plan.backend == "llamacpp" and plan.fits
    assert plan.pipeline_parallel_size == 3 and plan.nodes == ["head", "w1", "w2"]


def test_llamacpp_split_follows_memory_and_is_printed():
    plan = plan_llamacpp(QWEN_7B_Q4, [gpus(1, RTX4090, "head"), gpus(2, 12288, "w1")])
    w1a, w1b, head = plan.devices
    assert head["layers"] > w1a["layers"] and abs(w1a["layers"] - w1b["layers"]) <= 1
    args = plan.llamacpp_args()
    split = args[args.index("--tensor-split") + 1].split(",")
    assert len(split) == 3 and float(split[2]) > float(split[0])
    assert args[:2] == ["--n-gpu-layers", "999"] and "--ctx-size" in args
    assert plan.serve_args() == args and not any(a.startswith("--tensor-parallel")
                                                 for a in args)


def test_llamacpp_rpc_on_head_and_cpu_hosts():
    nodes = [NodeGPUs("head", 0, 0, ram_mib=32768), NodeGPUs("w1", 0, 0, ram_mib=16384)]
    plan = plan_llamacpp(QWEN_7B_Q4, nodes)
    assert [d["host"] for d in plan.devices] == ["w1"]        # the server keeps embeddings
    plan = plan_llamacpp(QWEN_7B_Q4, nodes, rpc_on_head=True)
    assert [d["host"] for d in plan.devices] == ["w1", "head"]
    assert plan.device == "cpu"


def test_llamacpp_given_tensor_split_and_too_many_devices():
    plan = plan_llamacpp(QWEN_7B_Q4, [gpus(1, RTX4090, "head"), gpus(1, RTX4090, "w1")],
                         tensor_split=[0, 1])
    assert plan.devices[0]["layers"] == 0 and plan.devices[1]["layers"] == 28
    with pytest.raises(PlanError, match="at most 2 finite proportions"):
        plan_llamacpp(QWEN_7B_Q4, [gpus(1, RTX4090, "head"), gpus(1, RTX4090, "w1")],
                      tensor_split=[1, 1, 1])
    with pytest.raises(PlanError, match=f"at most {LLAMA_MAX_DEVICES} devices"):
        plan_llamacpp(QWEN_7B_Q4, [gpus(8, H100, f"n{i}") for i in range(3)])


def test_llamacpp_refusal_gives_alternatives_as_data():
    plan = plan_llamacpp(LLAMA_70B, [gpus(1, RTX4090, "head"), gpus(1, RTX4090, "w1")],
                         strict=False)
    assert not plan.fits
    kinds = [a["kind"] for a in plan.alternatives]
    assert "more_memory" in kinds and "quantized" in kinds
    assert plan.suggestions == [a["text"] for a in plan.alternatives]
    quant = next(a for a in plan.alternatives if a["kind"] == "quantized")
    assert quant["quantization"].startswith("q") and quant["weight_bytes"] > 0
    with pytest.raises(PlanError, match="does not fit with llama.cpp"):
        plan_llamacpp(LLAMA_70B, [gpus(1, RTX4090, "head")])


def test_llamacpp_shorter_context_alternative():
    plan = plan_llamacpp(QWEN_7B_Q4, [gpus(1, 8192, "head")], max_model_len=131072,
                         strict=False)
    assert not plan.fits
    alt = next(a for a in plan.alternatives if a["kind"] == "max_model_len")
    assert 256 <= alt["max_model_len"] < 131072
    assert plan_llamacpp(QWEN_7B_Q4, [gpus(1, 8192, "head")],
                         max_model_len=alt["max_model_len"]).fits


def test_vllm_alternatives_are_data_too():
    plan = plan_model(QWEN_72B, [gpus(4, RTX4090)], strict=False)
    kinds = {a["kind"] for a in plan.alternatives}
    assert {"more_gpus", "quantized"} <= kinds
    more = next(a for a in plan.alternatives if a["kind"] == "more_gpus")
    assert more["tensor_parallel_size"] == 8 and more["gpu_memory_mib"] == RTX4090


# ------------------------------------------------------------------ bounds and JSON


@pytest.mark.parametrize("kwargs,nodes,match", [
    ({"gpu_memory_utilization": float("nan")}, [gpus(1, H100)], "gpu_memory_utilization"),
    ({"overhead_gb_per_gpu": float("inf")}, [gpus(1, H100)], "overhead_gb_per_gpu"),
    ({"concurrency": 10**9}, [gpus(1, H100)], "concurrency"),
    ({"max_model_len": 2**40}, [gpus(1, H100)], "max_model_len"),
    ({}, [gpus(10**6, H100)], "GPU count"),
    ({}, [gpus(1, 2**40)], "GPU memory"),
    ({}, [gpus(1, H100, f"n{i}") for i in range(MAX_NODES + 1)], "at most"),
])
def test_out_of_range_numbers_are_plan_errors(kwargs, nodes, match):
    for planner in (plan_model, plan_llamacpp):
        with pytest.raises(PlanError, match=match):
            planner(QWEN_7B_Q4, nodes, **kwargs)


def test_model_with_negative_context_is_refused_not_planned():
    bad = model("bad", 1_000_000, 4, 4, 2, 64, 100, -5)
    with pytest.raises(PlanError, match="max_position_embeddings"):
        plan_model(bad, [gpus(1, H100)])


def test_pipeline_never_exceeds_layers_across_many_nodes():
    info = model("two-layers", 200_000_000_000, 2, 4, 2, 64, 100, 2048)
    plan = plan_model(info, [gpus(1, RTX4090, f"n{i}") for i in range(50)], strict=False)
    assert not plan.fits and plan.pipeline_parallel_size <= 2


def test_max_nodes_plans_and_concurrency_is_never_negative():
    plan = plan_model(LLAMA_405B, [gpus(1, 8192, f"n{i}") for i in range(MAX_NODES)],
                      strict=False)
    assert plan.max_concurrency is None or plan.max_concurrency >= 0
    data = plan_to_dict(plan)
    assert data["max_concurrency"] is None or data["max_concurrency"] >= 0


@pytest.mark.parametrize("planner", [plan_model, plan_llamacpp])
def test_plan_to_dict_is_strict_rounded_json(planner):
    nodes = [NodeGPUs("cpu1", 0, 0)]                      # RAM unknown: usable is inf
    plan = planner(QWEN_7B_Q4, nodes, strict=False)
    data = plan_to_dict(plan, QWEN_7B_Q4)
    text = _json.dumps(data, allow_nan=False)               # raises on NaN / inf
    assert data["schema_version"] == 1 and data["memory_unit"] == "GiB"
    assert data["model_info"]["num_layers"] == 28
    for d in data["devices"]:
        for key in ("weights_gib", "kv_cache_gib", "overhead_gib"):
            assert d[key] == round(d[key], 2)
    assert "Infinity" not in text and "NaN" not in text


def test_bars_and_svg_show_every_device():
    plan = plan_llamacpp(LLAMA_70B, [gpus(1, RTX4090, "head"), gpus(1, RTX4090, "w1")],
                         strict=False)
    bars = render_bars(plan)
    assert len(bars) == 2 and all("OVER by" in b for b in bars)
    assert "|" in bars[0]                                   # where usable memory ends
    svg = _ET.fromstring(render_svg(plan))
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert any("DOES NOT FIT" in (t or "") for t in texts)
    assert any("w1 GPU0 (RPC)" == t for t in texts)
    ok = plan_model(LLAMA_70B, [gpus(8, RTX4090)])
    assert ok.tensor_parallel_size == 8
    assert len(render_bars(ok)) == 1 and "GPU0-7" in render_bars(ok)[0]   # 8 alike: one row
    assert "Memory per device (GiB" in render_plan(ok)


def test_render_svg_escapes_names():
    info = model("<script>&", 1_000_000, 4, 4, 2, 64, 100, 2048)
    svg = render_svg(plan_model(info, [gpus(1, H100, 'h"1')]))
    _ET.fromstring(svg)
    assert "<script>" not in svg
    assert not _math.isnan(0.0)
