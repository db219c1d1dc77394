"""Monitoring on the 3-node lab (CLUSTERCTL_TEST_LAB=monitoring): `bootstrap` with
`monitoring: {enabled: true}` installs node exporters and Prometheus from the lab mirror,
bound to the cluster IP; a second run changes nothing and --check agrees; every target
Prometheus knows (node exporters, Prometheus, Ray's metrics agents from Ray's file_sd) is
healthy; `deploy-model` registers a tiny llama.cpp deployment with Prometheus, and after a
few completions `clusterctl status` shows its generated tokens/s; `undeploy` removes the
registration.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clusterctl import monitoring as mon
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection
from labtools import lab_inventory_data, write_inventory

pytestmark = pytest.mark.lab

DEADLINE = 300          # seconds a condition may take before the test fails naming it


def cli(*args, timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterctl.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def bootstrap_json(path, *extra):
    proc = cli("bootstrap", path, "--json", *extra)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"bootstrap printed no JSON (exit {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}")
    return proc.returncode, report, proc.stderr


def run_on(host, cmd) -> str:
    with Connection(host) as c:
        return c.run(cmd, check=False).stdout


@pytest.fixture(scope="module")
def inventory_path(lab, tmp_path_factory) -> Path:
    """The lab's inventory with monitoring enabled (paths made absolute)."""
    data = lab_inventory_data(lab.inventory_path)
    data["all"]["vars"]["monitoring"] = {"enabled": True, "scrape_interval": "5s"}
    return write_inventory(tmp_path_factory.mktemp("monitoring") / "inventory.yaml", data)


@pytest.fixture(scope="module")
def inv(inventory_path):
    return load_inventory(inventory_path)


@pytest.fixture(scope="module")
def converged(inventory_path):
    code, report, err = bootstrap_json(inventory_path)
    assert code == 0, err[-4000:]
    return report


@pytest.fixture(scope="module")
def head_conn(converged, inv):
    with Connection(inv.head) as c:
        yield c


@pytest.fixture(scope="module")
def client(head_conn):
    return mon.PrometheusClient(mon.ssh_transport(head_conn))


def test_first_converge_installs_the_monitoring_services(converged, inv):
    done = {(r["host"], r["task"].split(" : ", 1)[-1]) for r in converged["results"]
            if r["status"] == "changed"}
    for host in inv.hosts.values():
        assert any(h == host.name and "node exporter package" in t for h, t in done), done
    assert any(h == inv.head.name and "Prometheus package" in t for h, t in done), done
    assert not any(h != inv.head.name and "Prometheus package" in t for h, t in done), done


def test_second_run_changes_nothing_and_check_agrees(converged, inventory_path):
    code, report, err = bootstrap_json(inventory_path)
    assert code == 0, err[-3000:]
    changed = [r for r in report["results"] if r["status"] == "changed"]
    assert changed == [], changed
    code, report, err = bootstrap_json(inventory_path, "--check")
    assert code == 0, err[-3000:]
    assert all(r["changed"] == 0 for r in report["recap"].values()), report["recap"]


def test_exporters_and_prometheus_listen_on_the_cluster_ip_only(converged, inv):
    for host in inv.hosts.values():
        listening = run_on(host, ["ss", "-Hltn"])
        ports = [ln.split()[3] for ln in listening.splitlines() if ln.strip()]
        wanted = (":9100", ":9090") if host.is_head else (":9100",)
        for port in wanted:
            mine = [p for p in ports if p.endswith(port)]
            assert mine == [host.address + port], (host.name, port, listening)


def _targets_until_healthy(client, want: dict[str, set[str]]) -> list[mon.Target]:
    """Poll /api/v1/targets until every target is up and each job has at least the
    wanted instances (Prometheus rereads Ray's file_sd file every 30 s: the Ray head
    updates it in place behind a symlink, which file watches do not see)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        targets = client.targets()
        have: dict[str, set[str]] = {}
        for t in targets:
            have.setdefault(t.job, set()).add(t.instance)
        missing = {j: sorted(w - have.get(j, set())) for j, w in want.items()
                   if w - have.get(j, set())}
        if not missing and not mon.unhealthy_targets(targets):
            return targets
        if time.monotonic() > deadline:
            pytest.fail(f"targets not all healthy after {DEADLINE}s: " + "; ".join(
                f"{t.job} {t.instance} {t.health} {t.last_error}" for t in targets)
                + f" (missing {missing})")
        time.sleep(3)


def test_every_target_is_healthy(client, inv):
    hosts = list(inv.hosts.values())
    head = inv.head
    want = {"prometheus": {f"{head.address}:{head.vars['monitoring']['prometheus_port']}"},
            "node": {f"{h.address}:{h.vars['monitoring']['node_exporter_port']}"
                     for h in hosts},
            # every node's Ray metrics agent, on its cluster IP
            "ray": {f"{h.address}:{h.vars['ray']['metrics_export_port']}" for h in hosts}}
    targets = _targets_until_healthy(client, want)
    nodes = sorted(t.labels.get("host") for t in targets if t.job == "node")
    assert nodes == sorted(inv.hosts)


# --------------------------------------------------------------------------- a deployment


def chat(endpoint: str, model: str, tokens: int = 16) -> dict:
    body = json.dumps({"model": model, "max_tokens": tokens, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Hello"}]}).encode()
    req = urllib.request.Request(endpoint + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def tiny_deployed(converged, inventory_path, head_conn, tmp_path_factory):
    """The tiny llama.cpp model (llama-server on the head, RPC on the workers); deploy-model
    itself writes the file_sd file Prometheus reads."""
    from clusterctl.deploy.tinymodels import find_vocab_gguf, write_tiny_gguf
    vocab = find_vocab_gguf()
    assert vocab is not None, ("no llama.cpp source tarball in ~/.cache/clusterctl/llamacpp "
                               "(bootstrap caches it)")
    gguf = write_tiny_gguf(tmp_path_factory.mktemp("models") / "mtiny.gguf", vocab)
    proc = cli("deploy-model", gguf, "-i", inventory_path, "--name", "mtiny", "--json",
               "--timeout", "600")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert "metrics: Prometheus scrapes mtiny" in proc.stderr, proc.stderr[-2000:]
    listed = head_conn.run("ls /etc/prometheus/clusterctl.d/", check=False).stdout.split()
    assert "mtiny.json" in listed, listed
    yield result
    proc = cli("undeploy", "-i", inventory_path, "mtiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    left = [p for p in mon.deployment_targets_paths("mtiny")
            if head_conn.run(["test", "-e", p], check=False).exit_code == 0]
    assert left == [], f"undeploy left the metrics registration: {left}"


def test_deployment_target_is_scraped_and_shows_tokens_per_second(client, tiny_deployed, inv,
                                                                   inventory_path):
    head = inv.head
    server = f"{head.address}:{tiny_deployed['endpoint'].rsplit(':', 1)[1].split('/')[0]}"
    targets = _targets_until_healthy(client, {"deployments": {server}})
    [mine] = [t for t in targets if t.labels.get("deployment") == "mtiny"]
    assert mine.instance == server
    assert mine.labels["backend"] == "llamacpp" and mine.labels["host"] == inv.head.name
    endpoint = tiny_deployed["endpoint"]
    deadline = time.monotonic() + DEADLINE
    sent = 0
    while True:
        for _ in range(3):
            answer = chat(endpoint, "mtiny")
            assert answer["usage"]["completion_tokens"] == 16
            sent += 1
        status = cli("status", "-i", inventory_path, "--json")      # what operators see
        data = json.loads(status.stdout)["metrics"]
        [row] = [r for r in data["deployments"] if r["name"] == "mtiny"] or [{}]
        if (row.get("tokens_per_s") or 0) > 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no tokens/s after {sent} completions and {DEADLINE}s: {data}")
        time.sleep(2)
    assert data["problems"] == [], data["problems"]
    assert row["waiting"] is not None and row["running"] is not None   # llama.cpp gauges
    text = cli("status", "-i", inventory_path).stdout
    print(text)
    assert "serving metrics" in text, text
    metrics_part = text.split("serving metrics", 1)[1]
    assert "tok/s" in metrics_part and "\nmtiny" in metrics_part, text
