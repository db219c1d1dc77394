"""Where an inventory's data comes from: its format (YAML or INI), and the host_vars/ and
group_vars/ folders beside it (Ansible's layout). Pure apart from reading files, every
read bounded (clusterctl.yamlread).

Format: ``.ini``/``.cfg``/``.txt`` files are INI; ``.yaml``/``.yml``/``.json`` are YAML;
anything else is INI when its first line that is not blank or a comment is a section
header (``[group]``), or when it is not a YAML mapping but has ``key=value`` host lines.

Vars files (for a host or group NAME): ``NAME``, ``NAME.yaml``, ``NAME.yml``,
``NAME.json``, or a folder ``NAME/`` whose ``*.yaml``/``*.yml``/``*.json`` files are
read in name order. Files for names not in the inventory are ignored with a warning.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from yaml.nodes import MappingNode, Node

from . import yamlread
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .inventory import _Loader

__all__ = ["inventory_root", "looks_like_ini", "vars_files", "read_vars_files"]

_INI_SUFFIXES = {".ini", ".cfg", ".txt"}
_YAML_SUFFIXES = {".yaml", ".yml", ".json"}
_VARS_SUFFIXES = ("", ".yaml", ".yml", ".json")
_SECTION_RE = re.compile(r"^\[[^\]\s]+\]\s*([#;].*)?$")
#: at most this many vars files in one host_vars/ or group_vars/ folder entry
MAX_VARS_FILES = 1000


def looks_like_ini(path: str, text: str) -> bool | None:
    """True: INI, False: YAML, None: try YAML first (the extension does not say)."""
    suffix = Path(path).suffix.lower()
    if suffix in _INI_SUFFIXES:
        return True
    if suffix in _YAML_SUFFIXES:
        return False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped == "---":
            return False
        return True if _SECTION_RE.match(stripped) else None
    return None


def inventory_root(text: str, shown: str) -> Node | None:
    """The inventory as a node graph, whatever its format (INI is converted to the YAML
    structure, with marks at the INI lines)."""
    from .inventory_ini import ini_to_nodes
    kind = looks_like_ini(shown, text)
    if kind:
        return ini_to_nodes(text, shown)
    try:
        root = yamlread.compose(text, shown)
    except InputError:
        if kind is None and _ini_like(text):
            return ini_to_nodes(text, shown)
        raise
    if kind is None and root is not None and not isinstance(root, MappingNode) \
            and _ini_like(text):
        return ini_to_nodes(text, shown)
    return root


def _ini_like(text: str) -> bool:
    """Host lines such as `node1 ansible_host=10.0.0.1` (no YAML `key: value`)."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if re.match(r"^[^\s:=#]+(:[0-9]+)?(\s+[^\s=]+=\S*)*\s*$", stripped) is None:
            return False
    return True


def vars_files(folder: Path) -> dict[str, list[Path]]:
    """NAME -> its vars files in `folder` (host_vars/ or group_vars/), in the order they
    apply. A missing folder is empty; an entry that is neither a file nor a folder (a
    FIFO, a device) is reported when read."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return {}
    except NotADirectoryError:
        raise InputError("not a folder", file=str(folder)) from None
    except OSError as e:
        raise InputError(f"cannot read folder: {e.strerror or e}", file=str(folder)) from None
    out: dict[str, list[Path]] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            try:
                inner = [e for e in os.scandir(entry.path)
                         if not e.name.startswith(".")
                         and Path(e.name).suffix.lower() in _YAML_SUFFIXES]
            except OSError as e:
                raise InputError(f"cannot read folder: {e.strerror or e}",
                                 file=entry.path) from None
            inner = sorted(inner, key=lambda e: e.name)
            if len(inner) > MAX_VARS_FILES:
                raise InputError(f"more than {MAX_VARS_FILES} vars files", file=entry.path)
            out.setdefault(entry.name, []).extend(Path(e.path) for e in inner)
            continue
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() not in _VARS_SUFFIXES[1:]:
            stem, suffix = entry.name, ""
        if suffix == "" and entry.name.endswith(("~", ".bak", ".orig", ".swp", ".retry")):
            continue
        out.setdefault(stem, []).append(Path(entry.path))
    return out


def read_vars_files(loader: "_Loader", base_dir: Path) -> None:
    """Add host_vars/ and group_vars/ beside the inventory to the loader's hosts and
    groups (as their file layers)."""
    for kind in ("host", "group"):
        folder = base_dir / f"{kind}_vars"
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        for name, paths in vars_files(folder).items():
            for path in paths:
                shown = os.path.join(os.path.dirname(loader.shown),
                                     os.path.relpath(path, base_dir))
                if name not in (loader.hosts if kind == "host" else loader.groups):
                    loader.add_vars_file(kind, name, None, shown)
                    continue
                text = yamlread.read_text(path, what=f"{kind}_vars file")
                loader.add_vars_file(kind, name, yamlread.compose(text, shown), shown)
