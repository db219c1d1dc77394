"""The engine against real lab nodes: check mode, converge, idempotence, failures."""
from pathlib import Path

import pytest

from clusterctl.engine.roles import default_roles_paths, load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection

pytestmark = pytest.mark.lab
HERE = Path(__file__).parent / "playbooks"


def _run(inv, **opts):
    plays = load_playbook(HERE / "demo.yaml", default_roles_paths([str(HERE / "roles")]))
    return run_playbook(inv, plays, RunOptions(**opts))


def _exists(host, path) -> bool:
    with Connection(host) as c:
        return c.run(["test", "-e", path], check=False).exit_code == 0


@pytest.fixture(scope="module")
def inv(lab):
    inventory = load_inventory(lab.inventory_path)
    yield inventory
    # leave the nodes as we found them for the other lab tests
    for host in inventory.hosts.values():
        with Connection(host) as c:
            c.run("systemctl disable --now clusterctl-demo.service >/dev/null 2>&1; "
                  "rm -rf /srv/clusterctl-demo /etc/systemd/system/clusterctl-demo.service; "
                  "systemctl daemon-reload", check=False)


def test_check_mode_on_fresh_hosts_reports_changes_and_writes_nothing(inv):
    report = _run(inv, check=True)
    assert not report.failed_hosts
    for host, recap in report.recap.items():
        assert recap.changed >= 6, (host, recap)
    for host in inv.hosts.values():
        assert not _exists(host, "/srv/clusterctl-demo")
        assert not _exists(host, "/etc/systemd/system/clusterctl-demo.service")


def test_converge_then_second_run_changes_nothing(inv):
    first = _run(inv)
    assert not first.failed_hosts, first.recap
    assert all(r.changed >= 6 for r in first.recap.values())
    handler_runs = [r for r in first.results if r.handler]
    assert len(handler_runs) == len(inv.hosts)  # notified 3 times, ran once per host
    for host in inv.hosts.values():
        with Connection(host) as c:
            conf = c.run(["cat", "/srv/clusterctl-demo/demo.conf"]).stdout
            assert f"greeting = hello from {host.name}" in conf
            assert c.run(["systemctl", "is-active", "clusterctl-demo.service"]).stdout.strip() \
                == "active"
            assert c.run(["stat", "-c", "%a", "/srv/clusterctl-demo"]).stdout.strip() == "750"
            assert c.run(["sysctl", "-n", "net.core.somaxconn"]).stdout.strip() == "1024"
    second = _run(inv)
    assert not second.failed_hosts
    assert second.changed == 0, [r.to_dict() for r in second.results if r.status == "changed"]
    check = _run(inv, check=True)
    assert check.changed == 0


def test_drift_is_repaired_and_reported_with_diff(inv):
    host = next(iter(inv.hosts.values()))
    with Connection(host) as c:
        c.run(["sed", "-i", "s/greeting = .*/greeting = tampered/", "/srv/clusterctl-demo/demo.conf"])
    report = _run(inv, diff=True)
    changed = [r for r in report.results if r.status == "changed" and r.host == host.name]
    assert any("demo.conf" in (r.diff or "") and "-greeting = tampered" in r.diff
               for r in changed), [r.to_dict() for r in changed]
    assert all(r.changed == 0 for name, r in report.recap.items() if name != host.name)


def test_failing_host_is_isolated(inv, tmp_path):
    bad = list(inv.hosts)[-1]
    role = tmp_path / "roles" / "breaks"
    role.mkdir(parents=True)
    (role / "tasks.yaml").write_text(
        "- name: fails on one host\n"
        "  command: {argv: ['sh', '-c', 'echo boom >&2; exit 7']}\n"
        f"  when: inventory_hostname == '{bad}'\n"
        "- name: runs on the others\n"
        "  command: {argv: ['true']}\n")
    (tmp_path / "pb.yaml").write_text("- {hosts: all, roles: [breaks]}\n")
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    report = run_playbook(inv, plays, RunOptions())
    assert report.failed_hosts == [bad]
    msg = report.recap[bad].error
    assert "exit 7" in msg and "boom" in msg and "sh -c" in msg
    for name, recap in report.recap.items():
        if name != bad:
            assert recap.changed == 1 and recap.failed == 0
