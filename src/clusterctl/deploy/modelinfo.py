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

Every expected problem (missing file, bad JSON, not a GGUF, truncated header) is an
``InputError`` that names the file.
"""
from __future__ import annotations

import json
import math
import mmap
import re
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
    if p.is_file():
        if p.suffix.lower() == ".gguf" or _has_gguf_magic(p):
            return _read_gguf_model(p)
        if p.name == "config.json":
            return _read_hf_folder(p.parent)
        raise InputError("not a model: expected a .gguf file or a folder with config.json",
                         file=str(p))
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    ggufs = sorted(x for x in p.glob("*.gguf") if x.is_file())
    if (p / "config.json").is_file() and (has_weights or not ggufs):
        return _read_hf_folder(p)
    if ggufs:
        return _read_gguf_model(_pick_gguf(p, ggufs))
    raise InputError("no config.json (Hugging Face model) and no .gguf file in this folder",
                     file=str(p))


# --------------------------------------------------------------------------- HF folders

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

_MAX_ST_HEADER = 100 * 1024 * 1024


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", file=str(path), line=e.lineno,
                         column=e.colno) from None


def _first(cfg: dict, key: str) -> Any:
    for alias in _ALIASES[key]:
        if cfg.get(alias) is not None:
            return cfg[alias]
    return None


def _flatten_config(raw: dict) -> dict:
    """Merge a nested text config over the top level (multimodal models)."""
    cfg = dict(raw)
    for key in _NESTED_CONFIG_KEYS:
        nested = raw.get(key)
        if isinstance(nested, dict) and _first(raw, "num_layers") is None:
            cfg.update({k: v for k, v in nested.items() if v is not None})
            break
    return cfg


def _dtype_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    v = value.removeprefix("torch.").lower()
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "float": "float32"}.get(v, v)


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a .safetensors file (8-byte LE length, then JSON)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError("not a safetensors file (shorter than 8 bytes)", file=str(p))
            (n,) = struct.unpack("<Q", head)
            size = p.stat().st_size
            if n == 0 or n > _MAX_ST_HEADER or 8 + n > size:
                raise InputError(f"not a safetensors file (header length {n} does not fit "
                                 f"in a {size}-byte file)", file=str(p))
            raw = f.read(n)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(p)) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not a safetensors file (header is not JSON: {e})",
                         file=str(p)) from None
    if not isinstance(header, dict):
        raise InputError("not a safetensors file (header is not a JSON object)", file=str(p))
    return header


def _weight_files(folder: Path) -> tuple[list[Path], dict | None, int, list[str]]:
    """Weight files of a HF folder, the index JSON if any, how many shards the index
    lists that are not on disk, and warnings."""
    warnings: list[str] = []
    for index_name, kind in (("model.safetensors.index.json", "safetensors"),
                             ("pytorch_model.bin.index.json", "bin")):
        index_path = folder / index_name
        if not index_path.is_file():
            continue
        index = _load_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise InputError("index has no \"weight_map\" object", file=str(index_path),
                             key="weight_map")
        names = sorted(set(weight_map.values()))
        present = [folder / n for n in names if (folder / n).is_file()]
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
    method = str(qc.get("quant_method") or qc.get("quant_type") or "unknown").lower()
    bits = qc.get("bits") or qc.get("w_bit") or qc.get("weight_bits")
    if bits is None:
        if qc.get("load_in_4bit"):
            bits = 4
        elif qc.get("load_in_8bit") or method.startswith("fp8") or method == "int8":
            bits = 8
        elif method in ("mxfp4", "nvfp4"):
            bits = 4
    try:
        bits = int(bits) if bits is not None else None
    except (TypeError, ValueError):
        bits = None
    return method, bits


def estimate_params_from_config(cfg: dict) -> int | None:
    """Parameter count of a llama-style decoder (dense or MoE) from its config.

    embeddings (x2 unless tied) + layers * (attention + MLP); the MLP is gated (3
    matrices). Norms and biases are ignored (well under 0.1%).
    """
    cfg = _flatten_config(cfg)
    h, layers = _first(cfg, "hidden_size"), _first(cfg, "num_layers")
    heads, vocab = _first(cfg, "num_attention_heads"), _first(cfg, "vocab_size")
    inter = _first(cfg, "intermediate_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, layers, heads, vocab, inter)):
        return None
    kv = _first(cfg, "num_kv_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2
    if cfg.get("kv_lora_rank"):                 # MLA (DeepSeek-V2/V3): rough
        attn = int(attn * 0.75)
    experts = _first(cfg, "num_experts")
    if isinstance(experts, int) and experts > 1:
        e_inter = cfg.get("moe_intermediate_size") or inter
        shared = cfg.get("n_shared_experts") or 0
        shared_inter = cfg.get("shared_expert_intermediate_size") or shared * e_inter
        moe = experts * 3 * h * e_inter + 3 * h * shared_inter + h * experts
        dense_layers = int(cfg.get("first_k_dense_replace") or 0)
        mlp_total = dense_layers * 3 * h * inter + (layers - dense_layers) * moe
    else:
        mlp_total = layers * 3 * h * inter
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * attn + mlp_total + embeddings


def _read_hf_folder(folder: Path) -> ModelInfo:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json in this folder (not a Hugging Face model?)",
                         file=str(folder))
    raw = _load_json(config_path)
    if not isinstance(raw, dict):
        raise InputError("config.json is not a JSON object", file=str(config_path))
    cfg = _flatten_config(raw)

    def need(key: str) -> int:
        value = _first(cfg, key)
        if not isinstance(value, int) or value <= 0:
            raise InputError(f"missing or invalid {_ALIASES[key][0]} (need a positive "
                             f"integer)", file=str(config_path), key=_ALIASES[key][0])
        return value

    layers, heads, hidden = need("num_layers"), need("num_attention_heads"), need("hidden_size")
    kv = _first(cfg, "num_kv_heads") or heads
    if cfg.get("multi_query") and _first(cfg, "num_kv_heads") is None:
        kv = 1
    head_dim = cfg.get("head_dim") or hidden // heads
    quant, bits = _quant_from_config(cfg)
    if quant is None:
        quant, bits = _quant_from_config(raw)
    dtype = (_dtype_name(cfg.get("torch_dtype")) or _dtype_name(cfg.get("dtype"))
             or _dtype_name(raw.get("torch_dtype")) or _dtype_name(raw.get("dtype")))
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
    experts = _first(cfg, "num_experts")
    archs = raw.get("architectures")

    files, index, missing, warnings = _weight_files(folder)
    weight_bytes = 0
    params: int | None = None
    params_source = ""
    header_dtypes: dict[str, float] = {}
    if files and files[0].suffix == ".safetensors":
        n_elems, data_bytes = 0, 0
        for f in files:
            header = read_safetensors_header(f)
            for name, t in header.items():
                if name == "__metadata__" or not isinstance(t, dict):
                    continue
                try:
                    start, end = t["data_offsets"]
                    n = math.prod(t["shape"])
                except (KeyError, TypeError, ValueError):
                    raise InputError(f"bad tensor entry {name!r} in safetensors header",
                                     file=str(f)) from None
                data_bytes += end - start
                n_elems += n
                header_dtypes[t.get("dtype", "?")] = (header_dtypes.get(t.get("dtype", "?"), 0)
                                                      + end - start)
        weight_bytes = data_bytes
        if quant is None or quant.startswith("fp8"):
            params, params_source = n_elems, "safetensors headers"
    else:
        weight_bytes = sum(f.stat().st_size for f in files)
    if index is not None:
        total = (index.get("metadata") or {}).get("total_size")
        if isinstance(total, int) and total > 0 and (missing or not weight_bytes):
            weight_bytes = total           # the headers only saw part of the model
        elif missing:
            weight_bytes = 0               # partial sum is wrong: estimate from config
        if missing:
            params = None
    if params is None:
        params = estimate_params_from_config(raw)
        params_source = "config estimate" if params else ""
    if dtype is None and header_dtypes:
        top = max(header_dtypes, key=header_dtypes.get)
        dtype = _ST_DTYPES.get(top, (0, top.lower()))[1]
    if dtype is None:
        dtype = "float16"
        warnings.append("config.json names no torch_dtype; assuming float16")
    if weight_bytes == 0:
        if not params:
            raise InputError("no weight files (*.safetensors, pytorch_model*.bin) and the "
                             "config is not enough to estimate the size", file=str(folder))
        per = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
        if bits:
            per = bits / 8 * 1.05
        weight_bytes = int(params * per)
        what = "not all weight files are on disk" if files else "no weight files on disk"
        warnings.append(f"{what}: weight size estimated from config.json "
                        f"({params / 1e9:.1f}B params x {per:g} bytes)")

    rel = ["config.json"] + [f.name for f in files]
    return ModelInfo(
        name=folder.resolve().name, format="hf", params=params, weight_bytes=weight_bytes,
        dtype=dtype, quantization=quant, num_layers=layers, num_attention_heads=heads,
        num_kv_heads=int(kv), hidden_size=hidden, head_dim=int(head_dim),
        vocab_size=_first(cfg, "vocab_size"),
        max_position_embeddings=_first(cfg, "max_position_embeddings"),
        files=rel, path=str(folder), quant_bits=bits,
        architecture=archs[0] if isinstance(archs, list) and archs else cfg.get("model_type"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_experts=experts if isinstance(experts, int) and experts > 1 else None,
        mla_kv_dim=mla, params_source=params_source, warnings=warnings,
    )


# --------------------------------------------------------------------------- GGUF

_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<idx>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
_GGUF_MAGIC = b"GGUF"


def _has_gguf_magic(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
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
    count = int(m.group("count"))
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


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (metadata + tensor infos) without touching tensor data."""
    try:
        import gguf  # noqa: PLC0415  (optional dependency, only for GGUF models)
    except ImportError:
        raise InputError("reading GGUF models needs the `gguf` Python package "
                         "(pip install gguf)", file=str(path)) from None
    p = Path(path)
    try:
        with p.open("rb") as f:
            if p.stat().st_size < 24:
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

    def value(vtype: int) -> Any:
        if vtype in _GGUF_SCALARS:
            return cur.take(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return cur.string()
        if vtype == _GGUF_ARRAY:
            itype, count = cur.take("<I"), cur.take("<Q")
            if itype in _GGUF_SCALARS:
                size = struct.calcsize(_GGUF_SCALARS[itype])
                if count <= 64:                    # small arrays (per-layer values): keep
                    return [cur.take(_GGUF_SCALARS[itype]) for _ in range(count)]
                cur.skip(size * count)
            elif itype == _GGUF_STRING:
                for _ in range(count):
                    cur.skip(cur.take("<Q"))
            else:
                for _ in range(count):
                    value(itype)
            return ("array", count)
        raise InputError(f"corrupt GGUF header (unknown value type {vtype} at offset "
                         f"{cur.pos})", file=path)

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = value(cur.take("<I"))

    sizes = gguf.GGML_QUANT_SIZES
    tensors: list[GGUFTensor] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise InputError(f"corrupt GGUF header (tensor {name!r} has {n_dims} dims)",
                             file=path)
        shape = tuple(cur.take("<Q") for _ in range(n_dims))
        ggml_type = cur.take("<I")
        cur.take("<Q")                              # data offset
        n = math.prod(shape)
        try:
            block, type_size = sizes[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise InputError(f"tensor {name!r} has a GGML type ({ggml_type}) this gguf "
                             f"package does not know (upgrade gguf)", file=path) from None
        tensors.append(GGUFTensor(name, ggml_type, shape, n, n * type_size // block))
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
    if m and int(m.group("idx")) != 1:
        first = first.with_name(f"{m.group('stem')}-00001-of-{m.group('count')}.gguf")
        if not first.is_file():
            raise InputError("first part of this split GGUF is missing", file=str(first))
    parts = _split_parts(first)
    headers = [read_gguf_header(part) for part in parts]
    meta = headers[0].metadata
    tensors = [t for h in headers for t in h.tensors]
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise InputError("GGUF has no general.architecture key", file=str(first),
                         key="general.architecture")

    def get(key: str, required: bool = True) -> Any:
        full = f"{arch}.{key}"
        v = meta.get(full)
        if isinstance(v, list):                     # per-layer values: the largest
            v = max(v) if v else None
        if isinstance(v, tuple):
            v = None
        if v is None and required:
            raise InputError(f"GGUF metadata has no {full}", file=str(first), key=full)
        return v

    layers, heads, hidden = get("block_count"), get("attention.head_count"), get(
        "embedding_length")
    kv = get("attention.head_count_kv", False) or heads
    head_dim = get("attention.key_length", False) or hidden // heads
    vocab = get("vocab_size", False)
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, tuple):
        vocab = tokens[1]
    mla = None
    if get("attention.kv_lora_rank", False):
        mla = int(get("attention.kv_lora_rank")) + int(get("rope.dimension_count", False) or 0)
    experts = get("expert_count", False)
    file_type = meta.get("general.file_type")
    type_name = _gguf_type_name(file_type if isinstance(file_type, int) else None,
                                tensors, gguf)
    dtype = _GGUF_FLOAT_NAMES.get(type_name, type_name)
    quant = None if dtype in ("float16", "bfloat16", "float32") else type_name
    bits = None
    if quant:
        found = re.search(r"(\d+)", quant)
        bits = int(found.group(1)) if found else None
    name = meta.get("general.name")
    stem = m.group("stem") if m else first.stem
    return ModelInfo(
        name=name if isinstance(name, str) and name else stem, format="gguf",
        params=sum(t.n_elements for t in tensors), weight_bytes=sum(t.n_bytes for t in tensors),
        dtype=dtype, quantization=quant, num_layers=int(layers), num_attention_heads=int(heads),
        num_kv_heads=int(kv), hidden_size=int(hidden), head_dim=int(head_dim),
        vocab_size=int(vocab) if vocab else None,
        max_position_embeddings=get("context_length", False),
        files=[part.name for part in parts], path=str(first.parent), architecture=arch,
        quant_bits=bits, tie_word_embeddings=not any(t.name == "output.weight" for t in tensors),
        num_experts=int(experts) if experts and experts > 1 else None, mla_kv_dim=mla,
        params_source="gguf tensors",
    )
