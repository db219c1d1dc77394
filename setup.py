"""Build hook (everything else is in pyproject.toml).

roles/, playbooks/, templates/ and inventory/ stay at the top of the repository, where the
docs and tests name them. A built package carries copies of them as clusterctl/_data/<folder>,
where clusterctl.resources finds them. An sdist has them at its top too (MANIFEST.in), so
a wheel built from the sdist gets them the same way. Editable installs skip the copy: a
checkout finds the folders in place.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_FOLDERS = ("roles", "playbooks", "templates", "inventory")   # = clusterctl.resources
PACKAGE_DATA_DIR = Path("clusterctl") / "_data"
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".swp"}


def data_files() -> list[Path]:
    """Every file of the data folders, relative to the project root."""
    files = []
    for folder in DATA_FOLDERS:
        top = HERE / folder
        if not top.is_dir():
            raise SystemExit(f"setup.py: {top} is missing; clusterctl cannot be built "
                             "without its roles, playbooks, templates and inventory examples")
        for path in sorted(top.rglob("*")):
            rel = path.relative_to(HERE)
            if (path.is_file() and not SKIPPED_PARTS.intersection(rel.parts)
                    and path.suffix not in SKIPPED_SUFFIXES):
                files.append(rel)
    return files


class BuildPyWithData(build_py):
    """build_py, then copy the data folders into <build_lib>/clusterctl/_data."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGE_DATA_DIR
        if target.exists():
            shutil.rmtree(target)          # no files left over from an earlier build
        for rel in data_files():
            dest = target / rel
            self.mkpath(str(dest.parent))
            self.copy_file(str(HERE / rel), str(dest), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        base = Path(self.build_lib) / PACKAGE_DATA_DIR
        return outputs + [str(base / rel) for rel in data_files()]


setup(cmdclass={"build_py": BuildPyWithData})
