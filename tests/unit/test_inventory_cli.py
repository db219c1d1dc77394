"""`clusterctl inventory --list/--graph/--host`: what clusterctl reads, secrets masked."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from click.testing import CliRunner

from clusterctl.cli import main

TOKEN = "hf_TOPSECRET42"


def invoke(*args):
    return CliRunner().invoke(main, list(args), env={}, catch_exceptions=False)


def site(tmp_path: Path) -> Path:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(textwrap.dedent(f"""
        all:
          vars:
            secrets: {{hf_token: {TOKEN}}}
            cluster: {{mtu: 1500}}
          hosts:
            head1: {{role: head, ansible_host: 10.0.0.1}}
          children:
            gpu:
              vars: {{gpus: 8}}
              hosts: {{n1: {{ansible_host: 10.0.0.2}}, n2: {{ansible_host: 10.0.0.3}}}}
              children:
                fast: {{hosts: {{n2: }}}}
            rack: {{children: {{fast: }}}}
        """).lstrip())
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "n1.yml").write_text("gpus: 4\nx_note: {a: 1}\n")
    return inv


def test_list_is_ansible_shaped_json_with_secrets_masked(tmp_path):
    res = invoke("inventory", "-i", str(site(tmp_path)), "--list")
    assert res.exit_code == 0, res.output
    assert TOKEN not in res.output
    data = json.loads(res.stdout)
    assert data["all"] == {"hosts": ["head1"], "children": ["gpu", "rack"]}
    assert data["gpu"] == {"hosts": ["n1", "n2"], "children": ["fast"]}
    assert data["fast"] == {"hosts": ["n2"]} and data["rack"] == {"children": ["fast"]}
    hostvars = data["_meta"]["hostvars"]
    assert hostvars["n1"]["gpus"] == 4 and hostvars["n2"]["gpus"] == 8
    assert hostvars["head1"]["secrets"]["hf_token"] == "***"
    assert hostvars["head1"]["role"] == "head" and hostvars["n1"]["role"] == "worker"


def test_list_with_limit(tmp_path):
    data = json.loads(invoke("inventory", "-i", str(site(tmp_path)), "--list",
                             "--limit", "fast").stdout)
    assert list(data["_meta"]["hostvars"]) == ["n2"]
    assert data["all"] == {"children": ["gpu", "rack"]} and "head1" not in json.dumps(data)


def test_graph(tmp_path):
    res = invoke("inventory", str(site(tmp_path)), "--graph")
    assert res.exit_code == 0
    assert res.stdout.splitlines() == [
        "@all:",
        "  |--head1",
        "  |--@gpu:",
        "  |  |--n1",
        "  |  |--n2",
        "  |  |--@fast:",
        "  |  |  |--n2",
        "  |--@rack:",
        "  |  |--@fast: (shown above)",
    ]


def test_host_shows_each_value_with_where_it_was_set(tmp_path):
    inv = site(tmp_path)
    res = invoke("inventory", "-i", str(inv), "--host", "n1")
    assert res.exit_code == 0 and TOKEN not in res.output
    lines = {line.split(":")[0]: line for line in res.stdout.splitlines()}
    assert lines["gpus"].startswith("gpus: 4 ") and lines["gpus"].endswith(
        f"# {tmp_path / 'host_vars' / 'n1.yml'}:1:7")
    assert lines["cluster.mtu"].endswith(f"# {inv}:4:20")
    assert lines["cluster.name"].endswith("# default")
    assert lines["secrets.hf_token"].startswith("secrets.hf_token: *** ")
    assert lines["x_note.a"].endswith(f"# {tmp_path / 'host_vars' / 'n1.yml'}:2:9")
    data = json.loads(invoke("inventory", "-i", str(inv), "--host", "n1", "--json").stdout)
    assert data["schema_version"] == 1 and data["vars"]["secrets"]["hf_token"] == "***"
    assert data["origins"]["ray.port"] == "default"
    assert data["origins"]["ansible_host"] == f"{inv}:10:34"


def test_extra_vars_show_as_the_top_level(tmp_path):
    res = invoke("inventory", "-i", str(site(tmp_path)), "--host", "n1", "-e", "gpus=2")
    assert "gpus: 2 " in res.stdout and "# --extra-vars" in res.stdout


def test_errors_are_exit_2_without_traceback(tmp_path):
    inv = str(site(tmp_path))
    for args, problem in [
        (["--host", "n3"], "no host 'n3' in the inventory (did you mean"),
        (["--graph", "--limit", ""], "is empty"),
        (["--graph", "--limit", "nothing"], "matches no host or group"),
        (["--list", "--graph"], "exactly one of --list, --graph or --host"),
        ([], "exactly one of --list, --graph or --host"),
        (["--list", "-e", "novalue"], "expected KEY=VALUE"),
    ]:
        res = invoke("inventory", "-i", inv, *args)
        assert res.exit_code == 2, (args, res.output)
        assert problem in res.output and "Traceback" not in res.output, (args, res.output)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    res = invoke("inventory", "-i", str(fifo), "--list")
    assert res.exit_code == 2 and "FIFO" in res.output


def test_ini_inventory_graph(tmp_path):
    inv = tmp_path / "hosts"
    inv.write_text("[head]\nh1 role=head\n[gpu]\nn[1:2] ansible_host=10.0.0.9\n")
    res = invoke("inventory", "-i", str(inv), "--graph")
    assert res.exit_code == 2 and "has the same address and port as host 'n1'" in res.output
    inv.write_text("[head]\nh1 role=head\n[gpu]\nn[1:2]\n[cluster:children]\nhead\ngpu\n")
    res = invoke("inventory", "-i", str(inv), "--graph")
    assert res.stdout.splitlines() == ["@all:", "  |--@cluster:", "  |  |--@head:",
                                       "  |  |  |--h1", "  |  |--@gpu:", "  |  |  |--n1",
                                       "  |  |  |--n2"]
