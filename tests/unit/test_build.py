"""llama.cpp build planning: flags per node class, build ids, the node-side script."""
import json
import subprocess

from clusterctl.engine.build import LlamaCppBuild, build_flags, build_id, build_script, node_class
from clusterctl.facts import FactRequest, Facts
from clusterctl.ops.base import Change, Noop


class G:
    def __init__(self, cap):
        self.compute_cap = cap


class F:
    """The few facts the build op reads."""

    def __init__(self, gpus=(), nvcc=None, info=None):
        self.gpus, self.nvcc, self.arch = list(gpus), nvcc, "x86_64"
        self.os = {"id": "debian", "version_id": "12"}
        self._info = info

    def get(self, req):
        assert req == FactRequest("file", "/opt/l/BUILD-INFO.json")
        if self._info is None:
            return {"exists": False}
        return {"exists": True, "content": json.dumps(self._info).encode()}


ARGS = {"source": "llama-cpp-python==0.3.36", "prefix": "/opt/l"}


def test_cpu_node_builds_rpc_without_cuda():
    flags, cuda = build_flags(F(), "auto")
    assert "-DGGML_RPC=ON" in flags and "-DGGML_NATIVE=OFF" in flags
    assert not cuda and not any("CUDA" in f for f in flags)


def test_gpu_node_with_nvcc_builds_cuda_for_its_architectures():
    flags, cuda = build_flags(F([G("8.6"), G("8.9"), G("8.6")], nvcc="13.0"), "auto")
    assert cuda and "-DGGML_CUDA=ON" in flags
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;89" in flags


def test_gpu_without_nvcc_stays_cpu_unless_forced():
    assert build_flags(F([G("9.0")]), "auto")[1] is False
    assert build_flags(F([G("9.0")]), True)[1] is True


def test_build_id_changes_with_source_flags_and_class():
    base = build_id("a", None, ["-X"], {"os": "debian-12"})
    assert base == build_id("a", None, ["-X"], {"os": "debian-12"})
    assert base != build_id("b", None, ["-X"], {"os": "debian-12"})
    assert base != build_id("a", "v1", ["-X"], {"os": "debian-12"})
    assert base != build_id("a", None, ["-Y"], {"os": "debian-12"})
    assert base != build_id("a", None, ["-X"], {"os": "ubuntu-24.04"})


def test_identical_nodes_share_a_class():
    assert node_class(F(), False) == node_class(F(), False)
    assert node_class(F([G("8.6")], "13.0"), True) != node_class(F([G("9.0")], "13.0"), True)


def test_plan_noop_when_build_info_matches_else_change():
    op = LlamaCppBuild()
    args = op.validate(dict(ARGS))
    fresh = op.plan(F(), args)
    assert isinstance(fresh, Change) and "build llama.cpp (RPC)" in fresh.summary
    want = op.desired(F(), args)
    done = op.plan(F(info={"id": want["id"]}), args)
    assert isinstance(done, Noop) and want["id"] in done.reason
    stale = op.plan(F(info={"id": "0000"}), args)
    assert isinstance(stale, Change) and "0000 ->" in stale.diff


def test_build_script_is_valid_bash_and_quotes_paths():
    script = build_script("/var/cache/x src.tar.gz", "/var/tmp/w", "/opt/my prefix",
                          ["-DGGML_RPC=ON"], 2, {"id": "abc", "note": "it's"})
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "'/var/cache/x src.tar.gz'" in script and "prefix='/opt/my prefix'" in script
    assert "-j2" in script


def test_build_script_picks_rpc_target_by_exact_name(tmp_path):
    """`rpc-server` must not match inside `ggml-rpc-server` (the name in newer trees)."""
    script = build_script("/x", "/w", "/p", [], 1, {"id": "i"})
    start = script.index("has_target()")
    fn = script[start:script.index("\n", start)]
    probe = fn + '\ntargets="... ggml-rpc-server\n... llama-server"\n' \
        'has_target rpc-server && echo BAD; has_target ggml-rpc-server && echo OK1; ' \
        'has_target llama-server && echo OK2; has_target llama-cli || echo OK3'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout
    assert out.split() == ["OK1", "OK2", "OK3"]
