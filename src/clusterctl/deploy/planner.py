"""Choose vLLM's tensor/pipeline parallel sizes for a model on a set of nodes.

Pure: no I/O. Input is a `ModelInfo` (see modelinfo.py) and what each node has
(`NodeGPUs`, the head node first); output is a `Plan` with the numbers and the
reasoning shown, or a `PlanError` that says what would fit instead.

The rules are vLLM's (docs: "Parallelism and scaling"), applied in this order; the
first layout that fits wins:

1. fits on one GPU -> TP=1, PP=1 (the head's GPU if it can, else another node's);
2. fits on one node -> TP = the smallest power of two GPUs that fits, dividing the
   attention heads (and the KV heads, or a multiple of them), PP=1;
3. fits on one node but no valid TP does (odd GPU count, heads not divisible) ->
   TP=1, PP = GPUs (pipeline over the node's GPUs; vLLM splits layers unevenly);
4. needs several nodes -> TP = GPUs per node, PP = number of nodes, with the
   fewest nodes (head + identical nodes first). If the per-node GPU count is not a
   valid TP, TP=1 and PP = every GPU of the chosen nodes;
5. no GPU anywhere -> CPU plan: TP=1, PP = nodes (fewest that fit when RAM is known).

Memory model, per GPU. Sizes are shown in GiB (2^30 bytes) and GPU memory in MiB, the
units nvidia-smi uses (an "80GB" H100 is 81559 MiB = 79.6 GiB). The Plan's *_gb fields
are GB (10^9 bytes) for the API; JSON output (plan_to_dict) is in GiB.

    usable = GPU memory x gpu_memory_utilization
    need   = weights/(TP) of the largest pipeline stage
           + KV cache for max_model_len tokens x concurrency (KV heads split by TP,
             layers split by PP)
           + overhead (CUDA context and graphs, NCCL buffers, activation peak)
    fits   when need <= usable

vLLM refuses to start when one max_model_len sequence does not fit in the KV cache,
so KV for max_model_len is part of the requirement, not an extra. When
max_model_len is not given, the estimate uses the model's max_position_embeddings
capped at DEFAULT_MAX_MODEL_LEN_CAP (8192); the plan records the length it used
so the launcher can pass the same ``--max-model-len`` to vLLM (whose own default is
the model's full context, e.g. 131072 for Llama 3.1).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from ..errors import InputError
from .modelinfo import ModelInfo

__all__ = ["NodeGPUs", "Plan", "PlanError", "plan_model", "plan_llamacpp", "render_plan",
           "render_bars", "render_svg", "plan_to_dict", "estimate_weight_bytes",
           "kv_cache_bytes", "bits_per_weight", "DEFAULT_MAX_MODEL_LEN_CAP",
           "DEFAULT_OVERHEAD_GB_PER_GPU", "GB", "GIB", "PLAN_SCHEMA_VERSION", "MAX_NODES",
           "SecondCopy", "llamacpp_second_copy", "vllm_second_copy"]

GB = 1e9
GIB = 2**30
MIB = 1024 * 1024
PLAN_SCHEMA_VERSION = 1
# Sane bounds on what a plan is asked for (bigger is a typo or hostile input).
MAX_NODES = 10_000
MAX_GPUS_PER_NODE = 1024
MAX_GPU_MEMORY_MIB = 1 << 24           # 16 TiB per device
MAX_RAM_MIB = 1 << 30                  # 1 PiB per host
MAX_CONTEXT = 1 << 31
MAX_CONCURRENCY = 1_000_000
MAX_WEIGHT_BYTES = 1 << 60
DEFAULT_MAX_MODEL_LEN_CAP = 8192
DEFAULT_OVERHEAD_GB_PER_GPU = 1.5      # CUDA context + graphs, NCCL buffers, activations
DEFAULT_CPU_OVERHEAD_GB = 2.0          # per node: runtime, activations, OS page cache slack
CPU_RAM_FRACTION = 0.80                # share of a CPU node's RAM the model may use
TIGHT_HEADROOM = 0.05                  # warn when less than 5% of usable memory is left
MAX_SINGLE_NODE_GPUS = 8               # for "more GPUs" suggestions

# Effective bits per weight over a whole model (embeddings and scales included).
# 4-bit AWQ/GPTQ: 4 bits + group-128 scales/zeros + unquantized embeddings ~= 4.2.
# GGUF: llama.cpp's own figures for each type at 7B-70B.
_BITS: dict[str, float] = {
    "float64": 64, "float32": 32, "fp32": 32, "f32": 32, "float": 32, "all_f32": 32,
    "float16": 16, "fp16": 16, "f16": 16, "half": 16, "bfloat16": 16, "bf16": 16,
    "fp8": 8, "fp8_e4m3": 8, "fp8_e5m2": 8, "int8": 8, "w8a8": 8, "8bit": 8,
    "bitsandbytes-8bit": 8, "compressed-tensors-8bit": 8, "fbgemm_fp8": 8,
    "awq": 4.2, "gptq": 4.2, "awq_marlin": 4.2, "gptq_marlin": 4.2, "int4": 4.2,
    "4bit": 4.2, "q4": 4.2, "bitsandbytes": 4.2, "bitsandbytes-4bit": 4.2, "nf4": 4.2,
    "compressed-tensors": 4.2, "mxfp4": 4.25, "nvfp4": 4.5,
    "q8_0": 8.5, "q8": 8.5, "q6_k": 6.56, "q5_k_m": 5.69, "q5_k_s": 5.54, "q5_1": 6.0,
    "q5_0": 5.5, "q4_k_m": 4.85, "q4_k_s": 4.58, "q4_1": 5.0, "q4_0": 4.5,
    "iq4_nl": 4.5, "iq4_xs": 4.25, "q3_k_l": 4.27, "q3_k_m": 3.91, "q3_k_s": 3.5,
    "iq3_m": 3.66, "iq3_s": 3.44, "iq3_xs": 3.3, "iq3_xxs": 3.06, "q2_k": 3.35,
    "q2_k_s": 2.96, "iq2_m": 2.7, "iq2_s": 2.5, "iq2_xs": 2.31, "iq2_xxs": 2.06,
    "iq1_m": 1.75, "iq1_s": 1.56, "tq1_0": 1.69, "tq2_0": 2.06, "mxfp4_moe": 4.25,
}

_KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1,
                   "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

# Smaller variants worth suggesting, best quality first: (label, dtype key).
_HF_VARIANTS = [("FP8 8-bit", "fp8"), ("AWQ/GPTQ 4-bit", "awq")]
_GGUF_VARIANTS = [("GGUF Q8_0", "q8_0"), ("GGUF Q6_K", "q6_k"), ("GGUF Q5_K_M", "q5_k_m"),
                  ("GGUF Q4_K_M", "q4_k_m"), ("GGUF Q3_K_M", "q3_k_m"),
                  ("GGUF Q2_K", "q2_k")]


class PlanError(InputError):
    """The model cannot be placed as asked. The message says what would fit.

    `plan` (when set) is the closest layout tried, with `fits=False` and suggestions.
    """

    def __init__(self, message: str, *, plan: Plan | None = None):
        self.plan = plan
        super().__init__(message)


@dataclass
class NodeGPUs:
    """What one host offers. count=0 means a CPU-only node."""

    host: str
    count: int
    memory_mib: int                    # per GPU (nvidia-smi memory.total)
    name: str | None = None            # e.g. "NVIDIA H100 80GB HBM3"
    ram_mib: int | None = None         # host RAM; used only for CPU plans

    @property
    def memory_gb(self) -> float:
        return self.memory_mib * MIB / GB

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024


@dataclass
class Plan:
    """A placement. Per-GPU figures are per device: per GPU, or per node for CPU plans."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: list[str]                   # hosts used, the one to serve from first
    gpus_used: int
    weight_gb_per_gpu: float
    kv_cache_gb_per_gpu: float
    total_gpu_mem_gb: float            # memory of the GPUs used (RAM for CPU plans)
    fits: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    # --- details, for the launcher and the report ---
    model: str = ""
    device: str = "cuda"               # "cuda" | "cpu"
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    max_model_len: int = 0
    concurrency: int = 1
    gpu_memory_utilization: float = 0.90
    kv_cache_dtype: str = "auto"
    overhead_gb_per_gpu: float = 0.0
    usable_gb_per_gpu: float = 0.0
    needed_gb_per_gpu: float = 0.0
    max_concurrency: float | None = None   # max_model_len sequences the KV budget holds
    backend: str = "vllm"                  # "vllm" | "llamacpp"
    alternatives: list[dict] = field(default_factory=list)   # suggestions as data
    devices: list[dict] = field(default_factory=list)        # per device, bytes (see _device)
    tensor_split: list[float] | None = None                  # llama.cpp: share per device

    def vllm_args(self) -> list[str]:
        """The vLLM serve flags this plan implies."""
        args = ["--tensor-parallel-size", str(self.tensor_parallel_size),
                "--pipeline-parallel-size", str(self.pipeline_parallel_size),
                "--max-model-len", str(self.max_model_len)]
        if self.device == "cuda":
            args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:.2f}"]
        if self.kv_cache_dtype != "auto":
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        return args

    def llamacpp_args(self) -> list[str]:
        """The llama-server flags this plan implies (RPC servers are listed by the
        launcher with --rpc)."""
        args = ["--n-gpu-layers", "999"]
        if self.tensor_split and len(self.tensor_split) > 1:
            args += ["--tensor-split", ",".join(f"{x:g}" for x in self.tensor_split)]
        args += ["--ctx-size", str(self.max_model_len * self.concurrency)]
        if self.concurrency > 1:
            args += ["--parallel", str(self.concurrency)]
        if self.kv_cache_dtype not in ("auto", "f16"):
            args += ["--cache-type-k", self.kv_cache_dtype,
                     "--cache-type-v", self.kv_cache_dtype]
        return args

    def serve_args(self) -> list[str]:
        return self.llamacpp_args() if self.backend == "llamacpp" else self.vllm_args()


# --------------------------------------------------------------------------- sizing


def bits_per_weight(dtype_or_quant: str) -> float:
    """Effective bits per parameter of a dtype or quantization name."""
    key = dtype_or_quant.strip().lower().removeprefix("torch.").removeprefix("mostly_")
    if key in _BITS:
        return _BITS[key]
    raise InputError(f"unknown dtype or quantization {dtype_or_quant!r} "
                     f"(known: {', '.join(sorted(_BITS))})")


def estimate_weight_bytes(params: int, dtype_or_quant: str) -> int:
    """Bytes of weights for `params` parameters stored as `dtype_or_quant`.

    bfloat16/float16 = 2 bytes, FP8/INT8 = 1, AWQ/GPTQ 4-bit ~= 0.525 (4.2 bits with
    scales and unquantized embeddings), GGUF types by llama.cpp's bits per weight
    (Q4_K_M 4.85, Q8_0 8.5, ...).
    """
    if params < 0:
        raise InputError(f"params must be >= 0, got {params}")
    return int(params * bits_per_weight(dtype_or_quant) / 8)


def kv_bytes_per_token(info: ModelInfo, kv_dtype_bytes: float = 2, *,
                       tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1) -> float:
    """KV cache bytes one token takes on one GPU of the layout."""
    layers = math.ceil(info.num_layers / pipeline_parallel_size)
    if info.mla_kv_dim:                  # MLA: one latent per layer, replicated over TP
        return layers * info.mla_kv_dim * kv_dtype_bytes
    kv_heads = math.ceil(info.num_kv_heads / tensor_parallel_size)
    return layers * 2 * kv_heads * info.head_dim * kv_dtype_bytes


def kv_cache_bytes(info: ModelInfo, max_model_len: int, concurrency: int = 1,
                   kv_dtype_bytes: float = 2, *, tensor_parallel_size: int = 1,
                   pipeline_parallel_size: int = 1) -> int:
    """KV cache for `concurrency` sequences of `max_model_len` tokens.

    2 (K and V) x layers x KV heads x head_dim x bytes per element, per token. With
    tensor_parallel_size / pipeline_parallel_size it is the share of one GPU: KV heads
    are split by TP (replicated when TP > KV heads), layers by PP (largest stage).
    """
    per_token = kv_bytes_per_token(info, kv_dtype_bytes,
                                   tensor_parallel_size=tensor_parallel_size,
                                   pipeline_parallel_size=pipeline_parallel_size)
    return int(per_token * max_model_len * concurrency)


def _gb(n: float) -> str:
    """Bytes as GiB for text (the unit is written next to it as 'GiB')."""
    return f"{n / GIB:.1f}"


def _device(host: str, label: str, usable: float, weights: float, kv: float,
            overhead: float, memory_mib: int | None, layers: int | None = None,
            output: bool = False) -> dict:
    """One device of a plan (a GPU, or a node's RAM): bytes, for bars and JSON.
    `layers`: repeating layers placed on it (llama.cpp plans); `output`: it holds the
    output layer."""
    return {"host": host, "device": label, "memory_mib": memory_mib, "usable": usable,
            "weights": weights, "kv_cache": kv, "overhead": overhead, "layers": layers,
            "output": output}


@dataclass(frozen=True)
class _Layout:
    hosts: tuple[NodeGPUs, ...]
    tp: int
    pp: int
    per_node: tuple[int, ...]          # devices used on each host
    cpu: bool = False

    @property
    def devices(self) -> int:
        return sum(self.per_node)

    @property
    def device_bytes(self) -> float:  # the smallest device decides
        if self.cpu:
            rams = [h.ram_mib for h in self.hosts]
            if any(r is None for r in rams):
                return math.inf
            return min(rams) * MIB
        return min(h.memory_mib for h in self.hosts) * MIB

    def describe(self) -> str:
        if self.cpu:
            where = ", ".join(h.host for h in self.hosts)
            return f"CPU, TP=1 PP={self.pp} on {where}"
        if len(self.hosts) == 1:
            h = self.hosts[0]
            return (f"TP={self.tp} PP={self.pp} on {h.host} "
                    f"({self.devices} x {h.memory_gib:.1f} GiB)")
        nodes = ", ".join(f"{h.host}:{n}" for h, n in zip(self.hosts, self.per_node))
        return f"TP={self.tp} PP={self.pp} over {len(self.hosts)} nodes ({nodes} GPUs)"


@dataclass
class _Fit:
    usable: float
    weights: float
    kv: float
    overhead: float

    @property
    def need(self) -> float:
        return self.weights + self.kv + self.overhead

    @property
    def fits(self) -> bool:
        return self.need <= self.usable


@dataclass
class _Sizing:
    info: ModelInfo
    weight_bytes: float                # as resident in device memory
    kv_dtype_bytes: float
    max_model_len: int
    concurrency: int
    util: float
    overhead: float                    # bytes per device

    def weights_per_device(self, tp: int, pp: int) -> float:
        if pp <= 1:
            return self.weight_bytes / tp
        info = self.info
        embed = 0.0
        if info.vocab_size and info.params:
            embed = info.vocab_size * info.hidden_size * self.weight_bytes / info.params
        copies = 1 if info.tie_word_embeddings else 2
        per_layer = max(0.0, self.weight_bytes - copies * embed) / info.num_layers
        stage = math.ceil(info.num_layers / pp) * per_layer + embed
        return stage / tp

    def kv_per_device(self, tp: int, pp: int, tokens: int | None = None) -> float:
        tokens = self.max_model_len if tokens is None else tokens
        return kv_cache_bytes(self.info, tokens, self.concurrency, self.kv_dtype_bytes,
                              tensor_parallel_size=tp, pipeline_parallel_size=pp)

    def check(self, layout: _Layout) -> _Fit:
        frac = CPU_RAM_FRACTION if layout.cpu else self.util
        return _Fit(usable=layout.device_bytes * frac,
                    weights=self.weights_per_device(layout.tp, layout.pp),
                    kv=self.kv_per_device(layout.tp, layout.pp), overhead=self.overhead)

    def largest_len(self, layout: _Layout) -> int:
        fit = self.check(layout)
        free = fit.usable - fit.weights - fit.overhead
        per_token = kv_bytes_per_token(self.info, self.kv_dtype_bytes,
                                       tensor_parallel_size=layout.tp,
                                       pipeline_parallel_size=layout.pp) * self.concurrency
        if free <= 0 or per_token <= 0:
            return 0
        return int(free // per_token)


def _valid_tp(info: ModelInfo, t: int) -> bool:
    if t < 1 or t & (t - 1):
        return False
    if info.num_attention_heads % t:
        return False
    kv = info.num_kv_heads
    return bool(info.mla_kv_dim) or kv % t == 0 or t % kv == 0


def _tp_note(info: ModelInfo, t: int) -> str:
    kv = info.num_kv_heads
    if info.mla_kv_dim:
        return (f"TP={t} divides {info.num_attention_heads} attention heads; the MLA KV "
                f"latent is replicated on every GPU")
    how = "divides" if kv % t == 0 else "is a multiple of"
    return (f"TP={t} divides {info.num_attention_heads} attention heads and {how} "
            f"{kv} KV heads")


# --------------------------------------------------------------------------- search


def _gpu_candidates(info: ModelInfo, gpu_nodes: list[NodeGPUs]):
    """Layouts in the order of vLLM's rules; yields (rule text, layout)."""
    layers = info.num_layers
    # single-node layouts depend only on (GPU count, memory): one node of each kind, the
    # first in order (so the head when it is one), keeps 10,000 like nodes cheap
    kinds: list[NodeGPUs] = []
    seen: set[tuple[int, int]] = set()
    for n in gpu_nodes:
        if (n.count, n.memory_mib) not in seen:
            seen.add((n.count, n.memory_mib))
            kinds.append(n)
    for n in kinds:
        yield "fits on one GPU -> TP=1, PP=1", _Layout((n,), 1, 1, (1,))
    max_count = max(n.count for n in gpu_nodes)
    t = 2
    while t <= max_count:
        if _valid_tp(info, t):
            for n in kinds:
                if n.count >= t:
                    yield (f"too big for one GPU, fits on one node -> tensor parallel over "
                           f"{t} GPUs ({_tp_note(info, t)}), PP=1"), _Layout((n,), t, 1, (t,))
        t *= 2
    for p in range(2, min(max_count, layers) + 1):
        for n in kinds:
            if n.count >= p:
                yield (f"fits on one node, but no valid tensor-parallel size does "
                       f"({info.num_attention_heads} attention heads / {info.num_kv_heads} "
                       f"KV heads; {n.count} GPUs) -> TP=1, PP={p} (pipeline over GPUs)",
                       _Layout((n,), 1, p, (p,)))
    if len(gpu_nodes) < 2:
        return
    head, others = gpu_nodes[0], gpu_nodes[1:]
    same = [n for n in others if (n.count, n.memory_mib) == (head.count, head.memory_mib)]
    same_ids = {id(n) for n in same}
    rest = sorted((n for n in others if id(n) not in same_ids),
                  key=lambda n: (-(n.count * n.memory_mib), -n.memory_mib))
    ordered = [head] + same + rest
    g = head.count
    for k in range(2, min(len(ordered), layers) + 1):
        chosen = tuple(ordered[:k])
        g = min(g, ordered[k - 1].count)
        if _valid_tp(info, g):
            yield (f"too big for one node -> TP = GPUs per node ({g}; {_tp_note(info, g)}), "
                   f"PP = nodes ({k})"), _Layout(chosen, g, k, (g,) * k)
        else:
            total = sum(n.count for n in chosen)
            if total <= layers:
                yield (f"too big for one node and {g} GPUs per node is not a valid "
                       f"tensor-parallel size ({info.num_attention_heads} attention heads, "
                       f"{info.num_kv_heads} KV heads) -> TP=1, PP={total} (pipeline over "
                       f"every GPU)"), _Layout(chosen, 1, total,
                                               tuple(n.count for n in chosen))


def _cpu_candidates(info: ModelInfo, cpu_nodes: list[NodeGPUs]):
    known = all(n.ram_mib is not None for n in cpu_nodes)
    if not known:
        k = min(len(cpu_nodes), info.num_layers)
        yield ("CPU only and host RAM unknown -> one pipeline stage per given node"
               if k > 1 else "CPU only -> one node, TP=1, PP=1",
               _Layout(tuple(cpu_nodes[:k]), 1, k, (1,) * k, cpu=True))
        return
    seen: set[int | None] = set()
    for n in cpu_nodes:                  # one node per RAM size (see _gpu_candidates)
        if n.ram_mib in seen:
            continue
        seen.add(n.ram_mib)
        yield "CPU only; fits in one node's RAM -> TP=1, PP=1", _Layout((n,), 1, 1, (1,), True)
    head, others = cpu_nodes[0], sorted(cpu_nodes[1:], key=lambda n: -(n.ram_mib or 0))
    ordered = [head] + others
    for k in range(2, min(len(ordered), info.num_layers) + 1):
        yield (f"CPU only; too big for one node's RAM -> TP=1, PP={k} (one stage per "
               f"node)"), _Layout(tuple(ordered[:k]), 1, k, (1,) * k, True)


def _search(sizing: _Sizing, candidates) -> tuple[str, _Layout, _Fit] | None:
    for rule, layout in candidates:
        fit = sizing.check(layout)
        if fit.fits:
            return rule, layout, fit
    return None


def _closest(sizing: _Sizing, candidates) -> tuple[_Layout, _Fit]:
    """The layout missing by the least (relative), for a refusal's report."""
    best: tuple[float, _Layout, _Fit] | None = None
    for _rule, layout in candidates:
        fit = sizing.check(layout)
        score = fit.need / fit.usable if fit.usable > 0 else math.inf
        if best is None or score < best[0]:
            best = (score, layout, fit)
    assert best is not None
    return best[1], best[2]


# --------------------------------------------------------------------------- plan


def plan_model(info: ModelInfo, nodes: list[NodeGPUs], *, max_model_len: int | None = None,
               gpu_memory_utilization: float = 0.90, kv_cache_dtype: str = "auto",
               overhead_gb_per_gpu: float | None = None, concurrency: int = 1,
               strict: bool = True) -> Plan:
    """Place `info` on `nodes` (head first). See the module docstring for the rules.

    Raises PlanError for bad arguments, and (when `strict`) when nothing fits; with
    strict=False a non-fitting model returns the closest layout with fits=False and
    the suggestions filled in.
    """
    _validate(info, nodes, max_model_len, gpu_memory_utilization, concurrency,
              overhead_gb_per_gpu)
    reasons: list[str] = []
    warnings: list[str] = list(info.warnings)
    gpu_nodes = [n for n in nodes if n.count > 0]
    cpu = not gpu_nodes
    if gpu_nodes and len(gpu_nodes) < len(nodes):
        skipped = [n.host for n in nodes if n.count == 0]
        warnings.append("CPU-only nodes left out of the GPU plan: " + ", ".join(skipped))
        if nodes[0].count == 0:
            warnings.append(f"the head {nodes[0].host} has no GPU; vLLM must be started "
                            f"on a GPU node, so the plan serves from {gpu_nodes[0].host}")

    # -- context length
    model_max = info.max_position_embeddings
    if max_model_len is None:
        max_len = min(model_max or DEFAULT_MAX_MODEL_LEN_CAP, DEFAULT_MAX_MODEL_LEN_CAP)
        if model_max and model_max > max_len:
            reasons.append(f"max_model_len {max_len}: the model allows {model_max}; the "
                           f"estimate caps it at {DEFAULT_MAX_MODEL_LEN_CAP} (pass "
                           f"max_model_len to plan for longer prompts; launch vLLM with "
                           f"--max-model-len {max_len})")
        else:
            reasons.append(f"max_model_len {max_len} (the model's maximum)"
                           if model_max else
                           f"max_model_len {max_len} (the model does not say its maximum)")
    else:
        max_len = max_model_len
        reasons.append(f"max_model_len {max_len} (as asked)")
        if model_max and max_len > model_max:
            warnings.append(f"max_model_len {max_len} is above the model's "
                            f"max_position_embeddings {model_max}: vLLM refuses it unless "
                            f"the model has rope scaling or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")

    # -- weights as resident in memory
    weight_bytes = float(info.weight_bytes)
    what = f"{info.params / 1e9:.1f}B params, " if info.params else ""
    reasons.append(f"weights: {_gb(weight_bytes)} GiB ({what}{info.dtype}"
                   + (f", {info.params_source}" if info.params_source else "") + ")")
    if info.format == "hf" and not info.quantization and info.dtype == "float32" and not cpu:
        weight_bytes /= 2
        reasons.append(f"float32 checkpoint: vLLM's dtype=auto serves it as float16, so "
                       f"{_gb(weight_bytes)} GiB in GPU memory")
    if info.num_experts:
        reasons.append(f"mixture of experts ({info.num_experts} experts): every expert is "
                       f"resident, so all parameters count")
    if info.format == "gguf":
        warnings.append("GGUF in vLLM is experimental and single-file only (merge split "
                        "files with llama-gguf-split first); llama.cpp RPC splits layers "
                        "across hosts the way PP does here"
                        if len(info.files) > 1 else
                        "GGUF in vLLM is experimental; llama.cpp RPC splits layers across "
                        "hosts the way PP does here")

    # -- KV cache
    kv_bytes = _kv_dtype_bytes(kv_cache_dtype)
    per_tok = kv_bytes_per_token(info, kv_bytes)
    total_kv = kv_cache_bytes(info, max_len, concurrency, kv_bytes)
    if info.mla_kv_dim:
        shape = (f"{info.num_layers} layers x {info.mla_kv_dim} latent dims x "
                 f"{kv_bytes:g} bytes (MLA)")
    else:
        shape = (f"2 (K,V) x {info.num_layers} layers x {info.num_kv_heads} KV heads x "
                 f"{info.head_dim} head dim x {kv_bytes:g} bytes")
    reasons.append(f"KV cache: {per_tok / 1e6:.3f} MB per token ({shape}); {max_len} tokens "
                   f"x {concurrency} sequence{'s' if concurrency > 1 else ''} = "
                   f"{_gb(total_kv)} GiB before splitting")

    if overhead_gb_per_gpu is None:
        overhead_gb_per_gpu = DEFAULT_CPU_OVERHEAD_GB if cpu else DEFAULT_OVERHEAD_GB_PER_GPU
    sizing = _Sizing(info, weight_bytes, kv_bytes, max_len, concurrency,
                     gpu_memory_utilization, overhead_gb_per_gpu * GB)
    unit = "node" if cpu else "GPU"
    if cpu:
        reasons.append(f"no GPUs: CPU plan; usable per node = RAM x {CPU_RAM_FRACTION:.2f}; "
                       f"overhead allowance {_gb(overhead_gb_per_gpu * GB)} GiB per node")
    else:
        reasons.append(f"usable per GPU = memory x gpu_memory_utilization "
                       f"{gpu_memory_utilization:.2f}; overhead allowance "
                       f"{_gb(overhead_gb_per_gpu * GB)} GiB per GPU (CUDA context and "
                       f"graphs, NCCL buffers, activation peak)")

    def candidates():
        return (_cpu_candidates(info, nodes) if cpu else _gpu_candidates(info, gpu_nodes))

    found = _search(sizing, candidates())
    if found is None:
        layout, fit = _closest(sizing, candidates())
        plan = _make_plan(info, sizing, layout, fit, kv_cache_dtype, reasons, warnings)
        plan.fits = False
        plan.reasons.append(f"does not fit: the closest layout, {layout.describe()}, needs "
                            f"{_math(fit)} > {_gb(fit.usable)} GiB usable per {unit}")
        plan.alternatives = _suggestions(info, nodes, gpu_nodes, sizing)
        plan.suggestions = [a["text"] for a in plan.alternatives]
        if strict:
            raise PlanError(_refusal(info, plan, layout, fit, unit), plan=plan)
        return plan

    rule, layout, fit = found
    plan = _make_plan(info, sizing, layout, fit, kv_cache_dtype, reasons, warnings)
    tried = _first_failures(sizing, candidates(), layout)
    plan.reasons.extend(tried)
    plan.reasons.append(f"{layout.describe()}: per {unit} {_math(fit)} <= "
                        f"{_gb(fit.usable)} GiB usable -> fits")
    plan.reasons.append("rule: " + rule)
    _notes(plan, layout, fit, sizing, head=(nodes if cpu else gpu_nodes)[0].host)
    return plan


def _finite(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise PlanError(f"{name} must be a finite number from {lo:g} to {hi:g}, got {value!r}")


def _whole(name: str, value: int | None, lo: int, hi: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PlanError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _validate(info: ModelInfo, nodes: list[NodeGPUs], max_model_len: int | None,
              util: float, concurrency: int, overhead: float | None) -> None:
    """Every number checked: type, finite, range. Bad input is a PlanError (exit 2)."""
    if not nodes:
        raise PlanError("no nodes to plan on")
    if len(nodes) > MAX_NODES:
        raise PlanError(f"{len(nodes)} nodes: at most {MAX_NODES} can be planned")
    if isinstance(util, bool) or not isinstance(util, (int, float)) \
            or not math.isfinite(util) or not 0 < util <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    if max_model_len is not None and (isinstance(max_model_len, bool)
                                      or not isinstance(max_model_len, int)
                                      or max_model_len < 1):
        raise PlanError(f"max_model_len must be >= 1, got {max_model_len}")
    _whole("max_model_len", max_model_len, 1, MAX_CONTEXT, optional=True)
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency < 1:
        raise PlanError(f"concurrency must be >= 1, got {concurrency}")
    _whole("concurrency", concurrency, 1, MAX_CONCURRENCY)
    if overhead is not None:
        if isinstance(overhead, (int, float)) and math.isfinite(overhead) and overhead < 0:
            raise PlanError(f"overhead_gb_per_gpu must be >= 0, got {overhead}")
        _finite("overhead_gb_per_gpu", overhead, 0, 1e6)
    for n in nodes:
        if isinstance(n.count, int) and not isinstance(n.count, bool) and n.count < 0:
            raise PlanError(f"{n.host}: GPU count must be >= 0, got {n.count}")
        _whole(f"{n.host}: GPU count", n.count, 0, MAX_GPUS_PER_NODE)
        if n.count > 0 and (not isinstance(n.memory_mib, int) or n.memory_mib <= 0):
            raise PlanError(f"{n.host}: {n.count} GPUs but memory_mib={n.memory_mib}")
        if n.count > 0:
            _whole(f"{n.host}: GPU memory (MiB)", n.memory_mib, 1, MAX_GPU_MEMORY_MIB)
        _whole(f"{n.host}: RAM (MiB)", n.ram_mib, 0, MAX_RAM_MIB, optional=True)
    if min(info.num_layers, info.num_attention_heads, info.num_kv_heads, info.head_dim) < 1:
        raise PlanError(f"model {info.name}: layers, heads, KV heads and head_dim must be "
                        f">= 1")
    for what, value in (("layers", info.num_layers), ("attention heads",
                                                      info.num_attention_heads),
                        ("KV heads", info.num_kv_heads), ("head_dim", info.head_dim),
                        ("hidden size", info.hidden_size)):
        _whole(f"model {info.name}: {what}", value, 1, 1 << 24)
    _whole(f"model {info.name}: max_position_embeddings", info.max_position_embeddings, 1,
           MAX_CONTEXT, optional=True)
    _whole(f"model {info.name}: vocab size", info.vocab_size, 0, 1 << 31, optional=True)
    _whole(f"model {info.name}: MLA KV dims", info.mla_kv_dim, 1, 1 << 24, optional=True)
    _whole(f"model {info.name}: parameters", info.params, 0, MAX_WEIGHT_BYTES * 8,
           optional=True)
    if info.weight_bytes <= 0:
        raise PlanError(f"model {info.name}: weight size unknown (0 bytes)")
    _whole(f"model {info.name}: weight bytes", info.weight_bytes, 1, MAX_WEIGHT_BYTES)


def _kv_dtype_bytes(kv_cache_dtype: str) -> float:
    if kv_cache_dtype == "auto":
        return 2            # the serving dtype: float16/bfloat16 (float32 is served as fp16)
    try:
        return _KV_DTYPE_BYTES[kv_cache_dtype.lower()]
    except KeyError:
        raise PlanError(f"unknown kv_cache_dtype {kv_cache_dtype!r} (auto, "
                        + ", ".join(sorted(_KV_DTYPE_BYTES)) + ")") from None


def _math(fit: _Fit) -> str:
    return (f"{_gb(fit.weights)} weights + {_gb(fit.kv)} KV + {_gb(fit.overhead)} overhead = "
            f"{_gb(fit.need)} GiB")


def _make_plan(info: ModelInfo, sizing: _Sizing, layout: _Layout, fit: _Fit,
               kv_cache_dtype: str, reasons: list[str], warnings: list[str]) -> Plan:
    if layout.cpu:
        known = [h.ram_mib for h in layout.hosts if h.ram_mib is not None]
        total = sum(known) * MIB / GB
    else:
        total = sum(h.memory_mib * n for h, n in zip(layout.hosts, layout.per_node)) * MIB / GB
    free = fit.usable - fit.weights - fit.overhead
    per_seq = fit.kv / sizing.concurrency if sizing.concurrency else 0
    max_conc = max(0.0, free / per_seq) if per_seq > 0 and math.isfinite(free) else None
    devices = []
    for h, n in zip(layout.hosts, layout.per_node):
        if layout.cpu:
            usable = h.ram_mib * MIB * CPU_RAM_FRACTION if h.ram_mib is not None else math.inf
            devices.append(_device(h.host, "RAM", usable, fit.weights, fit.kv, fit.overhead,
                                   h.ram_mib))
            continue
        usable = h.memory_mib * MIB * sizing.util
        for i in range(min(n, 64)):          # bars for at most 64 GPUs of a host
            devices.append(_device(h.host, f"GPU{i}", usable, fit.weights, fit.kv,
                                   fit.overhead, h.memory_mib))
    return Plan(
        tensor_parallel_size=layout.tp, pipeline_parallel_size=layout.pp,
        nodes=[h.host for h in layout.hosts], gpus_used=0 if layout.cpu else layout.devices,
        weight_gb_per_gpu=fit.weights / GB, kv_cache_gb_per_gpu=fit.kv / GB,
        total_gpu_mem_gb=total, fits=True, reasons=list(reasons), warnings=list(warnings),
        model=info.name, device="cpu" if layout.cpu else "cuda",
        gpus_per_node={h.host: n for h, n in zip(layout.hosts, layout.per_node)},
        max_model_len=sizing.max_model_len, concurrency=sizing.concurrency,
        gpu_memory_utilization=sizing.util, kv_cache_dtype=kv_cache_dtype,
        overhead_gb_per_gpu=fit.overhead / GB,
        usable_gb_per_gpu=fit.usable / GB if math.isfinite(fit.usable) else math.inf,
        needed_gb_per_gpu=fit.need / GB,
        max_concurrency=max_conc if max_conc is None else round(max_conc, 2),
        devices=devices,
    )


def _first_failures(sizing: _Sizing, candidates, chosen: _Layout, limit: int = 4) -> list[str]:
    """One line per distinct smaller shape that was tried and did not fit."""
    out: list[str] = []
    seen: set[tuple[int, int, int]] = set()
    for _rule, layout in candidates:
        if layout == chosen:
            break
        shape = (layout.tp, layout.pp, len(layout.hosts))
        if shape in seen:
            continue
        seen.add(shape)
        fit = sizing.check(layout)
        out.append(f"tried {layout.describe()}: {_math(fit)} > {_gb(fit.usable)} GiB usable")
    if len(out) > limit:
        out = out[:limit - 1] + [f"... and {len(out) - limit + 1} more layouts that did not fit"]
    return out


def _notes(plan: Plan, layout: _Layout, fit: _Fit, sizing: _Sizing, head: str) -> None:
    if layout.hosts[0].host != head:
        plan.warnings.append(f"serves from {layout.hosts[0].host}, not the head {head}: "
                             f"{head} cannot hold it in this layout but "
                             f"{layout.hosts[0].host} can")
    if layout.cpu:
        plan.reasons.append(f"vLLM CPU backend: set VLLM_CPU_KVCACHE_SPACE to at least "
                            f"{math.ceil(fit.kv / 2**30)} GiB on each node")
        if any(h.ram_mib is None for h in layout.hosts):
            plan.warnings.append(f"host RAM unknown: fit not checked; each node needs about "
                                 f"{_gb(fit.need)} GiB of free RAM")
        return
    mems = {h.memory_mib for h in layout.hosts}
    if len(mems) > 1:
        smallest = min(layout.hosts, key=lambda h: h.memory_mib)
        plan.warnings.append(
            "GPUs differ in memory (" + ", ".join(f"{h.host}: {h.memory_gib:.1f} GiB"
                                                   for h in layout.hosts)
            + f"); vLLM splits evenly, so the plan uses the smallest ({smallest.host}, "
            f"{smallest.memory_gib:.1f} GiB) for every GPU")
    idle = {h.host: h.count - n for h, n in zip(layout.hosts, layout.per_node) if h.count > n}
    if len(layout.hosts) > 1 and idle:
        plan.warnings.append("nodes have different GPU counts; idle GPUs: "
                             + ", ".join(f"{h} ({n})" for h, n in idle.items()))
    elif len(layout.hosts) == 1 and idle:
        h = layout.hosts[0]
        plan.reasons.append(f"uses {layout.devices} of {h.count} GPUs on {h.host}; more GPUs "
                            f"(larger TP) would leave more room for KV cache, i.e. more "
                            f"concurrent requests")
    if layout.pp > 1 and len(layout.hosts) > 1:
        plan.warnings.append("pipeline stages talk over the network: check it with "
                             "`clusterctl netcheck` (10GbE is the practical minimum)")
    headroom = fit.usable - fit.need
    if headroom < TIGHT_HEADROOM * fit.usable:
        plan.warnings.append(f"tight: only {_gb(headroom)} GiB per GPU left after weights, "
                             f"KV for {sizing.max_model_len} tokens and overhead (about "
                             f"{plan.max_concurrency or 0:.1f} full-length sequences at once)")


# --------------------------------------------------------------------------- refusals


def _refusal(info: ModelInfo, plan: Plan, layout: _Layout, fit: _Fit, unit: str) -> str:
    lines = [f"{info.name} does not fit: the closest layout, {layout.describe()}, needs "
             f"{_math(fit)} per {unit} but has {_gb(fit.usable)} GiB usable."]
    if plan.suggestions:
        lines.append("What would fit:")
        lines += [f"  - {s}" for s in plan.suggestions]
    return "\n".join(lines)


def _gpu_word(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _alt(kind: str, text: str, **data) -> dict:
    """A suggestion as data: what to change, the layout it gives, and the sentence."""
    return {"kind": kind, **data, "text": text}


def _layout_data(layout: _Layout) -> dict:
    return {"tensor_parallel_size": layout.tp, "pipeline_parallel_size": layout.pp,
            "nodes": len(layout.hosts), "gpus": 0 if layout.cpu else layout.devices}


def _hypothetical_min(sizing: _Sizing, kind: NodeGPUs, max_nodes: int = 64) -> list[dict]:
    """How many GPUs of `kind` a fitting layout needs: one node, and/or like-nodes."""
    info = sizing.info
    out: list[dict] = []
    single: int | None = None
    t = 1
    while t <= max(MAX_SINGLE_NODE_GPUS, kind.count):
        if _valid_tp(info, t):
            node = NodeGPUs(kind.host, t, kind.memory_mib, kind.name)
            if sizing.check(_Layout((node,), t, 1, (t,))).fits:
                single = t
                break
        t *= 2
    gpus = (f"{kind.name} GPUs ({kind.memory_gib:.1f} GiB)" if kind.name
            else f"{kind.memory_gib:.1f} GiB GPUs")
    if single is not None:
        out.append(_alt("more_gpus", f"more GPUs: {single} x {gpus} on one node "
                                     f"(TP={single})",
                        tensor_parallel_size=single, pipeline_parallel_size=1, nodes=1,
                        gpus=single, gpu_memory_mib=kind.memory_mib))
    if single is None or single > kind.count:
        g = kind.count
        for k in range(2, min(max_nodes, info.num_layers) + 1):
            chosen = tuple(NodeGPUs(f"{kind.host}#{i}", g, kind.memory_mib) for i in range(k))
            if _valid_tp(info, g):
                layout = _Layout(chosen, g, k, (g,) * k)
            elif k * g <= info.num_layers:
                layout = _Layout(chosen, 1, k * g, (g,) * k)
            else:
                break
            if sizing.check(layout).fits:
                out.append(_alt("more_nodes", f"more nodes: {k} nodes like {kind.host} ({k} x "
                                              f"{g} = {k * g} x {gpus}, TP={layout.tp} "
                                              f"PP={layout.pp})",
                                **_layout_data(layout), gpu_memory_mib=kind.memory_mib))
                break
    return out


def _suggestions(info: ModelInfo, nodes: list[NodeGPUs], gpu_nodes: list[NodeGPUs],
                 sizing: _Sizing) -> list[dict]:
    out: list[dict] = []
    cpu = not gpu_nodes
    pool = nodes if cpu else gpu_nodes

    def cands(s: _Sizing):
        return _cpu_candidates(s.info, pool) if cpu else _gpu_candidates(s.info, pool)

    def variant(**changes) -> _Sizing:
        return _Sizing(**{**sizing.__dict__, **changes})

    # 1. more hardware of the kind the head has
    if cpu:
        need = sizing.weight_bytes / CPU_RAM_FRACTION
        out.append(_alt("more_ram", f"more RAM or nodes: the weights alone need {_gb(need)} "
                                    f"GiB of RAM in total at {CPU_RAM_FRACTION:.0%} usable",
                        ram_mib=math.ceil(need / MIB)))
    else:
        have = sum(n.count for n in gpu_nodes)
        hw = _hypothetical_min(sizing, gpu_nodes[0])
        if hw:
            hw[0]["text"] += f" (you have {have})"
        out += hw

    # 2. a shorter context
    best_len, best_layout = 0, None
    for _rule, layout in cands(sizing):
        n = sizing.largest_len(layout)
        if n > best_len:
            best_len, best_layout = n, layout
    if best_layout is not None and best_len >= 256 and best_len < sizing.max_model_len:
        rounded = best_len // 256 * 256
        out.append(_alt("max_model_len", f"lower max_model_len: --max-model-len {rounded} "
                                         f"fits with {best_layout.describe()} (KV for "
                                         f"{sizing.max_model_len} tokens does not)",
                        max_model_len=rounded, **_layout_data(best_layout)))

    # 3. cheaper KV cache / a little more memory
    if sizing.kv_dtype_bytes > 1:
        found = _search(variant(kv_dtype_bytes=1), cands(sizing))
        if found:
            out.append(_alt("kv_cache_dtype", f"--kv-cache-dtype fp8 halves the KV cache: "
                                              f"fits with {found[1].describe()}",
                            kv_cache_dtype="fp8", **_layout_data(found[1])))
    if not cpu and sizing.util < 0.95:
        found = _search(variant(util=0.95), cands(sizing))
        if found:
            out.append(_alt("gpu_memory_utilization",
                            f"--gpu-memory-utilization 0.95: fits with {found[1].describe()} "
                            f"(only if nothing else uses these GPUs)",
                            gpu_memory_utilization=0.95, **_layout_data(found[1])))

    # 4. a quantized variant
    params = info.params
    if params:
        current = sizing.weight_bytes
        variants = _GGUF_VARIANTS if info.format == "gguf" else _HF_VARIANTS
        shown = 0
        for label, key in variants:
            size = estimate_weight_bytes(params, key)
            if size >= current * 0.95:
                continue
            found = _search(variant(weight_bytes=float(size)), cands(sizing))
            if found:
                _rule, layout, _fit = found
                where = (f"{len(layout.hosts)} CPU node{'s' if len(layout.hosts) > 1 else ''}"
                         if layout.cpu else
                         f"{_gpu_word(layout.devices)} (TP={layout.tp} PP={layout.pp})")
                out.append(_alt("quantized", f"a quantized variant: {label} ~"
                                             f"{size / GIB:.0f} GiB would fit on {where}",
                                quantization=key, weight_bytes=size, **_layout_data(layout)))
                shown += 1
                if shown == 2:
                    break
    return out


# --------------------------------------------------------------------------- llama.cpp

LLAMA_MAX_DEVICES = 16                 # llama.cpp's device limit (ggml's scheduler too)
DEFAULT_LLAMACPP_OVERHEAD_GB = 1.0     # per device: compute buffer, RPC/CUDA context
# llama.cpp --cache-type-k/-v: bytes per element (quantized types: block bytes / 32)
_LLAMA_KV_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                   "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_LLAMA_KV_ALIASES = {"auto": "f16", "float16": "f16", "half": "f16", "bfloat16": "bf16",
                     "float32": "f32", "fp8": "q8_0", "int8": "q8_0"}


def _llama_kv_type(kv_cache_dtype: str) -> tuple[str, float]:
    key = kv_cache_dtype.strip().lower()
    key = _LLAMA_KV_ALIASES.get(key, key)
    if key not in _LLAMA_KV_TYPES:
        raise PlanError(f"unknown llama.cpp cache type {kv_cache_dtype!r} (auto, "
                        + ", ".join(_LLAMA_KV_TYPES) + ")")
    return key, _LLAMA_KV_TYPES[key]


@dataclass
class _LlamaDevice:
    host: str
    label: str                          # "GPU0", "RAM"
    usable: float                       # bytes; inf when unknown (host RAM not known)
    memory_mib: int | None
    rpc: bool
    gpu: bool
    layers: int = 0
    has_output: bool = False


def _llama_devices(nodes: list[NodeGPUs], util: float, rpc_on_head: bool) -> list[_LlamaDevice]:
    """Devices in llama.cpp's order: the RPC servers first (in --rpc order: every other
    host, then the serving host with --rpc-on-head), then the serving host's own GPUs.
    A GPU host's RPC server offers each GPU; a CPU host's offers its RAM."""
    server = nodes[0]
    rpc_hosts = list(nodes[1:]) + ([server] if rpc_on_head else [])
    devs: list[_LlamaDevice] = []

    def add(h: NodeGPUs, rpc: bool) -> None:
        if h.count > 0:
            for i in range(h.count):
                devs.append(_LlamaDevice(h.host, f"GPU{i}", h.memory_mib * MIB * util,
                                         h.memory_mib, rpc, True))
                if len(devs) > LLAMA_MAX_DEVICES:
                    return
        elif rpc:
            usable = h.ram_mib * MIB * CPU_RAM_FRACTION if h.ram_mib is not None else math.inf
            devs.append(_LlamaDevice(h.host, "RAM", usable, h.ram_mib, True, False))

    for h in rpc_hosts:
        add(h, True)
        if len(devs) > LLAMA_MAX_DEVICES:
            break
    if not rpc_on_head and len(devs) <= LLAMA_MAX_DEVICES:
        add(server, False)
    if not devs:                        # one CPU host, no RPC: everything in its RAM
        usable = (server.ram_mib * MIB * CPU_RAM_FRACTION if server.ram_mib is not None
                  else math.inf)
        devs.append(_LlamaDevice(server.host, "RAM", usable, server.ram_mib, False, False))
    return devs


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _assign_layers(devs: list[_LlamaDevice], shares: list[float], n_layer: int) -> None:
    """llama.cpp's rule: with every layer offloaded, layer i of n_layer + 1 (the output
    layer is the last) goes to the first device whose cumulative share exceeds
    i / (n_layer + 1)."""
    cum, acc = [], 0.0                  # in float32, as llama.cpp computes it
    for s in shares:
        acc = _f32(acc + _f32(s))
        cum.append(acc)
    cum = [_f32(c / acc) for c in cum]
    units = n_layer + 1
    for d in devs:
        d.layers, d.has_output = 0, False
    for il in range(units):
        x = _f32(il / units)
        idx = next((i for i, c in enumerate(cum) if c > x), len(devs) - 1)
        if il == n_layer:
            devs[idx].has_output = True
        else:
            devs[idx].layers += 1


def _choose_len(info: ModelInfo, max_model_len: int | None, reasons: list[str],
                warnings: list[str], flag: str = "--max-model-len") -> int:
    model_max = info.max_position_embeddings
    if max_model_len is None:
        max_len = min(model_max or DEFAULT_MAX_MODEL_LEN_CAP, DEFAULT_MAX_MODEL_LEN_CAP)
        if model_max and model_max > max_len:
            reasons.append(f"context {max_len}: the model allows {model_max}; the estimate "
                           f"caps it at {DEFAULT_MAX_MODEL_LEN_CAP} (pass --max-model-len to "
                           f"plan for longer prompts; the server gets {flag} {max_len})")
        else:
            reasons.append(f"context {max_len} (the model's maximum)" if model_max else
                           f"context {max_len} (the model does not say its maximum)")
        return max_len
    reasons.append(f"context {max_model_len} (as asked)")
    if model_max and max_model_len > model_max:
        warnings.append(f"context {max_model_len} is above the model's trained context "
                        f"{model_max}: quality drops past it unless the model has rope "
                        f"scaling")
    return max_model_len


def plan_llamacpp(info: ModelInfo, nodes: list[NodeGPUs], *, max_model_len: int | None = None,
                  gpu_memory_utilization: float = 0.90, kv_cache_dtype: str = "auto",
                  overhead_gb_per_gpu: float | None = None, concurrency: int = 1,
                  rpc_on_head: bool = False, tensor_split: list[float] | None = None,
                  strict: bool = True) -> Plan:
    """Place `info` the way llama.cpp RPC does (`clusterctl deploy-model --backend
    llamacpp`): the serving host (nodes[0]) runs llama-server, every other host an RPC
    server; layers go to the devices in proportion to --tensor-split, which this plan
    sets from each device's memory left after the overhead allowance.

    Per device: its layers' weights + the output layer on the last device + KV cache for
    its layers (context x concurrency tokens) + overhead <= memory x utilization (GPU)
    or RAM x 0.80 (CPU). Raises PlanError for bad arguments, and (when `strict`) when it
    does not fit; otherwise returns the plan with fits=False and what would fit.
    """
    _validate(info, nodes, max_model_len, gpu_memory_utilization, concurrency,
              overhead_gb_per_gpu)
    cache_type, kv_elem = _llama_kv_type(kv_cache_dtype)
    reasons: list[str] = []
    warnings: list[str] = list(info.warnings)
    if info.format != "gguf":
        warnings.append("llama.cpp serves GGUF files: convert this model with llama.cpp's "
                        "convert_hf_to_gguf.py first (sizes here assume the same dtype)")
    max_len = _choose_len(info, max_model_len, reasons, warnings, flag="--ctx-size")
    ctx = max_len * concurrency
    devs = _llama_devices(nodes, gpu_memory_utilization, rpc_on_head)
    if len(devs) > LLAMA_MAX_DEVICES:
        raise PlanError(f"llama.cpp uses at most {LLAMA_MAX_DEVICES} devices; these hosts "
                        f"offer more: plan on fewer hosts (--limit)")
    if overhead_gb_per_gpu is None:
        overhead_gb_per_gpu = DEFAULT_LLAMACPP_OVERHEAD_GB
    overhead = overhead_gb_per_gpu * GB

    # sizes: token embeddings stay on the server's CPU; the output matrix (or the tied
    # embeddings, duplicated) goes with the last layer
    weight_bytes = float(info.weight_bytes)
    embed = 0.0
    if info.vocab_size and info.params:
        embed = min(weight_bytes / 2, info.vocab_size * info.hidden_size * weight_bytes
                    / info.params)
    per_layer = max(0.0, weight_bytes - 2 * embed) / info.num_layers
    per_layer_token = kv_bytes_per_token(info, kv_elem) / info.num_layers
    what = f"{info.params / 1e9:.1f}B params, " if info.params else ""
    reasons.append(f"weights: {_gb(weight_bytes)} GiB ({what}{info.dtype}"
                   + (f", {info.params_source}" if info.params_source else "") + "); "
                   f"{_gb(per_layer)} GiB per layer, output layer {_gb(embed)} GiB; token "
                   f"embeddings ({_gb(embed)} GiB) stay in {nodes[0].host}'s RAM")
    reasons.append(f"KV cache ({cache_type}): {per_layer_token * info.num_layers / 1e6:.3f} "
                   f"MB per token over {info.num_layers} layers; --ctx-size {ctx} ("
                   f"{max_len} tokens x {concurrency} slot{'s' if concurrency > 1 else ''})")

    known = [d.usable - overhead for d in devs if math.isfinite(d.usable)]
    fallback = max(1.0, sum(known) / len(known)) if known else 1.0
    capacity = [max(0.0, d.usable - overhead) if math.isfinite(d.usable) else fallback
                for d in devs]
    if tensor_split is not None:
        if len(tensor_split) > len(devs) or not any(x > 0 for x in tensor_split) \
                or not all(math.isfinite(x) and x >= 0 for x in tensor_split):
            raise PlanError(f"--tensor-split needs at most {len(devs)} finite proportions "
                            f">= 0, one above 0 (devices: "
                            + ", ".join(f"{d.host}/{d.label}" for d in devs) + ")")
        shares = list(tensor_split) + [0.0] * (len(devs) - len(tensor_split))
        reasons.append("--tensor-split as given")
    else:
        shares = capacity if any(c > 0 for c in capacity) else [1.0] * len(devs)
        reasons.append("--tensor-split from each device's usable memory minus the "
                       f"{_gb(overhead)} GiB overhead allowance (llama.cpp's own default "
                       "splits by free memory)")
    reasons.append("llama.cpp order: RPC devices first (in --rpc order), then the serving "
                   "host's own GPUs; layer i goes to the first device whose cumulative "
                   "share passes i/(layers+1); the output layer is on the last device")
    _assign_layers(devs, shares, info.num_layers)

    def need(d: _LlamaDevice, layer_bytes: float = per_layer, tokens: int = ctx) -> float:
        if not d.layers and not d.has_output:
            return 0.0
        return (d.layers * layer_bytes + (embed if d.has_output else 0.0)
                + d.layers * per_layer_token * tokens + overhead)

    used = [d for d in devs if d.layers or d.has_output]
    fits = all(need(d) <= d.usable for d in used)
    tight = max(used, key=lambda d: need(d) / d.usable if d.usable > 0 else math.inf)
    if any(not math.isfinite(d.usable) for d in used):
        warnings.append("host RAM unknown for " + ", ".join(sorted({
            d.host for d in used if not math.isfinite(d.usable)})) + ": fit not checked there")
    if any(d.gpu for d in devs) and any(not d.gpu for d in used):
        warnings.append("CPU hosts take layers over RPC next to GPUs: they are much slower; "
                        "give them 0 in --tensor-split or leave them out with --limit")
    if any(d.rpc for d in used):
        warnings.append("layers on RPC servers talk over the network: check it with "
                        "`clusterctl netcheck`")

    per_seq = [d.layers * per_layer_token * max_len for d in used if d.layers]
    frees = [d.usable - d.layers * per_layer - (embed if d.has_output else 0) - overhead
             for d in used if d.layers]
    max_conc = None
    if per_seq and all(math.isfinite(f) for f in frees):
        max_conc = round(max(0.0, min(f / p for f, p in zip(frees, per_seq) if p > 0)), 2) \
            if any(p > 0 for p in per_seq) else None

    total = sum(d.memory_mib or 0 for d in used) * MIB
    gpus_per_node: dict[str, int] = {}
    for d in used:
        gpus_per_node[d.host] = gpus_per_node.get(d.host, 0) + (1 if d.gpu else 0)
    hosts = [nodes[0].host] + [h for h in dict.fromkeys(d.host for d in used)
                               if h != nodes[0].host]
    split = [round(x / GIB, 1) if tensor_split is None else x for x in shares]
    if tensor_split is None and not any(x > 0 for x in split):
        split = [1.0] * len(devs)
    plan = Plan(
        tensor_parallel_size=1, pipeline_parallel_size=len(used), nodes=hosts,
        gpus_used=sum(1 for d in used if d.gpu),
        weight_gb_per_gpu=(tight.layers * per_layer + (embed if tight.has_output else 0)) / GB,
        kv_cache_gb_per_gpu=tight.layers * per_layer_token * ctx / GB,
        total_gpu_mem_gb=total / GB, fits=fits, reasons=reasons, warnings=warnings,
        model=info.name, device="cuda" if any(d.gpu for d in used) else "cpu",
        gpus_per_node=gpus_per_node, max_model_len=max_len, concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization, kv_cache_dtype=cache_type,
        overhead_gb_per_gpu=overhead / GB,
        usable_gb_per_gpu=tight.usable / GB if math.isfinite(tight.usable) else math.inf,
        needed_gb_per_gpu=need(tight) / GB, max_concurrency=max_conc, backend="llamacpp",
        tensor_split=split,
        devices=[_device(d.host, d.label + (" (RPC)" if d.rpc else ""), d.usable,
                         d.layers * per_layer + (embed if d.has_output else 0),
                         d.layers * per_layer_token * ctx, overhead if d in used else 0.0,
                         d.memory_mib, d.layers, d.has_output)
                 for d in devs])
    reasons.append("layers per device: " + ", ".join(
        f"{d.host}/{d.label} {d.layers}" + ("+output" if d.has_output else "") for d in devs))
    if fits:
        reasons.append(f"tightest device {tight.host}/{tight.label}: {_gb(need(tight))} of "
                       f"{_gb(tight.usable)} GiB usable -> fits")
        return plan

    over = [d for d in used if need(d) > d.usable]
    plan.reasons.append("does not fit: " + ", ".join(
        f"{d.host}/{d.label} needs {_gb(need(d))} > {_gb(d.usable)} GiB usable" for d in over))
    alts: list[dict] = []
    # a shorter context with the same split
    room = [(d.usable - d.layers * per_layer - (embed if d.has_output else 0) - overhead,
             d.layers * per_layer_token * concurrency) for d in used]
    if all(r[0] > 0 for r in room):
        longest = int(min(r / t for r, t in room if t > 0)) if any(t > 0 for _, t in room) else 0
        if longest >= 256:
            rounded = longest // 256 * 256
            alts.append(_alt("max_model_len", f"lower the context: --max-model-len {rounded} "
                                              f"fits on the same devices",
                             max_model_len=rounded))
    if kv_elem > 1.1:
        q8 = _LLAMA_KV_TYPES["q8_0"]
        if all(need(d) - d.layers * per_layer_token * ctx * (1 - q8 / kv_elem) <= d.usable
               for d in used):
            alts.append(_alt("kv_cache_dtype", "--kv-cache-dtype q8_0 (llama.cpp "
                                               "--cache-type-k/v q8_0, needs flash "
                                               "attention) nearly halves the KV cache: fits",
                             kv_cache_dtype="q8_0"))
    if info.params:
        for label, key in _GGUF_VARIANTS:
            size = estimate_weight_bytes(info.params, key)
            if size >= weight_bytes * 0.95:
                continue
            scale = size / weight_bytes
            if all(need(d, per_layer * scale) - (embed * (1 - scale) if d.has_output else 0)
                   <= d.usable for d in used):
                alts.append(_alt("quantized", f"a quantized variant: {label} ~"
                                              f"{size / GIB:.0f} GiB would fit on the same "
                                              f"devices", quantization=key, weight_bytes=size))
                break
    short = sum(max(0.0, need(d) - d.usable) for d in used)
    alts.append(_alt("more_memory", f"more device memory: about {_gb(short)} GiB more across "
                                    f"the devices (another host, or bigger GPUs)",
                     memory_mib=math.ceil(short / MIB)))
    plan.alternatives = alts
    plan.suggestions = [a["text"] for a in alts]
    if strict:
        raise PlanError(f"{info.name} does not fit with llama.cpp on these devices:\n"
                        + "\n".join(f"  - {s}" for s in plan.suggestions), plan=plan)
    return plan


# --------------------------------------------------------------------------- second copy


@dataclass
class SecondCopy:
    """Whether a second copy of a running single-replica deployment fits in what its
    hosts have free now (the old copy keeps running until the new one answers).
    `why`: the figures that decided; `gpu_ids`: the free GPUs a vLLM copy gets."""

    fits: bool
    why: str
    gpu_ids: list[int] | None = None


def _free_of(free: dict, host: str):
    f = free.get(host)
    if f is None or f.ram_available_mib is None:
        return None
    return f


def llamacpp_second_copy(info: ModelInfo, hosts: list[str], free: dict, *,
                         max_model_len: int | None = None,
                         gpu_memory_utilization: float = 0.90,
                         kv_cache_dtype: str = "auto", rpc_on_head: bool = False,
                         tensor_split: list[float] | None = None) -> SecondCopy:
    """A llama.cpp group (llama-server on hosts[0], RPC servers on the others) placed
    again by plan_llamacpp on the memory the hosts have free now: MemAvailable for RAM
    devices (x 0.80, as the planner counts RAM) and, on GPU hosts, the least free GPU
    memory (x utilization). `free`: host -> commands.FreeMemory."""
    nodes = []
    for h in hosts:
        f = _free_of(free, h)
        if f is None:
            return SecondCopy(False, f"{h}: free memory unknown")
        gpus = list(f.gpu_free_mib or [])
        nodes.append(NodeGPUs(h, len(gpus), min(gpus) if gpus else 0,
                              ram_mib=f.ram_available_mib))
    try:
        plan = plan_llamacpp(info, nodes, max_model_len=max_model_len,
                             gpu_memory_utilization=gpu_memory_utilization,
                             kv_cache_dtype=kv_cache_dtype, rpc_on_head=rpc_on_head,
                             tensor_split=tensor_split, strict=False)
    except PlanError as exc:
        return SecondCopy(False, str(exc).splitlines()[0])
    used = [d for d in plan.devices if d["layers"] or d["output"]]
    figures = ", ".join(f"{d['host']}/{d['device']} {_gb(_need(d))} of "
                        f"{_gb(d['usable'])} GiB" for d in used)
    if plan.fits:
        return SecondCopy(True, f"a second copy fits in the free memory ({figures})")
    over = [d for d in used if _need(d) > d["usable"]]
    return SecondCopy(False, "a second copy does not fit in the free memory: " + ", ".join(
        f"{d['host']}/{d['device']} needs {_gb(_need(d))} GiB, "
        f"{_gb(d['usable'])} GiB usable" for d in over))


def _need(d: dict) -> float:
    return d["weights"] + d["kv_cache"] + d["overhead"]


def vllm_second_copy(plan: Plan, host: str, free: dict, *,
                     cpu_kvcache_gib: float | None = None) -> SecondCopy:
    """A one-node vLLM replica (`plan`) started again on `host` beside the running one.
    GPU: vLLM takes memory x utilization of each GPU it uses and will not start on a
    GPU with less free, so the copy needs TP x PP GPUs with that much free (the old
    copy's GPUs are not). CPU: weights + its KV space (VLLM_CPU_KVCACHE_SPACE) + the
    overhead allowance within MemAvailable x 0.80."""
    f = _free_of(free, host)
    if f is None:
        return SecondCopy(False, f"{host}: free memory unknown")
    if plan.device == "cuda":
        need = plan.tensor_parallel_size * plan.pipeline_parallel_size
        util = plan.gpu_memory_utilization
        frees, totals = list(f.gpu_free_mib or []), list(f.gpu_total_mib or [])
        ids = [i for i, (fr, tot) in enumerate(zip(frees, totals)) if fr >= util * tot]
        if len(ids) < need:
            return SecondCopy(False, f"a second copy needs {need} GPU(s) with "
                                     f"{util:.0%} of their memory free on {host}; "
                                     f"{len(ids)} of {len(frees)} have it (free MiB: "
                                     + ", ".join(map(str, frees)) + ")")
        return SecondCopy(True, f"a second copy fits on {host}'s free GPU(s) "
                                + ",".join(map(str, ids[:need])), gpu_ids=ids[:need])
    kv = (cpu_kvcache_gib * GIB) if cpu_kvcache_gib else plan.kv_cache_gb_per_gpu * GB
    need_bytes = plan.weight_gb_per_gpu * GB + kv + plan.overhead_gb_per_gpu * GB
    usable = f.ram_available_mib * MIB * CPU_RAM_FRACTION
    if need_bytes > usable:
        return SecondCopy(False, f"a second copy does not fit in the free memory: {host} "
                                 f"needs {_gb(need_bytes)} GiB, {_gb(usable)} GiB usable "
                                 f"(MemAvailable x {CPU_RAM_FRACTION:.2f})")
    return SecondCopy(True, f"a second copy fits in the free memory ({host} "
                            f"{_gb(need_bytes)} of {_gb(usable)} GiB)")


# --------------------------------------------------------------------------- render


def _gib(gb: float) -> float:
    """A Plan *_gb figure (10^9 bytes) in GiB."""
    return gb * GB / GIB


def render_plan(plan: Plan, *, bars: bool = True) -> str:
    """Plain-text summary for `clusterctl plan-model` / `deploy-model`. Sizes in GiB
    (2^30 bytes; nvidia-smi's MiB / 1024)."""
    unit = "node" if plan.device == "cpu" else "GPU"
    status = "FITS" if plan.fits else "DOES NOT FIT"
    lines = [f"Model: {plan.model}", f"Plan: {status}"
             + ("  (llama.cpp RPC)" if plan.backend == "llamacpp" else "")]
    if plan.backend == "llamacpp":
        where = ", ".join(plan.nodes)
        memory = (f"{_gib(plan.total_gpu_mem_gb):.1f} GiB RAM" if plan.device == "cpu" else
                  f"{_gpu_word(plan.gpus_used)}, {_gib(plan.total_gpu_mem_gb):.1f} GiB")
        lines.append(f"  llama.cpp: {plan.pipeline_parallel_size} device"
                     f"{'s' if plan.pipeline_parallel_size != 1 else ''} with layers "
                     f"({memory}) on {where}; serving host {plan.nodes[0]}")
    elif plan.device == "cpu":
        where = ", ".join(plan.nodes)
        lines.append(f"  CPU: tensor_parallel_size=1 pipeline_parallel_size="
                     f"{plan.pipeline_parallel_size} on {where}")
    else:
        where = ", ".join(f"{h} ({_gpu_word(n)})" for h, n in plan.gpus_per_node.items())
        lines.append(f"  tensor_parallel_size={plan.tensor_parallel_size} "
                     f"pipeline_parallel_size={plan.pipeline_parallel_size} "
                     f"({_gpu_word(plan.gpus_used)}, {_gib(plan.total_gpu_mem_gb):.1f} GiB) "
                     f"on {where}")
    usable = ("unknown" if not math.isfinite(plan.usable_gb_per_gpu)
              else f"{_gib(plan.usable_gb_per_gpu):.1f} GiB")
    which = "tightest device" if plan.backend == "llamacpp" else f"per {unit}"
    lines.append(f"  {which}: {_gib(plan.weight_gb_per_gpu):.1f} GiB weights + "
                 f"{_gib(plan.kv_cache_gb_per_gpu):.1f} GiB KV cache + "
                 f"{_gib(plan.overhead_gb_per_gpu):.1f} GiB overhead = "
                 f"{_gib(plan.needed_gb_per_gpu):.1f} GiB of {usable} usable")
    if plan.fits and plan.max_concurrency is not None:
        lines.append(f"  KV budget: ~{plan.max_concurrency:.1f} sequences of "
                     f"{plan.max_model_len} tokens at once")
    if plan.fits:
        label = "llama-server" if plan.backend == "llamacpp" else "vLLM"
        lines.append(f"  {label}: " + " ".join(plan.serve_args()))
    if bars and plan.devices:
        lines.append("Memory per device (GiB; # weights, = KV cache, + overhead, . free):")
        lines += ["  " + row for row in render_bars(plan)]
    for title, items in (("Why", plan.reasons), ("Warnings", plan.warnings),
                         ("What would fit", plan.suggestions)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {item}" for item in items]
    return "\n".join(lines)


def _device_rows(plan: Plan, limit: int = 32) -> list[tuple[str, dict]]:
    """Devices grouped (same host and figures: one row, 'GPU0-7'); at most `limit` rows."""
    rows: list[tuple[str, dict, int, int]] = []
    for d in plan.devices:
        key = (d["host"], d["usable"], d["weights"], d["kv_cache"], d["overhead"], d["layers"])
        if rows and rows[-1][1].get("_key") == key and d["device"].startswith("GPU") \
                and "(RPC)" not in d["device"]:
            label, first, start, count = rows[-1]
            rows[-1] = (label, first, start, count + 1)
            continue
        rows.append((d["device"], {**d, "_key": key}, len(rows), 1))
    out = []
    for label, d, _start, count in rows[:limit]:
        if count > 1:
            first = int(label[3:]) if label[3:].isdigit() else 0
            label = f"GPU{first}-{first + count - 1}"
        out.append((f"{d['host']} {label}", d))
    if len(rows) > limit:
        out.append((f"... {len(rows) - limit} more rows", {}))
    return out


def render_bars(plan: Plan, width: int = 40) -> list[str]:
    """One text bar per device: weights / KV cache / overhead against usable memory."""
    rows = _device_rows(plan)
    name_w = min(32, max((len(n) for n, _ in rows), default=0))
    out = []
    for name, d in rows:
        if not d:
            out.append(name)
            continue
        usable, w, kv, oh = d["usable"], d["weights"], d["kv_cache"], d["overhead"]
        need = w + kv + oh
        layers = ""
        if d.get("layers") is not None:
            layers = (f"  {d['layers']} layer{'s' if d['layers'] != 1 else ''}"
                      + (" + output" if d.get("output") else ""))
        if not math.isfinite(usable) or usable <= 0:
            out.append(f"{name[:name_w]:<{name_w}} [{'?' * width}] {need / GIB:.1f} GiB "
                       f"needed, usable unknown{layers}")
            continue
        scale = width / max(usable, need)
        cells = ["#"] * round(w * scale) + ["="] * round(kv * scale) + ["+"] * round(oh * scale)
        limit = round(usable * scale)
        cells = cells[:width] + ["."] * max(0, limit - len(cells))
        cells = (cells + [" "] * width)[:width]
        if need > usable and 0 < limit < width:
            cells[limit] = "|"                        # where usable memory ends
        bar = "".join(cells)
        over = f"  OVER by {(need - usable) / GIB:.1f}" if need > usable else ""
        out.append(f"{name[:name_w]:<{name_w}} [{bar}] {need / GIB:5.1f}/{usable / GIB:.1f} "
                   f"GiB{over}{layers}")
    return out


def _xml(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def render_svg(plan: Plan) -> str:
    """The per-device memory bars as a small standalone SVG (no dependencies)."""
    rows = [(n, d) for n, d in _device_rows(plan) if d]
    bar_w, left, top, row_h = 520, 230, 70, 26
    height = top + row_h * max(1, len(rows)) + 60
    biggest = max([max(d["usable"] if math.isfinite(d["usable"]) else 0,
                       d["weights"] + d["kv_cache"] + d["overhead"]) for _n, d in rows] or [1])
    scale = bar_w / biggest if biggest > 0 else 0
    title = (f"{plan.model}: {'FITS' if plan.fits else 'DOES NOT FIT'} "
             f"({'llama.cpp' if plan.backend == 'llamacpp' else 'vLLM'}, "
             f"context {plan.max_model_len})")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + bar_w + 170}" '
             f'height="{height}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="24" font-size="15" font-weight="bold">{_xml(title)}</text>',
             '<text x="10" y="44" fill="#555">memory per device in GiB (2^30 bytes); the '
             'outline is the usable memory</text>']
    colours = (("weights", "#4e79a7"), ("kv_cache", "#f28e2b"), ("overhead", "#bab0ac"))
    for i, (name, d) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="10" y="{y + 15}">{_xml(name[:34])}</text>')
        x = float(left)
        for key, colour in colours:
            w = d[key] * scale
            if w > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="16" '
                             f'fill="{colour}"><title>{key}: {d[key] / GIB:.2f} GiB</title>'
                             f'</rect>')
            x += w
        need = d["weights"] + d["kv_cache"] + d["overhead"]
        if math.isfinite(d["usable"]):
            parts.append(f'<rect x="{left}" y="{y + 1}" width="{d["usable"] * scale:.1f}" '
                         f'height="20" fill="none" stroke="#222"/>')
            label = f"{need / GIB:.1f} / {d['usable'] / GIB:.1f} GiB"
            colour = "#c00" if need > d["usable"] else "#222"
        else:
            label, colour = f"{need / GIB:.1f} GiB, usable unknown", "#222"
        parts.append(f'<text x="{left + bar_w + 8}" y="{y + 15}" fill="{colour}">'
                     f'{_xml(label)}</text>')
    y = top + row_h * max(1, len(rows)) + 20
    x = 10
    for key, colour in colours:
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{y + 10}">{key.replace("_", " ")}</text>')
        x += 110
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _r(x: float | None, nd: int = 2) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, nd)


def plan_to_dict(plan: Plan, info: ModelInfo | None = None) -> dict:
    """The plan as strict, versioned JSON data. Memory in GiB (2^30 bytes) rounded to
    0.01, GPU memory in MiB as nvidia-smi reports it; unknown values are null."""
    out: dict = {
        "schema_version": PLAN_SCHEMA_VERSION, "model": plan.model, "backend": plan.backend,
        "fits": plan.fits, "device": plan.device, "memory_unit": "GiB",
        "tensor_parallel_size": plan.tensor_parallel_size,
        "pipeline_parallel_size": plan.pipeline_parallel_size, "nodes": list(plan.nodes),
        "gpus_used": plan.gpus_used, "gpus_per_node": dict(plan.gpus_per_node),
        "max_model_len": plan.max_model_len, "concurrency": plan.concurrency,
        "max_concurrency": (None if plan.max_concurrency is None
                            else _r(max(0.0, plan.max_concurrency))),
        "gpu_memory_utilization": _r(plan.gpu_memory_utilization, 3),
        "kv_cache_dtype": plan.kv_cache_dtype,
        "total_memory_gib": _r(_gib(plan.total_gpu_mem_gb)),
        "per_device": {"weights_gib": _r(_gib(plan.weight_gb_per_gpu)),
                       "kv_cache_gib": _r(_gib(plan.kv_cache_gb_per_gpu)),
                       "overhead_gib": _r(_gib(plan.overhead_gb_per_gpu)),
                       "needed_gib": _r(_gib(plan.needed_gb_per_gpu)),
                       "usable_gib": _r(_gib(plan.usable_gb_per_gpu))},
        "devices": [{"host": d["host"], "device": d["device"], "memory_mib": d["memory_mib"],
                     "usable_gib": _r(d["usable"] / GIB), "weights_gib": _r(d["weights"] / GIB),
                     "kv_cache_gib": _r(d["kv_cache"] / GIB),
                     "overhead_gib": _r(d["overhead"] / GIB), "layers": d["layers"],
                     "output_layer": d["output"]}
                    for d in plan.devices],
        "tensor_split": plan.tensor_split,
        "vllm_args": plan.vllm_args() if plan.fits and plan.backend == "vllm" else None,
        "llamacpp_args": (plan.llamacpp_args() if plan.fits and plan.backend == "llamacpp"
                          else None),
        "reasons": list(plan.reasons), "warnings": list(plan.warnings),
        "alternatives": [{k: (_r(v / GIB) if k == "weight_bytes" else v)
                          for k, v in a.items()} for a in plan.alternatives],
    }
    for a in out["alternatives"]:
        if "weight_bytes" in a:
            a["weights_gib"] = a.pop("weight_bytes")
    if info is not None:
        out["model_info"] = {
            "name": info.name, "format": info.format, "params": info.params,
            "weight_bytes": info.weight_bytes, "weights_gib": _r(info.weight_bytes / GIB),
            "dtype": info.dtype, "quantization": info.quantization,
            "num_layers": info.num_layers, "num_attention_heads": info.num_attention_heads,
            "num_kv_heads": info.num_kv_heads, "hidden_size": info.hidden_size,
            "head_dim": info.head_dim, "vocab_size": info.vocab_size,
            "max_position_embeddings": info.max_position_embeddings,
            "architecture": info.architecture, "quant_bits": info.quant_bits,
            "num_experts": info.num_experts, "mla_kv_dim": info.mla_kv_dim,
            "params_source": info.params_source, "path": info.path,
            "warnings": list(info.warnings)}
    return out
