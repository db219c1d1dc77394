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

Memory model, per GPU (GB = 10^9 bytes throughout):

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
from dataclasses import dataclass, field

from ..errors import InputError
from .modelinfo import ModelInfo

__all__ = ["NodeGPUs", "Plan", "PlanError", "plan_model", "render_plan",
           "estimate_weight_bytes", "kv_cache_bytes", "bits_per_weight",
           "DEFAULT_MAX_MODEL_LEN_CAP", "DEFAULT_OVERHEAD_GB_PER_GPU", "GB"]

GB = 1e9
MIB = 1024 * 1024
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
    return f"{n / GB:.1f}"


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
                    f"({self.devices} x {h.memory_gb:.1f} GB)")
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
    for n in gpu_nodes:
        yield "fits on one GPU -> TP=1, PP=1", _Layout((n,), 1, 1, (1,))
    max_count = max(n.count for n in gpu_nodes)
    t = 2
    while t <= max_count:
        if _valid_tp(info, t):
            for n in gpu_nodes:
                if n.count >= t:
                    yield (f"too big for one GPU, fits on one node -> tensor parallel over "
                           f"{t} GPUs ({_tp_note(info, t)}), PP=1"), _Layout((n,), t, 1, (t,))
        t *= 2
    for p in range(2, min(max_count, layers) + 1):
        for n in gpu_nodes:
            if n.count >= p:
                yield (f"fits on one node, but no valid tensor-parallel size does "
                       f"({info.num_attention_heads} attention heads / {info.num_kv_heads} "
                       f"KV heads; {n.count} GPUs) -> TP=1, PP={p} (pipeline over GPUs)",
                       _Layout((n,), 1, p, (p,)))
    if len(gpu_nodes) < 2:
        return
    head, others = gpu_nodes[0], gpu_nodes[1:]
    same = [n for n in others if (n.count, n.memory_mib) == (head.count, head.memory_mib)]
    rest = sorted((n for n in others if n not in same),
                  key=lambda n: (-(n.count * n.memory_mib), -n.memory_mib))
    ordered = [head] + same + rest
    for k in range(2, len(ordered) + 1):
        chosen = tuple(ordered[:k])
        g = min(n.count for n in chosen)
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
    for n in cpu_nodes:
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
    reasons.append(f"weights: {_gb(weight_bytes)} GB ({what}{info.dtype}"
                   + (f", {info.params_source}" if info.params_source else "") + ")")
    if info.format == "hf" and not info.quantization and info.dtype == "float32" and not cpu:
        weight_bytes /= 2
        reasons.append(f"float32 checkpoint: vLLM's dtype=auto serves it as float16, so "
                       f"{_gb(weight_bytes)} GB in GPU memory")
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
                   f"{_gb(total_kv)} GB before splitting")

    if overhead_gb_per_gpu is None:
        overhead_gb_per_gpu = DEFAULT_CPU_OVERHEAD_GB if cpu else DEFAULT_OVERHEAD_GB_PER_GPU
    sizing = _Sizing(info, weight_bytes, kv_bytes, max_len, concurrency,
                     gpu_memory_utilization, overhead_gb_per_gpu * GB)
    unit = "node" if cpu else "GPU"
    if cpu:
        reasons.append(f"no GPUs: CPU plan; usable per node = RAM x {CPU_RAM_FRACTION:.2f}; "
                       f"overhead allowance {overhead_gb_per_gpu:g} GB per node")
    else:
        reasons.append(f"usable per GPU = memory x gpu_memory_utilization "
                       f"{gpu_memory_utilization:.2f}; overhead allowance "
                       f"{overhead_gb_per_gpu:g} GB per GPU (CUDA context and graphs, NCCL "
                       f"buffers, activation peak)")

    def candidates():
        return (_cpu_candidates(info, nodes) if cpu else _gpu_candidates(info, gpu_nodes))

    found = _search(sizing, candidates())
    if found is None:
        layout, fit = _closest(sizing, candidates())
        plan = _make_plan(info, sizing, layout, fit, kv_cache_dtype, reasons, warnings)
        plan.fits = False
        plan.reasons.append(f"does not fit: the closest layout, {layout.describe()}, needs "
                            f"{_math(fit)} > {_gb(fit.usable)} GB usable per {unit}")
        plan.suggestions = _suggestions(info, nodes, gpu_nodes, sizing)
        if strict:
            raise PlanError(_refusal(info, plan, layout, fit, unit), plan=plan)
        return plan

    rule, layout, fit = found
    plan = _make_plan(info, sizing, layout, fit, kv_cache_dtype, reasons, warnings)
    tried = _first_failures(sizing, candidates(), layout)
    plan.reasons.extend(tried)
    plan.reasons.append(f"{layout.describe()}: per {unit} {_math(fit)} <= "
                        f"{_gb(fit.usable)} GB usable -> fits")
    plan.reasons.append("rule: " + rule)
    _notes(plan, layout, fit, sizing, head=(nodes if cpu else gpu_nodes)[0].host)
    return plan


def _validate(info: ModelInfo, nodes: list[NodeGPUs], max_model_len: int | None,
              util: float, concurrency: int, overhead: float | None) -> None:
    if not nodes:
        raise PlanError("no nodes to plan on")
    if not 0 < util <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    if max_model_len is not None and max_model_len < 1:
        raise PlanError(f"max_model_len must be >= 1, got {max_model_len}")
    if concurrency < 1:
        raise PlanError(f"concurrency must be >= 1, got {concurrency}")
    if overhead is not None and overhead < 0:
        raise PlanError(f"overhead_gb_per_gpu must be >= 0, got {overhead}")
    for n in nodes:
        if n.count < 0:
            raise PlanError(f"{n.host}: GPU count must be >= 0, got {n.count}")
        if n.count > 0 and n.memory_mib <= 0:
            raise PlanError(f"{n.host}: {n.count} GPUs but memory_mib={n.memory_mib}")
    if min(info.num_layers, info.num_attention_heads, info.num_kv_heads, info.head_dim) < 1:
        raise PlanError(f"model {info.name}: layers, heads, KV heads and head_dim must be "
                        f">= 1")
    if info.weight_bytes <= 0:
        raise PlanError(f"model {info.name}: weight size unknown (0 bytes)")


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
            f"{_gb(fit.need)} GB")


def _make_plan(info: ModelInfo, sizing: _Sizing, layout: _Layout, fit: _Fit,
               kv_cache_dtype: str, reasons: list[str], warnings: list[str]) -> Plan:
    if layout.cpu:
        known = [h.ram_mib for h in layout.hosts if h.ram_mib is not None]
        total = sum(known) * MIB / GB
    else:
        total = sum(h.memory_mib * n for h, n in zip(layout.hosts, layout.per_node)) * MIB / GB
    free = fit.usable - fit.weights - fit.overhead
    per_seq = fit.kv / sizing.concurrency if sizing.concurrency else 0
    max_conc = (free / per_seq) if per_seq > 0 and math.isfinite(free) else None
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
        out.append(f"tried {layout.describe()}: {_math(fit)} > {_gb(fit.usable)} GB usable")
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
                                 f"{_gb(fit.need)} GB of free RAM")
        return
    mems = {h.memory_mib for h in layout.hosts}
    if len(mems) > 1:
        smallest = min(layout.hosts, key=lambda h: h.memory_mib)
        plan.warnings.append(
            "GPUs differ in memory (" + ", ".join(f"{h.host}: {h.memory_gb:.1f} GB"
                                                   for h in layout.hosts)
            + f"); vLLM splits evenly, so the plan uses the smallest ({smallest.host}, "
            f"{smallest.memory_gb:.1f} GB) for every GPU")
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
        plan.warnings.append(f"tight: only {_gb(headroom)} GB per GPU left after weights, "
                             f"KV for {sizing.max_model_len} tokens and overhead (about "
                             f"{plan.max_concurrency or 0:.1f} full-length sequences at once)")


# --------------------------------------------------------------------------- refusals


def _refusal(info: ModelInfo, plan: Plan, layout: _Layout, fit: _Fit, unit: str) -> str:
    lines = [f"{info.name} does not fit: the closest layout, {layout.describe()}, needs "
             f"{_math(fit)} per {unit} but has {_gb(fit.usable)} GB usable."]
    if plan.suggestions:
        lines.append("What would fit:")
        lines += [f"  - {s}" for s in plan.suggestions]
    return "\n".join(lines)


def _gpu_word(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _hypothetical_min(sizing: _Sizing, kind: NodeGPUs, max_nodes: int = 64) -> list[str]:
    """How many GPUs of `kind` a fitting layout needs: one node, and/or like-nodes."""
    info = sizing.info
    out: list[str] = []
    single: int | None = None
    t = 1
    while t <= max(MAX_SINGLE_NODE_GPUS, kind.count):
        if _valid_tp(info, t):
            node = NodeGPUs(kind.host, t, kind.memory_mib, kind.name)
            if sizing.check(_Layout((node,), t, 1, (t,))).fits:
                single = t
                break
        t *= 2
    gpus = (f"{kind.name} GPUs ({kind.memory_gb:.1f} GB)" if kind.name
            else f"{kind.memory_gb:.1f} GB GPUs")
    if single is not None:
        out.append(f"more GPUs: {single} x {gpus} on one node (TP={single})")
    if single is None or single > kind.count:
        g = kind.count
        for k in range(2, max_nodes + 1):
            chosen = tuple(NodeGPUs(f"{kind.host}#{i}", g, kind.memory_mib) for i in range(k))
            if _valid_tp(info, g):
                layout = _Layout(chosen, g, k, (g,) * k)
            elif k * g <= info.num_layers:
                layout = _Layout(chosen, 1, k * g, (g,) * k)
            else:
                break
            if sizing.check(layout).fits:
                out.append(f"more nodes: {k} nodes like {kind.host} ({k} x {g} = {k * g} "
                           f"x {gpus}, TP={layout.tp} PP={layout.pp})")
                break
    return out


def _suggestions(info: ModelInfo, nodes: list[NodeGPUs], gpu_nodes: list[NodeGPUs],
                 sizing: _Sizing) -> list[str]:
    out: list[str] = []
    cpu = not gpu_nodes
    pool = nodes if cpu else gpu_nodes

    def cands(s: _Sizing):
        return _cpu_candidates(s.info, pool) if cpu else _gpu_candidates(s.info, pool)

    def variant(**changes) -> _Sizing:
        return _Sizing(**{**sizing.__dict__, **changes})

    # 1. more hardware of the kind the head has
    if cpu:
        need = sizing.weight_bytes / CPU_RAM_FRACTION
        out.append(f"more RAM or nodes: the weights alone need {_gb(need)} GB of RAM in "
                   f"total at {CPU_RAM_FRACTION:.0%} usable")
    else:
        have = sum(n.count for n in gpu_nodes)
        hw = _hypothetical_min(sizing, gpu_nodes[0])
        if hw:
            hw[0] += f" (you have {have})"
        out += hw

    # 2. a shorter context
    best_len, best_layout = 0, None
    for _rule, layout in cands(sizing):
        n = sizing.largest_len(layout)
        if n > best_len:
            best_len, best_layout = n, layout
    if best_layout is not None and best_len >= 256 and best_len < sizing.max_model_len:
        rounded = best_len // 256 * 256
        out.append(f"lower max_model_len: --max-model-len {rounded} fits with "
                   f"{best_layout.describe()} (KV for {sizing.max_model_len} tokens does not)")

    # 3. cheaper KV cache / a little more memory
    if sizing.kv_dtype_bytes > 1:
        found = _search(variant(kv_dtype_bytes=1), cands(sizing))
        if found:
            out.append(f"--kv-cache-dtype fp8 halves the KV cache: fits with "
                       f"{found[1].describe()}")
    if not cpu and sizing.util < 0.95:
        found = _search(variant(util=0.95), cands(sizing))
        if found:
            out.append(f"--gpu-memory-utilization 0.95: fits with {found[1].describe()} "
                       f"(only if nothing else uses these GPUs)")

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
                out.append(f"a quantized variant: {label} ~{size / GB:.0f} GB would fit on "
                           f"{where}")
                shown += 1
                if shown == 2:
                    break
    return out


# --------------------------------------------------------------------------- render


def render_plan(plan: Plan) -> str:
    """Plain-text summary for `clusterctl plan-model` / `deploy-model`."""
    unit = "node" if plan.device == "cpu" else "GPU"
    status = "FITS" if plan.fits else "DOES NOT FIT"
    lines = [f"Model: {plan.model}", f"Plan: {status}"]
    if plan.device == "cpu":
        where = ", ".join(plan.nodes)
        lines.append(f"  CPU: tensor_parallel_size=1 pipeline_parallel_size="
                     f"{plan.pipeline_parallel_size} on {where}")
    else:
        where = ", ".join(f"{h} ({_gpu_word(n)})" for h, n in plan.gpus_per_node.items())
        lines.append(f"  tensor_parallel_size={plan.tensor_parallel_size} "
                     f"pipeline_parallel_size={plan.pipeline_parallel_size} "
                     f"({_gpu_word(plan.gpus_used)}, {plan.total_gpu_mem_gb:.1f} GB) on {where}")
    usable = ("unknown" if not math.isfinite(plan.usable_gb_per_gpu)
              else f"{plan.usable_gb_per_gpu:.1f} GB")
    lines.append(f"  per {unit}: {plan.weight_gb_per_gpu:.1f} GB weights + "
                 f"{plan.kv_cache_gb_per_gpu:.1f} GB KV cache + "
                 f"{plan.overhead_gb_per_gpu:.1f} GB overhead = "
                 f"{plan.needed_gb_per_gpu:.1f} GB of {usable} usable")
    if plan.fits and plan.max_concurrency is not None:
        lines.append(f"  KV budget: ~{plan.max_concurrency:.1f} sequences of "
                     f"{plan.max_model_len} tokens at once")
    if plan.fits:
        lines.append("  vLLM: " + " ".join(plan.vllm_args()))
    for title, items in (("Why", plan.reasons), ("Warnings", plan.warnings),
                         ("What would fit", plan.suggestions)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {item}" for item in items]
    return "\n".join(lines)
