"""The CUDA root for lab nodes: driver stub names, merged tree, soname links (pure parts
and file operations in a temporary folder; no toolkit needed)."""
import os

from clusterctl.lab.cuda import _link_tree, _soname_links, _wheel_roots, stub_names, stub_source

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
