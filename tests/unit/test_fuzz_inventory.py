"""Property-based tests: whatever the input, the YAML reader and the inventory loader end
in a value (an Inventory) or one ClusterctlError, never another exception, and quickly
(hypothesis' deadline bounds each example)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterctl import yamlread
from clusterctl.errors import ClusterctlError
from clusterctl.inventory import Inventory, load_inventory, parse_extra_vars
from clusterctl.inventory_ini import ini_to_nodes

FAST = settings(max_examples=50, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# text made of what YAML and INI give meaning to, plus a few words the loader knows
_PIECES = st.sampled_from([
    "all", "hosts", "children", "vars", "role", "head", "ansible_host", "ansible_port",
    "secrets", "hf_token", "ray", "port", "n1", "n2", "g", "10.0.0.1", "0022", "2.60",
    ":", ": ", "-", "- ", "\n", "\n  ", "\n    ", "{", "}", "[", "]", ",", "&a", "*a", "<<",
    "!!binary", "!vault", "!!python/name:os.system", "'", '"', "#", "---", "?", "|", ">",
    "=", "[g]", "[g:vars]", "[g:children]", "node[01:03]", "[a:c]", "\t", "\x00", "é",
    "2024-13-45", "yes", "~", "null", "1e999", "0x16",
])
_TEXT = st.one_of(st.lists(_PIECES, max_size=60).map("".join),
                  st.text(max_size=200))


def _scalars():
    return st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=False), st.text(max_size=12),
                     st.sampled_from(["head", "worker", "10.0.0.1", "2.60.0", "/opt/x"]))


_VALUES = st.recursive(_scalars(), lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
_VAR_NAMES = st.sampled_from(["role", "gpus", "ansible_host", "ansible_port", "cluster",
                              "ray", "secrets", "python", "x_custom", "port", "user"])
_VARS = st.dictionaries(_VAR_NAMES, _VALUES, max_size=5)
_HOSTS = st.dictionaries(st.sampled_from(["n1", "n2", "n3", "head1", "bad name"]),
                         st.one_of(st.none(), _VARS), max_size=4)
_GROUP = st.fixed_dictionaries({}, optional={"hosts": _HOSTS, "vars": _VARS})
_STRUCTURED = st.dictionaries(st.sampled_from(["all", "gpu", "cpu", "head"]), _GROUP,
                              min_size=1, max_size=3)


def _outcome(path: Path):
    try:
        return load_inventory(path)
    except ClusterctlError as e:
        return e


_FOLDER = tempfile.TemporaryDirectory(prefix="fuzz-inventory-")  # removed at exit


def _write(text: str, name: str) -> Path:
    path = Path(_FOLDER.name) / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@FAST
@given(_TEXT)
def test_yaml_reader_ends_in_value_or_input_error(text):
    try:
        root = yamlread.compose(text, "fuzz.yaml")
        if root is not None:
            yamlread.Constructor().build(root)
    except ClusterctlError:
        pass


@FAST
@given(_TEXT, st.sampled_from(["inventory.yaml", "inventory.ini", "inventory"]))
def test_inventory_loader_ends_in_inventory_or_clusterctl_error(text, name):
    try:
        path = _write(text, name)
    except UnicodeEncodeError:
        return
    result = _outcome(path)
    assert isinstance(result, (Inventory, ClusterctlError))


@FAST
@given(_STRUCTURED)
def test_structured_inventories_end_in_inventory_or_clusterctl_error(data):
    path = _write(yaml.safe_dump(data, sort_keys=False), "inventory.yaml")
    result = _outcome(path)
    assert isinstance(result, (Inventory, ClusterctlError))
    if isinstance(result, Inventory):
        assert sum(h.is_head for h in result.hosts.values()) == 1


@FAST
@given(_TEXT)
def test_ini_reader_ends_in_nodes_or_input_error(text):
    try:
        ini_to_nodes(text, "fuzz.ini")
    except ClusterctlError:
        pass


@FAST
@given(st.lists(_TEXT, max_size=3))
def test_extra_vars_end_in_mapping_or_input_error(items):
    try:
        assert isinstance(parse_extra_vars(items, base_dir="/nonexistent"), dict)
    except ClusterctlError:
        pass
