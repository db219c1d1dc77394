"""Tiny random-weight models for lab tests and benchmarks (no download needed).

* `write_tiny_gguf`: a llama-architecture GGUF (f16) with the llama SentencePiece vocabulary
  of llama.cpp's `models/ggml-vocab-llama-spm.gguf` (found in the llama.cpp source tarball
  the llamacpp role caches on the controller), so llama-server loads it and answers.
* `write_tiny_hf`: a Hugging Face LlamaForCausalLM folder (config.json, model.safetensors,
  a byte-level tokenizer.json with a chat template) for vLLM (head_dim 32: vLLM's CPU
  attention needs >= 32).

The text they produce is nonsense; inference through them is real.
"""
from __future__ import annotations

import glob
import json
import struct
import tarfile
from pathlib import Path

VOCAB_MEMBER_SUFFIX = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _cache() -> Path:
    from ..engine.build import cache_dir   # where the llamacpp role stages its source
    return cache_dir()


def find_vocab_gguf() -> Path | None:
    """The llama SPM vocabulary GGUF, extracted once from a cached llama.cpp source tarball."""
    target = _cache() / "deploy" / "ggml-vocab-llama-spm.gguf"
    if target.is_file():
        return target
    for tar_path in sorted(glob.glob(str(_cache() / "llamacpp" / "src-*.tar.gz"))):
        try:
            with tarfile.open(tar_path) as tar:
                for member in tar:
                    if member.name.endswith(VOCAB_MEMBER_SUFFIX) or \
                            member.name.endswith("models/ggml-vocab-llama-spm.gguf"):
                        data = tar.extractfile(member).read()
                        target.parent.mkdir(parents=True, exist_ok=True)
                        tmp = target.with_suffix(".tmp")
                        tmp.write_bytes(data)
                        tmp.replace(target)
                        return target
        except (OSError, tarfile.TarError):
            continue
    return None


def write_tiny_gguf(path: str | Path, vocab_gguf: str | Path, *, n_embd: int = 64,
                    n_layers: int = 4, n_head: int = 4, n_ff: int = 128,
                    context: int = 2048, seed: int = 0, name: str = "tiny-llama") -> Path:
    """A llama GGUF with random f16 weights and the vocabulary of `vocab_gguf`."""
    import gguf
    import numpy as np

    path = Path(path)
    reader = gguf.GGUFReader(str(vocab_gguf))

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    tokens = field("tokenizer.ggml.tokens")
    scores = field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model(field("tokenizer.ggml.model") or "llama")
    pre = field("tokenizer.ggml.pre")
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores(list(scores))
    if types is not None:
        w.add_token_types(list(types))
    for key, add in (("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                     ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                     ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id)):
        value = field(key)
        if value is not None:
            add(int(value))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", mat(vocab, n_embd))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- HF


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_json() -> dict:
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + <s>, </s>."""
    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    specials = [{"id": 256 + i, "content": t, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": True}
                for i, t in enumerate(("<s>", "</s>"))]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": []}}


def write_tiny_hf(folder: str | Path, *, hidden: int = 128, layers: int = 2, heads: int = 4,
                  intermediate: int = 256, context: int = 1024, seed: int = 0) -> Path:
    """A LlamaForCausalLM folder with random bfloat16 weights (written without torch)."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = 258
    head_dim = hidden // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": intermediate,
              "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "head_dim": head_dim, "vocab_size": vocab,
              "max_position_embeddings": context, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "bos_token_id": 256, "eos_token_id": 257}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 256, "eos_token_id": 257}))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
         "eos_token": "</s>", "model_max_length": context, "chat_template": CHAT_TEMPLATE,
         "clean_up_tokenization_spaces": False}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>"}))

    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}

    def bf16(shape, scale=0.02):
        a = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
        return ("BF16", shape, (a.view(np.uint32) >> 16).astype(np.uint16).tobytes())

    def ones(n):
        a = np.ones(n, dtype=np.float32)
        return ("BF16", (n,), (a.view(np.uint32) >> 16).astype(np.uint16).tobytes())

    tensors["model.embed_tokens.weight"] = bf16((vocab, hidden))
    tensors["model.norm.weight"] = ones(hidden)
    tensors["lm_head.weight"] = bf16((vocab, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = ones(hidden)
        tensors[p + "post_attention_layernorm.weight"] = ones(hidden)
        tensors[p + "self_attn.q_proj.weight"] = bf16((heads * head_dim, hidden))
        tensors[p + "self_attn.k_proj.weight"] = bf16((heads * head_dim, hidden))
        tensors[p + "self_attn.v_proj.weight"] = bf16((heads * head_dim, hidden))
        tensors[p + "self_attn.o_proj.weight"] = bf16((hidden, heads * head_dim))
        tensors[p + "mlp.gate_proj.weight"] = bf16((intermediate, hidden))
        tensors[p + "mlp.up_proj.weight"] = bf16((intermediate, hidden))
        tensors[p + "mlp.down_proj.weight"] = bf16((hidden, intermediate))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _name, (_d, _s, data) in tensors.items():
            fh.write(data)
    return folder


__all__ = ["find_vocab_gguf", "write_tiny_gguf", "write_tiny_hf", "tokenizer_json"]
