"""SOURCE parsing, model names, and the Hugging Face command with its masked token (pure)."""
import json
import shlex
from pathlib import Path

import pytest

from clusterctl.errors import InputError
from clusterctl.secret import Secret, to_jsonable
from clusterctl.sync.source import (HFSource, LocalSource, NodeSource, check_name,
                                    hf_download_command, hf_env, hf_token, parse_source)

HOSTS = ["head", "node2", "node3"]
TOKEN = "hf_s3cr3tT0kenValue"


def test_local_folder(tmp_path):
    (tmp_path / "llama").mkdir()
    src = parse_source(str(tmp_path / "llama"), HOSTS)
    assert src == LocalSource(tmp_path / "llama") and src.default_name == "llama"


def test_relative_local_path(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"x")
    src = parse_source("m.gguf", HOSTS, cwd=str(tmp_path))
    assert isinstance(src, LocalSource) and src.path == tmp_path / "m.gguf"
    assert src.default_name == "m.gguf"


def test_node_path():
    src = parse_source("node2:/data/models/qwen/", HOSTS, exists=lambda p: False)
    assert src == NodeSource("node2", "/data/models/qwen")
    assert src.default_name == "qwen" and str(src) == "node2:/data/models/qwen"


def test_unknown_node_is_named():
    with pytest.raises(InputError, match="'node9' is not a host"):
        parse_source("node9:/data/x", HOSTS, exists=lambda p: False)


def test_hf_repo_id_when_no_such_local_path():
    src = parse_source("Qwen/Qwen2.5-0.5B-Instruct", HOSTS, exists=lambda p: False)
    assert src == HFSource("Qwen/Qwen2.5-0.5B-Instruct")
    assert src.default_name == "Qwen2.5-0.5B-Instruct"


def test_hf_explicit_with_revision():
    src = parse_source("hf:org/model@v1.2", HOSTS, exists=lambda p: True)
    assert src == HFSource("org/model", "v1.2") and str(src) == "hf:org/model@v1.2"


def test_local_path_wins_over_repo_id(tmp_path):
    (tmp_path / "org" / "model").mkdir(parents=True)
    src = parse_source("org/model", HOSTS, cwd=str(tmp_path))
    assert isinstance(src, LocalSource)


@pytest.mark.parametrize("text", ["", "   ", "no-such-thing", "a/b/c", "hf:not a repo"])
def test_bad_sources(text):
    with pytest.raises(InputError):
        parse_source(text, HOSTS, exists=lambda p: False)


@pytest.mark.parametrize("name", ["llama-3-8b", "Qwen2.5-0.5B", "tiny.gguf", "m_1+x@r=2"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "-x", "a b", "x" * 201])
def test_bad_names(name):
    with pytest.raises(InputError):
        check_name(name)


def test_hf_command_carries_no_token():
    src = HFSource("org/model", "main")
    argv = hf_download_command("/opt/clusterctl/venv/", src, "/opt/models/model")
    assert argv[0] == "/opt/clusterctl/venv/bin/python" and argv[1] == "-c"
    assert argv[3:] == ["org/model", "/opt/models/model", "main"]
    assert "snapshot_download" in argv[2] and "local_dir=local_dir" in argv[2]
    assert TOKEN not in shlex.join(argv)
    assert hf_download_command("/v", HFSource("org/model"), "/d")[-1] == ""


def test_hf_token_from_environment_first():
    tok = hf_token({"HF_TOKEN": TOKEN}, {"secrets": {"hf_token": Secret("other")}})
    assert isinstance(tok, Secret) and tok.reveal() == TOKEN
    assert str(tok) == "***" and TOKEN not in repr(tok)


def test_hf_token_from_inventory_or_none():
    assert hf_token({}, {"secrets": {"hf_token": Secret(TOKEN)}}).reveal() == TOKEN
    assert hf_token({}, {"secrets": {"hf_token": None}}) is None
    assert hf_token({}, {}) is None


def test_hf_env_masks_the_token():
    env = hf_env(Secret(TOKEN))
    assert isinstance(env["HF_TOKEN"], Secret)
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    assert TOKEN not in shown and "HF_TOKEN=***" in shown
    assert TOKEN not in json.dumps(to_jsonable(env))
    assert "HF_TOKEN" not in hf_env(None)


def test_hf_token_never_reaches_the_shown_command(monkeypatch):
    """Connection.run hands Secret env values to the process over stdin (never in the
    command text, which is argv on the host), and the command it shows says ***."""
    from clusterctl import remote

    class FakeResult:
        exited, stdout, stderr = 1, "", f"401 Unauthorized for token {TOKEN}"

    ran = {}

    class FakeFabric:
        is_connected = True

        def run(self, text, **kw):
            ran["text"] = text
            ran["stdin"] = kw["in_stream"].getvalue()
            return FakeResult()

    host = type("H", (), {"name": "head", "user": "root", "address": "198.18.0.2",
                          "port": 22, "key_file": None, "known_hosts_file": None})()
    conn = remote.Connection(host)
    conn._conn = FakeFabric()
    monkeypatch.setattr(conn, "open", lambda: conn)
    res = conn.run(hf_download_command("/v", HFSource("org/m"), "/opt/models/m"),
                   env=hf_env(Secret(TOKEN)), check=False)
    assert TOKEN not in ran["text"]              # not in any argv on the host
    assert ran["stdin"].startswith(TOKEN + "\0")  # handed to the process on stdin
    assert TOKEN not in res.command and TOKEN not in res.stderr
    assert "HF_TOKEN=***" in res.command


def test_local_source_str(tmp_path):
    assert str(LocalSource(Path("/data/x"))) == "/data/x"
