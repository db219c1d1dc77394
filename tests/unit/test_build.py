"""llama.cpp build planning: flags per node class, build ids, the node-side script."""
import json
import shutil
import subprocess

import pytest

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


# -- CUDA architectures from the inventory (a build node without a GPU) ---------------

def test_architectures_are_normalised_and_checked():
    from clusterctl.engine.build import check_architectures
    assert check_architectures(None) is None
    assert check_architectures(["9.0", "90", 86, "90-real", "100a"]) == \
        ["90", "86", "90-real", "100a"]
    assert check_architectures("8.9") == ["89"]
    for bad in (["native"], ["all"], ["sm_90"], [], ["9"], ["90-fast"], [None]):
        with pytest.raises(ValueError, match="cuda_architectures"):
            check_architectures(bad)


def test_gpu_less_node_builds_cuda_for_the_given_architectures():
    flags, cuda = build_flags(F(nvcc="13.0"), True, ["90"])
    assert cuda
    assert flags[:1] == ["-DGGML_RPC=ON"] and "-DGGML_CUDA=ON" in flags
    assert [f for f in flags if "ARCHITECTURES" in f] == ["-DCMAKE_CUDA_ARCHITECTURES=90"]
    assert node_class(F(nvcc="13.0"), True, ["90"])["gpu_arch"] == ["90"]


def test_auto_without_gpus_stays_cpu_even_with_architectures():
    flags, cuda = build_flags(F(nvcc="13.0"), "auto", ["90"])
    assert not cuda and not any("CUDA" in f for f in flags)


def test_cuda_forced_without_gpus_or_list_leaves_llama_cpp_its_default_architectures():
    flags, cuda = build_flags(F(nvcc="13.0"), True)
    assert cuda and "-DGGML_CUDA=ON" in flags
    assert not any("ARCHITECTURES" in f for f in flags)


def test_the_inventory_list_wins_over_the_gpus_found():
    facts = F([G("8.6")], nvcc="13.0")
    flags, _ = build_flags(facts, "auto", ["86", "90"])
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in flags
    assert build_flags(facts, "auto")[0][-1] == "-DCMAKE_CUDA_ARCHITECTURES=86"


def test_a_gpu_the_list_cannot_run_on_fails_the_plan():
    from clusterctl.ops.base import PlanError
    with pytest.raises(PlanError, match=r"compute capability 80.*'80'"):
        build_flags(F([G("8.0"), G("9.0")], nvcc="13.0"), "auto", ["90"])
    op = LlamaCppBuild()
    args = op.validate(dict(ARGS, cuda_architectures=["90"]))
    with pytest.raises(PlanError):
        op.plan(F([G("8.6")], nvcc="13.0"), args)


def test_covers_follows_ptx_and_sass_compatibility():
    from clusterctl.engine.build import covers
    assert covers(["80"], "90")                 # PTX of 8.0 is JIT-compiled on 9.0
    assert covers(["80-virtual"], "120")
    assert not covers(["80-real"], "90")        # SASS only within the major
    assert covers(["80-real"], "86")
    assert not covers(["90"], "86")             # nothing runs on an older GPU
    assert covers(["90a"], "90") and not covers(["90a"], "100")
    assert covers(["100f"], "103") and not covers(["100f"], "120")


def test_plan_names_the_given_architectures_and_classes_differ_by_them():
    op = LlamaCppBuild()
    args = op.validate(dict(ARGS, cuda=True, cuda_architectures=["9.0"]))
    assert args["cuda_architectures"] == ["90"]
    plan = op.plan(F(nvcc="13.0"), args)
    assert isinstance(plan, Change) and "RPC + CUDA 90" in plan.summary
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in plan.diff
    other = op.validate(dict(ARGS, cuda=True, cuda_architectures=["86"]))
    assert op.desired(F(nvcc="13.0"), args)["id"] == op.desired(F(nvcc="13.0"), args)["id"]
    assert op.desired(F(nvcc="13.0"), args)["id"] != op.desired(F(nvcc="13.0"), other)["id"]
    with pytest.raises(ValueError, match="native"):
        op.validate(dict(ARGS, cuda_architectures=["native"]))


def test_the_role_passes_the_architectures_to_the_op():
    from pathlib import Path

    import yaml
    root = Path(__file__).resolve().parents[2] / "roles" / "llamacpp"
    task = yaml.safe_load((root / "tasks.yaml").read_text())[0]["llamacpp_build"]
    assert task["cuda_architectures"] == "{{ llamacpp.cuda_architectures }}"
    spec = yaml.safe_load((root / "argument_specs.yaml").read_text())
    opt = spec["argument_specs"]["main"]["options"]["llamacpp"]["options"]["cuda_architectures"]
    assert opt["type"] == "list" and opt["elements"] == "str" and opt["default"] is None


def test_build_script_marks_its_steps_for_the_timings():
    script = build_script("/x", "/w", "/p", ["-DGGML_RPC=ON"], None, {"id": "i"})
    order = [script.index(f'echo "STEP {s} $(date +%s)"') for s in ("configure", "build",
                                                                    "install")]
    assert order == sorted(order)
    assert order[0] < script.index("cmake -B build") < order[1] < \
        script.index("cmake --build build -j") < order[2] < script.index("$(times | tail -n 1)")


def test_cuda_build_script_finds_the_toolkit_behind_a_wrapper_or_link(tmp_path):
    """CMake would take the toolkit root from the nvcc on PATH (/usr/local/bin/nvcc is
    often a wrapper script or a link): the script asks nvcc where it runs from instead."""
    cuda = build_script("/x", "/w", "/p", ["-DGGML_RPC=ON", "-DGGML_CUDA=ON"], 1, {"id": "i"})
    cpu = build_script("/x", "/w", "/p", ["-DGGML_RPC=ON"], 1, {"id": "i"})
    assert "CUDACXX" not in cpu and 'cuda_args=""' in cpu
    assert "-DGGML_CUDA=ON $cuda_args" in cuda
    snippet = cuda[cuda.index("nvcc=$("):cuda.index('echo "STEP configure')]
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    nvcc = toolkit / "bin" / "nvcc"           # a fake nvcc that answers like the real one
    nvcc.write_text(f'#!/bin/sh\ncase "$1" in -dryrun) echo "#$ _HERE_={toolkit}/bin" >&2;; '
                    '*) echo "Cuda compilation tools, release 13.0, V13.0.88";; esac\n')
    nvcc.chmod(0o755)
    wrapper_dir, link_dir = tmp_path / "wrap", tmp_path / "link"
    wrapper_dir.mkdir()
    link_dir.mkdir()
    (wrapper_dir / "nvcc").write_text(f'#!/bin/sh\nexec {nvcc} "$@"\n')
    (wrapper_dir / "nvcc").chmod(0o755)
    (link_dir / "nvcc").symlink_to(nvcc)
    for path in (wrapper_dir, link_dir, toolkit / "bin"):
        out = subprocess.run(["bash", "-c", "set -eu\n" + snippet + 'echo "$CUDACXX|$cuda_args"'],
                             env={"PATH": f"{path}:/usr/bin:/bin"}, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == f"{nvcc}|-DCUDAToolkit_ROOT={toolkit}", path
    bash = shutil.which("bash")
    missing = subprocess.run([bash, "-c", "set -eu\n" + snippet.replace(
        "/usr/local/cuda/bin/nvcc", str(tmp_path / "none"))],
        env={"PATH": str(tmp_path / "empty")}, capture_output=True, text=True)
    assert missing.returncode == 4 and "no nvcc" in missing.stderr
