"""Unit tests for clusterctl.inventory: pure parsing/validation, no hosts."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from clusterctl import inventory as inv_mod
from clusterctl.errors import EXIT_BAD_INPUT, InputError
from clusterctl.inventory import (
    DEFAULTS,
    KNOWN_VARS,
    Host,
    Inventory,
    VarSpec,
    load_inventory,
    resolve_inventory_path,
)
from clusterctl.secret import Secret

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str) -> Inventory:
    return load_inventory(write(tmp_path, text))


def fail(tmp_path: Path, text: str) -> InputError:
    with pytest.raises(InputError) as info:
        load(tmp_path, text)
    return info.value


THREE = """
all:
  hosts:
    head1: {ansible_host: 192.0.2.10, role: head}
  children:
    gpu:
      hosts:
        node1: {ansible_host: 192.0.2.11}
        node2: {ansible_host: 192.0.2.12}
    cpu:
      hosts:
        node3: {ansible_host: 192.0.2.13}
"""


# ----------------------------------------------------------------------------- parsing


def test_single_host_gets_defaults(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            node1:
              role: head
        """)
    h = inv.hosts["node1"]
    assert isinstance(h, Host)
    assert (h.name, h.address, h.user, h.port) == ("node1", "node1", "root", 22)
    assert h.key_file is None and h.known_hosts_file is None
    assert h.groups == ("all",)
    assert h.line == 3
    assert h.is_head and inv.head is h
    assert inv.workers == []
    assert h.gpus is None
    for key, value in DEFAULTS.items():
        if key != "role":
            assert h.vars[key] == value, key
    assert inv.path == tmp_path / "inventory.yaml"
    assert inv.warnings == []


def test_hosts_in_file_order_and_groups_transitive(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            head1: {role: head}
          children:
            gpu:
              hosts: {zeta: , alpha: }
              children:
                fast:
                  hosts: {mid: }
        """)
    assert list(inv.hosts) == ["head1", "zeta", "alpha", "mid"]
    assert inv.groups["all"] == ["head1", "zeta", "alpha", "mid"]
    assert inv.groups["gpu"] == ["zeta", "alpha", "mid"]
    assert inv.groups["fast"] == ["mid"]
    assert list(inv.groups) == ["all", "gpu", "fast"]
    assert inv.hosts["mid"].groups == ("all", "gpu", "fast")
    assert [w.name for w in inv.workers] == ["zeta", "alpha", "mid"]


def test_same_host_in_two_groups_is_one_host_with_merged_vars(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            head1: {role: head}
          children:
            gpu:
              hosts:
                node1: {ansible_host: 192.0.2.11, gpus: 4}
            rack1:
              hosts:
                node1: {ansible_port: 2222}
        """)
    node = inv.hosts["node1"]
    assert list(inv.hosts) == ["head1", "node1"]
    assert (node.address, node.port, node.gpus) == ("192.0.2.11", 2222, 4)
    assert node.groups == ("all", "gpu", "rack1")
    assert node.line == 7  # where it is first defined


def test_top_level_groups_beside_all_are_children_of_all(tmp_path):
    inv = load(tmp_path, """
        all:
          vars: {models_dir: /data/models}
        heads:
          hosts:
            h: {role: head}
        workers:
          vars: {gpus: 2}
          hosts:
            w1:
        """)
    assert inv.groups["all"] == ["h", "w1"]
    assert inv.hosts["w1"].groups == ("all", "workers")
    assert inv.hosts["w1"].vars["models_dir"] == "/data/models"
    assert inv.hosts["w1"].gpus == 2


def test_single_host_of_group_head_is_the_head_and_role_is_resolved(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            head:
              hosts: {ctl: }
            workers:
              hosts: {w1: , w2: }
        """)
    assert inv.head.name == "ctl"
    assert [h.name for h in inv.workers] == ["w1", "w2"]
    assert inv.hosts["ctl"].vars["role"] == "head"
    assert inv.hosts["w1"].vars["role"] == "worker"
    assert not inv.hosts["w2"].is_head


def test_empty_group_and_yaml_anchors_and_merge_keys(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            head1: &base {ansible_user: ubuntu, role: head}
            node1:
              <<: *base
              role: worker
          children:
            spare:
        """)
    assert inv.groups["spare"] == []
    assert inv.hosts["node1"].user == "ubuntu"
    assert inv.head.name == "head1"
    assert not inv.hosts["node1"].is_head


def test_host_groups_order_is_depth_then_name(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            zgroup:
              children:
                deep:
                  hosts: {n1: {role: head}}
            agroup:
              hosts: {n1: }
        """)
    assert inv.hosts["n1"].groups == ("all", "agroup", "zgroup", "deep")


# -------------------------------------------------------------------------- precedence


def test_precedence_defaults_all_group_host(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            models_dir: /all
            vllm: {port: 8001}
            llamacpp: {rpc_port: 50000}
          hosts:
            head1: {role: head}
          children:
            gpu:
              vars:
                vllm: {port: 8002}
                llamacpp: {rpc_port: 50001}
              hosts:
                node1: {llamacpp: {rpc_port: 50002}}
                node2:
        """)
    n1, n2, head = inv.hosts["node1"], inv.hosts["node2"], inv.hosts["head1"]
    assert head.vars["vllm"]["port"] == 8001
    assert head.vars["llamacpp"]["rpc_port"] == 50000
    assert n2.vars["vllm"]["port"] == 8002
    assert n2.vars["llamacpp"]["rpc_port"] == 50001
    assert n1.vars["llamacpp"]["rpc_port"] == 50002
    assert n1.vars["models_dir"] == "/all"
    assert head.vars["nccl"]["debug"] == DEFAULTS["nccl"]["debug"]


def test_child_group_beats_parent_whatever_the_file_order(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            child:
              vars: {gpus: 2}
              hosts: {n1: {role: head}}
            parent:
              vars: {gpus: 1}
              children:
                child:
        """)
    # child is at depth 2 (all -> parent -> child), so its vars win
    assert inv.hosts["n1"].gpus == 2
    assert inv.hosts["n1"].groups == ("all", "parent", "child")


def test_sibling_groups_apply_in_alphabetical_order(tmp_path):
    inv = load(tmp_path, """
        all:
          children:
            zebra:
              vars: {gpus: 26}
              hosts: {n1: {role: head}}
            apple:
              vars: {gpus: 1, models_dir: /apple}
              hosts: {n1: }
        """)
    assert inv.hosts["n1"].gpus == 26  # zebra sorts after apple, so it wins
    assert inv.hosts["n1"].vars["models_dir"] == "/apple"


def test_deep_merge_keeps_defaults_of_dict_vars(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            cluster: {name: lab}
          children:
            gpu:
              vars:
                ray: {port: 6390}
                cluster: {mtu: 1500}
              hosts: {n1: {role: head, cluster: {network: eth1}}}
        """)
    v = inv.hosts["n1"].vars
    assert v["ray"]["port"] == 6390
    assert v["ray"]["version"] == "2.60.0"
    assert v["ray"]["dashboard_port"] == 8265
    assert v["cluster"] == {"name": "lab", "mtu": 1500, "network": "eth1"}


def test_lists_are_replaced_not_merged(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            python: {extra: [a, b]}
          hosts:
            n1: {role: head, python: {extra: [c]}}
            n2:
        """)
    assert inv.hosts["n1"].vars["python"]["extra"] == ["c"]
    assert inv.hosts["n2"].vars["python"]["extra"] == ["a", "b"]


def test_host_vars_are_independent_copies(tmp_path):
    inv = load(tmp_path, THREE)
    inv.hosts["node1"].vars["ray"]["port"] = 1
    inv.hosts["node1"].vars["python"]["extra"].append("x")
    assert inv.hosts["node2"].vars["ray"]["port"] == 6379
    assert inv.hosts["node2"].vars["python"]["extra"] == []
    assert DEFAULTS["ray"]["port"] == 6379 and DEFAULTS["python"]["extra"] == []


def test_version_numbers_keep_their_written_text(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            ray: {version: 2.60}
            python: {vllm: 0.11, torch: "2.8.0"}
          hosts: {n1: {role: head}}
        """)
    v = inv.hosts["n1"].vars
    assert v["ray"]["version"] == "2.60"
    assert v["python"]["vllm"] == "0.11"
    assert v["python"]["torch"] == "2.8.0"


def test_value_normalization(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            nccl: {debug: info}
            python: {vllm: false}
            llamacpp: {cuda: false}
            cluster: {network: 10.0.0.0/24}
          hosts: {n1: {role: head, port: "2200"}}
        """)
    h = inv.hosts["n1"]
    assert h.vars["nccl"]["debug"] == "INFO"
    assert h.vars["python"]["vllm"] is False
    assert h.vars["llamacpp"]["cuda"] is False
    assert h.vars["cluster"]["network"] == "10.0.0.0/24"
    assert h.port == 2200


# ---------------------------------------------------------------------- connection vars


def test_connection_vars_ansible_names(tmp_path):
    inv = load(tmp_path, """
        all:
          vars: {ansible_user: ubuntu}
          hosts:
            n1:
              role: head
              ansible_host: 192.0.2.5
              ansible_port: 2222
              ansible_ssh_private_key_file: /keys/id_ed25519
        """)
    h = inv.hosts["n1"]
    assert (h.address, h.user, h.port, h.key_file) == ("192.0.2.5", "ubuntu", 2222,
                                                       "/keys/id_ed25519")


def test_connection_vars_short_names_and_hostnames(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts:
            n1: {role: head, host: gpu-01.lab.example, user: admin, port: 22022, ssh_key: /k}
            n2: {ansible_host: "2001:db8::5", host: ignored.example}
        """)
    h = inv.hosts["n1"]
    assert (h.address, h.user, h.port, h.key_file) == ("gpu-01.lab.example", "admin", 22022, "/k")
    assert inv.hosts["n2"].address == "2001:db8::5"  # ansible_host wins over host


def test_relative_key_and_known_hosts_paths_follow_the_inventory(tmp_path, monkeypatch):
    sub = tmp_path / "site"
    sub.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(sub, """
        all:
          vars:
            ssh_known_hosts_file: state/known_hosts
          hosts:
            n1: {role: head, ansible_ssh_private_key_file: keys/id}
            n2: {ssh_key: ../shared/id, ssh_known_hosts_file: /etc/ssh/kh}
            n3: {ssh_key: ~/.ssh/id_rsa}
        """)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inv = load_inventory(Path("..") / "site" / "inventory.yaml")
    assert inv.hosts["n1"].key_file == str(sub / "keys" / "id")
    assert inv.hosts["n1"].known_hosts_file == str(sub / "state" / "known_hosts")
    assert inv.hosts["n2"].key_file == str(tmp_path / "shared" / "id")
    assert inv.hosts["n2"].known_hosts_file == "/etc/ssh/kh"
    assert inv.hosts["n3"].key_file == str(tmp_path / "home" / ".ssh" / "id_rsa")


# ------------------------------------------------------------------------------ select


def names(hosts):
    return [h.name for h in hosts]


def test_select_none_or_empty_is_all(tmp_path):
    inv = load(tmp_path, THREE)
    assert names(inv.select(None)) == ["head1", "node1", "node2", "node3"]
    assert names(inv.select([])) == ["head1", "node1", "node2", "node3"]
    assert names(inv.select(["all"])) == ["head1", "node1", "node2", "node3"]


def test_select_hosts_groups_and_union_in_inventory_order(tmp_path):
    inv = load(tmp_path, THREE)
    assert names(inv.select(["node2"])) == ["node2"]
    assert names(inv.select(["gpu"])) == ["node1", "node2"]
    assert names(inv.select(["node3", "head1"])) == ["head1", "node3"]
    assert names(inv.select(["cpu", "node1"])) == ["node1", "node3"]


def test_select_globs(tmp_path):
    inv = load(tmp_path, THREE)
    assert names(inv.select(["node[12]"])) == ["node1", "node2"]
    assert names(inv.select(["node*"])) == ["node1", "node2", "node3"]
    assert names(inv.select(["g*"])) == ["node1", "node2"]  # glob over group names too
    assert names(inv.select(["*"])) == ["head1", "node1", "node2", "node3"]


def test_select_exclude_and_intersect(tmp_path):
    inv = load(tmp_path, THREE)
    assert names(inv.select(["node*", "!node2"])) == ["node1", "node3"]
    assert names(inv.select(["!gpu"])) == ["head1", "node3"]  # only exclusions: from all
    assert names(inv.select(["node*", "&gpu"])) == ["node1", "node2"]
    assert names(inv.select(["all", "&gpu", "!node1"])) == ["node2"]


def test_select_comma_and_colon_separated(tmp_path):
    inv = load(tmp_path, THREE)
    assert names(inv.select(["gpu,!node1"])) == ["node2"]
    assert names(inv.select(["gpu:cpu"])) == ["node1", "node2", "node3"]
    assert names(inv.select(["node*:&cpu"])) == ["node3"]
    assert names(inv.select(["head1, node3"])) == ["head1", "node3"]


def test_select_pattern_matching_nothing_names_nearest(tmp_path):
    inv = load(tmp_path, THREE)
    with pytest.raises(InputError) as info:
        inv.select(["gpus"])
    msg = str(info.value)
    assert "'gpus'" in msg and "matches no host or group" in msg and "'gpu'" in msg
    assert info.value.key == "--limit"
    with pytest.raises(InputError, match=r"'!node7'.*did you mean .*'node1'"):
        inv.select(["gpu", "!node7"])
    with pytest.raises(InputError, match=r"'zzz\*' matches no host or group \(hosts: head1, "
                                         r"node1, node2, node3; groups: all, gpu, cpu\)"):
        inv.select(["zzz*"])


def test_select_empty_result_is_an_error(tmp_path):
    inv = load(tmp_path, THREE)
    with pytest.raises(InputError, match="selects no hosts"):
        inv.select(["gpu", "&cpu"])


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_inventory(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_inventory(path)
    assert "inventory is empty" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.file == str(path)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read inventory"):
        load_inventory(tmp_path / "nope.yaml")


def test_yaml_syntax_error_points_at_problem_mark(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            n1: {role: head
            n2:
        """)
    assert err.line == 4 and err.column is not None
    assert str(err).startswith(f"{tmp_path / 'inventory.yaml'}:4:")
    assert "YAML syntax error" in str(err)
    assert "expected ',' or '}'" in str(err)


def test_yaml_tab_indentation_error(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("all:\n  hosts:\n\tn1:\n")
    with pytest.raises(InputError) as info:
        load_inventory(path)
    assert info.value.line == 3 and "YAML syntax error" in str(info.value)
    assert "indent with spaces, not tabs" in str(info.value)


def test_unsupported_yaml_tag_names_the_variable(tmp_path):
    err = fail(tmp_path, """
        all:
          vars:
            secrets: {hf_token: !vault abc}
          hosts: {n1: {role: head}}
        """)
    assert "secrets.hf_token: unsupported YAML tag '!vault'" in str(err)
    assert err.line == 3


def test_no_head_is_not_reported_when_the_head_may_be_in_a_broken_part(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            n1: {role: haed}
            n2:
        """)
    assert "role: expected one of head, worker or null, got 'haed'" in str(err)
    assert "no head" not in str(err)


def test_not_utf8(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_bytes(b"all:\n  hosts: {n\xff: }\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_inventory(path)


def test_top_level_not_a_mapping(tmp_path):
    err = fail(tmp_path, "- node1\n- node2\n")
    assert "expected a mapping of groups" in str(err) and "got a list" in str(err)
    assert err.line == 1


def test_hosts_as_a_list_is_a_type_error_with_hint(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            - node1
            - node2
        """)
    assert err.line == 3 and err.column == 5
    assert "all.hosts: expected a mapping of host names, got a list" in str(err)
    assert "'name:'" in str(err)


def test_port_not_a_number_message_format(tmp_path):
    err = fail(tmp_path, """
        all:
          vars:
            ray:
              port: abc
          hosts:
            n1: {role: head}
        """)
    assert str(err) == (f"{tmp_path / 'inventory.yaml'}:4:13: ray.port: expected an integer "
                        "1..65535, got 'abc'")
    assert (err.line, err.column, err.key) == (4, 13, "ray.port")


@pytest.mark.parametrize("snippet, expected", [
    ("cluster: {mtu: big}", "cluster.mtu: expected an integer 68..9216, got 'big'"),
    ("cluster: {mtu: 67}", "cluster.mtu: expected an integer 68..9216, got 67"),
    ("cluster: {mtu: 9217}", "cluster.mtu: expected an integer 68..9216, got 9217"),
    ("gpus: -1", "gpus: expected an integer >= 0 or null, got -1"),
    ("gpus: yes", "gpus: expected an integer >= 0 or null, got yes"),
    ("ray: {port: [1, 2]}", "ray.port: expected an integer 1..65535, got a list"),
    ("ray: {port: 0}", "ray.port: expected an integer 1..65535, got 0"),
    ("ansible_port: 70000", "ansible_port: expected an integer 1..65535, got 70000"),
    ("ray: 5", "ray: expected a mapping (keys: version, port,"),
    ("role: boss", "role: expected one of head, worker or null, got 'boss'"),
    ("python: {vllm: true}", "python.vllm: expected a version string (e.g. '2.60.0'), false "
                             "or null, got true"),
    ("python: {extra: numpy}", "python.extra: expected a list of strings, got 'numpy'"),
    ("models_dir: models", "models_dir: expected an absolute path, got 'models' (an absolute "
                           "path starts with '/')"),
    ("mirror: {apt: 'ftp:/x'}", "mirror.apt: expected a URL (http://, https:// or file://) "
                                "or null, got 'ftp:/x'"),
    ("nccl: {debug: LOUD}", "nccl.debug: expected one of VERSION, WARN, INFO, TRACE, got 'LOUD'"),
    ("llamacpp: {cuda: maybe}", "llamacpp.cuda: expected auto, true or false, got 'maybe'"),
    ("cluster: {name: 'my cluster'}", "cluster.name: expected a name of [A-Za-z0-9_.-]"),
    ("secrets: {hf_token: {a: 1}}", "secrets.hf_token: expected a string or null, got a mapping"),
])
def test_wrong_types_say_expected_and_got(tmp_path, snippet, expected):
    err = fail(tmp_path, f"""
        all:
          hosts:
            n0: {{role: head}}
            n1:
              {snippet}
        """)
    assert expected in str(err)
    assert err.line == 5


def test_vars_not_a_mapping(tmp_path):
    err = fail(tmp_path, """
        all:
          vars: [a, b]
          hosts: {n1: {role: head}}
        """)
    assert "all.vars: expected a mapping of variables, got a list" in str(err)
    assert err.line == 2


def test_duplicate_host_in_same_mapping_names_both_lines(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            n1: {role: head}
            n2:
            n1:
        """)
    assert "duplicate host 'n1': first at line 3, again at line 5" in str(err)
    assert err.line == 5 and err.key == "n1"


@pytest.mark.parametrize("text, line, what", [
    ("""
     all:
       vars:
         gpus: 1
         gpus: 2
       hosts: {n1: {role: head}}
     """, 4, "duplicate variable 'gpus': first at line 3"),
    ("""
     all:
       hosts: {n1: {role: head}}
       hosts: {n2: }
     """, 3, "duplicate key 'hosts'"),
    ("""
     all:
       vars:
         ray:
           port: 1
           port: 2
       hosts: {n1: {role: head}}
     """, 5, "duplicate variable 'port'"),
    ("""
     all:
       vars:
         x_custom:
           a: 1
           a: 2
       hosts: {n1: {role: head}}
     """, 5, "duplicate key 'a'"),
    ("""
     all:
       hosts: {n1: {role: head}}
     all:
       hosts: {n2: }
     """, 3, "duplicate group 'all'"),
])
def test_duplicate_keys_in_any_mapping(tmp_path, text, line, what):
    err = fail(tmp_path, text)
    assert what in str(err)
    assert err.line == line


def test_no_head(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            n1:
            n2:
        """)
    assert "no head host" in str(err) and "role: head" in str(err)
    assert err.line == 1


def test_two_heads_named_with_their_lines(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            n1: {role: head}
            n2:
          children:
            ctl:
              vars: {role: head}
              hosts:
                n3:
        """)
    msg = str(err)
    assert "2 heads: 'n1' (line 3) and 'n3' (line 9, role set at line 7)" in msg
    assert err.line == 7


def test_head_group_with_two_hosts(tmp_path):
    err = fail(tmp_path, """
        all:
          children:
            head:
              hosts: {a: , b: }
        """)
    assert "group 'head' has 2 hosts (a, b)" in str(err)
    assert err.line == 3


def test_head_group_and_role_head_elsewhere_are_two_heads(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            other: {role: head}
          children:
            head:
              hosts: {ctl: }
        """)
    assert "2 heads: 'other' (line 3) and 'ctl' (line 6)" in str(err)


def test_head_group_member_with_role_worker(tmp_path):
    err = fail(tmp_path, """
        all:
          children:
            head:
              hosts: {ctl: {role: worker}}
        """)
    assert "'ctl' is in group 'head' but has role: worker" in str(err)


@pytest.mark.parametrize("value, ok", [
    ("10.0.0.300", False), ("10.0.0", False), ("1.2.3.4.5", False), ("10.0.0.7", True),
    ("gpu-01.example", True), ("fe80::1", True), ("fe80::zz", False), ("bad host", False),
])
def test_ansible_host_address_validation(tmp_path, value, ok):
    text = f"""
        all:
          hosts:
            n1: {{role: head, ansible_host: "{value}"}}
        """
    if ok:
        assert load(tmp_path, text).hosts["n1"].address == value
    else:
        err = fail(tmp_path, text)
        assert f"ansible_host: expected an IP address or a host name, got '{value}'" in str(err)
        assert err.line == 3


def test_host_name_used_as_address_must_be_valid(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts:
            10.0.0.256: {role: head}
        """)
    assert "'10.0.0.256' has no ansible_host" in str(err) and "not a valid IPv4" in str(err)
    assert err.line == 3


@pytest.mark.parametrize("network, problem", [
    ("10.0.0.0/33", "expected a CIDR network"),
    ("10.0.0.5/24", "did you mean '10.0.0.0/24'?"),
    ("300.0.0.0/8", "expected a CIDR network"),
    ("this-name-is-far-too-long", "an interface name is 1-15"),
    ("eth 1", "an interface name is 1-15"),
])
def test_invalid_cluster_network(tmp_path, network, problem):
    err = fail(tmp_path, f"""
        all:
          vars:
            cluster: {{network: "{network}"}}
          hosts: {{n1: {{role: head}}}}
        """)
    assert "cluster.network:" in str(err) and problem in str(err)
    assert err.line == 3


@pytest.mark.parametrize("network", ["eth1", "ens1f0np0", "bond0.100", "fd00:1::/64",
                                     "198.18.0.0/24"])
def test_valid_cluster_network(tmp_path, network):
    inv = load(tmp_path, f"""
        all:
          vars:
            cluster: {{network: "{network}"}}
          hosts: {{n1: {{role: head}}}}
        """)
    assert inv.head.vars["cluster"]["network"] == network


def test_group_cycle_of_two(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts: {n1: {role: head}}
          children:
            a:
              children:
                b:
            b:
              children:
                a:
        """)
    assert "group cycle: a -> b -> a" in str(err)
    assert err.line == 9


def test_group_cycle_of_three(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts: {n1: {role: head}}
        a:
          children: {b: }
        b:
          children: {c: }
        c:
          children: {a: }
        """)
    assert "group cycle: a -> b -> c -> a" in str(err)
    assert err.line == 8


def test_all_cannot_be_a_child(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts: {n1: {role: head}}
        g:
          children:
            all:
        """)
    assert "group 'all' cannot be a child of 'g'" in str(err)


def test_sm_host_must_be_an_inventory_host(tmp_path):
    err = fail(tmp_path, """
        all:
          vars:
            infiniband: {sm_host: node3}
          hosts:
            node1: {role: head}
            node2:
        """)
    assert "infiniband.sm_host: 'node3' is not a host of this inventory" in str(err)
    assert "did you mean" in str(err)
    assert err.line == 3
    assert "1 more" not in str(err)  # reported once, not once per host
    ok = load(tmp_path, """
        all:
          vars:
            infiniband: {sm_host: node2}
          hosts:
            node1: {role: head}
            node2:
        """)
    assert ok.hosts["node1"].vars["infiniband"]["sm_host"] == "node2"


@pytest.mark.parametrize("text", [
    "all:\n",
    "all:\n  vars: {gpus: 1}\n",
    "all:\n  children:\n    gpu:\n      vars: {gpus: 1}\n",
    "all:\n  hosts:\n",
])
def test_all_without_hosts(tmp_path, text):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="no hosts in the inventory") as info:
        load_inventory(path)
    assert info.value.line == 1


def test_unknown_structural_key_is_an_error_with_suggestion(tmp_path):
    err = fail(tmp_path, """
        all:
          hostz:
            n1: {role: head}
        """)
    assert "group 'all': unknown key 'hostz' (did you mean 'hosts'?)" in str(err)
    assert err.line == 2 and err.column == 3


def test_variable_at_group_level_points_to_vars(tmp_path):
    err = fail(tmp_path, """
        all:
          hosts: {n1: {role: head}}
          cluster: {mtu: 1500}
        """)
    assert "unknown key 'cluster' (variables go under 'vars:')" in str(err)


def test_top_level_hosts_is_an_error(tmp_path):
    err = fail(tmp_path, """
        hosts:
          n1: {role: head}
        """)
    assert "top-level 'hosts' must be indented under 'all:'" in str(err)


def test_all_problems_are_collected_first_in_header(tmp_path):
    err = fail(tmp_path, """
        all:
          vars:
            cluster: {mtu: big}
          hosts:
            n1: {role: head, ansible_port: abc}
            n2: {gpus: -3}
        """)
    lines = str(err).splitlines()
    assert lines[0].endswith("cluster.mtu: expected an integer 68..9216, got 'big' "
                             "(and 2 more problems)")
    assert (err.line, err.key) == (3, "cluster.mtu")
    assert ":5:" in lines[1] and "ansible_port" in lines[1]
    assert ":6:" in lines[2] and "gpus" in lines[2]
    assert len(lines) == 3


@pytest.mark.parametrize("text", [
    "all: 3\n",
    "all: [a]\n",
    "all:\n  hosts:\n    n1: [1, 2]\n",
    "all:\n  hosts:\n    ? [a, b]\n    : 1\n",
    "all:\n  vars:\n    x_token: !vault abc\n  hosts: {n1: {role: head}}\n",
    "!!python/object/apply:os.system ['true']\n",
    "all: &a\n  children:\n    g: *a\n",
    "all:\n  hosts: {n1: {role: head}}\n---\nall: {}\n",
    "all:\n  hosts:\n    'bad name': {role: head}\n",
    "all:\n  children:\n    'bad group!':\n      hosts: {n1: {role: head}}\n",
    "all:\n  hosts: {n1: {role: head}}\n  vars: {cluster: [1]}\n",
    "all:\n  hosts:\n    n1: {role: head, <<: 5}\n",
    "all: &a\n  <<: *a\n  hosts: {n1: {role: head}}\n",
    "all:\n  vars:\n    x_deep: " + "[" * 300 + "]" * 300 + "\n  hosts: {n1: {role: head}}\n",
    "all:\n  vars:\n    x: &r [*r]\n  hosts: {n1: {role: head}}\n",
], ids=lambda text: repr(text[:40]))
def test_garbage_never_raises_anything_but_input_error(tmp_path, text):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


def test_ray_worker_range_and_port_collisions(tmp_path):
    err = fail(tmp_path, """
        all:
          vars:
            ray: {min_worker_port: 20000, max_worker_port: 19000}
          hosts: {n1: {role: head}}
        """)
    assert "min_worker_port 20000 is above max_worker_port 19000" in str(err)
    err = fail(tmp_path, """
        all:
          vars:
            ray: {dashboard_port: 6379, client_server_port: 10050}
          hosts: {n1: {role: head}}
        """)
    assert "ray.dashboard_port: port 6379 collides with ray.port" in str(err)
    assert "ray.client_server_port: port 10050 collides with the worker port range" in str(err)


# ---------------------------------------------------------------------------- warnings


def test_unknown_variable_warning_with_suggestion(tmp_path):
    path = write(tmp_path, """
        all:
          hosts:
            n1: {role: head}
          children:
            gpu:
              vars:
                cluser: {mtu: 1500}
              hosts: {n2: }
        """)
    inv = load_inventory(path)
    assert inv.warnings == [f"{path}:7:9: unknown variable 'cluser' (did you mean 'cluster'?)"]
    # unknown variables are kept, as users may read them in their own templates
    assert inv.hosts["n2"].vars["cluser"] == {"mtu": 1500}
    assert inv.hosts["n2"].vars["cluster"]["mtu"] == 9000


def test_unknown_nested_and_dotted_variables_warn(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            ray: {prot: 1}
            ray.port: 6390
            x_site_label: rack7
          hosts: {n1: {role: head}}
        """)
    # a user's own top-level variable (or a role's, checked by the roles' specs when a
    # play runs) is kept without a warning; near misses and nested unknowns warn
    assert len(inv.warnings) == 2
    assert "unknown variable 'ray.prot' (did you mean 'ray.port'?)" in inv.warnings[0]
    assert "unknown variable 'ray.port' (write it nested" in inv.warnings[1]
    assert inv.head.vars["x_site_label"] == "rack7"


def test_host_and_group_with_the_same_name_warns(tmp_path):
    inv = load(tmp_path, """
        all:
          hosts: {gpu: {role: head}}
          children:
            gpu:
              hosts: {n2: }
        """)
    assert any("'gpu' is both a host and a group name" in w for w in inv.warnings)


# ----------------------------------------------------------------------------- secrets


def test_secrets_are_masked_and_any_key_is_allowed(tmp_path):
    inv = load(tmp_path, """
        all:
          vars:
            secrets:
              hf_token: hf_abcdef123
              wandb_key: 12345
          hosts: {n1: {role: head}}
        """)
    assert inv.warnings == []
    s = inv.head.vars["secrets"]
    assert isinstance(s["hf_token"], Secret) and isinstance(s["wandb_key"], Secret)
    assert s["hf_token"].reveal() == "hf_abcdef123"
    assert s["wandb_key"].reveal() == "12345"
    assert "hf_abcdef123" not in repr(inv.head.vars)
    assert "hf_abcdef123" not in str(inv.head) and "hf_abcdef123" not in f"{s['hf_token']}"
    assert DEFAULTS["secrets"]["hf_token"] is None


# ----------------------------------------------------------------------- resolve path


def test_resolve_inventory_path_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(inv_mod.INVENTORY_ENV, raising=False)
    assert resolve_inventory_path("x/inv.yaml") == Path("x/inv.yaml")
    with pytest.raises(InputError) as info:
        resolve_inventory_path(None)
    msg = str(info.value)
    assert "./inventory.yaml" in msg and "$CLUSTERCTL_INVENTORY" in msg and "--inventory" in msg
    monkeypatch.setenv("CLUSTERCTL_INVENTORY", "/etc/clusterctl/inv.yaml")
    assert resolve_inventory_path(None) == Path("/etc/clusterctl/inv.yaml")
    (tmp_path / "inventory.yaml").write_text("all: {}\n")
    assert resolve_inventory_path(None) == Path("inventory.yaml")
    assert resolve_inventory_path("other.yaml") == Path("other.yaml")


# ---------------------------------------------------------------------- schema, example


def _leaf_paths(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


def test_defaults_pass_their_own_schema():
    for path in _leaf_paths(DEFAULTS):
        spec = KNOWN_VARS
        value = DEFAULTS
        for part in path:
            spec, value = spec[part], value[part]
        assert isinstance(spec, VarSpec), path
        assert spec.check(value, None) == value, path
        assert spec.expected and spec.doc


def test_example_inventory_loads_clean_and_shows_every_variable():
    path = REPO / "inventory" / "example.yaml"
    inv = load_inventory(path)
    assert inv.warnings == []
    assert inv.head.name == "head1"
    assert [w.name for w in inv.workers] == ["gpu1", "gpu2"]
    assert all(w.gpus == 8 for w in inv.workers)
    assert inv.head.vars["cluster"]["network"] == "10.0.0.0/24"
    assert inv.hosts["gpu2"].port == 2222
    raw = yaml.safe_load(path.read_text())
    shown = set(_leaf_paths(raw["all"]["vars"]))
    shown |= {("role",), ("gpus",), ("gpu_memory_mib",)}  # set per host / group in the example
    missing = [".".join(p) for p in _leaf_paths(DEFAULTS) if p not in shown]
    assert missing == []


def test_inventory_doc_mentions_every_variable():
    doc = (REPO / "docs" / "inventory.md").read_text()
    for path in _leaf_paths(DEFAULTS):
        assert ".".join(path) in doc, path
    for name in KNOWN_VARS:
        assert name in doc, name
