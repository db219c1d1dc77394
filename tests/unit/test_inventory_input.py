"""Bounded reading of untrusted inventory/YAML input, secrets that are never echoed,
strict ports, duplicate endpoints, empty --limit, group graphs at scale (issue #12)."""
from __future__ import annotations

import os
import stat
import threading
import textwrap
from pathlib import Path

import pytest

from clusterctl import yamlread
from clusterctl.engine.yamlfile import YDict, load_yaml
from clusterctl.errors import EXIT_BAD_INPUT, ClusterctlError, InputError
from clusterctl.inventory import load_inventory
from clusterctl.secret import Secret

HOSTILE = Path(__file__).parent / "hostile"
TOKEN = "hf_SECRETTOKENVALUE"


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def fail(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load_inventory(path)
    assert info.value.exit_code == EXIT_BAD_INPUT
    return info.value


# ------------------------------------------------------------------ files that are not files


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "inventory.yaml"
    os.mkfifo(fifo)
    outcome: list = []

    def load():
        try:
            load_inventory(fifo)
        except InputError as e:
            outcome.append(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(timeout=10)
    if t.is_alive():  # unblock the reader so the test run can finish, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("opening a FIFO inventory blocked")
    assert len(outcome) == 1
    assert "FIFO" in str(outcome[0]) and str(fifo) in str(outcome[0])


@pytest.mark.parametrize("path, kind", [("/dev/zero", "character device"),
                                        ("/dev/null", "character device")])
def test_devices_are_refused(path, kind):
    if not os.path.exists(path):
        pytest.skip(f"no {path}")
    err = fail(Path(path))
    assert kind in str(err) and err.file == path


def test_directory_is_refused(tmp_path):
    err = fail(tmp_path)
    assert "a folder, not a regular file" in str(err) and err.file == str(tmp_path)


def test_yaml_loader_of_roles_is_bounded_too(tmp_path):
    fifo = tmp_path / "tasks.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        load_yaml(fifo)
    with pytest.raises(InputError, match="expands to more than"):
        load_yaml(HOSTILE / "billion_laughs.yaml")
    with pytest.raises(InputError, match="nested too deeply"):
        load_yaml(HOSTILE / "deep_flow.yaml")


def test_size_cap(tmp_path):
    path = tmp_path / "inventory.yaml"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(yamlread.MAX_FILE_BYTES + 1)
    err = fail(path)
    assert "too large" in str(err) and str(yamlread.MAX_FILE_BYTES) in str(err)
    small = write(tmp_path, "a: 1\n" * 10, "small.yaml")
    with pytest.raises(InputError, match="more than 20 bytes|limit is 20 bytes"):
        yamlread.read_text(small, max_bytes=20)
    assert yamlread.read_text(small, max_bytes=50) == "a: 1\n" * 10


def test_missing_file_and_bom(tmp_path):
    with pytest.raises(InputError, match="cannot read inventory: No such file"):
        load_inventory(tmp_path / "nope.yaml")
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfall:\n  hosts: {n1: {role: head}}\n")
    assert list(load_inventory(path).hosts) == ["n1"]


# ------------------------------------------------------------------ YAML expansion and depth


def test_alias_bomb_is_refused_naming_the_anchor_line():
    err = fail(HOSTILE / "billion_laughs.yaml")
    assert "expands to more than 1,000,000 values" in str(err)
    assert "repeats the 111,111 values of the anchor at line 7" in str(err)
    assert err.file == str(HOSTILE / "billion_laughs.yaml") and err.line == 8


def test_expansion_counts_each_anchor_once_and_aliases_fully():
    root = yamlread.compose("a: &x [1, 2, 3]\nb: *x\nc: [*x, *x]\n", "f.yaml")
    assert root is not None
    # 1 + (a, [..], 1, 2, 3) + (b, alias 4) + (c, [..], alias 4, alias 4) = 21
    with pytest.raises(InputError, match="more than 20 values"):
        yamlread.compose("a: &x [1, 2, 3]\nb: *x\nc: [*x, *x]\n", "f.yaml", max_nodes=20)
    assert yamlread.compose("a: &x [1, 2, 3]\nb: *x\nc: [*x, *x]\n", "f.yaml",
                            max_nodes=21) is not None


def test_depth_counts_levels_reached_through_aliases():
    chain = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 300)]
    with pytest.raises(InputError, match="nested too deeply") as info:
        yamlread.compose("\n".join(chain) + "\n", "f.yaml")
    assert info.value.line == 201  # a200: 201 levels once its aliases are followed


def test_depth_limit_and_message():
    ok = "x: " + "[" * 199 + "]" * 199 + "\n"   # the mapping is one level
    assert yamlread.compose(ok, "f.yaml") is not None
    with pytest.raises(InputError, match=r"nested too deeply \(more than 200 levels\)"):
        yamlread.compose("x: " + "[" * 200 + "]" * 200 + "\n", "f.yaml")
    with pytest.raises(InputError, match="more than 5 levels"):
        yamlread.compose("a: {b: {c: {d: {e: {f: 1}}}}}\n", "f.yaml", max_depth=5)


def test_recursive_and_undefined_aliases():
    with pytest.raises(InputError, match=r"recursive YAML alias: the value at line 1"):
        yamlread.compose("x: &r [*r]\n", "f.yaml")
    with pytest.raises(InputError, match=r"undefined YAML alias \*nope"):
        yamlread.compose("x: *nope\n", "f.yaml")


def test_constructor_merges_shares_and_refuses_odd_tags():
    root = yamlread.compose("base: &b {a: 1, b: 2}\nx: {<<: *b, b: 3}\ny: *b\n", "f.yaml")
    value = yamlread.Constructor().build(root)
    assert value["x"] == {"a": 1, "b": 3}
    assert value["y"] is value["base"]  # aliases share the object, never expanded
    for text, problem in [("x: !!set {a}\n", "unsupported YAML tag"),
                          ("x: !custom 1\n", "unsupported YAML tag '!custom'"),
                          ("x: 2024-13-45\n", "not a valid timestamp"),
                          ("? [1]\n: 2\n", "mapping key must be a plain value"),
                          ("a: 1\na: 2\n", "duplicate key 'a'")]:
        with pytest.raises(InputError, match=problem):
            yamlread.Constructor().build(yamlread.compose(text, "f.yaml"))


def test_yamlfile_keeps_lines_and_merge_keys(tmp_path):
    path = write(tmp_path, """
        base: &b {a: 1}
        task:
          <<: *b
          name: x
        list: [1, 2]
        """, "tasks.yaml")
    data = load_yaml(path)
    assert isinstance(data, YDict) and data["task"] == {"a": 1, "name": "x"}
    assert data.key_lines["task"] == 2 and data["task"].key_lines["name"] == 4
    assert data["task"].key_lines["a"] == 1  # a merged key keeps the line it is written on
    assert data["list"].lines == [5, 5] and data.file == str(path)
    dup = write(tmp_path, "a: 1\na: 2\n", "dup.yaml")
    with pytest.raises(InputError, match=r"duplicate key 'a' \(first at line 1\)") as info:
        load_yaml(dup)
    assert info.value.line == 2
    assert load_yaml(write(tmp_path, "", "empty.yaml"), default=[]) == []


def test_two_documents_and_control_characters(tmp_path):
    assert "single YAML document" in str(fail(HOSTILE / "two_documents.yaml"))
    err = fail(HOSTILE / "nul_bytes.yaml")
    assert "U+0000 is not allowed" in str(err) and err.line == 2


# ------------------------------------------------------------------ every hostile file


@pytest.mark.parametrize("path", sorted(HOSTILE.iterdir()), ids=lambda p: p.name)
def test_hostile_inputs_end_in_one_input_error(path):
    err = fail(path)
    assert str(path) in str(err)
    assert "SECRETTOKENVALUE" not in str(err)
    assert "Traceback" not in str(err)


# ------------------------------------------------------------------ secrets


def test_secret_written_directly_under_secrets_is_not_echoed():
    err = fail(HOSTILE / "secret_scalar.yaml")
    assert "secrets: expected a mapping of named secrets" in str(err)
    assert "***" in str(err) and TOKEN not in str(err) and err.line == 3
    err = fail(HOSTILE / "secret_vault_tag.yaml")
    assert "secrets.hf_token: unsupported YAML tag '!vault'" in str(err)
    assert TOKEN not in str(err)


def test_every_value_under_secrets_is_a_secret_whatever_its_type(tmp_path):
    inv = load_inventory(write(tmp_path, """
        all:
          vars:
            secrets:
              hf_token: 2024-01-02
              api_pin: 0042
              enabled: yes
              blob: !!binary aGVsbG8=
              float_like: 1.50
              cloud: {key: AKIA123, list: [a1, 2]}
          hosts: {n1: {role: head}}
        """))
    s = inv.head.vars["secrets"]
    assert all(isinstance(s[k], Secret) for k in
               ("hf_token", "api_pin", "enabled", "blob", "float_like"))
    assert [s[k].reveal() for k in ("hf_token", "api_pin", "enabled", "blob", "float_like")] \
        == ["2024-01-02", "0042", "yes", "aGVsbG8=", "1.50"]  # the text as written
    assert isinstance(s["cloud"]["key"], Secret) and s["cloud"]["key"].reveal() == "AKIA123"
    assert [v.reveal() for v in s["cloud"]["list"]] == ["a1", "2"]
    shown = repr(inv.head.vars) + str(inv.warnings)
    for raw in ("2024-01-02", "0042", "AKIA123", "aGVsbG8="):
        assert raw not in shown


def test_known_secret_must_be_one_value_and_is_not_echoed(tmp_path):
    err = fail(write(tmp_path, f"""
        all:
          vars:
            secrets:
              hf_token: [{TOKEN}]
          hosts: {{n1: {{role: head}}}}
        """))
    assert "secrets.hf_token: expected a string or null, got a list" in str(err)
    assert TOKEN not in str(err)


# ------------------------------------------------------------------ ports and endpoints


@pytest.mark.parametrize("written", ["0022", "'0022'", "0x16", "22.0", "2_2", "'+22 '", "true",
                                     "0", "65536"])
def test_ports_are_plain_integers(tmp_path, written):
    text = f"all:\n  hosts:\n    n1: {{role: head, ansible_port: {written}}}\n"
    err = fail(write(tmp_path, text))
    assert "ansible_port: expected an integer 1..65535" in str(err)
    assert err.line == 3


@pytest.mark.parametrize("written, port", [("22", 22), ("'2222'", 2222), ("65535", 65535)])
def test_plain_ports_are_accepted(tmp_path, written, port):
    text = f"all:\n  hosts:\n    n1: {{role: head, port: {written}}}\n"
    inv = load_inventory(write(tmp_path, text))
    assert inv.head.port == port


def test_octal_port_says_why(tmp_path):
    err = fail(HOSTILE / "port_octal.yaml")
    assert "got 0022" in str(err) and "leading zeros" in str(err) and "18" not in str(err)


def test_two_hosts_with_the_same_address_and_port(tmp_path):
    err = fail(HOSTILE / "same_address_and_port.yaml")
    assert "host 'b' has the same address and port as host 'a'" in str(err)
    assert err.line == 4 and err.key == "b"
    inv = load_inventory(write(tmp_path, """
        all:
          hosts:
            a: {role: head, ansible_host: 10.0.0.1}
            b: {ansible_host: 10.0.0.1, ansible_port: 2222}
        """))
    assert [h.port for h in inv.hosts.values()] == [22, 2222]
    err = fail(write(tmp_path, """
        all:
          hosts:
            a: {role: head, ansible_host: "2001:db8::1"}
            b: {ansible_host: "2001:0db8:0:0::1"}
            Node.Example.com: {ansible_port: 2200}
            c: {ansible_host: node.example.com., ansible_port: 2200}
        """))
    assert "host 'b' has the same address and port as host 'a'" in str(err)
    assert "host 'c' has the same address and port as host 'Node.Example.com'" in str(err)


# ------------------------------------------------------------------ --limit


def test_empty_limit_is_an_error_not_everything(tmp_path):
    inv = load_inventory(write(tmp_path, """
        all:
          hosts: {n1: {role: head}, n2: {ansible_host: 10.0.0.2}}
        """))
    for limits in ([""], ["", " "], [","], [":"]):
        with pytest.raises(InputError, match="is empty") as info:
            inv.select(limits)
        assert info.value.key == "--limit" and info.value.exit_code == EXIT_BAD_INPUT
    with pytest.raises(InputError, match="matches no host or group"):
        inv.select(["n3"])
    assert [h.name for h in inv.select(None)] == ["n1", "n2"]


# ------------------------------------------------------------------ group graphs at scale


def test_long_chain_of_groups_needs_no_deep_recursion(tmp_path):
    n = 3000
    lines = ["all:", "  hosts: {h0: {role: head}}"]
    for i in range(n):
        lines += [f"g{i}:", f"  children: {{g{i + 1}: }}"]
    lines += [f"g{n}:", "  hosts: {leaf: {ansible_host: 10.0.0.9}}", "  vars: {gpus: 2}"]
    inv = load_inventory(write(tmp_path, "\n".join(lines) + "\n"))
    leaf = inv.hosts["leaf"]
    assert leaf.groups[0] == "all" and leaf.groups[-1] == f"g{n}" and len(leaf.groups) == n + 2
    assert leaf.vars["gpus"] == 2
    assert inv.groups["g0"] == ["leaf"]


def test_long_group_cycle_is_reported(tmp_path):
    n = 2000
    lines = ["all:", "  hosts: {h0: {role: head}}"]
    lines += [f"g{i}: {{children: {{g{(i + 1) % n}: }}}}" for i in range(n)]
    err = fail(write(tmp_path, "\n".join(lines) + "\n"))
    assert "group cycle: g0 -> g1 -> g2" in str(err) and f"g{n - 1} -> g0" in str(err)


def test_many_hosts_in_own_groups_load_with_every_membership(tmp_path):
    n = 1500
    lines = ["all:", "  children:"]
    for i in range(n):
        lines += [f"    g{i}:", "      hosts:",
                  f"        n{i}: {{ansible_host: 10.0.{i // 250}.{i % 250 + 1}"
                  + (", role: head}" if i == 0 else "}")]
    inv = load_inventory(write(tmp_path, "\n".join(lines) + "\n"))
    assert len(inv.hosts) == n and len(inv.groups) == n + 1
    assert inv.hosts["n7"].groups == ("all", "g7") and inv.groups["g7"] == ["n7"]
    assert inv.tree["all"][1][:2] == ["g0", "g1"]


def test_errors_are_clusterctl_errors():
    assert issubclass(InputError, ClusterctlError)
    assert stat.S_ISDIR(os.stat(HOSTILE).st_mode)
