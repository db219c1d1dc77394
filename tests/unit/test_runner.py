"""The runner with a local stand-in for SSH: planning, check mode, handlers, recap.

`LocalConnection` runs commands with the local bash and writes files locally, so
the whole plan/execute path runs without any host; paths live under tmp_path.
"""

import pytest

from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.errors import InputError
from clusterctl.inventory import load_inventory
from localconn import LocalConnection
from standins import local  # noqa: F401  (the fixture)


@pytest.fixture
def project(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(
        "all:\n"
        "  vars: {cluster: {network: lo}}\n"
        "  hosts:\n"
        "    alpha: {ansible_host: 127.0.0.1, role: head}\n"
        "    beta: {ansible_host: 127.0.0.1, ansible_port: 2202}\n")
    role = tmp_path / "roles" / "r"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "conf.j2").write_text("name={{ inventory_hostname }}\n"
                                                "head={{ head.name }}\n")
    (role / "defaults.yaml").write_text(f"base: {tmp_path}/out\n")
    (role / "tasks.yaml").write_text(
        "- name: folder\n"
        "  directory: {path: '{{ base }}/{{ inventory_hostname }}'}\n"
        "- name: conf\n"
        "  template: {src: conf.j2, dest: '{{ base }}/{{ inventory_hostname }}/conf'}\n"
        "  notify: touched\n"
        "- name: only on beta\n"
        "  command: {argv: ['touch', '{{ base }}/beta-only'], creates: '{{ base }}/beta-only'}\n"
        "  when: inventory_hostname == 'beta'\n")
    (role / "handlers.yaml").write_text(
        "- name: touched\n"
        "  command: {argv: ['touch', '{{ base }}/{{ inventory_hostname }}/handled']}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: all, roles: [r]}\n")
    return tmp_path


def run(project, **opts):
    inv = load_inventory(project / "inventory.yaml")
    plays = load_playbook(project / "pb.yaml", [project / "roles"])
    return run_playbook(inv, plays, RunOptions(**opts))


def test_check_mode_writes_nothing(project, local):
    report = run(project, check=True)
    assert report.check
    assert not report.failed_hosts
    # two tasks (three on beta) and the notified handler, all as "would ..."
    assert report.recap["alpha"].changed == 3 and report.recap["beta"].changed == 4
    assert report.recap["alpha"].skipped == 1
    assert {kind for kind, _h, _a in local.calls} == {"facts"}
    assert list((project / "out").iterdir()) == []
    assert all(r.message.startswith("would ") for r in report.results if r.status == "changed")


def test_one_fact_round_trip_per_host(project, local):
    run(project)
    facts_calls = [c for c in local.calls if c[0] == "facts"]
    assert sorted(h for _k, h, _a in facts_calls) == ["alpha", "beta"]


def test_converge_handlers_and_idempotence(project, local):
    first = run(project)
    assert not first.failed_hosts
    out = project / "out"
    assert (out / "alpha" / "conf").read_text() == "name=alpha\nhead=alpha\n"
    assert (out / "beta" / "handled").exists() and (out / "beta-only").exists()
    handlers = [r for r in first.results if r.handler]
    assert sorted(r.host for r in handlers) == ["alpha", "beta"]
    second = run(project)
    assert second.changed == 0
    assert {r.status for r in second.results} <= {"ok", "skipped"}


def test_diff_of_changed_template(project, local):
    run(project)
    (project / "out" / "alpha" / "conf").write_text("name=old\nhead=alpha\n")
    report = run(project, diff=True)
    conf = [r for r in report.results if r.host == "alpha" and r.title == "r : conf"][0]
    assert conf.status == "changed"
    assert "-name=old" in conf.diff and "+name=alpha" in conf.diff


def test_failed_command_isolated_with_stderr(project, local):
    role = project / "roles" / "r"
    (role / "tasks.yaml").write_text(
        "- name: boom\n"
        "  command: {argv: ['sh', '-c', 'echo kaput >&2; exit 3']}\n"
        "  when: inventory_hostname == 'alpha'\n"
        "- name: next\n"
        "  command: {argv: ['true']}\n")
    (role / "handlers.yaml").write_text("")
    report = run(project)
    assert report.failed_hosts == ["alpha"]
    assert "exit 3" in report.recap["alpha"].error and "kaput" in report.recap["alpha"].error
    assert report.recap["beta"].changed == 1
    assert report.recap["alpha"].changed == 0  # stopped after its failure


def test_fail_fast_stops_everyone(project, local):
    role = project / "roles" / "r"
    (role / "tasks.yaml").write_text(
        "- name: boom\n"
        "  command: {argv: ['false']}\n"
        "  when: inventory_hostname == 'alpha'\n"
        "- name: next\n"
        "  command: {argv: ['true']}\n")
    (role / "handlers.yaml").write_text("")
    report = run(project, keep_going=False)
    assert report.recap["beta"].changed == 0


def test_undefined_variable_in_task_names_file_and_line(project, local):
    role = project / "roles" / "r"
    (role / "tasks.yaml").write_text("- name: a\n  command: {argv: ['true']}\n"
                                     "- name: b\n  directory: {path: '{{ nope }}'}\n")
    report = run(project)
    assert set(report.failed_hosts) == {"alpha", "beta"}
    assert f"{role / 'tasks.yaml'}:3" in report.recap["alpha"].error
    assert "nope" in report.recap["alpha"].error


def test_unknown_op_is_input_error_with_suggestion(project):
    (project / "roles" / "r" / "tasks.yaml").write_text("- name: a\n  directroy: {path: /x}\n")
    with pytest.raises(InputError) as err:
        load_playbook(project / "pb.yaml", [project / "roles"])
    assert "directroy" in str(err.value) and "did you mean 'directory'" in str(err.value)
    assert ":2:" in str(err.value)


def test_missing_role_is_input_error(project):
    (project / "pb.yaml").write_text("- {hosts: all, roles: [rr]}\n")
    with pytest.raises(InputError) as err:
        load_playbook(project / "pb.yaml", [project / "roles"])
    assert "role 'rr' not found" in str(err.value) and "did you mean 'r'" in str(err.value)


def test_notify_unknown_handler_is_input_error(project):
    (project / "roles" / "r" / "tasks.yaml").write_text(
        "- name: a\n  command: {argv: ['true']}\n  notify: nobody\n")
    with pytest.raises(InputError) as err:
        load_playbook(project / "pb.yaml", [project / "roles"])
    assert "no handler named 'nobody'" in str(err.value)


def test_units_started_in_the_run_are_not_restarted_by_handlers():
    from clusterctl.engine.roles import Task
    from clusterctl.engine.runner import PlannedTask, _units_started
    from clusterctl.ops.base import Change
    task = Task("svc", "service", {}, "r", "f", 1)
    start = PlannedTask(task, Change("service", "ray-head.service",
                                     [["systemctl", "enable", "--now", "ray-head.service"]],
                                     None, "enable --now ray-head.service"))
    assert _units_started(start) == {"ray-head.service"}
    restart = PlannedTask(task, Change("service", "x.service",
                                       [["systemctl", "restart", "x.service"]], None, "restart"))
    assert _units_started(restart) == set()
    other = PlannedTask(Task("f", "file", {}, "r", "f", 1),
                        Change("file", "/x", [["systemctl", "start", "y"]], None, ""))
    assert _units_started(other) == set()


def test_tags_select_and_skip_tasks(project, local):
    role = project / "roles" / "r"
    (role / "tasks.yaml").write_text(
        "- name: tagged a\n"
        "  command: {argv: ['touch', '{{ base }}/{{ inventory_hostname }}-a']}\n"
        "  tags: [a]\n"
        "- name: tagged b\n"
        "  command: {argv: ['touch', '{{ base }}/{{ inventory_hostname }}-b']}\n"
        "  tags: b, shared\n"
        "- name: always\n"
        "  command: {argv: ['touch', '{{ base }}/{{ inventory_hostname }}-always']}\n"
        "  tags: [always]\n"
        "- name: never unless asked\n"
        "  command: {argv: ['touch', '{{ base }}/{{ inventory_hostname }}-never']}\n"
        "  tags: [never, debug]\n")
    (role / "handlers.yaml").write_text("")
    names = lambda rep: sorted({r.task.name for r in rep.results if r.task})  # noqa: E731
    assert names(run(project, check=True)) == ["always", "tagged a", "tagged b"]
    assert names(run(project, check=True, tags={"a"})) == ["always", "tagged a"]
    assert names(run(project, check=True, skip_tags={"shared", "always"})) == ["tagged a"]
    assert names(run(project, check=True, tags={"debug"})) == ["always",
                                                                "never unless asked"]


def test_bad_tags_are_input_errors(project):
    (project / "roles" / "r" / "tasks.yaml").write_text(
        "- name: t\n  command: {argv: [true]}\n  tags: {x: 1}\n")
    with pytest.raises(InputError, match="tags: expected"):
        load_playbook(project / "pb.yaml", [project / "roles"])


def test_exact_commands_of_a_change_are_reported_also_under_check(project, local):
    report = run(project, check=True)
    only = [r for r in report.results if r.host == "beta" and r.task.name == "only on beta"][0]
    assert only.commands == [f"touch {project}/out/beta-only"]
    folder = [r for r in report.results if r.host == "alpha" and r.task.name == "folder"][0]
    assert folder.commands and folder.commands[0].startswith("mkdir")
    assert report.to_dict()["results"][0]["commands"] is not None


def test_extra_vars_win_over_role_defaults(project, local, tmp_path):
    alt = tmp_path / "alt"
    alt.mkdir()
    report = run(project, extra_vars={"base": str(alt)})
    assert not report.failed_hosts
    assert (alt / "alpha" / "conf").exists()


def test_a_stalled_change_is_cut_at_the_ops_deadline_and_named(project, local, monkeypatch):
    """A host whose change stalls (say, a path that drops large packets) is cut when the
    op's deadline passes and named with what it was doing; the other host converges."""
    import threading
    from clusterctl import session as session_mod
    from clusterctl.errors import UnreachableError
    from clusterctl.ops import OPS
    release = threading.Event()
    original_run = LocalConnection.run

    def stalled_run(self, cmd, **kw):
        if self.name == "beta" and isinstance(cmd, list) and cmd[:1] == ["touch"]:
            release.wait(30)          # stalled until the session cuts its connection
            raise UnreachableError(self.name, "connection lost")
        return original_run(self, cmd, **kw)
    monkeypatch.setattr(LocalConnection, "run", stalled_run)
    monkeypatch.setattr(session_mod.Session, "abort", lambda self, name: release.set())
    monkeypatch.setattr(OPS["command"], "deadline", 0.5)
    report = run(project)
    assert report.recap["beta"].failed == 1
    assert "timed out after 0.5s during r : only on beta" in report.recap["beta"].error
    assert report.recap["alpha"].failed == 0


def test_extra_vars_reach_templates_checked_and_masked(tmp_path, monkeypatch):
    """-e values go through the inventory's checks before the runner sees them: typed,
    and a secret given with -e stays a Secret (*** in what is shown)."""
    from clusterctl.cli import engine as cli
    seen = {}

    def fake_converge(inv, playbook, **kw):
        seen.update(kw["extra_vars"])
        raise SystemExit(0)
    monkeypatch.setattr(cli, "converge", fake_converge)
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 198.18.0.250, role: head}\n")
    with pytest.raises(SystemExit):
        cli.run_playbook_command(
            str(inv), None, "bootstrap", limit=(), check=True, diff=False, as_json=False,
            verbose=0, forks=1, keep_going=False, fail_fast=False, accept_new_host_keys=False,
            roles_path=(), break_lock=False, tags=(), skip_tags=(),
            extra_vars=("gpus=4", '{"secrets": {"hf_token": "hf_abc"}}'),
            fixed_vars={"ray_verify": False})
    assert seen["gpus"] == 4 and seen["ray_verify"] is False
    assert str(seen["secrets"]["hf_token"]) == "***"
    assert seen["secrets"]["hf_token"].reveal() == "hf_abc"


def test_a_run_restores_the_garbage_collector_settings(project, local, monkeypatch):
    import gc
    from clusterctl.engine import runner as runner_mod
    before = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
    seen = []
    real = runner_mod.Runner._run

    def spy(self):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return real(self)
    monkeypatch.setattr(runner_mod.Runner, "_run", spy)
    run(project, check=True)
    assert seen[0][0] >= 20000 and seen[0][1] > 0          # lighter during the run
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
