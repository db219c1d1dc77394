"""clusterctl's data (roles, playbooks, templates, example inventories) is found from a
source checkout and from an installed wheel; a built wheel and sdist carry all of it; every
"not found" names the paths it tried."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from clusterctl import resources
from clusterctl.engine import roles
from clusterctl.errors import ClusterctlError, InputError

REPO = resources.checkout_root()
DATA_FOLDERS = resources.DATA_FOLDERS


def _clean_env(monkeypatch):
    monkeypatch.delenv("CLUSTERCTL_HOME", raising=False)
    monkeypatch.delenv("CLUSTERCTL_ROLES_PATH", raising=False)


def _make_role(base: Path, name: str, task_name: str) -> Path:
    (base / name).mkdir(parents=True)
    (base / name / "tasks.yaml").write_text(
        f"- name: {task_name}\n  command: {{argv: [true]}}\n")
    return base / name


# --------------------------------------------------------------------------- lookups


def test_checkout_is_found_from_the_package_in_src():
    assert REPO is not None, "the unit tests run from a source checkout (src/clusterctl)"
    for name in DATA_FOLDERS:
        assert (REPO / name).is_dir(), name
    assert (REPO / "src" / "clusterctl" / "resources.py").is_file()


def test_checkout_root_needs_src_layout_and_the_data_folders(tmp_path):
    pkg = tmp_path / "src" / "clusterctl"
    pkg.mkdir(parents=True)
    assert resources.checkout_root(pkg) is None            # no roles/, playbooks/ yet
    (tmp_path / "roles").mkdir()
    assert resources.checkout_root(pkg) is None            # playbooks/ still missing
    (tmp_path / "playbooks").mkdir()
    assert resources.checkout_root(pkg) == tmp_path
    # an installed package: site-packages/clusterctl, whatever lies two levels above
    site = tmp_path / "lib" / "site-packages" / "clusterctl"
    site.mkdir(parents=True)
    (tmp_path / "lib" / "roles").mkdir()
    (tmp_path / "lib" / "playbooks").mkdir()
    assert resources.checkout_root(site) is None


def test_project_root_is_the_data_root(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    assert roles.project_root() == resources.data_root() == REPO
    monkeypatch.setenv("CLUSTERCTL_HOME", str(tmp_path))
    assert roles.project_root() == tmp_path
    assert resources.example_inventory() == tmp_path / "inventory" / "example.yaml"


def test_user_roles_come_before_the_packaged_ones(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    cli_dir, env_a, env_b = tmp_path / "cli", tmp_path / "env-a", tmp_path / "env-b"
    monkeypatch.setenv("CLUSTERCTL_ROLES_PATH", os.pathsep.join([str(env_a), "", str(env_b)]))
    paths = roles.default_roles_paths([str(cli_dir)])
    assert paths == [cli_dir, env_a, env_b, REPO / "roles"]
    # a user's role shadows the packaged role of the same name
    _make_role(env_b, "base", "the user's base")
    role = roles.load_role("base", paths)
    assert role.path == env_b / "base"
    assert [t.name for t in role.tasks] == ["the user's base"]
    # and a role only the user has is found too
    _make_role(cli_dir, "mine", "only mine")
    assert roles.load_role("mine", paths).path == cli_dir / "mine"


def test_role_not_found_names_every_path_tried(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    paths = roles.default_roles_paths([str(tmp_path / "user")])
    with pytest.raises(InputError) as err:
        roles.load_role("no_such_role", paths, file="play.yaml", line=3)
    text = str(err.value)
    assert text.startswith("play.yaml:3: role 'no_such_role' not found")
    for base in paths:
        assert str(base / "no_such_role") in text


def test_playbook_by_name_is_found_from_any_directory(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert roles.find_playbook("bootstrap") == REPO / "playbooks" / "bootstrap.yaml"
    assert roles.find_playbook("bootstrap.yaml") == REPO / "playbooks" / "bootstrap.yaml"
    plays = roles.load_playbook("bootstrap")
    assert plays and all(r.path.parent == REPO / "roles" for p in plays for r in p.roles)
    # a file of the user's comes first
    (tmp_path / "bootstrap.yaml").write_text("- {hosts: all, roles: [base]}\n")
    assert roles.find_playbook("bootstrap.yaml") == Path("bootstrap.yaml")


def test_playbook_not_found_names_every_path_tried(monkeypatch, tmp_path):
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        roles.load_playbook("bootstrapp")
    text = str(err.value)
    assert str(tmp_path / "bootstrapp") in text
    assert str(REPO / "playbooks" / "bootstrapp.yaml") in text
    assert "did you mean 'bootstrap'?" in text
    # a path with folders is taken as given: that one path is named
    with pytest.raises(InputError) as err:
        roles.load_playbook("plays/site.yaml")
    assert str(tmp_path / "plays" / "site.yaml") in str(err.value)


def test_no_bare_cannot_read_when_the_data_folder_is_missing(monkeypatch, tmp_path):
    """The bug: an installed clusterctl said `bootstrap: cannot read: No such file or
    directory` and named no path."""
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty-home"
    empty.mkdir()
    monkeypatch.setenv("CLUSTERCTL_HOME", str(empty))
    with pytest.raises(InputError) as err:
        roles.load_playbook("bootstrap")
    text = str(err.value)
    assert "cannot read" not in text
    assert str(empty / "playbooks" / "bootstrap.yaml") in text
    assert "CLUSTERCTL_HOME" in text


def test_resources_command_prints_the_folders(capsys, monkeypatch):
    _clean_env(monkeypatch)
    assert resources.main([]) == 0
    out = capsys.readouterr().out
    assert f"example inventory: {REPO / 'inventory' / 'example.yaml'}" in out
    assert "(missing)" not in out


def test_verify_without_pytest_is_one_clear_line(monkeypatch):
    from clusterctl.verify import run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "testinfra" else real(name, *a))
    with pytest.raises(ClusterctlError) as err:
        run.check_runtime()
    text = str(err.value)
    assert "pip install pytest-testinfra" in text and "\n" not in text


# --------------------------------------------------------------------------- built packages

BUILD = "import sys, setuptools.build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis", "lab-state", "*.pyc")


def _backend(step: str, project: Path, out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-c", BUILD, step, str(out)], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def _data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for name in DATA_FOLDERS for p in (root / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel from the tree, sdist, wheel from the unpacked sdist), from a copy of the
    checkout (other test runs may use the checkout's build/ at the same time)."""
    version = importlib.metadata.version("setuptools")
    if int(version.split(".")[0]) < 77:
        pytest.fail(f"setuptools {version} cannot build clusterctl (needs >= 77 for the SPDX "
                    "license): pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("build")
    project = tmp / "project"
    shutil.copytree(REPO, project, ignore=IGNORED, symlinks=True)
    wheel = _backend("build_wheel", project, tmp / "tree-dist")
    sdist = _backend("build_sdist", project, tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked = next((tmp / "unpacked").iterdir())
    sdist_wheel = _backend("build_wheel", unpacked, tmp / "sdist-dist")
    return wheel, sdist, sdist_wheel


def test_wheel_carries_every_data_file_and_the_license(built):
    wheel, _sdist, sdist_wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {n.removeprefix("clusterctl/_data/") for n in names
            if n.startswith("clusterctl/_data/")}
    assert data == _data_files(REPO)
    role_dirs = [p.name for p in (REPO / "roles").iterdir() if p.is_dir()]
    assert role_dirs
    for role in role_dirs:
        assert f"clusterctl/_data/roles/{role}/tasks.yaml" in names
    for needed in ("clusterctl/_data/playbooks/bootstrap.yaml",
                   "clusterctl/_data/inventory/example.yaml",
                   "clusterctl/_data/templates/nccl.env.j2",
                   "clusterctl/_data/templates/deploy/loadbalancer.yaml",
                   "clusterctl/lab/mirror_packages.yaml",
                   "clusterctl/verify/test_cluster.py",
                   "clusterctl/resources.py",
                   "clusterctl-0.1.0.dist-info/licenses/LICENSE"):
        assert needed in names, needed
    meta = zipfile.ZipFile(wheel).read("clusterctl-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta
    for dist in ("pytest", "pytest-testinfra"):          # `clusterctl verify` needs them
        assert any(line.startswith(f"Requires-Dist: {dist}<") for line in meta.splitlines())
    # a wheel built from the sdist is the same wheel
    assert set(zipfile.ZipFile(sdist_wheel).namelist()) == names


def test_sdist_has_the_top_level_folders(built):
    _wheel, sdist, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    assert _data_files(REPO) <= names
    assert {"LICENSE", "setup.py", "MANIFEST.in", "pyproject.toml", "README.md"} <= names


INSPECT = """
import json, clusterctl
from clusterctl import resources
from clusterctl.engine.roles import project_root, load_playbook
from clusterctl.deploy.launch import loadbalancer_role
from clusterctl.lab.core import PACKAGES_FILE
from clusterctl.verify.run import SUITE
plays = load_playbook("bootstrap")
print(json.dumps({
    "package": clusterctl.__file__, "root": str(project_root()),
    "checkout": str(resources.checkout_root()),
    "roles": sorted({str(r.path) for p in plays for r in p.roles}),
    "playbook": plays[0].file, "lb": str(loadbalancer_role().path),
    "example": str(resources.example_inventory()),
    "exists": [PACKAGES_FILE.is_file(), SUITE.is_file(), resources.example_inventory().is_file(),
               (project_root() / "templates" / "nccl.env.j2").is_file()],
}))
"""


def test_installed_wheel_finds_its_data_from_anywhere(built, tmp_path):
    wheel, _, _ = built
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-index", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTERCTL_HOME", "CLUSTERCTL_ROLES_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run([sys.executable, "-c", INSPECT], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    data = target / "clusterctl" / "_data"
    assert got["package"] == str(target / "clusterctl" / "__init__.py")
    assert got["root"] == str(data) and got["checkout"] == "None"
    assert got["playbook"] == str(data / "playbooks" / "bootstrap.yaml")
    assert got["roles"] and all(Path(r).parent == data / "roles" for r in got["roles"])
    assert got["lb"] == str(data / "templates" / "deploy")
    assert got["example"] == str(data / "inventory" / "example.yaml")
    assert got["exists"] == [True, True, True, True]
    # the command line: a playbook that does not exist names the packaged folder
    example = str(data / "inventory" / "example.yaml")
    proc = subprocess.run([sys.executable, "-m", "clusterctl.cli", "apply", "nosuch",
                           "-i", example], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert str(data / "playbooks" / "nosuch.yaml") in proc.stderr
    assert str(elsewhere / "nosuch") in proc.stderr
    assert "cannot read" not in proc.stderr and "Traceback" not in proc.stderr
