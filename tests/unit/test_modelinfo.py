"""modelinfo: size and shape of tiny HF and GGUF models written by the tests."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from clusterctl.deploy.modelinfo import (
    estimate_params_from_config,
    read_gguf_header,
    read_model_info,
    read_safetensors_header,
)
from clusterctl.errors import EXIT_BAD_INPUT, InputError

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

_ST_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """Write a valid .safetensors file (zeros); return the data byte count."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = _ST_SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}


def llama_tensors(dtype: str = "BF16", layers: int = 4) -> dict[str, tuple[str, list[int]]]:
    t = {"model.embed_tokens.weight": (dtype, [100, 64]), "lm_head.weight": (dtype, [100, 64]),
         "model.norm.weight": (dtype, [64])}
    for i in range(layers):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = (dtype, [64, 64])
        t[f"model.layers.{i}.self_attn.k_proj.weight"] = (dtype, [32, 64])
        t[f"model.layers.{i}.self_attn.v_proj.weight"] = (dtype, [32, 64])
        t[f"model.layers.{i}.self_attn.o_proj.weight"] = (dtype, [64, 64])
        t[f"model.layers.{i}.mlp.gate_proj.weight"] = (dtype, [128, 64])
        t[f"model.layers.{i}.mlp.up_proj.weight"] = (dtype, [128, 64])
        t[f"model.layers.{i}.mlp.down_proj.weight"] = (dtype, [64, 128])
    return t


def n_params(tensors) -> int:
    total = 0
    for _dtype, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def make_hf(folder: Path, config: dict | None = None, tensors=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or LLAMA_CONFIG, indent=2))
    if tensors is not False:
        write_safetensors(folder / "model.safetensors", tensors or llama_tensors())
    return folder


# ------------------------------------------------------------------------- HF


def test_hf_single_safetensors_exact_params_and_bytes(tmp_path):
    tensors = llama_tensors()
    folder = make_hf(tmp_path / "tiny-llama", tensors=tensors)
    info = read_model_info(folder)
    assert info.format == "hf"
    assert info.name == "tiny-llama"
    assert info.params == n_params(tensors)
    assert info.weight_bytes == 2 * n_params(tensors)
    assert info.params_source == "safetensors headers"
    assert (info.num_layers, info.num_attention_heads, info.num_kv_heads) == (4, 4, 2)
    assert (info.hidden_size, info.head_dim, info.vocab_size) == (64, 16, 100)
    assert info.max_position_embeddings == 2048
    assert info.dtype == "bfloat16" and info.quantization is None
    assert info.files == ["config.json", "model.safetensors"]
    assert info.architecture == "LlamaForCausalLM"


def test_config_estimate_matches_header_count(tmp_path):
    # the llama formula (gated MLP, untied embeddings) counts what the headers hold,
    # minus the norms it deliberately ignores
    assert estimate_params_from_config(LLAMA_CONFIG) == n_params(llama_tensors()) - 64


def test_hf_defaults_kv_heads_and_head_dim(tmp_path):
    cfg = {k: v for k, v in LLAMA_CONFIG.items() if k != "num_key_value_heads"}
    info = read_model_info(make_hf(tmp_path / "m", cfg))
    assert info.num_kv_heads == 4                 # defaults to num_attention_heads
    assert info.head_dim == 16                    # hidden / heads
    cfg["head_dim"] = 32
    assert read_model_info(make_hf(tmp_path / "m2", cfg)).head_dim == 32


def test_hf_text_config_nesting(tmp_path):
    text = {k: v for k, v in LLAMA_CONFIG.items() if k not in ("architectures", "torch_dtype")}
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "torch_dtype": "float16",
           "text_config": text, "vision_config": {"hidden_size": 32}}
    info = read_model_info(make_hf(tmp_path / "vlm", cfg))
    assert (info.num_layers, info.hidden_size, info.num_kv_heads) == (4, 64, 2)
    assert info.dtype == "float16"                # top-level torch_dtype still used
    assert info.architecture == "LlavaForConditionalGeneration"


def test_hf_dtype_key_and_header_fallback(tmp_path):
    cfg = {k: v for k, v in LLAMA_CONFIG.items() if k != "torch_dtype"}
    info = read_model_info(make_hf(tmp_path / "a", cfg, llama_tensors("F16")))
    assert info.dtype == "float16"                # from the safetensors headers
    cfg["dtype"] = "bfloat16"                     # transformers v5 spelling
    assert read_model_info(make_hf(tmp_path / "b", cfg)).dtype == "bfloat16"


def test_hf_sharded_with_index(tmp_path):
    folder = tmp_path / "sharded"
    make_hf(folder, tensors=False)
    tensors = llama_tensors()
    names = list(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half],
             "model-00002-of-00002.safetensors": names[half:]}
    total, weight_map = 0, {}
    for fname, keys in parts.items():
        total += write_safetensors(folder / fname, {k: tensors[k] for k in keys})
        weight_map.update({k: fname for k in keys})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    info = read_model_info(folder)
    assert info.weight_bytes == total == 2 * n_params(tensors)
    assert info.params == n_params(tensors)
    assert info.files == ["config.json", *parts]
    assert info.warnings == []


def test_hf_missing_shard_uses_index_total_and_warns(tmp_path):
    folder = tmp_path / "partial"
    make_hf(folder, tensors=False)
    write_safetensors(folder / "model-00001-of-00002.safetensors",
                      {"model.embed_tokens.weight": ("BF16", [100, 64])})
    (folder / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": 123_456},
        "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                       "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    info = read_model_info(folder)
    assert info.weight_bytes == 123_456
    assert info.params_source == "config estimate"
    assert any("1 of 2 safetensors shards" in w for w in info.warnings)


def test_hf_missing_shard_without_total_size_estimates_from_config(tmp_path):
    folder = tmp_path / "partial2"
    make_hf(folder, tensors=False)
    write_safetensors(folder / "a.safetensors", {"x": ("BF16", [100, 64])})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    info = read_model_info(folder)
    assert info.weight_bytes == estimate_params_from_config(LLAMA_CONFIG) * 2
    assert any("not all weight files are on disk: weight size estimated" in w
               for w in info.warnings)


def test_hf_quantization_config(tmp_path):
    cfg = dict(LLAMA_CONFIG, torch_dtype="float16",
               quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128})
    tensors = {"model.layers.0.self_attn.q_proj.qweight": ("I32", [64, 8]),
               "model.layers.0.self_attn.q_proj.scales": ("F16", [1, 64]),
               "model.embed_tokens.weight": ("F16", [100, 64])}
    info = read_model_info(make_hf(tmp_path / "awq", cfg, tensors))
    assert info.quantization == "awq" and info.quant_bits == 4
    assert info.weight_bytes == 64 * 8 * 4 + 64 * 2 + 100 * 64 * 2
    # packed int32 element counts are not parameters: fall back to the config formula
    assert info.params == estimate_params_from_config(cfg)
    assert info.params_source == "config estimate"


def test_hf_bin_files_sized(tmp_path):
    folder = make_hf(tmp_path / "bin", tensors=False)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 5000)
    (folder / "training_args.bin").write_bytes(b"\0" * 999)
    info = read_model_info(folder)
    assert info.weight_bytes == 5000
    assert info.files == ["config.json", "pytorch_model.bin"]


def test_hf_consolidated_copy_ignored(tmp_path):
    folder = make_hf(tmp_path / "mistral")
    write_safetensors(folder / "consolidated.safetensors", llama_tensors())
    info = read_model_info(folder)
    assert info.weight_bytes == 2 * n_params(llama_tensors())
    assert any("consolidated.safetensors" in w for w in info.warnings)


def test_hf_config_only_estimates_and_warns(tmp_path):
    info = read_model_info(make_hf(tmp_path / "cfg-only", tensors=False))
    params = estimate_params_from_config(LLAMA_CONFIG)
    assert info.params == params and info.weight_bytes == params * 2
    assert any("no weight files on disk" in w for w in info.warnings)


def test_hf_missing_config_names_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", llama_tensors())
    with pytest.raises(InputError, match="no config.json") as e:
        read_model_info(folder)
    assert str(folder) in str(e.value)
    assert e.value.exit_code == EXIT_BAD_INPUT


def test_hf_bad_json_names_file_and_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text('{\n  "hidden_size": 64,\n  "num_hidden_layers": ,\n}')
    with pytest.raises(InputError, match="invalid JSON") as e:
        read_model_info(folder)
    assert e.value.file == str(folder / "config.json") and e.value.line == 3
    assert f"{folder / 'config.json'}:3:" in str(e.value)


def test_hf_missing_key_names_it(tmp_path):
    cfg = {k: v for k, v in LLAMA_CONFIG.items() if k != "num_hidden_layers"}
    with pytest.raises(InputError, match="num_hidden_layers") as e:
        read_model_info(make_hf(tmp_path / "m", cfg))
    assert e.value.key == "num_hidden_layers"


def test_not_a_safetensors_file(tmp_path):
    folder = make_hf(tmp_path / "m", tensors=False)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"junk")
    with pytest.raises(InputError, match="not a safetensors file") as e:
        read_model_info(folder)
    assert "model.safetensors" in str(e.value)
    with pytest.raises(InputError, match="header is not JSON"):
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
        read_safetensors_header(folder / "model.safetensors")


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_model_info(tmp_path / "nope")


# ------------------------------------------------------------------------- GGUF


def write_gguf(path: Path, *, quant: bool = False, name: str | None = "tiny-llama",
               layers: int = 4, tensors: bool = True, extra_kv=None,
               vocab: int = 100) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    if name:
        w.add_name(name)
    w.add_block_count(layers)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(2048)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant else gguf.LlamaFileType.MOSTLY_F16)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    for key, value in (extra_kv or {}).items():
        w.add_uint32(key, value)

    def add(name: str, shape: tuple[int, ...]):
        data = np.zeros(shape, dtype=np.float32)
        if quant and len(shape) == 2:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif len(shape) == 2:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, data)

    if tensors:
        add("token_embd.weight", (vocab, 64))
        add("output_norm.weight", (64,))
        add("output.weight", (vocab, 64))
        for i in range(layers):
            add(f"blk.{i}.attn_q.weight", (64, 64))
            add(f"blk.{i}.attn_k.weight", (32, 64))
            add(f"blk.{i}.attn_v.weight", (32, 64))
            add(f"blk.{i}.attn_output.weight", (64, 64))
            add(f"blk.{i}.ffn_gate.weight", (128, 64))
            add(f"blk.{i}.ffn_up.weight", (128, 64))
            add(f"blk.{i}.ffn_down.weight", (64, 128))
            add(f"blk.{i}.attn_norm.weight", (64,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_f16_shape_and_size(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    info = read_model_info(path)
    reader = gguf.GGUFReader(str(path))        # the package's reader agrees with ours
    assert info.format == "gguf" and info.name == "tiny-llama"
    assert info.weight_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.params == sum(int(t.n_elements) for t in reader.tensors)
    assert (info.num_layers, info.num_attention_heads, info.num_kv_heads) == (4, 4, 2)
    assert (info.hidden_size, info.head_dim, info.vocab_size) == (64, 16, 100)
    assert info.max_position_embeddings == 2048
    assert info.dtype == "float16" and info.quantization is None
    assert info.architecture == "llama" and not info.tie_word_embeddings
    assert info.files == ["tiny.gguf"] and info.path == str(tmp_path)


def test_gguf_quantized_name_from_file_type(tmp_path):
    path = tmp_path / "tiny-q8.gguf"
    write_gguf(path, quant=True)
    info = read_model_info(path)
    assert info.quantization == "Q8_0" and info.dtype == "Q8_0" and info.quant_bits == 8
    header = read_gguf_header(path)
    q8 = [t for t in header.tensors if t.ggml_type == gguf.GGMLQuantizationType.Q8_0]
    assert q8 and all(t.n_bytes == t.n_elements // 32 * 34 for t in q8)
    assert info.weight_bytes == sum(t.n_bytes for t in header.tensors)


def test_gguf_folder_and_split_files(tmp_path):
    single = tmp_path / "one"
    single.mkdir()
    write_gguf(single / "model.gguf")
    (single / "mmproj-model-f16.gguf").write_bytes(b"GGUF")      # ignored
    assert read_model_info(single).files == ["model.gguf"]

    split = tmp_path / "split"
    split.mkdir()
    write_gguf(split / "big-00001-of-00002.gguf", extra_kv={"split.count": 2})
    write_gguf(split / "big-00002-of-00002.gguf", name=None, tensors=False)
    info = read_model_info(split / "big-00002-of-00002.gguf")   # any part finds all
    assert info.files == ["big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
    assert info.weight_bytes == read_model_info(single).weight_bytes
    assert read_model_info(split).files == info.files


def test_gguf_folder_with_two_models_is_ambiguous(tmp_path):
    write_gguf(tmp_path / "a-Q4.gguf")
    write_gguf(tmp_path / "a-Q8.gguf")
    with pytest.raises(InputError, match="several GGUF models"):
        read_model_info(tmp_path)


def test_gguf_split_missing_part(tmp_path):
    write_gguf(tmp_path / "big-00001-of-00003.gguf")
    with pytest.raises(InputError, match="missing 2 of 3 parts"):
        read_model_info(tmp_path / "big-00001-of-00003.gguf")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(InputError, match="not a GGUF file") as e:
        read_model_info(bad)
    assert str(bad) in str(e.value)


def test_truncated_gguf(tmp_path):
    path = tmp_path / "t.gguf"
    write_gguf(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:200])
    with pytest.raises(InputError, match="truncated GGUF header") as e:
        read_model_info(cut)
    assert "cut.gguf" in str(e.value)


def test_gguf_large_arrays_are_skipped_not_kept(tmp_path):
    path = tmp_path / "vocab.gguf"
    write_gguf(path, vocab=5000)
    header = read_gguf_header(path)
    # arrays longer than 64 are stepped over and kept only as their length
    assert header.metadata["tokenizer.ggml.tokens"] == ("array", 5000)
    assert header.metadata["tokenizer.ggml.scores"] == ("array", 5000)
    assert read_model_info(path).vocab_size == 5000


def test_read_then_plan_tiny_model(tmp_path):
    from clusterctl.deploy import NodeGPUs, plan_model

    info = read_model_info(make_hf(tmp_path / "tiny"))
    plan = plan_model(info, [NodeGPUs("gpu1", 1, 24564)])
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.fits) == (1, 1, True)
    assert plan.max_model_len == 2048                         # the model's own maximum
    assert any("safetensors headers" in r for r in plan.reasons)


def test_oversized_config_is_refused_with_the_limit(tmp_path):
    folder = make_hf(tmp_path / "big", tensors=False)
    (folder / "config.json").write_text('{"pad": "' + "x" * (17 * 2**20) + '"}')
    with pytest.raises(InputError, match="over the 16 MiB limit") as e:
        read_model_info(folder)
    assert str(folder / "config.json") in str(e.value)


def test_per_layer_head_counts_of_many_layers_are_kept(tmp_path):
    """Hybrid models store per-layer head counts: an array as long as the layers."""
    path = tmp_path / "hybrid.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(100)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_array("llama.attention.head_count_kv", [0, 2] * 50)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_model_info(path)
    assert (info.num_layers, info.num_kv_heads) == (100, 2)


def test_hf_per_layer_lists_give_their_largest_value(tmp_path):
    cfg = dict(LLAMA_CONFIG, num_key_value_heads=[2, 4, 2, 1], moe_num_experts=[8, 8])
    info = read_model_info(make_hf(tmp_path / "lists", cfg))
    assert info.num_kv_heads == 4 and info.num_experts == 8
    bad = dict(LLAMA_CONFIG, num_key_value_heads=[2, float("nan")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(InputError) as e:
        read_model_info(tmp_path / "bad")
    assert e.value.key == "num_key_value_heads"
