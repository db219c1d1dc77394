"""Software fan-out (engine/wheels.py): the wheels a venv needs, staged once on the
controller for the nodes' Python and platform. Staging runs the controller's real pip
against a local folder of small wheels made here (no network)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from clusterctl.engine import wheels
from clusterctl.engine.wheels import Target
from clusterctl.errors import ClusterctlError
from clusterctl.facts import FactRequest, Facts
from clusterctl.ops import OPS, Change

NODE = Target("3.11", "x86_64", "2.36")


def make_wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{info}/METADATA", "\n".join(meta) + "\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                     f"Root-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture()
def source(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "demo", "1.0", ["dep>=1"])
    make_wheel(links, "dep", "1.0")
    make_wheel(links, "dep", "2.0")
    make_wheel(links, "unrelated", "1.0")
    make_wheel(links, "native", "1.0", tag="cp311-cp311-manylinux_2_39_x86_64")
    return {"find_links": str(links), "no_index": True, "index_url": None,
            "trusted_host": None}


def test_platform_tags_follow_glibc_newest_first():
    tags = wheels.platform_tags("x86_64", "2.36")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags[-1] == "linux_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags
    for legacy in ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"):
        assert legacy in tags
    arm = wheels.platform_tags("aarch64", "2.28")
    assert "manylinux2014_aarch64" in arm and "manylinux1_aarch64" not in arm
    assert wheels.platform_tags("x86_64", None) == ["linux_x86_64"]
    with pytest.raises(ClusterctlError):
        wheels.platform_tags("x86 64; rm", "2.36")


def test_target_from_facts():
    facts = Facts({FactRequest("python"): "3.11.2", FactRequest("arch"): "aarch64",
                   FactRequest("libc"): "2.36"})
    assert Target.of(facts) == Target("3.11", "aarch64", "2.36")
    with pytest.raises(ClusterctlError, match="Python version"):
        Target.of(Facts({FactRequest("python"): None, FactRequest("arch"): "x86_64",
                         FactRequest("libc"): None}))


def test_source_urls_reach_pip_through_its_environment_not_argv(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://outer.invalid/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/etc/pip.conf")
    url = "https://user:s3cret@wheels.example.invalid/simple"
    src = {"index_url": url, "find_links": None, "no_index": False, "trusted_host": None}
    argv = wheels.download_command("/tmp/x", ["ray==2.60.0"], NODE)
    assert not any("s3cret" in a for a in argv)
    assert argv[-1] == "ray==2.60.0" and "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--abi") + 1] == "cp311"
    env = wheels.download_env(src)
    assert env["PIP_INDEX_URL"] == url and "PIP_NO_INDEX" not in env
    assert env["PIP_CONFIG_FILE"] == "/etc/pip.conf"          # the user's pip settings stay
    assert wheels.download_env({"no_index": True, "find_links": "/w"})["PIP_FIND_LINKS"] == "/w"
    failure = wheels.stage_failure(f"ERROR: cannot reach {url}\n", ["ray"], NODE)
    assert "s3cret" not in failure and "fan_out: false" in failure


def test_set_id_is_the_content():
    a = {"x-1.whl": "aa", "y-1.whl": "bb"}
    assert wheels.set_id(a) == wheels.set_id(dict(reversed(list(a.items()))))
    assert wheels.set_id(a) != wheels.set_id({"x-1.whl": "aa", "y-1.whl": "bc"})


def test_staging_key_follows_the_source_content_not_its_address(source, tmp_path):
    fp = wheels._source_fingerprint(source)
    k1 = wheels.staging_key(["demo==1.0"], source, fp, NODE)
    moved = dict(source, find_links="http://198.18.9.1:8080/pip/")
    assert wheels.staging_key(["demo==1.0"], moved, fp, NODE) == k1
    assert wheels.staging_key(["demo==1.0"], source, fp, Target("3.12", "x86_64", "2.36")) != k1
    assert wheels.staging_key(["demo==1.1"], source, fp, NODE) != k1
    make_wheel(Path(source["find_links"]), "dep", "3.0")
    assert wheels._source_fingerprint(source) != fp


def test_stage_downloads_the_closure_once_and_reuses_it(source, tmp_path):
    root = tmp_path / "cache"
    staged = wheels.stage(["demo==1.0"], source, NODE, root=root)
    assert sorted(staged.files) == ["demo-1.0-py3-none-any.whl", "dep-2.0-py3-none-any.whl"]
    assert not staged.reused and staged.bytes > 0
    record = json.loads((staged.path / wheels.STAGED).read_text())
    assert record["files"] == staged.files and record["set"] == staged.id
    assert record["target"] == {"python": "3.11", "arch": "x86_64", "glibc": "2.36"}
    again = wheels.stage(["demo==1.0"], source, NODE, root=root)
    assert again.reused and again.id == staged.id and again.path == staged.path
    assert [p.name for p in root.iterdir()] == [staged.path.name]    # no temp folder left
    (staged.path / "dep-2.0-py3-none-any.whl").unlink()               # damaged by hand
    fixed = wheels.stage(["demo==1.0"], source, NODE, root=root)
    assert not fixed.reused and fixed.id == staged.id
    assert (fixed.path / "dep-2.0-py3-none-any.whl").is_file()


def test_stage_takes_only_wheels_the_node_can_install(source, tmp_path):
    with pytest.raises(ClusterctlError) as err:
        wheels.stage(["native==1.0"], source, NODE, root=tmp_path / "cache")
    assert "native" in str(err.value) and "fan_out: false" in str(err.value)
    assert not any((tmp_path / "cache").iterdir())                    # nothing half-staged
    newer = Target("3.11", "x86_64", "2.39")
    assert "native-1.0-cp311-cp311-manylinux_2_39_x86_64.whl" in wheels.stage(
        ["native==1.0"], source, newer, root=tmp_path / "cache").files


def test_pip_with_fan_out_installs_from_the_local_set_only():
    op = OPS["pip"]
    args = op.validate({"venv": "/opt/v", "packages": ["ray==2.60.0", "demo"],
                        "find_links": "http://198.18.0.1:8080/pip/", "no_index": True,
                        "trusted_host": "198.18.0.1", "fan_out": True})
    assert FactRequest("libc") in op.requests(args)
    facts = Facts({FactRequest("pip", "/opt/v"): {"exists": True, "packages": {"demo": "1"}},
                   FactRequest("python"): "3.11.2", FactRequest("arch"): "x86_64",
                   FactRequest("libc"): "2.36"})
    change = op.plan(facts, args)
    assert isinstance(change, Change)
    [cmd] = change.steps
    assert cmd[cmd.index("--find-links") + 1] == "/var/cache/clusterctl/wheels/<set>"
    assert "--no-index" in cmd and "198.18.0.1" not in " ".join(cmd)
    assert cmd[-1] == "ray==2.60.0" and "fanned out" in change.summary
    assert op.missing(facts, args) == ["ray==2.60.0"]
    local = op.install_command(op.local_args(args, "/w/abc"), ["ray==2.60.0"])
    assert local[local.index("--find-links") + 1] == "/w/abc" and "--trusted-host" not in local
    with pytest.raises(ValueError, match="wheelhouse"):
        op.validate({"venv": "/opt/v", "packages": ["x"], "wheelhouse": "relative"})
