"""The CUDA root for lab nodes: driver stub names, merged tree, soname links (pure parts
and file operations in a temporary folder; no toolkit needed)."""
import json
import os
import zipfile

import pytest

from clusterctl.errors import InputError
from clusterctl.lab.cuda import (MARKER, _link_tree, _soname_links, _wheel_roots, cuda_root,
                                 stub_names, stub_source)

CUDA_H = """
#define cuDeviceTotalMem cuDeviceTotalMem_v2
#define cuCtxCreate cuCtxCreate_v4
#define CU_TRUE 1
CUresult CUDAAPI cuInit(unsigned int Flags);
CUresult CUDAAPI cuDeviceTotalMem(size_t *bytes, CUdevice dev);
"""
PREPROCESSED = """
typedef int CUresult;
CUresult cuInit(unsigned int Flags);
CUresult cuDeviceTotalMem_v2(size_t *bytes, int dev);
CUresult  cuMemCreate (void *h, size_t size, const void *prop, unsigned long long flags);
const char *cuGetErrorNameX(void);
"""


def test_stub_names_cover_versioned_and_plain_names():
    names = stub_names(CUDA_H, PREPROCESSED)
    assert names == sorted(["cuCtxCreate", "cuCtxCreate_v4", "cuDeviceTotalMem",
                            "cuDeviceTotalMem_v2", "cuInit", "cuMemCreate"])


def test_stub_source_returns_the_stub_error_from_every_function():
    src = stub_source(["cuInit", "cuMemCreate"])
    assert "int cuInit(void) { return 34; }" in src
    assert src.count("return 34;") == 2


def test_link_tree_hard_links_files_and_keeps_links_inside(tmp_path):
    src, dst = tmp_path / "cuda", tmp_path / "out"
    (src / "lib").mkdir(parents=True)
    (src / "targets" / "x86_64-linux").mkdir(parents=True)
    (src / "lib" / "libcudart.so.13").write_bytes(b"elf")
    os.symlink("libcudart.so.13", src / "lib" / "libcudart.so")
    os.symlink("../../lib", src / "targets" / "x86_64-linux" / "lib")
    os.symlink(str(src / "lib"), src / "lib64")             # absolute, inside: made relative
    _link_tree(src, dst)
    assert os.stat(dst / "lib" / "libcudart.so.13").st_ino == \
        os.stat(src / "lib" / "libcudart.so.13").st_ino
    assert os.readlink(dst / "lib" / "libcudart.so") == "libcudart.so.13"
    assert os.readlink(dst / "targets" / "x86_64-linux" / "lib") == "../../lib"
    assert os.readlink(dst / "lib64") == "lib"
    assert (dst / "targets" / "x86_64-linux" / "lib" / "libcudart.so").read_bytes() == b"elf"


def test_wheel_roots_and_soname_links(tmp_path):
    (tmp_path / "nvidia" / "cu13" / "include").mkdir(parents=True)
    (tmp_path / "nvidia" / "cu13" / "lib").mkdir()
    (tmp_path / "nvidia_cublas-13.dist-info").mkdir()
    assert _wheel_roots(tmp_path) == [tmp_path / "nvidia" / "cu13"]
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    (lib / "libcublas.so.13").write_bytes(b"x")
    (lib / "libcublasLt.so.13").write_bytes(b"x")
    (lib / "libnvrtc.so").write_bytes(b"x")
    (lib / "libnvrtc.so.13").write_bytes(b"x")
    _soname_links(lib)
    assert os.readlink(lib / "libcublas.so") == "libcublas.so.13"
    assert os.readlink(lib / "libcublasLt.so") == "libcublasLt.so.13"
    assert not (lib / "libnvrtc.so").is_symlink()           # already there: left alone


def _fake_toolkit(root):
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "lib" / "stubs").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release 13.0, V13.0.88"\n')
    nvcc.chmod(0o755)
    (root / "include" / "cuda_runtime.h").write_text("/* runtime */\n")
    (root / "lib" / "libcudart.so.13").write_bytes(b"rt")
    (root / "lib" / "stubs" / "libcuda.so").write_bytes(b"stub")   # no stub to generate
    os.symlink("lib", root / "lib64")


def test_cuda_root_merges_toolkit_wheel_and_installed_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_CACHE", str(tmp_path / "cache"))
    _fake_toolkit(tmp_path / "cuda-13.0")
    wheel = tmp_path / "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("nvidia/cu13/include/cublas_v2.h", "/* cublas */\n")
        z.writestr("nvidia/cu13/lib/libcublas.so.13", "cublas")
        z.writestr("nvidia_cublas-13.0.2.14.dist-info/RECORD", "")
    site = tmp_path / "site-packages"
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    (site / "nvidia" / "cu13" / "lib" / "libcublasLt.so.13").write_bytes(b"lt")
    logs = []
    root = cuda_root(tmp_path / "cuda-13.0", [wheel, site], log=logs.append)
    assert root.parent == tmp_path / "cache" / "cuda" and root.name.startswith("cuda-13.0-")
    assert (root / "include" / "cublas_v2.h").read_text() == "/* cublas */\n"
    assert (root / "include" / "cuda_runtime.h").exists()
    assert os.readlink(root / "lib" / "libcublas.so") == "libcublas.so.13"
    assert os.readlink(root / "lib" / "libcublasLt.so") == "libcublasLt.so.13"
    assert os.readlink(root / "lib64") == "lib"
    assert (root / "lib64" / "stubs" / "libcuda.so").read_bytes() == b"stub"
    info = json.loads((root / MARKER).read_text())
    assert info["release"] == "13.0" and info["driver_stub_generated"] is False
    assert len(logs) == 1 and "merging the CUDA 13.0 toolkit" in logs[0]
    assert cuda_root(tmp_path / "cuda-13.0", [wheel, site], log=logs.append) == root
    assert len(logs) == 1                                   # cached: not merged again


def test_cuda_root_refuses_what_is_not_a_toolkit(tmp_path):
    with pytest.raises(InputError, match="not a CUDA toolkit"):
        cuda_root(tmp_path)
    _fake_toolkit(tmp_path / "cuda")
    with pytest.raises(InputError, match="no such wheel"):
        cuda_root(tmp_path / "cuda", [tmp_path / "missing.whl"])
