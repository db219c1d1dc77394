"""Where clusterctl's data lives: roles/, playbooks/, templates/ and inventory/ (examples).

In a source checkout they are at the top of the repository, where the docs and tests name
them. A built package carries copies inside itself as `clusterctl/_data/<folder>` (setup.py
puts them there at build time), found with importlib.resources. $CLUSTERCTL_HOME, when set,
overrides both (a folder with the same layout).

`python -m clusterctl.resources` prints the folder in use and the example inventory.
"""
from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

#: the folders that are data, in the repository root and in clusterctl/_data
DATA_FOLDERS = ("roles", "playbooks", "templates", "inventory")
EXAMPLE_INVENTORY = ("inventory", "example.yaml")

_PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root(package_dir: Path = _PACKAGE_DIR) -> Path | None:
    """The repository root when clusterctl runs from a source checkout (or an unpacked
    sdist): the package sits at <root>/src/clusterctl and <root> has roles/ and playbooks/.
    None for an installed package."""
    root = package_dir.parent.parent
    if (package_dir.parent.name == "src" and (root / "roles").is_dir()
            and (root / "playbooks").is_dir()):
        return root
    return None


def packaged_data() -> Path:
    """clusterctl/_data of the installed package (it may be missing from a broken build;
    the callers' "not found" errors name the paths they tried)."""
    files = importlib.resources.files("clusterctl")
    if isinstance(files, Path):
        return files / "_data"
    # not on a plain file system (a zip import): roles are read as files, so name the
    # place they would be; lookups there fail with that path in the message
    return _PACKAGE_DIR / "_data"


def data_root() -> Path:
    """The folder holding roles/, playbooks/, templates/, inventory/: $CLUSTERCTL_HOME,
    else the source checkout's root, else the packaged data."""
    env = os.environ.get("CLUSTERCTL_HOME")
    if env:
        return Path(env).expanduser()
    return checkout_root() or packaged_data()


def data_path(*parts: str) -> Path:
    """A path under the data root, e.g. data_path("playbooks", "bootstrap.yaml")."""
    return data_root().joinpath(*parts)


def example_inventory() -> Path:
    return data_path(*EXAMPLE_INVENTORY)


def missing_data_note() -> str:
    """A sentence to add to a "not found" error when the data root itself is absent (a
    wrong $CLUSTERCTL_HOME or a package built without its data); else ""."""
    root = data_root()
    if (root / "roles").is_dir() and (root / "playbooks").is_dir():
        return ""
    if os.environ.get("CLUSTERCTL_HOME"):
        return (f" (CLUSTERCTL_HOME={root} has no roles/ and playbooks/: point it at a "
                "folder with clusterctl's layout, or unset it)")
    return (f" (clusterctl's data folder {root} has no roles/ and playbooks/: the package "
            "was built without its data; reinstall it from a wheel or sdist of this project)")


def main(argv: list[str] | None = None) -> int:
    root = data_root()
    print(f"data folder: {root}")
    for name in DATA_FOLDERS:
        state = "" if (root / name).is_dir() else "  (missing)"
        print(f"  {name}/: {root / name}{state}")
    print(f"example inventory: {example_inventory()}")
    return 0 if not missing_data_note() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
