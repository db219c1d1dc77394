"""deploy.commands: argv of the servers, systemd quoting, nginx text, readiness verdicts,
the public-network warning. Pure: no hosts."""
from __future__ import annotations

import json

import pytest

from clusterctl.deploy.commands import (chat_request, exposure_warning, judge_chat,
                                        judge_models, llama_server_argv, nginx_upstream,
                                        parse_tensor_split, rpc_server_argv, systemd_env,
                                        systemd_exec, unit_name, vllm_server_argv)


# --------------------------------------------------------------------------- a systemd
# command-line splitter (systemd.service "Command lines": words separated by spaces,
# "double" and 'single' quoted words with C escapes, %% -> %, $$ -> $), to check that
# systemd_exec round-trips.

def systemd_split(text: str) -> list[str]:
    words, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        word = []
        if text[i] in "\"'":
            quote = text[i]
            i += 1
            while text[i] != quote:
                if text[i] == "\\":
                    i += 1
                word.append(text[i])
                i += 1
            i += 1
        else:
            while i < n and text[i] != " ":
                word.append(text[i])
                i += 1
        words.append("".join(word).replace("%%", "\0P").replace("$$", "\0D")
                     .replace("\0P", "%").replace("\0D", "$"))
    return words


@pytest.mark.parametrize("argv", [
    ["/bin/rpc-server", "--host", "10.0.0.2", "--port", "50052", "--cache"],
    ["/opt/venv/bin/vllm", "serve", "/models/My Model", "--served-model-name", "a b"],
    ["/bin/x", "100%", "$HOME", "${X}", 'say "hi"', "back\\slash", "it's", "", "a;b", "-"],
    ["/bin/x", "--json", '{"a": [1, 2]}'],
])
def test_systemd_exec_round_trips(argv):
    text = systemd_exec(argv)
    assert systemd_split(text) == argv
    assert "\n" not in text


def test_systemd_exec_safe_words_stay_bare():
    assert systemd_exec(["/bin/a", "--port", "8000", "198.18.3.11:50052,x:1"]) == \
        "/bin/a --port 8000 198.18.3.11:50052,x:1"


def test_systemd_exec_refuses_relative_program_and_newlines():
    with pytest.raises(ValueError, match="absolute path"):
        systemd_exec(["vllm", "serve"])
    with pytest.raises(ValueError, match="newline"):
        systemd_exec(["/bin/x", "a\nb"])
    with pytest.raises(ValueError):
        systemd_exec([])


def test_systemd_env_quotes_percent_and_quotes():
    assert systemd_env("CUDA_VISIBLE_DEVICES", "0,1") == '"CUDA_VISIBLE_DEVICES=0,1"'
    assert systemd_env("X", 'a "b" 5%') == '"X=a \\"b\\" 5%%"'
    with pytest.raises(ValueError):
        systemd_env("BAD-NAME", "x")


def test_unit_name():
    assert unit_name("tiny", "rpc") == "clusterctl-tiny-rpc.service"
    assert unit_name("tiny", "vllm", 2) == "clusterctl-tiny-vllm-2.service"
    with pytest.raises(ValueError):
        unit_name("bad/name", "rpc")


# --------------------------------------------------------------------------- llama.cpp

def test_rpc_server_binds_the_cluster_ip_with_cache():
    argv = rpc_server_argv("/p/bin/rpc-server", "10.0.0.2", 50052)
    assert argv == ["/p/bin/rpc-server", "--host", "10.0.0.2", "--port", "50052", "--cache"]
    assert "--cache" not in rpc_server_argv("/p/bin/rpc-server", "10.0.0.2", 1, cache=False)
    assert rpc_server_argv("/r", "10.0.0.2", 1, threads=4, devices=["CUDA0", "CUDA1"])[5:] \
        == ["--threads", "4", "--device", "CUDA0,CUDA1", "--cache"]


@pytest.mark.parametrize("wild", ["0.0.0.0", "::", ""])
def test_servers_refuse_wildcard_binds(wild):
    with pytest.raises(ValueError, match="cluster IP"):
        rpc_server_argv("/r", wild, 1)
    with pytest.raises(ValueError, match="cluster IP"):
        llama_server_argv("/s", "/m.gguf", wild, 8000)
    with pytest.raises(ValueError, match="cluster IP"):
        vllm_server_argv("/v", "/m", wild, 8000, served_model_name="m", vllm_args=[])


def test_llama_server_lists_rpc_before_layers():
    argv = llama_server_argv("/p/bin/llama-server", "/models/t.gguf", "10.0.0.1", 8000,
                             rpc=["10.0.0.2:50052", "10.0.0.3:50052"], tensor_split=[3, 1.5],
                             alias="tiny", ctx_size=2048)
    assert argv[:7] == ["/p/bin/llama-server", "--model", "/models/t.gguf", "--host",
                        "10.0.0.1", "--port", "8000"]
    assert argv.index("--rpc") < argv.index("--n-gpu-layers")
    assert argv[argv.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    assert argv[argv.index("--tensor-split") + 1] == "3,1.5"
    assert argv[argv.index("--alias") + 1] == "tiny"
    assert argv[argv.index("--ctx-size") + 1] == "2048"
    assert "--rpc" not in llama_server_argv("/s", "/m", "10.0.0.1", 8000)


def test_parse_tensor_split():
    assert parse_tensor_split("3,1,1") == [3.0, 1.0, 1.0]
    assert parse_tensor_split("1/2") == [1.0, 2.0]
    assert parse_tensor_split(None) is None
    for bad in ("a,b", "0,0", "-1,2"):
        with pytest.raises(ValueError):
            parse_tensor_split(bad)


# --------------------------------------------------------------------------- vLLM

PLAN_ARGS = ["--tensor-parallel-size", "8", "--pipeline-parallel-size", "2",
             "--max-model-len", "8192", "--gpu-memory-utilization", "0.90"]


def test_vllm_ray_across_nodes():
    argv = vllm_server_argv("/v/bin/vllm", "/models/llama", "10.0.0.1", 8000,
                            served_model_name="llama", vllm_args=PLAN_ARGS, executor="ray")
    assert argv[:3] == ["/v/bin/vllm", "serve", "/models/llama"]
    assert argv[argv.index("--served-model-name") + 1] == "llama"
    assert argv[argv.index("--host") + 1] == "10.0.0.1"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    for flag in PLAN_ARGS:
        assert flag in argv
    assert "--nnodes" not in argv and "--headless" not in argv


def test_vllm_mp_multi_node_ranks():
    kw = dict(served_model_name="m", vllm_args=["--pipeline-parallel-size", "2"],
              executor="mp", nnodes=2, master_addr="10.0.0.1", master_port=29501)
    rank0 = vllm_server_argv("/v", "/m", "10.0.0.1", 8000, node_rank=0, **kw)
    rank1 = vllm_server_argv("/v", "/m", "10.0.0.2", 8000, node_rank=1, **kw)
    assert "--headless" not in rank0 and rank1[-1] == "--headless"
    for argv, rank in ((rank0, "0"), (rank1, "1")):
        assert argv[argv.index("--nnodes") + 1] == "2"
        assert argv[argv.index("--node-rank") + 1] == rank
        assert argv[argv.index("--master-addr") + 1] == "10.0.0.1"
        assert argv[argv.index("--master-port") + 1] == "29501"
    with pytest.raises(ValueError, match="mp"):
        vllm_server_argv("/v", "/m", "10.0.0.1", 8000, served_model_name="m", vllm_args=[],
                         executor="ray", nnodes=2, master_addr="x", master_port=1)
    with pytest.raises(ValueError):
        vllm_server_argv("/v", "/m", "10.0.0.1", 8000, served_model_name="m", vllm_args=[],
                         executor="threads")


# --------------------------------------------------------------------------- nginx

def test_nginx_upstream_least_conn_on_cluster_ip():
    text = nginx_upstream("tiny", ["10.0.0.1:8001", "10.0.0.2:8002"], "10.0.0.1:8000")
    assert "upstream clusterctl_tiny {" in text
    assert "least_conn;" in text
    assert "server 10.0.0.1:8001" in text and "server 10.0.0.2:8002" in text
    assert "listen 10.0.0.1:8000;" in text
    assert "proxy_pass http://clusterctl_tiny;" in text
    assert "proxy_buffering off;" in text           # streamed tokens are not held back
    assert text.count("{") == text.count("}")


def test_nginx_upstream_refuses_bad_input():
    with pytest.raises(ValueError):
        nginx_upstream("tiny", [], "10.0.0.1:8000")
    with pytest.raises(ValueError, match="cluster IP"):
        nginx_upstream("tiny", ["10.0.0.1:8001"], "0.0.0.0:8000")
    with pytest.raises(ValueError):
        nginx_upstream("tiny", ["10.0.0.1:8001; evil"], "10.0.0.1:8000")


# --------------------------------------------------------------------------- readiness

def test_chat_request_body():
    body = json.loads(chat_request("tiny"))
    assert body["model"] == "tiny" and body["messages"][0]["role"] == "user"
    assert body["max_tokens"] > 0 and body["ignore_eos"] is True


def test_judge_models():
    ok = judge_models('{"object":"list","data":[{"id":"tiny"}]}', "tiny")
    assert ok.ok
    assert not judge_models('{"data":[{"id":"other"}]}', "tiny").ok
    assert "other" in judge_models('{"data":[{"id":"other"}]}', "tiny").detail
    assert not judge_models('{"data":[]}', "tiny").ok
    assert not judge_models("<html>502</html>", "tiny").ok


def test_judge_chat_needs_text():
    good = {"choices": [{"message": {"role": "assistant", "content": "hello there"}}]}
    assert judge_chat(json.dumps(good)).text == "hello there"
    empty = {"choices": [{"message": {"role": "assistant", "content": ""}}]}
    assert not judge_chat(json.dumps(empty)).ok
    reasoning = {"choices": [{"message": {"content": None, "reasoning_content": "hmm"}}]}
    assert judge_chat(json.dumps(reasoning)).ok
    err = judge_chat('{"error": {"message": "Loading model", "code": 503}}')
    assert not err.ok and "Loading model" in err.detail
    assert not judge_chat("not json").ok
    assert not judge_chat('{"choices": []}').ok


# --------------------------------------------------------------------------- safety

def test_private_and_reserved_networks_are_quiet():
    assert exposure_warning({"a": "10.0.0.1", "b": "192.168.1.2"}, "10.0.0.0/24") is None
    # 198.18.0.0/15 (benchmark testing, the lab's range) is reserved, not global
    assert exposure_warning({"a": "198.18.3.11"}, "198.18.3.0/24") is None
    assert exposure_warning({"a": "100.64.0.1"}, None) is None        # CGNAT: not global


def test_public_network_warns_loudly():
    w = exposure_warning({"a": "10.0.0.1", "b": "8.8.8.8"}, None)
    assert w.startswith("WARNING") and "b (8.8.8.8)" in w and "a (" not in w
    assert "unauthenticated" in w
    assert exposure_warning({}, "203.0.113.0/24") is None             # TEST-NET-3: reserved
    assert exposure_warning({}, "81.0.0.0/24") is not None
