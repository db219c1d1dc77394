"""Ansible inventories as they exist (issue #11): the INI format, host_vars/ and
group_vars/ with Ansible's precedence, where each value came from, and -e/--extra-vars."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from clusterctl.errors import InputError
from clusterctl.inventory import load_inventory, parse_extra_vars, validate_vars
from clusterctl.inventory_ini import expand_host_pattern, ini_value
from clusterctl.inventory_sources import looks_like_ini
from clusterctl.secret import Secret


def write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


INI = """
    # comment
    loose1 ansible_host=10.0.0.9

    [head]
    head1 ansible_host=10.0.0.10 role=head

    [gpu]
    gpu[01:03] ansible_user=ubuntu
    rack-[a:b].example.com:2222 gpus=2
    [2001:db8::7]:2200

    [gpu:vars]
    gpus=8
    cluster={'mtu': 1500}
    python={'extra': ['x', 'y']}
    x_flag=True
    x_text=hello world
    x_quoted="0022"

    [cluster:children]
    head
    gpu

    [all:vars]
    ansible_user=admin
    """


# ------------------------------------------------------------------ INI


def test_ini_groups_ranges_ports_and_typing(tmp_path):
    inv = load_inventory(write(tmp_path, INI, "hosts.ini"))
    assert list(inv.hosts) == ["loose1", "head1", "gpu01", "gpu02", "gpu03",
                               "rack-a.example.com", "rack-b.example.com", "2001:db8::7"]
    assert inv.hosts["loose1"].groups == ("all", "ungrouped")
    assert inv.hosts["head1"].groups == ("all", "cluster", "head") and inv.head.name == "head1"
    g1 = inv.hosts["gpu01"]
    assert (g1.address, g1.port, g1.user) == ("gpu01", 22, "ubuntu")   # host beats all:vars
    assert inv.hosts["head1"].user == "admin"
    assert g1.vars["gpus"] == 8 and g1.vars["cluster"]["mtu"] == 1500
    assert g1.vars["python"]["extra"] == ["x", "y"]
    assert g1.vars["x_flag"] is True and g1.vars["x_text"] == "hello world"
    assert g1.vars["x_quoted"] == "0022"
    rack = inv.hosts["rack-a.example.com"]
    assert rack.port == 2222 and rack.vars["gpus"] == 2           # inline host var wins
    v6 = inv.hosts["2001:db8::7"]
    assert (v6.address, v6.port) == ("2001:db8::7", 2200)
    assert inv.groups["cluster"] == ["head1", "gpu01", "gpu02", "gpu03", "rack-a.example.com",
                                     "rack-b.example.com", "2001:db8::7"]
    assert inv.tree["cluster"] == ([], ["head", "gpu"])
    assert inv.origins["gpu01"][("gpus",)] == (str(tmp_path / "hosts.ini"), 13, 6)


def test_ini_errors_name_file_line(tmp_path):
    cases = [
        ("[gpu]\nn1 role=head\n[gpu:hosts]\n", 3, "':hosts' is not a section type"),
        ("[gpu]\nn1 role=head\nn[3:1]\n", 3, "the start is after the end"),
        ("[gpu]\nn1 role\n", 2, "expected key=value, got 'role'"),
        ("[gpu:vars]\ngpus\n[gpu]\nn1 role=head\n", 2, "expected key=value"),
        ("[gpu]\nn1 role=head ansible_port=0022\n", 2, "ansible_port: expected an integer"),
        ("[gpu]\nn1:0022 role=head\n", 2, "ansible_port: expected an integer"),
        ("[gpu]\nn1 role=head gpus=lots\n", 2, "gpus: expected an integer >= 0"),
        ("[gpu]\nn1 role=head\n[gpu:children]\nbad name\n", 4, "one group name per line"),
        ("[gpu]\nn1 role=head\n[oops\n", 3, "bad section header"),
    ]
    for text, line, problem in cases:
        path = write(tmp_path, text, "inv.ini")
        with pytest.raises(InputError) as info:
            load_inventory(path)
        assert problem in str(info.value), (text, str(info.value))
        assert info.value.file == str(path) and info.value.line == line, (text, info.value)


def test_ini_secrets_are_masked_and_not_echoed(tmp_path):
    inv = load_inventory(write(tmp_path, "[all:vars]\nsecrets={'hf_token': 'hf_abc'}\n"
                                         "[g]\nn1 role=head\n", "inv.ini"))
    token = inv.head.vars["secrets"]["hf_token"]
    assert isinstance(token, Secret) and token.reveal() == "hf_abc"
    with pytest.raises(InputError) as info:
        load_inventory(write(tmp_path, "[all:vars]\nsecrets=hf_SECRET123\n[g]\nn1 role=head\n",
                             "inv2.ini"))
    assert "hf_SECRET123" not in str(info.value) and info.value.line == 2


def test_ini_deeply_nested_literal_stays_text(tmp_path):
    deep = "[" * 3000 + "]" * 3000
    inv = load_inventory(write(tmp_path, f"[g]\nn1 role=head x_deep={deep}\n", "inv.ini"))
    assert inv.head.vars["x_deep"] == deep


@pytest.mark.parametrize("pattern, names, port", [
    ("node[01:03]", ["node01", "node02", "node03"], None),
    ("node[1:10:4]", ["node1", "node5", "node9"], None),
    ("r[a:c]-n[1:2]", ["ra-n1", "ra-n2", "rb-n1", "rb-n2", "rc-n1", "rc-n2"], None),
    ("host.example.com:2222", ["host.example.com"], "2222"),
    ("node[1:2]:2200", ["node1", "node2"], "2200"),
    ("[::1]:2222", ["::1"], "2222"),
    ("fe80::1", ["fe80::1"], None),
    ("plain", ["plain"], None),
])
def test_host_patterns(pattern, names, port):
    assert expand_host_pattern(pattern) == (names, port)


@pytest.mark.parametrize("pattern, problem", [
    ("node[01:3]", "same width"), ("n[x:1]", "not a range"), ("n[1:2", "unbalanced"),
    ("n:port", "must be a number"), ("n[0:9:0]", "step"), ("a:b:c", "too many ':'"),
    ("n[0:999999]", "more than 100,000 hosts"),
])
def test_bad_host_patterns(pattern, problem):
    with pytest.raises(ValueError, match=problem):
        expand_host_pattern(pattern)


def test_ini_value_typing_like_ansible():
    eight, version = ini_value("8"), ini_value("2.60")   # numbers keep their text
    assert (eight, eight.tag, version, version.tag) == ("8", "int", "2.60", "float")
    assert ini_value("True") is True and ini_value("None") is None
    assert ini_value("yes") == "yes" and ini_value("'quoted'") == "quoted"
    assert ini_value("[1, 'a']") == [1, "a"] and ini_value("{'a': 1}") == {"a": 1}
    assert ini_value("(1, 2)") == [1, 2] and ini_value("0022") == "0022"
    assert ini_value("1j") == "1j" and ini_value("__import__('os')") == "__import__('os')"


def test_format_detection(tmp_path):
    assert looks_like_ini("x.ini", "all:\n") is True
    assert looks_like_ini("x.yaml", "[g]\n") is False
    assert looks_like_ini("hosts", "# c\n\n[gpu]\nn1\n") is True
    assert looks_like_ini("hosts", "all:\n  hosts:\n") is None
    inv = load_inventory(write(tmp_path, "head1 role=head\nn2 ansible_host=10.0.0.2\n", "hosts"))
    assert list(inv.hosts) == ["head1", "n2"]
    inv = load_inventory(write(tmp_path, "[head]\nh1\n", "inventory"))
    assert inv.head.name == "h1"


# ------------------------------------------------------------------ host_vars / group_vars


def make_site(tmp_path: Path) -> Path:
    inv = write(tmp_path, """
        all:
          vars: {gpus: 1, x_level: all-inline, cluster: {mtu: 1500}}
          hosts:
            head1: {role: head, x_level: host-inline}
          children:
            gpu:
              vars: {gpus: 2, x_level: gpu-inline}
              hosts: {n1: , n2: {x_level: host-inline}}
              children:
                fast:
                  vars: {x_level: fast-inline}
                  hosts: {n3: }
        """, "inventory.yaml")
    write(tmp_path, "x_level: group_vars-all\ncluster: {network: 10.0.0.0/24}\n",
          "group_vars/all.yml")
    write(tmp_path, "gpus: 4\nx_level: group_vars-gpu\n", "group_vars/gpu/10-main.yaml")
    write(tmp_path, "x_extra: [1]\n", "group_vars/gpu/20-more.yaml")
    write(tmp_path, "x_level: group_vars-fast\n", "group_vars/fast")
    write(tmp_path, "x_level: host_vars-n2\n", "host_vars/n2.yaml")
    write(tmp_path, "x_level: nobody\n", "host_vars/n9.yaml")
    write(tmp_path, "a backup\n", "host_vars/n1.yaml~")
    return inv


def test_vars_files_apply_with_ansible_precedence(tmp_path):
    inv = load_inventory(make_site(tmp_path))
    levels = {name: h.vars["x_level"] for name, h in inv.hosts.items()}
    # all inline < group_vars/all < group inline (by depth) < group_vars/<group> (by depth)
    # < host inline < host_vars
    assert levels == {"head1": "host-inline", "n1": "group_vars-gpu",
                      "n3": "group_vars-fast", "n2": "host_vars-n2"}
    n1 = inv.hosts["n1"]
    assert n1.vars["gpus"] == 4 and n1.vars["x_extra"] == [1]
    assert n1.vars["cluster"] == {"name": "clusterctl", "network": "10.0.0.0/24", "mtu": 1500}
    assert any("host_vars/n9.yaml: no host 'n9' in the inventory" in w for w in inv.warnings)
    origin = inv.origins["n1"]
    assert origin[("gpus",)] == (str(tmp_path / "group_vars/gpu/10-main.yaml"), 1, 7)
    assert origin[("cluster", "mtu")] == (str(tmp_path / "inventory.yaml"), 2, 55)
    assert ("ray", "port") not in origin  # a default


def test_error_in_a_vars_file_names_that_file(tmp_path):
    inv = make_site(tmp_path)
    write(tmp_path, "gpus: 4\nray: {port: abc}\n", "group_vars/gpu/10-main.yaml")
    with pytest.raises(InputError) as info:
        load_inventory(inv)
    assert info.value.file == str(tmp_path / "group_vars/gpu/10-main.yaml")
    assert info.value.line == 2 and "ray.port: expected an integer 1..65535" in str(info.value)
    write(tmp_path, "- a list\n", "group_vars/gpu/10-main.yaml")
    with pytest.raises(InputError, match="group_vars/gpu: expected a mapping of variables"):
        load_inventory(inv)


def test_vars_file_that_is_a_fifo_is_refused(tmp_path):
    import os
    inv = make_site(tmp_path)
    os.mkfifo(tmp_path / "host_vars" / "head1")
    with pytest.raises(InputError, match="FIFO"):
        load_inventory(inv)


# ------------------------------------------------------------------ extra vars


def test_parse_extra_vars_forms(tmp_path):
    write(tmp_path, "gpus: 4\nray: {port: 6390}\n", "more.yaml")
    got = parse_extra_vars(["role=head x_note='a b'", '{"ray": {"dashboard_port": 8300}}',
                            "@more.yaml", "x_json=[1]"], base_dir=tmp_path)
    assert got == {"role": "head", "x_note": "a b", "gpus": 4,
                   "ray": {"dashboard_port": 8300, "port": 6390}, "x_json": "[1]"}
    assert parse_extra_vars([]) == {}


@pytest.mark.parametrize("item, problem", [
    ("", "empty"), ("novalue", "expected KEY=VALUE, got 'novalue'"), ("=x", "expected KEY=VALUE"),
    ("@", "needs a file name"), ("@missing.yaml", "cannot read extra vars file"),
    ("[1, 2]", "expected a mapping"), ("{a: [1}", "YAML syntax error"), ("a='open", "quotation"),
    ("{1: a}", "variable names must be text"),
])
def test_parse_extra_vars_errors_name_the_argument(tmp_path, item, problem):
    with pytest.raises(InputError, match=problem) as info:
        parse_extra_vars([item], base_dir=tmp_path)
    assert info.value.key == "--extra-vars" or info.value.file in ("--extra-vars",
                                                                   str(tmp_path / item[1:]))


def test_extra_vars_file_is_bounded(tmp_path):
    bomb = Path(__file__).parent / "hostile" / "billion_laughs.yaml"
    with pytest.raises(InputError, match="expands to more than"):
        parse_extra_vars([f"@{bomb}"])


def test_extra_vars_apply_last_and_are_validated(tmp_path):
    inv_path = make_site(tmp_path)
    extra = parse_extra_vars(["x_level=cli", "gpus=6", '{"secrets": {"hf_token": "hf_x"}}'])
    inv = load_inventory(inv_path, extra_vars=extra)
    n2 = inv.hosts["n2"]
    assert n2.vars["x_level"] == "cli" and n2.vars["gpus"] == 6
    assert isinstance(n2.vars["secrets"]["hf_token"], Secret)
    assert inv.origins["n2"][("gpus",)] == ("--extra-vars", None, None)
    with pytest.raises(InputError) as info:
        load_inventory(inv_path, extra_vars=parse_extra_vars(["ansible_port=0022"]))
    assert str(info.value).startswith("--extra-vars: ansible_port: expected an integer")
    with pytest.raises(InputError, match="4 heads"):
        load_inventory(inv_path, extra_vars={"role": "head"})


def test_validate_vars(tmp_path):
    values, warnings = validate_vars({"gpus": "3", "x_own": 1, "secrets": {"k": 5}})
    assert values["gpus"] == 3 and values["x_own"] == 1
    assert isinstance(values["secrets"]["k"], Secret)
    assert warnings == []                         # a user's own variable: no warning
    _v, warnings = validate_vars({"gpu": 2})
    assert warnings == ["--extra-vars: unknown variable 'gpu' (did you mean 'gpus'?)"]
    with pytest.raises(InputError, match=r"^-e: cluster.mtu: expected an integer 68..9216"):
        validate_vars({"cluster": {"mtu": 1}}, label="-e")
    assert json.dumps(values["gpus"]) == "3"
