"""Write the hostile model corpus next to this file: `python build.py`.

Each entry is a model file or folder that once crashed (or fooled) the model reader,
or a close relative. `expected.json` maps each entry to the key its InputError must
name ("" when the message names only the file). The files are committed; this script
documents how they were made and rebuilds them byte for byte.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent

# GGUF value types
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def gstr(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def gguf(kvs: list[bytes], tensors: list[bytes] = ()) -> bytes:
    return (b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", len(tensors), len(kvs))
            + b"".join(kvs) + b"".join(tensors) + bytes(32))


def llama_kvs(**override: bytes) -> list[bytes]:
    base = {
        "general.architecture": (STRING, gstr("llama")),
        "llama.block_count": (U32, struct.pack("<I", 4)),
        "llama.embedding_length": (U32, struct.pack("<I", 64)),
        "llama.attention.head_count": (U32, struct.pack("<I", 4)),
        "llama.attention.head_count_kv": (U32, struct.pack("<I", 2)),
        "llama.context_length": (U32, struct.pack("<I", 2048)),
    }
    base.update(override)
    return [kv(k, t, p) for k, (t, p) in base.items()]


def safetensors(header: dict, data: int = 0) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 100, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
GOOD_TENSOR = {"x": {"dtype": "BF16", "shape": [8, 8], "data_offsets": [0, 128]}}


def hf(name: str, config: dict | str | None = None, files: dict[str, bytes] | None = None):
    folder = HERE / name
    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config or CONFIG)
    (folder / "config.json").write_text(text)
    for fname, data in (files or {"model.safetensors": safetensors(GOOD_TENSOR, 128)}).items():
        (folder / fname).write_bytes(data)


def build() -> dict[str, str]:
    for old in HERE.iterdir():
        if old.name not in ("build.py", "expected.json", "README.md"):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    expected: dict[str, str] = {}

    def g(name: str, data: bytes, key: str) -> None:
        (HERE / name).write_bytes(data)
        expected[name] = key

    # --- GGUF
    g("gguf-head-count-zero.gguf",
      gguf(llama_kvs(**{"llama.attention.head_count": (U32, struct.pack("<I", 0))})),
      "llama.attention.head_count")
    g("gguf-head-count-nan.gguf",
      gguf(llama_kvs(**{"llama.attention.head_count": (F32, struct.pack("<f", float("nan")))})),
      "llama.attention.head_count")
    g("gguf-block-count-string.gguf",
      gguf(llama_kvs(**{"llama.block_count": (STRING, gstr("eighty"))})), "llama.block_count")
    g("gguf-block-count-bool.gguf",
      gguf(llama_kvs(**{"llama.block_count": (BOOL, b"\x01")})), "llama.block_count")
    g("gguf-context-length-negative.gguf",
      gguf(llama_kvs(**{"llama.context_length": (I32, struct.pack("<i", -1))})),
      "llama.context_length")
    g("gguf-embedding-huge.gguf",
      gguf(llama_kvs(**{"llama.embedding_length": (U32, struct.pack("<I", 2**32 - 1))})),
      "llama.embedding_length")
    g("gguf-head-count-above-hidden.gguf",
      gguf(llama_kvs(**{"llama.attention.head_count": (U32, struct.pack("<I", 128))})),
      "llama.attention.key_length")
    g("gguf-per-layer-nan.gguf",
      gguf(llama_kvs(**{"llama.attention.head_count_kv": (
          ARRAY, struct.pack("<IQ", F32, 2) + struct.pack("<ff", 2.0, float("nan")))})),
      "llama.attention.head_count_kv")
    deep = struct.pack("<IQ", ARRAY, 1) * 5000 + struct.pack("<IQ", U32, 0)
    g("gguf-arrays-5000-deep.gguf",
      gguf(llama_kvs() + [kv("general.deep", ARRAY, deep)]), "")
    g("gguf-no-architecture.gguf", gguf(llama_kvs()[1:]), "general.architecture")
    g("gguf-string-length-huge.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
      + struct.pack("<Q", 2**63) + b"k" * 32, "")
    g("gguf-tensor-dims-huge.gguf", gguf(llama_kvs(), [
        gstr("t") + struct.pack("<I", 4) + struct.pack("<QQQQ", *(2**62,) * 4)
        + struct.pack("<IQ", 0, 0)]), "t")

    g("gguf-split-00001-of-00000.gguf", gguf(llama_kvs()), "file name")
    g("gguf-split-00003-of-00002.gguf", gguf(llama_kvs()), "file name")

    # --- safetensors
    hf("st-data-offsets-strings", files={"model.safetensors": safetensors(
        {"x": {"dtype": "BF16", "shape": [8, 8], "data_offsets": ["0", "128"]}}, 128)})
    expected["st-data-offsets-strings"] = "x.data_offsets"
    nan_header = b'{"x":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}'
    hf("st-shape-nan", files={"model.safetensors": (
        struct.pack("<Q", len(nan_header)) + nan_header + bytes(4))})
    expected["st-shape-nan"] = "x.shape"
    hf("st-offsets-mismatch", files={"model.safetensors": safetensors(
        {"x": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}}, 4)})
    expected["st-offsets-mismatch"] = "x.data_offsets"
    hf("st-offsets-reversed", files={"model.safetensors": safetensors(
        {"x": {"dtype": "U8", "shape": [0], "data_offsets": [9, 1]}}, 16)})
    expected["st-offsets-reversed"] = "x.data_offsets"
    hf("st-header-length-huge", files={"model.safetensors": struct.pack("<Q", 2**40) + b"{}"})
    expected["st-header-length-huge"] = "header length"
    hf("st-entry-not-object", files={"model.safetensors": safetensors({"x": [1, 2]})})
    expected["st-entry-not-object"] = "x"
    hf("st-header-5000-deep", files={"model.safetensors": (
        struct.pack("<Q", 10000) + b"[" * 5000 + b"]" * 5000)})
    expected["st-header-5000-deep"] = ""

    # --- config.json
    hf("config-max-pos-negative", dict(CONFIG, max_position_embeddings=-5))
    expected["config-max-pos-negative"] = "max_position_embeddings"
    hf("config-layers-nan", json.dumps(CONFIG).replace('"num_hidden_layers": 4',
                                                       '"num_hidden_layers": NaN'))
    expected["config-layers-nan"] = "num_hidden_layers"
    hf("config-heads-infinity", json.dumps(CONFIG).replace('"num_attention_heads": 4',
                                                           '"num_attention_heads": Infinity'))
    expected["config-heads-infinity"] = "num_attention_heads"
    hf("config-hidden-string", dict(CONFIG, hidden_size="64"))
    expected["config-hidden-string"] = "hidden_size"
    hf("config-heads-zero", dict(CONFIG, num_attention_heads=0))
    expected["config-heads-zero"] = "num_attention_heads"
    hf("config-head-dim-list", dict(CONFIG, head_dim=["64"]))
    expected["config-head-dim-list"] = "head_dim"
    hf("config-kv-lora-rank-string", dict(CONFIG, kv_lora_rank="512"))
    expected["config-kv-lora-rank-string"] = "kv_lora_rank"
    hf("config-nested-text-config-negative", {
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": dict(CONFIG, num_hidden_layers=-1)})
    expected["config-nested-text-config-negative"] = "text_config.num_hidden_layers"
    hf("config-5000-deep", '{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    expected["config-5000-deep"] = ""
    hf("config-900-deep", '{"a": ' + "[" * 900 + "]" * 900 + "}")
    expected["config-900-deep"] = ""
    hf("config-int-5000-digits", '{"num_hidden_layers": ' + "9" * 5000 + "}")
    expected["config-int-5000-digits"] = ""
    hf("config-layers-huge", dict(CONFIG, num_hidden_layers=10**30))
    expected["config-layers-huge"] = "num_hidden_layers"
    hf("config-not-object", "[1, 2, 3]")
    expected["config-not-object"] = ""

    # --- index weight_map
    index = {"metadata": {"total_size": 128},
             "weight_map": {"x": "model.safetensors", "y": "/etc/passwd"}}
    hf("index-absolute-path", files={"model.safetensors": safetensors(GOOD_TENSOR, 128),
                                     "model.safetensors.index.json": json.dumps(index).encode()})
    expected["index-absolute-path"] = "weight_map.y"
    index["weight_map"]["y"] = "../../../etc/shadow.safetensors"
    hf("index-dotdot", files={"model.safetensors": safetensors(GOOD_TENSOR, 128),
                              "model.safetensors.index.json": json.dumps(index).encode()})
    expected["index-dotdot"] = "weight_map.y"
    index["weight_map"]["y"] = 42
    hf("index-shard-number", files={"model.safetensors": safetensors(GOOD_TENSOR, 128),
                                    "model.safetensors.index.json": json.dumps(index).encode()})
    expected["index-shard-number"] = "weight_map.y"
    hf("index-weight-map-list", files={
        "model.safetensors.index.json": json.dumps({"weight_map": ["a"]}).encode()})
    expected["index-weight-map-list"] = "weight_map"

    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return expected


if __name__ == "__main__":
    print(f"{len(build())} hostile models written to {HERE}")
