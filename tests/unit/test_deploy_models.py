"""deploy.models: what MODEL means, deployment names, and sizing a model that is only on
a remote host (the survey script runs here with the local python3, as it would there)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from clusterctl.deploy import models
from clusterctl.deploy.models import (build_shadow, default_deployment_name, resolve_model,
                                      survey_command)
from clusterctl.deploy.modelinfo import read_model_info
from clusterctl.errors import InputError

gguf = pytest.importorskip("gguf")


def test_default_deployment_names():
    assert default_deployment_name("/m/TinyLlama-1.1B.Q4_K_M.gguf") == "TinyLlama-1.1B.Q4_K_M"
    assert default_deployment_name("Qwen/Qwen2.5-0.5B-Instruct@main") == \
        "Qwen2.5-0.5B-Instruct"
    assert default_deployment_name("hf:org/x") == "x"
    assert default_deployment_name("/m/big-00001-of-00003.gguf") == "big"
    assert default_deployment_name("/m/a b+c/") == "a-b-c"
    assert default_deployment_name("_x") == "m_x"
    assert len(default_deployment_name("a" * 200)) == 63


def test_resolve_local_head_models_dir_and_hf(tmp_path):
    f = tmp_path / "t.gguf"
    f.write_bytes(b"GGUF")
    ref = resolve_model(str(f), "/opt/models", lambda p: False)
    assert (ref.kind, ref.remote_path, ref.sync_source, ref.sync_name) == \
        ("local", "/opt/models/t.gguf", str(f), "t.gguf")
    assert ref.is_gguf

    on_head = {"/data/m", "/opt/models/sub/m.gguf"}
    ref = resolve_model("/data/m", "/opt/models", on_head.__contains__)
    assert (ref.kind, ref.remote_path, ref.sync_source) == ("head", "/data/m", None)
    ref = resolve_model("sub/m.gguf", "/opt/models", on_head.__contains__)
    assert (ref.kind, ref.remote_path) == ("head", "/opt/models/sub/m.gguf")

    ref = resolve_model("Qwen/Qwen2-0.5B@abc", "/opt/models", lambda p: False)
    assert (ref.kind, ref.remote_path, ref.sync_source, ref.sync_name) == \
        ("hf", "/opt/models/Qwen2-0.5B", "hf:Qwen/Qwen2-0.5B@abc", "Qwen2-0.5B")


def test_resolve_refuses_what_it_cannot_find():
    with pytest.raises(InputError, match="not on the head"):
        resolve_model("/nowhere/m", "/opt/models", lambda p: False)
    with pytest.raises(InputError, match="Hugging Face"):
        resolve_model("no such thing", "/opt/models", lambda p: False)
    with pytest.raises(InputError):
        resolve_model("", "/opt/models", lambda p: False)
    # ../ does not escape models_dir
    with pytest.raises(InputError):
        resolve_model("../etc/passwd", "/opt/models", lambda p: True)


def write_gguf(path: Path, vocab: int) -> None:
    """A small llama GGUF whose header (the token list) is larger than the first read."""
    import numpy as np
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_context_length(512)
    w.add_token_list([f"token{i}" for i in range(vocab)])
    w.add_tensor("token_embd.weight", np.zeros((vocab, 32), dtype=np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((32, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _survey_here(path: Path) -> dict:
    out = subprocess.run(survey_command(str(path)), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _fetch_here(remote: str, n: int) -> bytes:
    with open(remote, "rb") as fh:
        return fh.read(n)


def test_remote_gguf_sized_from_its_start(tmp_path, monkeypatch):
    src = tmp_path / "remote" / "tiny.gguf"
    src.parent.mkdir()
    write_gguf(src, vocab=50_000)
    monkeypatch.setattr(models, "GGUF_PREFIX_START", 4096)      # force the growing reads
    reads = []

    def fetch(remote, n):
        reads.append(n)
        return _fetch_here(remote, n)
    shadow = build_shadow(_survey_here(src), tmp_path / "shadow", fetch)
    assert reads[0] == 4096 and len(reads) > 1
    assert shadow.stat().st_size < src.stat().st_size
    got, want = read_model_info(shadow), read_model_info(src)
    assert (got.weight_bytes, got.num_layers, got.params) == \
        (want.weight_bytes, want.num_layers, want.params)


def test_remote_hf_folder_sized_from_headers(tmp_path):
    from clusterctl.deploy.tinymodels import write_tiny_hf
    src = write_tiny_hf(tmp_path / "remote" / "tiny-hf")
    (src / "notes.txt").write_text("ignored")
    survey = _survey_here(src)
    assert survey["kind"] == "dir" and "config.json" in survey["json"]
    assert survey["st"]["model.safetensors"]
    shadow = build_shadow(survey, tmp_path / "shadow", _fetch_here)
    got, want = read_model_info(shadow), read_model_info(src)
    assert (got.weight_bytes, got.params, got.head_dim) == (want.weight_bytes, want.params, 32)
    assert (shadow / "model.safetensors").stat().st_size < (src / "model.safetensors").stat().st_size


def test_survey_of_missing_path(tmp_path):
    survey = _survey_here(tmp_path / "nope")
    with pytest.raises(InputError, match="not found"):
        build_shadow(survey, tmp_path / "shadow", _fetch_here)


def test_remote_model_info_through_a_connection(tmp_path):
    """remote_model_info with a stand-in connection running commands locally."""
    from clusterctl.deploy.tinymodels import write_tiny_hf
    from clusterctl.remote import RunResult
    src = write_tiny_hf(tmp_path / "tiny-hf")

    class Local:
        name = "local"

        def run(self, cmd, check=True, **kw):
            argv = cmd if isinstance(cmd, list) else ["bash", "-c", cmd]
            p = subprocess.run(argv, capture_output=True, text=True)
            return RunResult(str(cmd), p.returncode, p.stdout, p.stderr)
    info = models.remote_model_info(Local(), str(src))
    assert info.path == str(src) and info.architecture == "LlamaForCausalLM"
