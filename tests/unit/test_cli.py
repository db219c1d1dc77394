"""The CLI: exit codes and one clear message for bad input, no traceback."""
from click.testing import CliRunner

from clusterctl.cli import LAZY_COMMANDS, main
from clusterctl.cli.engine import exit_code_for
from clusterctl.engine.runner import HostRecap, RunReport


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_help_lists_every_command():
    out = invoke("--help").output
    for name in ["bootstrap", "apply", "verify", *LAZY_COMMANDS]:
        assert name in out


def test_missing_inventory_is_exit_2_with_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERCTL_INVENTORY", raising=False)
    res = invoke("bootstrap")
    assert res.exit_code == 2
    assert "inventory.yaml" in res.output and "Traceback" not in res.output


def test_yaml_error_is_exit_2_with_file_line(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 10.0.0.1\n")
    res = invoke("bootstrap", str(inv))
    assert res.exit_code == 2
    assert f"{inv}:" in res.output and "Traceback" not in res.output


def test_two_heads_is_exit_2(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {role: head}\n    b: {role: head}\n")
    res = invoke("bootstrap", "-i", str(inv), "--check")
    assert res.exit_code == 2 and "head" in res.output


def test_positional_and_option_inventory_must_agree(tmp_path):
    res = invoke("bootstrap", str(tmp_path / "a.yaml"), "-i", str(tmp_path / "b.yaml"))
    assert res.exit_code == 2 and "two inventories" in res.output


def test_unknown_playbook_is_exit_2(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {role: head, ansible_host: 127.0.0.1}\n")
    res = invoke("apply", "no-such-playbook", "-i", str(inv))
    assert res.exit_code == 2 and "no-such-playbook" in res.output


def test_exit_codes_from_report():
    ok = RunReport([], {"a": HostRecap(ok=3)}, check=False)
    assert exit_code_for(ok) == 0
    failed = RunReport([], {"a": HostRecap(failed=1)}, check=False)
    assert exit_code_for(failed) == 1
    down = RunReport([], {"a": HostRecap(unreachable=True)}, check=True)
    assert exit_code_for(down) == 1
    pending = RunReport([], {"a": HostRecap(changed=2)}, check=True)
    assert exit_code_for(pending) == 3
    applied = RunReport([], {"a": HostRecap(changed=2)}, check=False)
    assert exit_code_for(applied) == 0


def test_extra_vars_are_checked_before_any_connection(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 198.18.0.250, role: head}\n")
    res = invoke("bootstrap", str(inv), "--check", "-e", f"@{tmp_path}/missing.yaml")
    assert res.exit_code == 2 and "missing.yaml" in res.output
    res = invoke("apply", "bootstrap", "-i", str(inv), "--check", "-e", "ray={port: 0}")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_contradictory_flags_are_exit_2(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 198.18.0.250, role: head}\n")
    res = invoke("bootstrap", str(inv), "--keep-going", "--fail-fast")
    assert res.exit_code == 2 and "contradict" in res.output


def test_example_inventory_prints_and_writes_but_never_overwrites(tmp_path):
    printed = invoke("example-inventory").output
    assert "all:" in printed and "ray:" in printed
    dest = tmp_path / "inventory.yaml"
    assert invoke("example-inventory", str(dest)).exit_code == 0
    assert dest.read_text() == printed
    again = invoke("example-inventory", str(dest))
    assert again.exit_code == 2 and "exists" in again.output


def test_inventory_warnings_are_printed_verbatim_by_every_command(tmp_path):
    """A warning quoting the user's text (here a key with rich markup in it) is printed
    as it is, never parsed as markup (sync-model crashed on '[/y]')."""
    inv = tmp_path / "inv.yaml"
    inv.write_text('all:\n  vars:\n    cluster:\n      "x[/y]": 1\n  hosts:\n'
                   '    a: {ansible_host: 198.18.0.250, role: head}\n')
    for args in (["sync-model", str(tmp_path / "missing"), "-i", str(inv)],
                 ["inventory", "-i", str(inv), "--graph"],
                 ["apply", "no-such-playbook", "-i", str(inv)]):
        res = invoke(*args)
        assert "unknown variable 'cluster.x[/y]'" in res.output, (args, res.output)
        assert "Traceback" not in res.output
        assert res.exit_code == (0 if args[0] == "inventory" else 2), (args, res.output)


def test_sync_live_bar_shows_paths_and_names_verbatim():
    """The sync-model bar is rich markup: a source path or node name with brackets in it
    is shown as it is (a '[/x]' in a path crashed the bar)."""
    import io

    from rich.console import Console

    from clusterctl.cli.sync import LiveBar, node_states_text
    from clusterctl.sync.report import SyncProgress
    out = Console(file=io.StringIO(), force_terminal=True, width=200)
    with LiveBar(out) as bar:
        bar(SyncProgress(phase="scanning", message="listing /m/[/x]", total=0, done=0,
                         round=0, nodes={"n-[/z]": "failed", "n-b": "synced"}))
    shown = out.file.getvalue()
    assert "listing /m/[/x]" in shown and "[/z] ✗" in shown
    assert node_states_text({"lab-node1": "verified", "lab-node2": "unchanged"}) == \
        "[green]node1 ✓[/green]  node2 ="


def test_lock_warning_shows_the_reason_verbatim():
    """An unreachable head is a warning naming the reason as it is (a reason holding
    '[/x]' is text, not rich markup); a lock held by another run is an error."""
    import io

    import pytest
    from rich.console import Console

    from clusterctl.cli.engine import take_cluster_lock
    from clusterctl.errors import ClusterctlError
    from clusterctl.session import LockBusy

    class Head:
        def __init__(self, exc):
            self.exc = exc

        def lock(self, name, command, break_stale=False):
            raise self.exc
    err = Console(file=io.StringIO(), width=200)
    take_cluster_lock(Head(ClusterctlError("head: ssh said [/x] no")), "c", False, err)
    assert "running without the cluster lock: head: ssh said [/x] no" in err.file.getvalue()
    with pytest.raises(LockBusy):
        take_cluster_lock(Head(LockBusy("held by pid 1")), "c", False, err)


def test_lab_up_passes_read_only_binds(monkeypatch, tmp_path):
    from clusterctl.lab import core
    seen = {}

    def fake_up(name, nodes, link, mirror, **kw):
        seen.update(kw)
        raise SystemExit(0)
    monkeypatch.setattr(core, "up", fake_up)
    res = CliRunner().invoke(main, ["lab", "up", "--name", "t", "--bind-ro",
                                    f"{tmp_path}:/usr/local/cuda-13.0", "--bind-ro",
                                    f"{tmp_path}:/opt/x"])
    assert res.exit_code == 0, res.output
    assert seen["binds"] == [(str(tmp_path), "/usr/local/cuda-13.0"), (str(tmp_path), "/opt/x")]
    res = CliRunner().invoke(main, ["lab", "up", "--name", "t", "--bind-ro", "nodest"])
    assert res.exit_code == 2 and "SRC:DEST" in res.output and "Traceback" not in res.output
