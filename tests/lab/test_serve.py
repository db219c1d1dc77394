"""deploy-model for production use on the lab (3 CPU nodes), through the CLI: an API key
on every route of the nginx gateway (issue 15, item 1), and a rolling redeploy of two
replicas that a client in a loop never notices (item 3).

Uses test_deploy's lab bootstrap and tiny llama.cpp GGUF (its module fixtures), with a
copy of the lab inventory that has two API keys under `secrets:`.
"""
from __future__ import annotations

import contextlib
import json
import secrets as random_secrets
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import test_deploy as deploy_tests
from test_deploy import _mirror_has, as_json, cli, ok, run_on

# test_deploy's module fixtures: the lab's inventory as loaded, the tiny GGUF
inv = deploy_tests.inv
tiny_gguf = deploy_tests.tiny_gguf

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def inventory_path(lab):
    """The lab bootstrapped as test_deploy's fixture does it, without the Ray cluster
    check (llama.cpp deployments do not use Ray)."""
    ok(cli("bootstrap", lab.inventory_path, "--skip-verify", timeout=2400))
    yield lab.inventory_path
    cli("undeploy", "-i", lab.inventory_path, "--all")

KEYS = {"serve_key": random_secrets.token_hex(24), "serve_key2": random_secrets.token_urlsafe(24)}


@pytest.fixture(scope="module")
def keyed_inventory(lab, inventory_path, tmp_path_factory):
    """The lab's inventory with two API keys under secrets:."""
    if not _mirror_has(lab, "nginx"):
        pytest.skip("the lab mirror has no nginx (add it to lab/mirror_packages.yaml)")
    data = yaml.safe_load(Path(inventory_path).read_text())
    base = Path(inventory_path).parent
    v = data["all"]["vars"]
    v["ansible_ssh_private_key_file"] = str(base / v["ansible_ssh_private_key_file"])
    v["ssh_known_hosts_file"] = str(base / v["ssh_known_hosts_file"])
    v["secrets"] = dict(KEYS)
    path = tmp_path_factory.mktemp("serve") / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    yield path
    cli("undeploy", "-i", path, "--all")


def request(url: str, key: str | None = None, body: dict | None = None,
            timeout: float = 120) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def completion(model: str, prompt: str = "Hello") -> dict:
    return {"model": model, "max_tokens": 8, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt}]}


def base_url(endpoint: str) -> str:
    return endpoint[:-len("/v1")]


def assert_no_key(text: str, where: str) -> None:
    for name, key in KEYS.items():
        assert key not in text, f"the value of secrets.{name} appears in {where}"


@pytest.fixture(scope="module")
def keyed(keyed_inventory, tiny_gguf):
    proc = cli("deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinykey",
               "--port", "8500", "--api-key-secret", "serve_key", "--api-key-secret",
               "serve_key2", "--json", "--timeout", "600")
    assert_no_key(proc.stdout + proc.stderr, "deploy-model's output")
    return as_json(proc)


def test_unknown_secret_name_is_refused_naming_it(keyed_inventory, tiny_gguf):
    proc = cli("deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "nokey",
               "--api-key-secret", "no_such_key")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no_such_key" in proc.stderr and "Traceback" not in proc.stderr
    assert_no_key(proc.stderr, "the error")


def test_every_route_needs_the_key(keyed, inv):
    gateway = keyed["endpoint"]
    assert gateway == f"http://{inv.head.address}:8500/v1"
    assert keyed["load_balancer"]["host"] == inv.head.name      # a gateway for 1 replica
    assert keyed["api_key_secrets"] == ["serve_key", "serve_key2"]
    root = base_url(gateway)
    for url, body in ((gateway + "/chat/completions", completion("tinykey")),
                      (root + "/health", None), (root + "/metrics", None),
                      (gateway + "/models", None)):
        for key in (None, "wrong-" + KEYS["serve_key"], KEYS["serve_key"].upper()):
            code, text = request(url, key, body)
            assert code == 401, (url, code, text[:300])
    for key in KEYS.values():
        code, text = request(gateway + "/chat/completions", key, completion("tinykey"))
        assert code == 200, text[:500]
        answer = json.loads(text)
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] == 8
    code, text = request(root + "/metrics", KEYS["serve_key2"])
    assert code == 200 and "llamacpp:" in text, text[:500]


def test_the_backend_itself_wants_the_key(keyed):
    [server] = [u for u in keyed["units"] if u["kind"] == "llama-server"]
    backend = f"http://{server['bind']}/v1"
    assert server["bind"] != keyed["load_balancer"]["endpoint"].split("/")[2]
    code, _text = request(backend + "/chat/completions", None, completion("tinykey"))
    assert code == 401
    code, _text = request(backend + "/chat/completions", KEYS["serve_key"],
                          completion("tinykey"))
    assert code == 200
    # a scraper on the cluster network reads the backend's metrics with the key
    code, text = request(f"http://{server['bind']}/metrics", KEYS["serve_key"])
    assert code == 200 and "llamacpp:" in text


def test_the_key_is_nowhere_to_be_read(keyed, keyed_inventory, inv, tiny_gguf):
    again = cli("deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinykey",
                "--port", "8500", "--api-key-secret", "serve_key", "--api-key-secret",
                "serve_key2", "-vv", "--diff", "--timeout", "600")
    ok(again)
    assert_no_key(again.stdout + again.stderr, "deploy-model -vv --diff")
    check = cli("deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinykey",
                "--port", "8500", "--api-key-secret", "serve_key", "--check", "--diff",
                "-vv", "--json")
    assert_no_key(check.stdout + check.stderr, "deploy-model --check --diff --json")
    assert check.returncode == 3           # one key less: the key files would change
    status = cli("status", "-i", keyed_inventory, "--json", "-v")
    assert_no_key(status.stdout + status.stderr, "status")
    [row] = [r for r in json.loads(ok(status).stdout)["deployments"] if r["name"] == "tinykey"]
    assert row["health"] == "ready", row
    for host in inv.hosts.values():
        units = run_on(host, "systemctl cat 'clusterctl-tinykey-*' 2>/dev/null; "
                             "cat /etc/systemd/system/clusterctl-tinykey-* 2>/dev/null")
        assert_no_key(units, f"the unit files on {host.name}")
        assert_no_key(run_on(host, ["ps", "-eo", "args"]), f"ps on {host.name}")
        assert_no_key(run_on(host, "cat /etc/clusterctl/deployments/*.json 2>/dev/null"),
                      f"the records on {host.name}")
    head = inv.head
    assert_no_key(run_on(head, ["cat", "/etc/nginx/conf.d/clusterctl-tinykey.conf"]),
                  "the nginx site")
    modes = run_on(head, ["stat", "-c", "%a %U %n", "/etc/nginx/clusterctl",
                          "/etc/nginx/clusterctl/tinykey.auth.conf", "/etc/clusterctl/keys",
                          "/etc/clusterctl/keys/tinykey.keys"]).split("\n")
    assert [m.split()[:2] for m in modes if m] == [["700", "root"], ["600", "root"],
                                                   ["700", "root"], ["600", "root"]], modes


def test_undeploy_removes_the_keys(keyed, keyed_inventory, inv):
    ok(cli("undeploy", "tinykey", "-i", keyed_inventory))
    head = inv.head
    left = run_on(head, "ls /etc/nginx/clusterctl /etc/clusterctl/keys 2>/dev/null")
    assert "tinykey" not in left
    assert "clusterctl-tinykey" not in run_on(head, ["ls", "/etc/nginx/conf.d"])


# --------------------------------------------------------------------------- rolling


def _client_loop(url: str, key: str, model: str, stop: threading.Event, results: list):
    while not stop.is_set():
        try:
            code, text = request(url, key, completion(model), timeout=120)
        except Exception as exc:       # noqa: BLE001 - any failure counts
            code, text = 0, repr(exc)
        results.append((code, text[:200]))


@contextlib.contextmanager
def clients_sending(url: str, key: str | None, model: str, count: int = 1):
    """`count` clients sending completions to `url` in a loop while the block runs; yields
    the list their results go to: (HTTP status or 0, the first 200 characters)."""
    stop, results = threading.Event(), []
    clients = [threading.Thread(target=_client_loop, daemon=True,
                                args=(url, key, model, stop, results)) for _ in range(count)]
    for t in clients:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=180)


def test_two_replicas_roll_without_a_failed_request(keyed_inventory, tiny_gguf, inv):
    args = ["deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinyroll",
            "--port", "8600", "--replicas", "2", "--api-key-secret", "serve_key",
            "--json", "--timeout", "600"]
    first = as_json(cli(*args, "--max-model-len", "1024"))
    try:
        url = first["endpoint"] + "/chat/completions"
        with clients_sending(url, KEYS["serve_key"], "tinyroll", 2) as results:
            rolled = cli(*args, "--max-model-len", "1536")
        result = as_json(rolled)
        assert "rolling" in rolled.stderr, rolled.stderr[-3000:]
        failed = [r for r in results if r[0] != 200]
        assert results and not failed, (len(results), failed[:5])
        record = json.loads(run_on(inv.head, ["cat",
                                              "/etc/clusterctl/deployments/tinyroll.json"]))
        servers = [u for u in record["units"] if u["kind"] == "llama-server"]
        assert len(servers) == 2
        for u in servers:
            assert u["argv"][u["argv"].index("--ctx-size") + 1] == "1536"
        assert result["reply"]
    finally:
        ok(cli("undeploy", "tinyroll", "-i", keyed_inventory))


def test_a_replica_that_never_answers_stops_the_roll_and_the_rest_serve(keyed_inventory,
                                                                        tiny_gguf, inv):
    """A new config that cannot start (group 0's RPC server on sshd's port): the roll
    stops at group 0 with exit 1 naming it, group 0 stays out of the gateway, and a
    client in a loop through the gateway sees no failed request (group 1 serves)."""
    args = ["deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinyfail",
            "--port", "8700", "--replicas", "2", "--api-key-secret", "serve_key",
            "--timeout", "300"]
    first = as_json(cli(*args, "--rpc-port", "50062", "--json"))
    try:
        groups = {g["hosts"][0]: g for g in first["groups"]}
        assert len(groups) == 2 and len(first["groups"][0]["hosts"]) == 2   # RPC in group 0
        url = first["endpoint"] + "/chat/completions"
        with clients_sending(url, KEYS["serve_key"], "tinyfail") as results:
            broken = cli(*args, "--rpc-port", "22")
        assert broken.returncode == 1, broken.stdout + broken.stderr[-3000:]
        assert "rolling stopped" in broken.stderr and "group 0" in broken.stderr
        assert "Traceback" not in broken.stderr
        failed = [r for r in results if r[0] != 200]
        assert results and not failed, (len(results), failed[:5])
        code, text = request(url, KEYS["serve_key"], completion("tinyfail"))
        assert code == 200, text[:300]
        conf = run_on(inv.head, ["cat", "/etc/nginx/conf.d/clusterctl-tinyfail.conf"])
        down = [ln.split()[1] for ln in conf.splitlines() if ln.strip().endswith("down;")]
        assert down == [first["groups"][0]["endpoint"].split("/")[2]], conf
    finally:
        ok(cli("undeploy", "tinyfail", "-i", keyed_inventory))


# --------------------------------------------------------------------------- one replica


def _record(inv, name: str) -> dict:
    return json.loads(run_on(inv.head, ["cat", f"/etc/clusterctl/deployments/{name}.json"]))


def _unit_files(inv, name: str) -> dict[str, list[str]]:
    """host -> the clusterctl-NAME-* unit files installed there."""
    out = {}
    for host in inv.hosts.values():
        text = run_on(host, f"ls /etc/systemd/system | grep '^clusterctl-{name}-' || true")
        out[host.name] = sorted(text.split())
    return out


def _ctx(record: dict) -> str:
    [server] = [u for u in record["units"] if u["kind"] == "llama-server"]
    return server["argv"][server["argv"].index("--ctx-size") + 1]


def _status_row(inventory, name: str) -> dict:
    proc = cli("status", "-i", inventory, "--json")
    return next(r for r in json.loads(proc.stdout)["deployments"] if r["name"] == name)


def test_one_replica_redeploys_beside_the_old_one_without_a_failed_request(
        keyed_inventory, tiny_gguf, inv):
    """One replica behind the gateway, a client through the endpoint in a loop: a
    redeploy with changed flags starts the new version beside the old one (slot b:
    own units and ports), switches the gateway and stops the old one; a second one
    goes back to the first slot. No request fails; the record, status and the hosts
    show exactly one version."""
    args = ["deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinyone",
            "--port", "8800", "--api-key-secret", "serve_key", "--json", "--timeout", "600"]
    first = as_json(cli(*args, "--max-model-len", "1024"))
    try:
        assert len(first["groups"]) == 1 and first["load_balancer"]
        before = _unit_files(inv, "tinyone")
        url = first["endpoint"] + "/chat/completions"
        with clients_sending(url, KEYS["serve_key"], "tinyone", 2) as results:
            beside = cli(*args, "--max-model-len", "1536")
            counted = len(results)
            back = cli(*args, "--max-model-len", "1024")
        moved, returned = as_json(beside), as_json(back)
        for proc in (beside, back):
            assert "starts beside the old one" in proc.stderr, proc.stderr[-3000:]
            assert "does not answer while" not in proc.stderr, proc.stderr[-3000:]
        failed = [r for r in results if r[0] != 200]
        assert counted and len(results) > counted and not failed, (len(results), failed[:5])
        assert moved["endpoint"] == returned["endpoint"] == first["endpoint"]
        assert [u["name"] for u in moved["units"] if u["kind"] == "llama-server"] == [
            "clusterctl-tinyone-llama-server-b.service"]
        assert moved["groups"][0]["endpoint"] != first["groups"][0]["endpoint"]
        assert returned["groups"][0]["endpoint"] == first["groups"][0]["endpoint"]
        record = _record(inv, "tinyone")
        assert record["slot"] == "" and _ctx(record) == "1024"
        assert _unit_files(inv, "tinyone") == before        # no unit of slot b is left
        row = _status_row(keyed_inventory, "tinyone")
        assert row["health"] == "ready" and len(row["groups"]) == 1, row
    finally:
        ok(cli("undeploy", "tinyone", "-i", keyed_inventory))
    assert not any(_unit_files(inv, "tinyone").values())
    assert "tinyone" not in run_on(inv.head, "ls /etc/clusterctl/keys 2>/dev/null")


def test_one_replica_whose_new_version_cannot_start_keeps_the_old_one_serving(
        keyed_inventory, tiny_gguf, inv):
    """The new version's RPC server on a worker cannot bind (its port, the RPC port of
    slot b, is taken there): the command exits 1 naming why, the new units are removed,
    and the old version never stops answering through the gateway."""
    from clusterctl.deploy.layout import SLOT_PORT_OFFSET
    args = ["deploy-model", tiny_gguf, "-i", keyed_inventory, "--name", "tinyonefail",
            "--port", "8900", "--rpc-port", "50072", "--api-key-secret", "serve_key",
            "--timeout", "300"]
    first = as_json(cli(*args, "--max-model-len", "1024", "--json"))
    worker = inv.hosts[first["groups"][0]["hosts"][1]]
    blocker = "hd-port-blocker"
    taken = 50072 + SLOT_PORT_OFFSET
    try:
        ip = next(u["bind"] for u in first["units"] if u["host"] == worker.name
                  and u["kind"] == "rpc").rsplit(":", 1)[0]
        run_on(worker, ["systemd-run", f"--unit={blocker}", "python3", "-m", "http.server",
                        "--bind", ip, str(taken)])
        url = first["endpoint"] + "/chat/completions"
        with clients_sending(url, KEYS["serve_key"], "tinyonefail") as results:
            broken = cli(*args, "--max-model-len", "1536")
        assert broken.returncode == 1, broken.stdout + broken.stderr[-3000:]
        assert "did not become ready beside the old one" in broken.stderr, broken.stderr
        assert "old one keeps serving" in broken.stderr and "Traceback" not in broken.stderr
        assert "clusterctl-tinyonefail-rpc-b.service" in broken.stderr   # names the unit
        failed = [r for r in results if r[0] != 200]
        assert results and not failed, (len(results), failed[:5])
        code, text = request(url, KEYS["serve_key"], completion("tinyonefail"))
        assert code == 200, text[:300]
        record = _record(inv, "tinyonefail")
        assert record["slot"] == "" and _ctx(record) == "1024"
        files = _unit_files(inv, "tinyonefail")
        assert not [f for names in files.values() for f in names if "-b.service" in f], files
        assert _status_row(keyed_inventory, "tinyonefail")["health"] == "ready"
    finally:
        run_on(worker, ["systemctl", "stop", blocker])
        ok(cli("undeploy", "tinyonefail", "-i", keyed_inventory))


def test_one_replica_without_a_gateway_gets_one_then_redeploys_beside(
        lab, inventory_path, tiny_gguf, inv):
    """A single replica deployed without a key has no gateway: its first changed
    redeploy puts one on its address (a few seconds without an answer, said so), the
    next ones switch without a failed request."""
    if not _mirror_has(lab, "nginx"):
        pytest.skip("the lab mirror has no nginx (add it to lab/mirror_packages.yaml)")
    args = ["deploy-model", tiny_gguf, "-i", inventory_path, "--name", "tinyconv",
            "--port", "8950", "--json", "--timeout", "600"]
    first = as_json(cli(*args, "--max-model-len", "1024"))
    try:
        assert first["load_balancer"] is None
        converted = cli(*args, "--max-model-len", "1536")
        moved = as_json(converted)
        assert "has no gateway yet" in converted.stderr, converted.stderr[-3000:]
        assert moved["endpoint"] == first["endpoint"] and moved["load_balancer"]
        assert moved["load_balancer"]["host"] == first["groups"][0]["hosts"][0]
        url = first["endpoint"] + "/chat/completions"
        with clients_sending(url, None, "tinyconv") as results:
            again = cli(*args, "--max-model-len", "1024")
        assert "starts beside the old one" in ok(again).stderr
        failed = [r for r in results if r[0] != 200]
        assert results and not failed, (len(results), failed[:5])
        unchanged = as_json(cli(*args, "--max-model-len", "1024"))   # the gateway stays
        assert unchanged["changed"] == 0 and unchanged["load_balancer"]
    finally:
        ok(cli("undeploy", "tinyconv", "-i", inventory_path))
    assert "clusterctl-tinyconv" not in run_on(inv.head, ["ls", "/etc/nginx/conf.d"])
    assert not any(_unit_files(inv, "tinyconv").values())
