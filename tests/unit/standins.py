"""Fixtures shared by unit test modules (imported by name: `from standins import started`;
no tests/unit/conftest.py, since a second conftest module would shadow the lab tier's)."""
import pytest


@pytest.fixture
def started():
    """Every stand-in process a test starts (append it); killed at the end whatever happened."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def local(monkeypatch):
    """Every SSH connection of the session is a LocalConnection (commands run here); its
    `calls` start empty."""
    from clusterctl import session as session_mod
    from localconn import LocalConnection
    LocalConnection.calls = []
    monkeypatch.setattr(session_mod, "Connection", lambda host, **kw: LocalConnection(host))
    return LocalConnection


def model_info(name, params, layers, heads, kv, hidden, vocab, max_pos, *, fmt="hf",
               dtype="bfloat16"):
    """A ModelInfo as the planner reads it from a model's config (weights from the
    parameter count and dtype)."""
    from clusterctl.deploy.modelinfo import ModelInfo
    from clusterctl.deploy.planner import estimate_weight_bytes
    return ModelInfo(name=name, format=fmt, params=params,
                     weight_bytes=estimate_weight_bytes(params, dtype), dtype=dtype,
                     quantization=None, num_layers=layers, num_attention_heads=heads,
                     num_kv_heads=kv, hidden_size=hidden, head_dim=hidden // heads,
                     vocab_size=vocab, max_position_embeddings=max_pos)
