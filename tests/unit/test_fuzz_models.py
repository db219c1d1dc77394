"""Property-based tests of the model reader on untrusted files (GGUF, safetensors,
config.json, index), and the committed corpus of hostile models.

The property: any bytes end as a ModelInfo or one InputError naming the file, never
another exception; and a ModelInfo the reader returns can be planned without crashing
(a Plan, or the planner's own PlanError).
"""
from __future__ import annotations

import json
import math
import os
import struct
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterctl.deploy.modelinfo import ModelInfo, read_model_info
from clusterctl.deploy.planner import NodeGPUs, plan_llamacpp, plan_model, plan_to_dict
from clusterctl.errors import EXIT_BAD_INPUT, InputError

pytest.importorskip("gguf")

HOSTILE = Path(__file__).parent / "hostile_models"
EXPECTED = json.loads((HOSTILE / "expected.json").read_text())

# A bound on each example only to turn a hang into a failure, far above the real cost.
FUZZ = settings(max_examples=60, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def read_or_input_error(path: Path) -> ModelInfo | None:
    """The property under test: a ModelInfo that plans, or an InputError naming `path`."""
    try:
        info = read_model_info(path)
    except InputError as exc:
        assert exc.exit_code == EXIT_BAD_INPUT
        assert str(path.parent if path.is_file() else path) in str(exc) or \
            str(path) in str(exc), str(exc)
        return None
    assert info.num_layers >= 1 and info.num_attention_heads >= 1 and info.head_dim >= 1
    assert info.max_position_embeddings is None or info.max_position_embeddings >= 1
    assert info.weight_bytes >= 0
    cases = [(planner, nodes) for planner in (plan_model, plan_llamacpp)
             for nodes in ([NodeGPUs("g", 2, 81559)], [NodeGPUs("c", 0, 0, ram_mib=65536),
                                                       NodeGPUs("w", 1, 24564)])]
    for planner, nodes in cases:
        try:
            plan = planner(info, nodes, strict=False)
        except InputError:
            continue
        json.dumps(plan_to_dict(plan, info), allow_nan=False)
        assert plan.max_model_len >= 1
        assert plan.max_concurrency is None or plan.max_concurrency >= 0
        assert all(math.isfinite(x) for x in (plan.weight_gb_per_gpu,
                                              plan.kv_cache_gb_per_gpu))
    return info


# --------------------------------------------------------------------------- corpus


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_corpus_is_one_input_error_naming_file_and_key(name):
    path = HOSTILE / name
    with pytest.raises(InputError) as e:
        read_model_info(path)
    assert e.value.exit_code == EXIT_BAD_INPUT
    assert name in str(e.value)
    if EXPECTED[name]:
        assert e.value.key == EXPECTED[name], str(e.value)


def test_corpus_build_script_lists_every_entry():
    on_disk = {p.name for p in HOSTILE.iterdir()} - {"build.py", "expected.json"}
    assert on_disk == set(EXPECTED)


def _finishes(fn, timeout: float = 20.0):
    """Run fn in a thread; the result or exception, or 'hung' (a FIFO open blocks)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "hung"
    return box


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("fifo_name", ["model.safetensors", "config.json",
                                       "model.safetensors.index.json", "pytorch_model.bin"])
def test_fifo_in_model_folder_is_refused_not_opened(tmp_path, fifo_name):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 10, "intermediate_size": 128}))
    if fifo_name == "config.json":
        (folder / "config.json").unlink()
        (folder / "model.safetensors").write_bytes(b"")
    os.mkfifo(folder / fifo_name)
    box = _finishes(lambda: read_model_info(folder))
    assert box != "hung", f"reading a folder with a FIFO {fifo_name} blocked"
    assert isinstance(box.get("error"), InputError), box
    assert "regular file" in str(box["error"]) or "no weight files" in str(box["error"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_as_model_path_and_as_gguf(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    box = _finishes(lambda: read_model_info(fifo))
    assert box != "hung"
    assert isinstance(box.get("error"), InputError) and "regular file" in str(box["error"])


def test_index_shard_through_a_symlink_is_fine(tmp_path):
    """Hugging Face's cache links every shard to ../../blobs: the link may leave the
    folder, the name in the index may not."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (blobs / "abc").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    snap = tmp_path / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "model-1.safetensors").symlink_to(blobs / "abc")
    (snap / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}))
    (snap / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "model-1.safetensors"}}))
    info = read_model_info(snap)
    assert info.weight_bytes == 8 and info.params == 4


# --------------------------------------------------------------------------- GGUF


def _gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}
_RANGES = {0: (0, 255), 1: (-128, 127), 2: (0, 2**16 - 1), 3: (-2**15, 2**15 - 1),
           4: (0, 2**32 - 1), 5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1),
           11: (-2**63, 2**63 - 1)}
_KEYS = ["general.architecture", "general.name", "general.file_type", "general.alignment",
         "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
         "llama.attention.head_count_kv", "llama.attention.key_length", "llama.context_length",
         "llama.vocab_size", "llama.expert_count", "llama.attention.kv_lora_rank",
         "llama.rope.dimension_count", "tokenizer.ggml.tokens", "x"]


@st.composite
def gguf_value(draw, depth: int = 0) -> bytes:
    """(type, payload) bytes of one GGUF metadata value of any type, arrays included."""
    vtype = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]))
    if vtype in _RANGES:
        lo, hi = _RANGES[vtype]
        payload = struct.pack(_SCALAR_FMT[vtype], draw(st.integers(lo, hi)))
    elif vtype in (6, 12):
        payload = struct.pack(_SCALAR_FMT[vtype], draw(st.floats(width=32 if vtype == 6
                                                                  else 64)))
    elif vtype == 7:
        payload = struct.pack("<?", draw(st.booleans()))
    elif vtype == 8:
        payload = _gstr(draw(st.sampled_from(["llama", "", "x" * 300, "é"])))
    elif vtype == 9 and depth < 6:
        items = draw(st.lists(gguf_value(depth + 1), max_size=4))
        itype = struct.unpack("<I", items[0][:4])[0] if items else draw(st.integers(0, 13))
        same = [i for i in items if i[:4] == struct.pack("<I", itype)]
        payload = struct.pack("<IQ", itype, len(same)) + b"".join(i[4:] for i in same)
    else:
        payload = draw(st.binary(max_size=16))
    return struct.pack("<I", vtype) + payload


@st.composite
def gguf_file(draw) -> bytes:
    kvs = [_gstr("general.architecture") + struct.pack("<I", 8) + _gstr("llama")]
    good = {"llama.block_count": 4, "llama.embedding_length": 64,
            "llama.attention.head_count": 4}
    for key, v in good.items():
        if draw(st.integers(0, 5)):                   # mostly present: reach the planner
            kvs.append(_gstr(key) + struct.pack("<II", 4, v))
    for _ in range(draw(st.integers(0, 4))):
        kvs.append(_gstr(draw(st.sampled_from(_KEYS))) + draw(gguf_value()))
    tensors = []
    for i in range(draw(st.integers(0, 3))):
        dims = draw(st.lists(st.integers(0, 64) | st.integers(0, 2**64 - 1), max_size=9))
        tensors.append(_gstr(f"t{i}") + struct.pack("<I", len(dims))
                       + b"".join(struct.pack("<Q", d) for d in dims)
                       + struct.pack("<IQ", draw(st.sampled_from([0, 1, 8, 12])
                                                 | st.integers(0, 45)), 0))
    n_tensors = draw(st.sampled_from([len(tensors)] * 4 + [len(tensors) + 1, 2**63]))
    n_kv = draw(st.sampled_from([len(kvs)] * 4 + [len(kvs) + 1, 2**40]))
    body = (b"GGUF" + struct.pack("<I", draw(st.sampled_from([3, 3, 3, 2, 1, 2**31])))
            + struct.pack("<QQ", n_tensors, n_kv) + b"".join(kvs) + b"".join(tensors))
    return body + bytes(draw(st.integers(0, 64)))


@FUZZ
@given(data=gguf_file())
def test_fuzz_gguf_structured(tmp_path, data):
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    read_or_input_error(path)


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> bytes:
    from test_modelinfo import write_gguf
    path = tmp_path_factory.mktemp("g") / "ok.gguf"
    write_gguf(path, layers=2, vocab=20)
    return path.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=8)),
                      max_size=6), cut=st.none() | st.integers(0, 4000))
def test_fuzz_gguf_mutated(tmp_path, valid_gguf, edits, cut):
    data = bytearray(valid_gguf[:cut] if cut is not None else valid_gguf)
    for pos, new in edits:
        pos = pos % max(1, len(data))
        data[pos:pos + len(new)] = new
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(data))
    read_or_input_error(path)


# --------------------------------------------------------------------------- JSON

_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=12)
_CONFIG_KEYS = ["num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
                "num_key_value_heads", "hidden_size", "d_model", "head_dim", "vocab_size",
                "intermediate_size", "max_position_embeddings", "seq_length", "num_experts",
                "n_routed_experts", "moe_intermediate_size", "n_shared_experts",
                "first_k_dense_replace", "kv_lora_rank", "qk_rope_head_dim",
                "tie_word_embeddings", "torch_dtype", "architectures", "model_type",
                "quantization_config", "multi_query", "text_config"]
_GOOD = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 10, "intermediate_size": 128}


def _dump(obj) -> str:
    return json.dumps(obj, allow_nan=True)   # NaN / Infinity literals, as hostile files have


@st.composite
def config_json(draw) -> str:
    cfg = dict(_GOOD) if draw(st.booleans()) else {}
    for key in draw(st.lists(st.sampled_from(_CONFIG_KEYS), max_size=5)):
        cfg[key] = draw(json_values | st.integers(-5, 100_000))
    if draw(st.booleans()):
        cfg["quantization_config"] = {"quant_method": draw(_scalars), "bits": draw(_scalars)}
    return _dump(cfg)


@FUZZ
@given(text=config_json())
def test_fuzz_config_json(tmp_path, text):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(text)
    read_or_input_error(folder)


@st.composite
def safetensors_bytes(draw) -> bytes:
    header: dict = {}
    for i in range(draw(st.integers(0, 3))):
        entry = {"dtype": draw(st.sampled_from(["BF16", "F32", "U8", "Q4", ""]) | _scalars),
                 "shape": draw(st.lists(st.integers(-1, 2**64) | _scalars, max_size=4)
                               | json_values),
                 "data_offsets": draw(st.lists(st.integers(-1, 2**64) | _scalars, max_size=3)
                                      | json_values)}
        for key in draw(st.lists(st.sampled_from(list(entry)), max_size=1)):
            del entry[key]
        header[f"t{i}"] = entry if draw(st.integers(0, 5)) else draw(json_values)
    if draw(st.booleans()):
        header["__metadata__"] = draw(json_values)
    raw = _dump(header).encode()
    length = draw(st.sampled_from([len(raw), len(raw) + 1, 0, 2**63]))
    return struct.pack("<Q", length) + raw + bytes(draw(st.integers(0, 64)))


@FUZZ
@given(data=safetensors_bytes())
def test_fuzz_safetensors_header(tmp_path, data):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_GOOD))
    (folder / "model.safetensors").write_bytes(data)
    read_or_input_error(folder)


@FUZZ
@given(weight_map=json_values | st.dictionaries(
    st.text(max_size=4), st.sampled_from(["model.safetensors", "/etc/passwd", "../x.safetensors",
                                          "a/../../b.safetensors", "sub/ok.safetensors", "",
                                          "C:\\x.safetensors", "m\0.safetensors"]) | _scalars,
    max_size=4), total=_scalars)
def test_fuzz_index(tmp_path, weight_map, total):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_GOOD))
    header = json.dumps({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                               + bytes(4))
    (folder / "model.safetensors.index.json").write_text(_dump(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    info = read_or_input_error(folder)
    if info is not None:                  # what was read stayed inside the folder
        for name in info.files:
            assert ".." not in name.split("/") and not name.startswith("/")


_FOLDER_NAMES = ["config.json", "model.safetensors", "a.safetensors", "consolidated.safetensors",
                 "model.safetensors.index.json", "pytorch_model.bin.index.json",
                 "pytorch_model.bin", "m.gguf", "m-00001-of-00002.gguf", "m-00002-of-00002.gguf",
                 "mmproj.gguf", "x-00000-of-00001.gguf", "sub.safetensors"]


@FUZZ
@given(files=st.dictionaries(st.sampled_from(_FOLDER_NAMES), st.one_of(
    config_json().map(str.encode), safetensors_bytes(), gguf_file(), st.binary(max_size=64),
    st.just(json.dumps({"weight_map": {"x": "a.safetensors"}}).encode())), max_size=5),
    pick=st.none() | st.sampled_from(_FOLDER_NAMES))
def test_fuzz_model_folders(tmp_path, files, pick):
    """Any mix of model files in a folder (or one of them picked): a ModelInfo or one
    InputError."""
    import shutil
    folder = tmp_path / "m"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, data in files.items():
        if name == "sub.safetensors":
            (folder / name).mkdir()               # a folder with a weight file's name
        else:
            (folder / name).write_bytes(data)
    target = folder if pick is None else folder / pick
    if target.exists():
        read_or_input_error(target)
