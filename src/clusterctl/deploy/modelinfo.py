"""Read a model's size and shape from disk without loading its weights.

Two layouts are understood:

* a Hugging Face folder: ``config.json`` (nested ``text_config`` / ``llm_config`` /
  ``language_config`` for multimodal models) plus ``*.safetensors`` shards (the
  8-byte little-endian header length + JSON header of each shard is read for exact
  dtypes and parameter counts) or ``pytorch_model*.bin`` files (sized only);
* a GGUF file, or a folder holding one GGUF model (possibly split into
  ``-00001-of-0000N.gguf`` parts).

GGUF headers are parsed here from a memory map, using the ``gguf`` package's
constants (value types, quantization block sizes, file types).
``gguf.GGUFReader`` is not used: it turns every element of every metadata array
into numpy objects, and a 150k-token vocabulary takes seconds to load that way.
This parser skips arrays it does not need and only counts their elements.

Every file read is untrusted. Each is checked to be a regular file (``os.stat``
before it is opened, and again on the open descriptor, so a FIFO or device named
``model.safetensors`` never blocks), its header or JSON is size-capped, JSON nesting is
bounded, and every field used is checked for type, finiteness and range. Shard names
from an index must stay inside the model folder. Every expected problem (missing file,
bad JSON, not a GGUF, truncated header, a field out of range) is an ``InputError``
(exit 2) that names the file and, for a field, its key.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["ModelInfo", "read_model_info", "read_safetensors_header", "read_gguf_header",
           "GGUFHeader", "estimate_params_from_config"]


@dataclass
class ModelInfo:
    """What the planner needs to know about a model. Sizes are bytes."""

    name: str
    format: str                        # "hf" | "gguf"
    params: int | None                 # parameter count (None if unknown)
    weight_bytes: int                  # bytes of weights on disk
    dtype: str                         # "bfloat16", "float16", "float32", "Q4_K_M", ...
    quantization: str | None           # "awq", "gptq", "fp8", "Q4_K_M", ... or None
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    hidden_size: int
    head_dim: int
    vocab_size: int | None
    max_position_embeddings: int | None
    files: list[str] = field(default_factory=list)   # weight/config files, relative to `path`
    # --- extras (all optional) ---
    path: str = ""                     # the folder (or GGUF file's folder) read
    architecture: str | None = None    # "LlamaForCausalLM", "llama", ...
    quant_bits: int | None = None      # 4, 8, ... when quantized and known
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    num_experts: int | None = None     # MoE routed experts
    mla_kv_dim: int | None = None      # MLA models: kv_lora_rank + rope dim, cached per layer
    params_source: str = ""            # "safetensors headers", "gguf tensors", "config estimate"
    warnings: list[str] = field(default_factory=list)

    @property
    def weight_gb(self) -> float:
        return self.weight_bytes / 1e9


def read_model_info(path: str | Path) -> ModelInfo:
    """Read a HF folder, a GGUF file, or a folder holding one GGUF model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("model path does not exist", file=str(p))
    if not p.is_dir():
        _stat_regular(p)                  # a FIFO or device is refused, never opened
    if p.is_file():
        if p.suffix.lower() == ".gguf" or _has_gguf_magic(p):
            return _read_gguf_model(p)
        if p.name == "config.json":
            return _read_hf_folder(p.parent)
        raise InputError("not a model: expected a .gguf file or a folder with config.json",
                         file=str(p))
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    ggufs = sorted(x for x in p.glob("*.gguf") if x.is_file())
    if os.path.lexists(p / "config.json") and (has_weights or not ggufs):
        return _read_hf_folder(p)
    if ggufs:
        return _read_gguf_model(_pick_gguf(p, ggufs))
    raise InputError("no config.json (Hugging Face model) and no .gguf file in this folder",
                     file=str(p))


# --------------------------------------------------------------------------- fields and limits

_NESTED_CONFIG_KEYS = ("text_config", "llm_config", "language_config")

_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv",
                     "multi_query_group_num"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "max_seq_len",
                                "seq_length", "max_sequence_length"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
}

# safetensors dtype name -> (bytes per element, torch-style name)
_ST_DTYPES: dict[str, tuple[float, str]] = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"),
    "I8": (1, "int8"), "U8": (1, "uint8"), "U16": (2, "uint16"), "U32": (4, "uint32"),
    "U64": (8, "uint64"), "BOOL": (1, "bool"), "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"), "F8_E8M0": (1, "float8_e8m0fnu"),
}

_MAX_ST_HEADER = 100 * 1024 * 1024       # safetensors' own limit for the JSON header
_MAX_CONFIG_BYTES = 16 * 1024 * 1024     # config.json (real ones are a few KB)
_MAX_INDEX_BYTES = 64 * 1024 * 1024      # *.index.json (DeepSeek-V3's is ~9 MB)
_MAX_JSON_DEPTH = 32                     # nesting of config/index JSON (real: <= 5)
_MAX_SHARDS = 100_000

# Sane upper bounds for the shape fields (the largest real models are far below).
_MAX_LAYERS = 10_000
_MAX_HEADS = 65_536
_MAX_HIDDEN = 1 << 24
_MAX_HEAD_DIM = 1 << 16
_MAX_VOCAB = 1 << 28
_MAX_CONTEXT = 1 << 31
_MAX_EXPERTS = 1 << 16
_MAX_INTERMEDIATE = 1 << 26
_MAX_DIM = 1 << 40                       # one tensor dimension
_MAX_TENSOR_BYTES = 1 << 50              # one tensor (1 PiB)
_MAX_TENSOR_RANK = 16


# --------------------------------------------------------------------------- reading files


def _stat_regular(path: Path) -> os.stat_result:
    """os.stat of `path` (following links); InputError unless it is a regular file."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file (a folder, FIFO, socket or device): not read",
                         file=str(path))
    return st


def _open_regular(path: Path):
    """Open a regular file for reading without ever blocking: stat first, then open
    non-blocking and check the descriptor again (the name may have been swapped)."""
    _stat_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError("not a regular file (a folder, FIFO, socket or device): not "
                             "read", file=str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_capped(path: Path, cap: int, what: str) -> bytes:
    size = _stat_regular(path).st_size
    if size > cap:
        raise InputError(f"{what} is {size} bytes, over the {cap // 2**20} MiB limit "
                         f"(corrupt, or not a {what}?)", file=str(path))
    try:
        with _open_regular(path) as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    if len(data) > cap:
        raise InputError(f"{what} is over the {cap // 2**20} MiB limit", file=str(path))
    return data


def _json_depth_ok(obj: Any, limit: int) -> bool:
    """True when `obj` nests at most `limit` containers deep (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def _parse_json(data: bytes, path: Path, what: str = "JSON",
                depth: int = _MAX_JSON_DEPTH) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} is not UTF-8 text ({e.reason})", file=str(path)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", file=str(path), line=e.lineno,
                         column=e.colno) from None
    except RecursionError:
        raise InputError(f"invalid {what}: nested deeper than {depth} levels",
                         file=str(path)) from None
    except ValueError:                           # e.g. an integer of 5000 digits
        raise InputError(f"invalid {what}: a number too long to read", file=str(path)) from None
    if not _json_depth_ok(obj, depth):
        raise InputError(f"invalid {what}: nested deeper than {depth} levels",
                         file=str(path))
    return obj


def _load_json(path: Path, cap: int = _MAX_CONFIG_BYTES, what: str = "JSON file") -> Any:
    return _parse_json(_read_capped(path, cap, what), path, what)


def _show(value: Any) -> str:
    """A short, safe description of a bad value for a message."""
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_field(value: Any, *, file: str, key: str, lo: int = 1, hi: int,
               required: bool = False) -> int | None:
    """`value` as an int in [lo, hi]; None when absent and not required. Whole finite
    floats (2048.0) are accepted; bools, strings, NaN, inf and fractions are not."""
    if value is None:
        if required:
            raise InputError(f"missing {key} (need an integer from {lo} to {hi})",
                             file=file, key=key)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{key} is {_show(value)}, not a number (need an integer from "
                         f"{lo} to {hi})", file=file, key=key)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InputError(f"{key} is {value!r} (need an integer from {lo} to {hi})",
                             file=file, key=key)
        value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"{key} is {value}, out of range (need an integer from {lo} to "
                         f"{hi})", file=file, key=key)
    return value


def _int_or_none(value: Any, lo: int, hi: int) -> int | None:
    """Lenient twin of _int_field: None for anything that is not a whole number in range
    (a list of them: the largest)."""
    if isinstance(value, list) and 0 < len(value) <= _MAX_LAYERS:
        items = [_int_or_none(v, 0, hi) for v in value if not isinstance(v, list)]
        if len(items) != len(value) or any(v is None for v in items):
            return None
        value = max(v for v in items if v is not None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    return value if lo <= value <= hi else None


# --------------------------------------------------------------------------- HF folders


def _first(cfg: dict, key: str) -> Any:
    for alias in _ALIASES[key]:
        if cfg.get(alias) is not None:
            return cfg[alias]
    return None


def _first_alias(cfg: dict, key: str) -> str:
    for alias in _ALIASES[key]:
        if cfg.get(alias) is not None:
            return alias
    return _ALIASES[key][0]


def _nested_key(raw: dict) -> str | None:
    """The nested text config merged over the top level (multimodal models), if any."""
    if _first(raw, "num_layers") is not None:
        return None
    for key in _NESTED_CONFIG_KEYS:
        if isinstance(raw.get(key), dict):
            return key
    return None


def _flatten_config(raw: dict) -> dict:
    """Merge a nested text config over the top level (multimodal models)."""
    cfg = dict(raw)
    nested = _nested_key(raw)
    if nested:
        cfg.update({k: v for k, v in raw[nested].items() if v is not None})
    return cfg


def _dtype_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    v = value.removeprefix("torch.").lower()
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "float": "float32"}.get(v, v)


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a .safetensors file (8-byte LE length, then JSON)."""
    p = Path(path)
    try:
        with _open_regular(p) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise InputError("not a safetensors file (shorter than 8 bytes)", file=str(p))
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_ST_HEADER:
                raise InputError(f"not a safetensors file, or a hostile one: header length "
                                 f"{n} bytes is over the {_MAX_ST_HEADER // 2**20} MiB "
                                 f"limit", file=str(p), key="header length")
            if n == 0 or 8 + n > size:
                raise InputError(f"not a safetensors file (header length {n} does not fit "
                                 f"in a {size}-byte file)", file=str(p), key="header length")
            raw = f.read(n)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(p)) from None
    try:
        text = raw.decode("utf-8")
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not a safetensors file (header is not JSON: {e})",
                         file=str(p)) from None
    except RecursionError:
        raise InputError("not a safetensors file (header JSON nested too deeply)",
                         file=str(p)) from None
    except ValueError:
        raise InputError("not a safetensors file (header holds a number too long to read)",
                         file=str(p)) from None
    if not isinstance(header, dict):
        raise InputError("not a safetensors file (header is not a JSON object)", file=str(p))
    return header


@dataclass
class _TensorTotals:
    elements: int = 0
    data_bytes: int = 0
    by_dtype: dict[str, int] = field(default_factory=dict)


def _safetensors_totals(header: dict, path: Path, totals: _TensorTotals) -> None:
    """Add one shard's tensors to `totals`, checking every entry field by field.

    The data area itself is not checked against the file size: a remote model is read
    from its headers alone (see models.build_shadow)."""
    where = str(path)
    for name, t in header.items():
        label = name if len(name) <= 80 else name[:77] + "..."
        if name == "__metadata__":
            continue
        if not isinstance(t, dict):
            raise InputError(f"tensor {label!r} is {_show(t)}, not an object",
                             file=where, key=label)
        dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if not isinstance(dtype, str) or not 0 < len(dtype) <= 32:
            raise InputError(f"tensor {label!r}: dtype is {_show(dtype)} (need a name like "
                             f"BF16)", file=where, key=f"{label}.dtype")
        if not isinstance(shape, list) or len(shape) > _MAX_TENSOR_RANK:
            raise InputError(f"tensor {label!r}: shape is {_show(shape)} (need a list of at "
                             f"most {_MAX_TENSOR_RANK} sizes)", file=where,
                             key=f"{label}.shape")
        n = 1
        for d in shape:
            n *= _int_field(d, file=where, key=f"{label}.shape", lo=0, hi=_MAX_DIM,
                            required=True)
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise InputError(f"tensor {label!r}: data_offsets is {_show(offsets)} (need "
                             f"[start, end])", file=where, key=f"{label}.data_offsets")
        start, end = (_int_field(o, file=where, key=f"{label}.data_offsets", lo=0,
                                 hi=_MAX_TENSOR_BYTES * 1024, required=True) for o in offsets)
        if end < start or end - start > _MAX_TENSOR_BYTES:
            raise InputError(f"tensor {label!r}: data_offsets [{start}, {end}] is not a "
                             f"byte range of at most {_MAX_TENSOR_BYTES} bytes", file=where,
                             key=f"{label}.data_offsets")
        known = _ST_DTYPES.get(dtype)
        if known is not None and n * known[0] != end - start:
            raise InputError(f"tensor {label!r}: shape {shape} of {dtype} is "
                             f"{int(n * known[0])} bytes but data_offsets span "
                             f"{end - start}", file=where, key=f"{label}.data_offsets")
        totals.elements += n
        totals.data_bytes += end - start
        totals.by_dtype[dtype] = totals.by_dtype.get(dtype, 0) + end - start


def _safe_shard_name(name: Any, suffix: str) -> bool:
    """A shard named by an index: relative, no '..', no backslash or NUL, right suffix."""
    if not isinstance(name, str) or not 0 < len(name) <= 1024 or not name.endswith(suffix):
        return False
    if "\\" in name or "\0" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def _weight_files(folder: Path) -> tuple[list[Path], dict | None, int, list[str]]:
    """Weight files of a HF folder, the index JSON if any, how many shards the index
    lists that are not on disk, and warnings."""
    warnings: list[str] = []
    for index_name, kind in (("model.safetensors.index.json", "safetensors"),
                             ("pytorch_model.bin.index.json", "bin")):
        index_path = folder / index_name
        if not os.path.lexists(index_path):
            continue
        index = _load_json(index_path, _MAX_INDEX_BYTES, "index file")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise InputError("index has no \"weight_map\" object", file=str(index_path),
                             key="weight_map")
        suffix = "." + kind
        for tensor, shard in weight_map.items():
            if not _safe_shard_name(shard, suffix):
                label = tensor if len(tensor) <= 80 else tensor[:77] + "..."
                raise InputError(f"weight_map[{label!r}] is {_show(shard)}: a shard must be "
                                 f"a *{suffix} file inside the model folder (no absolute "
                                 f"path, no '..')", file=str(index_path),
                                 key=f"weight_map.{label}")
        names = sorted(set(weight_map.values()))
        if len(names) > _MAX_SHARDS:
            raise InputError(f"index lists {len(names)} shards (more than {_MAX_SHARDS})",
                             file=str(index_path), key="weight_map")
        present = []
        for n in names:
            shard = folder / n
            if os.path.lexists(shard):
                _stat_regular(shard)                    # a FIFO or folder is an error
                present.append(shard)
        if len(present) < len(names):
            warnings.append(f"{len(names) - len(present)} of {len(names)} {kind} shards "
                            f"listed in {index_name} are not on disk (not downloaded yet?)")
        return present, index, len(names) - len(present), warnings
    st = sorted(folder.glob("*.safetensors"))
    if st:
        consolidated = [x for x in st if x.name.startswith("consolidated")]
        if consolidated and len(consolidated) < len(st):
            st = [x for x in st if x not in consolidated]
            warnings.append("ignored " + ", ".join(x.name for x in consolidated)
                            + " (Mistral-format copy of the same weights)")
        return st, None, 0, warnings
    bins = sorted(x for x in folder.glob("*.bin")
                  if re.match(r"(pytorch_)?model[-.\w]*\.bin$", x.name))
    return bins, None, 0, warnings


def _quant_from_config(cfg: dict) -> tuple[str | None, int | None]:
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if not isinstance(qc, dict):
        return None, None
    method = qc.get("quant_method") or qc.get("quant_type") or "unknown"
    method = method.lower()[:64] if isinstance(method, str) else "unknown"
    bits: Any = qc.get("bits") or qc.get("w_bit") or qc.get("weight_bits")
    if bits is None:
        if qc.get("load_in_4bit"):
            bits = 4
        elif qc.get("load_in_8bit") or method.startswith("fp8") or method == "int8":
            bits = 8
        elif method in ("mxfp4", "nvfp4"):
            bits = 4
    return method, _int_or_none(bits, 1, 64)


def estimate_params_from_config(cfg: dict) -> int | None:
    """Parameter count of a llama-style decoder (dense or MoE) from its config.

    embeddings (x2 unless tied) + layers * (attention + MLP); the MLP is gated (3
    matrices). Norms and biases are ignored (well under 0.1%). None when a field it
    needs is missing or not a whole number in a sane range.
    """
    if not isinstance(cfg, dict):
        return None
    cfg = _flatten_config(cfg)
    h = _int_or_none(_first(cfg, "hidden_size"), 1, _MAX_HIDDEN)
    layers = _int_or_none(_first(cfg, "num_layers"), 1, _MAX_LAYERS)
    heads = _int_or_none(_first(cfg, "num_attention_heads"), 1, _MAX_HEADS)
    vocab = _int_or_none(_first(cfg, "vocab_size"), 1, _MAX_VOCAB)
    inter = _int_or_none(_first(cfg, "intermediate_size"), 1, _MAX_INTERMEDIATE)
    if h is None or layers is None or heads is None or vocab is None or inter is None:
        return None
    kv = _int_or_none(_first(cfg, "num_kv_heads"), 1, _MAX_HEADS) or heads
    hd = _int_or_none(cfg.get("head_dim"), 1, _MAX_HEAD_DIM) or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2
    if _int_or_none(cfg.get("kv_lora_rank"), 1, _MAX_HIDDEN):   # MLA (DeepSeek-V2/V3): rough
        attn = attn * 3 // 4
    experts = _int_or_none(_first(cfg, "num_experts"), 0, _MAX_EXPERTS)
    if experts is not None and experts > 1:
        e_inter = _int_or_none(cfg.get("moe_intermediate_size"), 1, _MAX_INTERMEDIATE) or inter
        shared = _int_or_none(cfg.get("n_shared_experts"), 0, _MAX_EXPERTS) or 0
        shared_inter = (_int_or_none(cfg.get("shared_expert_intermediate_size"), 1,
                                     _MAX_INTERMEDIATE) or shared * e_inter)
        moe = experts * 3 * h * e_inter + 3 * h * shared_inter + h * experts
        dense_layers = min(layers, _int_or_none(cfg.get("first_k_dense_replace"), 0,
                                                _MAX_LAYERS) or 0)
        mlp_total = dense_layers * 3 * h * inter + (layers - dense_layers) * moe
    else:
        mlp_total = layers * 3 * h * inter
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") is True else 2)
    return layers * attn + mlp_total + embeddings


# key group or config key -> (lowest, highest) for the integer fields read from config.json
_CONFIG_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "num_layers": (1, _MAX_LAYERS), "num_attention_heads": (1, _MAX_HEADS),
    "hidden_size": (1, _MAX_HIDDEN), "num_kv_heads": (1, _MAX_HEADS),
    "vocab_size": (1, _MAX_VOCAB), "max_position_embeddings": (1, _MAX_CONTEXT),
    "intermediate_size": (1, _MAX_INTERMEDIATE), "num_experts": (0, _MAX_EXPERTS),
}
_CONFIG_PLAIN_INTS: dict[str, tuple[int, int]] = {
    "head_dim": (1, _MAX_HEAD_DIM), "kv_lora_rank": (0, _MAX_HIDDEN),
    "qk_rope_head_dim": (0, _MAX_HEAD_DIM), "moe_intermediate_size": (1, _MAX_INTERMEDIATE),
    "n_shared_experts": (0, _MAX_EXPERTS), "first_k_dense_replace": (0, _MAX_LAYERS),
    "shared_expert_intermediate_size": (0, _MAX_INTERMEDIATE),
}


def _checked_config(raw: dict, config_path: Path) -> dict[str, int | None]:
    """Every integer field the reader uses, checked (type, finite, range), by name."""
    nested = _nested_key(raw)
    cfg = _flatten_config(raw)
    where = str(config_path)

    def label(alias: str) -> str:
        if nested and isinstance(raw.get(nested), dict) and \
                raw[nested].get(alias) is not None:
            return f"{nested}.{alias}"
        return alias

    def checked(value: Any, key: str, lo: int, hi: int, required: bool) -> int | None:
        # per-layer values (a list of numbers, as some hybrid models give): the largest
        if isinstance(value, list) and 0 < len(value) <= _MAX_LAYERS:
            value = max(_int_field(v, file=where, key=key, lo=0, hi=hi, required=True)
                        for v in value)
        return _int_field(value, file=where, key=key, lo=lo, hi=hi, required=required)

    out: dict[str, int | None] = {}
    required = ("num_layers", "num_attention_heads", "hidden_size")
    for key, (lo, hi) in _CONFIG_INT_BOUNDS.items():
        alias = _first_alias(cfg, key)
        value = _first(cfg, key)
        if key in required and (value is None or value is False):
            raise InputError(f"missing or invalid {alias} (need a positive integer)",
                             file=where, key=label(alias))
        out[key] = checked(value, label(alias), lo, hi, key in required)
    for key, (lo, hi) in _CONFIG_PLAIN_INTS.items():
        out[key] = checked(cfg.get(key), label(key), lo, hi, False)
    return out


def _read_hf_folder(folder: Path) -> ModelInfo:
    config_path = folder / "config.json"
    if not os.path.lexists(config_path):
        raise InputError("no config.json in this folder (not a Hugging Face model?)",
                         file=str(folder))
    raw = _load_json(config_path, _MAX_CONFIG_BYTES, "config.json")
    if not isinstance(raw, dict):
        raise InputError("config.json is not a JSON object", file=str(config_path))
    cfg = _flatten_config(raw)
    ints = _checked_config(raw, config_path)
    layers, heads, hidden = ints["num_layers"], ints["num_attention_heads"], ints["hidden_size"]
    assert layers and heads and hidden
    kv = ints["num_kv_heads"] or heads
    if cfg.get("multi_query") is True and ints["num_kv_heads"] is None:
        kv = 1
    head_dim = ints["head_dim"] or hidden // heads
    if head_dim < 1:
        raise InputError(f"head_dim is 0: hidden_size {hidden} is smaller than "
                         f"num_attention_heads {heads} and no head_dim is given",
                         file=str(config_path), key="head_dim")
    quant, bits = _quant_from_config(cfg)
    if quant is None:
        quant, bits = _quant_from_config(raw)
    dtype = (_dtype_name(cfg.get("torch_dtype")) or _dtype_name(cfg.get("dtype"))
             or _dtype_name(raw.get("torch_dtype")) or _dtype_name(raw.get("dtype")))
    mla = None
    if ints["kv_lora_rank"]:
        mla = ints["kv_lora_rank"] + (ints["qk_rope_head_dim"] or 0)
    experts = ints["num_experts"]
    archs = raw.get("architectures")
    model_type = cfg.get("model_type")

    files, index, missing, warnings = _weight_files(folder)
    weight_bytes = 0
    params: int | None = None
    params_source = ""
    totals = _TensorTotals()
    if files and files[0].suffix == ".safetensors":
        for f in files:
            _safetensors_totals(read_safetensors_header(f), f, totals)
        weight_bytes = totals.data_bytes
        if quant is None or quant.startswith("fp8"):
            params, params_source = totals.elements, "safetensors headers"
    else:
        weight_bytes = sum(_stat_regular(f).st_size for f in files)
    if index is not None:
        meta = index.get("metadata")
        total = meta.get("total_size") if isinstance(meta, dict) else None
        total = _int_or_none(total, 1, _MAX_TENSOR_BYTES * 1024)
        if total is not None and (missing or not weight_bytes):
            weight_bytes = total           # the headers only saw part of the model
        elif missing:
            weight_bytes = 0               # partial sum is wrong: estimate from config
        if missing:
            params = None
    if params is None:
        params = estimate_params_from_config(raw)
        params_source = "config estimate" if params else ""
    if dtype is None and totals.by_dtype:
        top = max(totals.by_dtype, key=totals.by_dtype.__getitem__)
        dtype = _ST_DTYPES.get(top, (0, top.lower()))[1]
    if dtype is None:
        dtype = "float16"
        warnings.append("config.json names no torch_dtype; assuming float16")
    if weight_bytes == 0:
        if not params:
            raise InputError("no weight files (*.safetensors, pytorch_model*.bin) and the "
                             "config is not enough to estimate the size", file=str(folder))
        per: float = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
        if bits:
            per = bits / 8 * 1.05
        weight_bytes = int(params * per)
        what = "not all weight files are on disk" if files else "no weight files on disk"
        warnings.append(f"{what}: weight size estimated from config.json "
                        f"({params / 1e9:.1f}B params x {per:g} bytes)")

    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        architecture: str | None = archs[0][:128]
    else:
        architecture = model_type[:128] if isinstance(model_type, str) else None
    rel = ["config.json"] + [f.name for f in files]
    return ModelInfo(
        name=folder.resolve().name, format="hf", params=params, weight_bytes=weight_bytes,
        dtype=dtype, quantization=quant, num_layers=layers, num_attention_heads=heads,
        num_kv_heads=kv, hidden_size=hidden, head_dim=head_dim,
        vocab_size=ints["vocab_size"],
        max_position_embeddings=ints["max_position_embeddings"],
        files=rel, path=str(folder), quant_bits=bits, architecture=architecture,
        tie_word_embeddings=cfg.get("tie_word_embeddings", False) is True,
        num_experts=experts if experts and experts > 1 else None,
        mla_kv_dim=mla, params_source=params_source, warnings=warnings,
    )


# --------------------------------------------------------------------------- GGUF

_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<idx>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
_GGUF_MAGIC = b"GGUF"


def _has_gguf_magic(p: Path) -> bool:
    try:
        with _open_regular(p) as f:
            return f.read(4) == _GGUF_MAGIC
    except (OSError, InputError):
        return False


def _pick_gguf(folder: Path, ggufs: list[Path]) -> Path:
    """The first file of the one GGUF model in `folder` (split parts count as one)."""
    models: dict[str, Path] = {}
    for g in ggufs:
        if g.name.lower().startswith("mmproj"):
            continue                      # multimodal projector, not the language model
        m = _SPLIT_RE.match(g.name)
        key = m.group("stem") if m else g.name
        if key not in models or g.name < models[key].name:
            models[key] = g
    if not models:
        raise InputError("only mmproj .gguf files here, no language model", file=str(folder))
    if len(models) > 1:
        raise InputError("several GGUF models in this folder (" + ", ".join(sorted(models))
                         + "): pass the .gguf file to use", file=str(folder))
    return next(iter(models.values()))


def _split_parts(first: Path) -> list[Path]:
    m = _SPLIT_RE.match(first.name)
    if not m:
        return [first]
    count, idx = int(m.group("count")), int(m.group("idx"))
    if not 1 <= idx <= count:
        raise InputError(f"split GGUF name says part {idx} of {count}", file=str(first),
                         key="file name")
    parts = [first.with_name(f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf")
             for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InputError(f"split GGUF is missing {len(missing)} of {count} parts: "
                         + ", ".join(missing[:3]) + ("..." if len(missing) > 3 else ""),
                         file=str(first))
    return parts


@dataclass
class GGUFTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """The parsed header of one GGUF file. Arrays are kept only as their length."""

    path: str
    version: int
    metadata: dict[str, Any]            # scalars and strings; arrays -> ("array", length)
    tensors: list[GGUFTensor]


class _Cursor:
    def __init__(self, buf: Any, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise InputError(f"truncated GGUF header (needed {n} bytes at offset "
                             f"{self.pos}, file has {self.size})", file=self.path)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > self.size:
            raise InputError(f"truncated GGUF header (string of {n} bytes at offset "
                             f"{self.pos})", file=self.path)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise InputError(f"truncated GGUF header (array of {n} bytes at offset "
                             f"{self.pos})", file=self.path)
        self.pos += n


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_ARRAY_DEPTH = 4                # arrays of arrays: real files use none


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (metadata + tensor infos) without touching tensor data."""
    try:
        import gguf  # noqa: PLC0415  (optional dependency, only for GGUF models)
    except ImportError:
        raise InputError("reading GGUF models needs the `gguf` Python package "
                         "(pip install gguf)", file=str(path)) from None
    p = Path(path)
    try:
        with _open_regular(p) as f:
            if os.fstat(f.fileno()).st_size < 24:
                raise InputError("not a GGUF file (too short)", file=str(p))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(buf, str(p), gguf)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(p)) from None


def _parse_gguf(buf: Any, path: str, gguf: Any) -> GGUFHeader:
    if bytes(buf[:4]) != _GGUF_MAGIC:
        raise InputError(f"not a GGUF file (starts with {bytes(buf[:4])!r}, expected "
                         f"b'GGUF')", file=path)
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise InputError(f"unsupported GGUF version {version} (need 2 or 3; a big-endian "
                         f"file?)", file=path)
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    if n_tensors > 10_000_000 or n_kv > 10_000_000:
        raise InputError("corrupt GGUF header (absurd tensor/key counts)", file=path)

    def value(vtype: int, keep: int, depth: int = 0) -> Any:
        if vtype in _GGUF_SCALARS:
            return cur.take(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return cur.string()
        if vtype == _GGUF_ARRAY:
            if depth >= _GGUF_MAX_ARRAY_DEPTH:
                raise InputError(f"corrupt GGUF header (arrays nested deeper than "
                                 f"{_GGUF_MAX_ARRAY_DEPTH} at offset {cur.pos})", file=path)
            itype, count = cur.take("<I"), cur.take("<Q")
            if itype in _GGUF_SCALARS:
                size = struct.calcsize(_GGUF_SCALARS[itype])
                if count <= keep:                  # small arrays (per-layer values): keep
                    if cur.pos + size * count > cur.size:
                        cur.skip(size * count)     # raises: truncated
                    return [cur.take(_GGUF_SCALARS[itype]) for _ in range(count)]
                cur.skip(size * count)
            elif itype == _GGUF_STRING:
                for _ in range(count):
                    cur.skip(cur.take("<Q"))
            elif itype == _GGUF_ARRAY or count:
                for _ in range(count):
                    value(itype, 0, depth + 1)
            return ("array", count)
        raise InputError(f"corrupt GGUF header (unknown value type {vtype} at offset "
                         f"{cur.pos})", file=path)

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        # per-layer values (head counts of hybrid models) are kept; vocabularies are not
        keep = 64 if key.startswith("tokenizer.") else _MAX_LAYERS
        metadata[key] = value(cur.take("<I"), keep)

    sizes = gguf.GGML_QUANT_SIZES
    tensors: list[GGUFTensor] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise InputError(f"corrupt GGUF header (tensor {name!r} has {n_dims} dims)",
                             file=path)
        shape = tuple(cur.take("<Q") for _ in range(n_dims))
        if any(d > _MAX_DIM for d in shape):
            raise InputError(f"corrupt GGUF header (tensor {name[:80]!r} has shape "
                             f"{shape})", file=path, key=name[:80])
        ggml_type = cur.take("<I")
        cur.take("<Q")                              # data offset
        n = math.prod(shape)
        try:
            block, type_size = sizes[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise InputError(f"tensor {name!r} has a GGML type ({ggml_type}) this gguf "
                             f"package does not know (upgrade gguf)", file=path) from None
        n_bytes = n * type_size // block
        if n_bytes > _MAX_TENSOR_BYTES:
            raise InputError(f"corrupt GGUF header (tensor {name[:80]!r} would be {n_bytes} "
                             f"bytes)", file=path, key=name[:80])
        tensors.append(GGUFTensor(name, ggml_type, shape, n, n_bytes))
    return GGUFHeader(path, version, metadata, tensors)


def _gguf_type_name(file_type: int | None, tensors: list[GGUFTensor], gguf: Any) -> str:
    if file_type is not None:
        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    by_type: dict[int, int] = {}
    for t in tensors:
        if len(t.shape) >= 2:
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.n_bytes
    if not by_type:
        return "unknown"
    top = max(by_type, key=by_type.get)
    try:
        return gguf.GGMLQuantizationType(top).name
    except ValueError:
        return f"type{top}"


_GGUF_FLOAT_NAMES = {"F16": "float16", "BF16": "bfloat16", "ALL_F32": "float32",
                     "F32": "float32"}


def _read_gguf_model(first: Path) -> ModelInfo:
    import gguf  # noqa: PLC0415  (read_gguf_header already checked it is importable)

    m = _SPLIT_RE.match(first.name)
    if m and not 1 <= int(m.group("idx")) <= int(m.group("count")):
        raise InputError(f"split GGUF name says part {int(m.group('idx'))} of "
                         f"{int(m.group('count'))}", file=str(first), key="file name")
    if m and int(m.group("idx")) != 1:
        first = first.with_name(f"{m.group('stem')}-00001-of-{m.group('count')}.gguf")
        if not first.is_file():
            raise InputError("first part of this split GGUF is missing", file=str(first))
    parts = _split_parts(first)
    headers = [read_gguf_header(part) for part in parts]
    meta = headers[0].metadata
    tensors = [t for h in headers for t in h.tensors]
    where = str(first)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InputError("GGUF has no general.architecture key (a non-empty string)",
                         file=where, key="general.architecture")

    def get(key: str, hi: int, required: bool = True, lo: int = 1) -> int | None:
        """`{arch}.key` as a checked integer; per-layer arrays give their largest value."""
        full = f"{arch}.{key}"
        v = meta.get(full)
        if isinstance(v, list):                     # per-layer values: the largest
            checked = [_int_field(x, file=where, key=full, lo=0, hi=hi, required=True)
                       for x in v]
            v = max(checked) if checked else None
        elif isinstance(v, tuple):                  # an array too long to keep
            v = None
        if v is None and required:
            raise InputError(f"GGUF metadata has no {full}", file=where, key=full)
        return _int_field(v, file=where, key=full, lo=lo, hi=hi)

    layers = get("block_count", _MAX_LAYERS)
    heads = get("attention.head_count", _MAX_HEADS)
    hidden = get("embedding_length", _MAX_HIDDEN)
    assert layers and heads and hidden
    kv = get("attention.head_count_kv", _MAX_HEADS, False, lo=0) or heads
    head_dim = get("attention.key_length", _MAX_HEAD_DIM, False) or hidden // heads
    if head_dim < 1:
        raise InputError(f"head dimension is 0: {arch}.embedding_length {hidden} is smaller "
                         f"than {arch}.attention.head_count {heads}", file=where,
                         key=f"{arch}.attention.key_length")
    vocab = get("vocab_size", _MAX_VOCAB, False)
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, tuple):
        vocab = _int_field(tokens[1], file=where, key="tokenizer.ggml.tokens", lo=0,
                           hi=_MAX_VOCAB) or None
    mla = None
    rank = get("attention.kv_lora_rank", _MAX_HIDDEN, False, lo=0)
    if rank:
        mla = rank + (get("rope.dimension_count", _MAX_HEAD_DIM, False, lo=0) or 0)
    experts = get("expert_count", _MAX_EXPERTS, False, lo=0)
    context = get("context_length", _MAX_CONTEXT, False)
    file_type = meta.get("general.file_type")
    type_name = _gguf_type_name(file_type if isinstance(file_type, int)
                                and not isinstance(file_type, bool) else None, tensors, gguf)
    dtype = _GGUF_FLOAT_NAMES.get(type_name, type_name)
    quant = None if dtype in ("float16", "bfloat16", "float32") else type_name
    bits = None
    if quant:
        found = re.search(r"(\d+)", quant)
        bits = _int_or_none(int(found.group(1)[:3]), 1, 64) if found else None
    name = meta.get("general.name")
    stem = m.group("stem") if m else first.stem
    return ModelInfo(
        name=name[:200] if isinstance(name, str) and name.strip() else stem, format="gguf",
        params=sum(t.n_elements for t in tensors), weight_bytes=sum(t.n_bytes for t in tensors),
        dtype=dtype, quantization=quant, num_layers=layers, num_attention_heads=heads,
        num_kv_heads=kv, hidden_size=hidden, head_dim=head_dim,
        vocab_size=vocab, max_position_embeddings=context,
        files=[part.name for part in parts], path=str(first.parent), architecture=arch[:128],
        quant_bits=bits, tie_word_embeddings=not any(t.name == "output.weight" for t in tensors),
        num_experts=experts if experts and experts > 1 else None, mla_kv_dim=mla,
        params_source="gguf tensors",
    )
