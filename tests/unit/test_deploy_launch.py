"""deploy.launch without hosts: readiness (a real completion, failures with the journal),
the plays it builds (planned in check mode against stand-in hosts), host facts -> plan
input, hand-set parallel sizes."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from clusterctl.deploy import launch
from clusterctl.deploy.launch import (DeployFailed, build_plays, host_infos, node_gpus,
                                      override_plan, unit_was_active, wait_ready)
from clusterctl.deploy.layout import HostInfo, layout_llamacpp
from clusterctl.errors import InputError
from clusterctl.facts import FactRequest, Facts
from clusterctl.remote import RunResult
from localconn import CheckOnlyConnection


def three_hosts():
    return [HostInfo("n1", "10.0.0.1", True), HostInfo("n2", "10.0.0.2"),
            HostInfo("n3", "10.0.0.3")]


class FakeHost:
    """Answers the commands wait_ready sends: systemctl show, curl, journalctl."""

    def __init__(self, name, world):
        self.name, self.world = name, world

    def run(self, cmd, check=True, stdin=None, **kw):
        w = self.world
        if cmd[:2] == ["systemctl", "show"]:
            units = cmd[cmd.index("--") + 1:]
            blocks = []
            for u in units:
                st = w["units"].get((self.name, u), {"ActiveState": "active",
                                                      "SubState": "running", "NRestarts": "0"})
                blocks.append("\n".join(f"{k}={v}" for k, v in {"Id": u, **st}.items()))
            return RunResult("show", 0, "\n\n".join(blocks) + "\n", "")
        if cmd[0] == "journalctl":
            return RunResult("journal", 0, w["journal"].get(cmd[2], "") + "\n", "")
        if cmd[0] == "curl":
            url = cmd[-1]
            w["calls"].append(url)
            answer = w["answers"](url, stdin, w)
            code, body = answer
            return RunResult("curl", 0 if code else 7, f"{body}\n{code}", "" if code else
                             "curl: (7) Failed to connect")
        raise AssertionError(f"unexpected command {cmd}")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def world(answers, units=None, journal=None):
    return {"answers": answers, "units": units or {}, "journal": journal or {}, "calls": []}


def conns_for(dep, w):
    return {h: FakeHost(h, w) for h in set(dep.hosts) | {dep.head}}


MODELS_OK = (200, '{"data": [{"id": "tiny"}]}')
CHAT_OK = (200, '{"choices": [{"message": {"role": "assistant", "content": "blah blah"}}]}')


def test_ready_needs_models_then_a_real_completion():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)

    def answers(url, stdin, w):
        if url.endswith("/models"):
            n = sum(1 for c in w["calls"] if c.endswith("/models"))
            return (0, "") if n <= 2 else MODELS_OK         # refused twice, then listed
        body = json.loads(stdin)
        assert body["model"] == "tiny" and body["max_tokens"] > 0
        n = sum(1 for c in w["calls"] if c.endswith("/completions"))
        if n == 1:
            return 503, '{"error": {"message": "Loading model", "code": 503}}'
        return CHAT_OK
    w = world(answers)
    clock, logs = Clock(), []
    seconds, reply = wait_ready(dep, conns_for(dep, w), timeout=60, log=logs.append,
                                clock=clock, sleep=clock.sleep)
    assert reply == "blah blah" and seconds == 3.0
    assert any("lists tiny" in line for line in logs)
    assert any("chat completion answered" in line for line in logs)
    assert all(c.startswith("http://10.0.0.1:8000/v1/") for c in w["calls"])


def test_health_alone_is_not_ready_and_timeout_shows_the_journal():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)

    def answers(url, stdin, w):
        if url.endswith("/models"):
            return MODELS_OK
        return 200, '{"choices": [{"message": {"content": ""}}]}'   # answers, no text
    server = next(u for u in dep.units if u.kind == "llama-server")
    w = world(answers, journal={server.name: "llama-server: loading model..."})
    clock = Clock()
    with pytest.raises(DeployFailed) as exc:
        wait_ready(dep, conns_for(dep, w), timeout=10, clock=clock, sleep=clock.sleep)
    text = str(exc.value)
    assert "not ready after 10s" in text and "returned no text" in text
    assert "journal of clusterctl-tiny-llama-server.service on n1" in text
    assert "loading model..." in text


def test_a_crashing_rpc_server_fails_fast_with_its_journal():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)
    rpc = dep.units[1]
    w = world(lambda url, stdin, w: (0, ""),
              units={(rpc.host, rpc.name): {"ActiveState": "activating",
                                            "SubState": "auto-restart", "NRestarts": "3"}},
              journal={rpc.name: "Failed to bind to 10.0.0.3:50052"})
    clock = Clock()
    with pytest.raises(DeployFailed) as exc:
        wait_ready(dep, conns_for(dep, w), timeout=600, clock=clock, sleep=clock.sleep)
    assert f"{rpc.name} on n3 is not running (activating/auto-restart" in str(exc.value)
    assert "Failed to bind" in str(exc.value)
    assert clock.t < 10


def test_restarts_after_the_start_count_as_failure():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)
    server = dep.units[-1]
    state = {"ActiveState": "active", "SubState": "running", "NRestarts": "5"}
    w = world(lambda url, stdin, w: (0, ""), units={(server.host, server.name): state})
    clock = Clock()

    def sleep(s):
        clock.sleep(s)
        state["NRestarts"] = "6"                       # systemd restarted it once more
    with pytest.raises(DeployFailed, match="restarted 1 times"):
        wait_ready(dep, conns_for(dep, w), timeout=600, clock=clock, sleep=sleep)


def test_replicas_each_answer_and_so_does_the_load_balancer():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052, replicas=3)

    def answers(url, stdin, w):
        return MODELS_OK if url.endswith("/models") else CHAT_OK
    w = world(answers)
    clock = Clock()
    wait_ready(dep, conns_for(dep, w), timeout=60, clock=clock, sleep=clock.sleep)
    chats = sorted(c for c in w["calls"] if c.endswith("/chat/completions"))
    assert chats == sorted([f"http://10.0.0.{i}:{8000 + i}/v1/chat/completions"
                            for i in (1, 2, 3)] + ["http://10.0.0.1:8000/v1/chat/completions"])


# --------------------------------------------------------------------------- plays

SYSTEMCTL_SHIM = textwrap.dedent("""\
    #!/bin/sh
    # stand-in for `systemctl show -p ... -- UNITS`: every unit unknown, nothing running
    [ "$1" = show ] || exit 1
    seen=0
    for a in "$@"; do
      if [ "$seen" = 1 ]; then
        printf 'Id=%s\\nLoadState=not-found\\nActiveState=inactive\\nSubState=dead\\nUnitFileState=\\nFragmentPath=\\n\\n' "$a"
      fi
      [ "$a" = -- ] && seen=1
    done
    exit 0
    """)


@pytest.fixture
def check_hosts(tmp_path, monkeypatch):
    """An inventory of three hosts on this machine (lo), systemd answered by a shim."""
    from clusterctl import session as session_mod
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "systemctl").write_text(SYSTEMCTL_SHIM)
    (shim / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(session_mod, "Connection", lambda host, **kw: CheckOnlyConnection(host))
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  vars: {cluster: {network: lo}}\n  hosts:\n"
                   "    n1: {ansible_host: 127.0.0.1, role: head}\n"
                   "    n2: {ansible_host: 127.0.0.1, ansible_port: 2202}\n"
                   "    n3: {ansible_host: 127.0.0.1, ansible_port: 2203}\n")
    from clusterctl.inventory import load_inventory
    return load_inventory(inv)


def test_plays_order_rpc_servers_before_the_server():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052, rpc_on_head=True)
    plays = build_plays(dep)
    assert [(p.hosts, p.name) for p in plays] == [("n2,n3,n1", "tiny: rpc"),
                                                  ("n1", "tiny: llama-server"),
                                                  ("n1", "tiny: rpc-watch")]
    # the watchdog's program travels with the play (the node's python3 runs it)
    assert "def main(" in plays[-1].vars["rpc_watch_script"]
    assert plays[0].roles[0].name == "llamacpp_serve"
    assert set(plays[0].vars["deploy_units"]) == {"n1", "n2", "n3"}


def test_load_balancer_play(check_hosts):
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052, replicas=3)
    plays = build_plays(dep)
    assert [p.hosts for p in plays] == ["n1,n2,n3", "n1"]
    lb = plays[-1]
    assert lb.roles[0].name == "deploy_lb"
    assert [t.op for t in lb.roles[0].tasks] == ["package", "command", "file", "service"]
    assert "reload nginx" in lb.roles[0].handlers


def test_check_mode_plans_units_without_touching_hosts(check_hosts):
    from clusterctl.engine.runner import RunOptions, run_playbook
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)
    report = run_playbook(check_hosts, build_plays(dep),
                          RunOptions(check=True, diff=True, limit=dep.hosts))
    assert not report.failed_hosts, report.to_dict()
    changed = [(r.host, r.task.name, r.status) for r in report.results if r.task]
    assert ("n2", "RPC tensor cache folder", "changed") in changed
    assert ("n2", "unit file", "changed") in changed
    assert ("n1", "unit running", "changed") in changed
    assert ("n1", "RPC tensor cache folder", "skipped") in changed
    unit_diff = next(r.diff for r in report.results
                     if r.task and r.host == "n1" and r.task.name == "unit file")
    assert "ExecStart=/opt/clusterctl/llama.cpp/bin/llama-server --model /m.gguf" in unit_diff
    assert "--rpc 10.0.0.2:50052,10.0.0.3:50052" in unit_diff
    rpc_diff = next(r.diff for r in report.results
                    if r.task and r.host == "n3" and r.task.name == "unit file")
    assert 'Environment="LLAMA_CACHE=/var/cache/clusterctl/llama.cpp"' in rpc_diff
    assert "--host 10.0.0.3 --port 50052 --cache" in rpc_diff
    # exact: a unit this run starts is not also reported as restarted by its handler
    # (the real run does not restart it either)
    handlers = [r for r in report.results if r.handler and r.status == "changed"]
    assert handlers == [], [(r.host, r.task.name, r.message) for r in handlers]


def test_check_reports_exactly_what_the_run_does_about_handlers(check_hosts, tmp_path):
    """On a fresh host a unit file that notifies a restart and a service that starts
    the unit in the same run: the real run does not restart it, and --check must not
    report that it would (the plan is exact)."""
    from clusterctl.engine.roles import load_playbook
    from clusterctl.engine.runner import RunOptions, run_playbook
    role = tmp_path / "roles" / "svc"
    role.mkdir(parents=True)
    (role / "tasks.yaml").write_text(
        "- name: unit file\n"
        "  systemd_unit: {name: demo.service, content: \"[Service]\\nExecStart=/bin/true\\n\"}\n"
        "  notify: restart demo\n"
        "- name: unit running\n"
        "  service: {name: demo.service, state: started, enabled: true}\n")
    (role / "handlers.yaml").write_text(
        "- name: restart demo\n  service: {name: demo.service, state: restarted}\n")
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: n1, roles: [svc]}\n")
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    report = run_playbook(check_hosts, plays, RunOptions(check=True))
    assert not report.failed_hosts, report.to_dict()
    [handler] = [r for r in report.results if r.handler]
    assert handler.status == "ok" and "started in this run" in handler.message


def test_unit_was_active_reads_the_gathered_fact():
    fact = FactRequest("unit", "x.service")
    assert unit_was_active(Facts({fact: {"active_state": "active"}}), "x.service")
    assert not unit_was_active(Facts({fact: {"active_state": "inactive"}}), "x.service")
    assert not unit_was_active(Facts({}), "x.service")


# --------------------------------------------------------------------------- host facts

def test_host_infos_and_node_gpus_from_facts():
    from clusterctl.facts import GPU, Interface

    class H:
        def __init__(self, name, head, gpus=None, extra=None):
            self.name, self.is_head, self.gpus, self.address = name, head, gpus, "10.0.0.9"
            self.vars = {"cluster": {"network": "10.0.0.0/24"}, **(extra or {})}

    def facts(ip, gpus):
        iface = Interface(name="eth1", mtu=9000, state="UP", mac="00:11",
                          addresses=[(ip, 24)], kind="ether")
        return Facts({FactRequest("interfaces"): [iface], FactRequest("gpus"): gpus,
                      FactRequest("memory"): 64000, FactRequest("cpus"): 16})
    gpu = GPU(index=0, name="NVIDIA H100", memory_mib=81559, compute_cap="9.0")
    hs = [H("w", False, extra={"gpu_memory_mib": 40000}), H("h", True)]
    infos = host_infos(hs, {"w": facts("10.0.0.2", [gpu, gpu]), "h": facts("10.0.0.1", [gpu])})
    assert [(i.name, i.cluster_ip, i.gpus, i.gpu_memory_mib) for i in infos] == [
        ("h", "10.0.0.1", 1, 81559), ("w", "10.0.0.2", 2, 40000)]
    assert [n.count for n in node_gpus(infos)] == [1, 2]
    with pytest.raises(InputError, match="gpu_memory_mib"):
        node_gpus([HostInfo("x", "10.0.0.1", gpus=2)])


def test_override_plan_on_gpus():
    from clusterctl.deploy.planner import NodeGPUs, plan_model
    from test_deploy_layout import LLAMA_8B
    infos = [HostInfo(f"n{i}", f"10.0.0.{i}", i == 1, gpus=4, gpu_memory_mib=81559)
             for i in (1, 2)]
    plan = plan_model(LLAMA_8B, [NodeGPUs(h.name, 4, 81559) for h in infos])
    assert override_plan(plan, infos, None, None) is plan
    p = override_plan(plan, infos, 4, 2)
    assert (p.tensor_parallel_size, p.pipeline_parallel_size, p.nodes) == (4, 2, ["n1", "n2"])
    with pytest.raises(InputError, match="needs 16 GPUs"):
        override_plan(plan, infos, 8, 2)


def test_record_listing_parses_nul_separated_files():
    dep = layout_llamacpp("tiny", "t", "/m.gguf", "tiny", three_hosts(), port=8000,
                          rpc_port=50052)
    from clusterctl.deploy.layout import record_json

    class Head:
        name = "n1"

        def run(self, cmd, check=True, **kw):
            out = f"/etc/clusterctl/deployments/tiny.json\0{record_json(dep)}\0" \
                  f"/etc/clusterctl/deployments/bad.json\0garbage\0"
            return RunResult("cat", 0, out, "")
    [got] = launch.read_records(Head())
    assert got == dep




def test_hf_model_is_downloaded_to_the_head_then_spread_from_there(monkeypatch):
    from clusterctl.deploy.launch import DeployOptions, _model_info
    from clusterctl.deploy.models import resolve_model
    synced = []
    monkeypatch.setattr(launch, "sync_to",
                        lambda inv, ref, hosts, **kw: synced.append((ref.sync_source, hosts)))
    monkeypatch.setattr(launch, "remote_model_info", lambda conn, path: ("info", path))
    ref = resolve_model("Qwen/Qwen2-0.5B", "/opt/models", lambda p: False)
    info, _seconds, after = _model_info(None, ref, object(), "head1", DeployOptions(),
                                        lambda s: None, None)
    assert synced == [("hf:Qwen/Qwen2-0.5B", ["head1"])]
    assert info == ("info", "/opt/models/Qwen2-0.5B")
    assert (after.kind, after.sync_source) == ("head", None)
    assert launch._needs_spread(after, ["head1", "w1"], "head1")
    with pytest.raises(InputError, match="not downloaded"):
        _model_info(None, ref, type("C", (), {"run": lambda self, *a, **k: RunResult(
            "test", 1, "", "")})(), "head1", DeployOptions(check=True), lambda s: None, None)


def test_deploy_result_exit_code_follows_the_capability_convention():
    from clusterctl.deploy.launch import DeployResult
    from clusterctl.errors import EXIT_CHANGES_PENDING
    assert DeployResult(None, None, check=True, changed=2).exit_code == EXIT_CHANGES_PENDING
    assert DeployResult(None, None, check=True, changed=0).exit_code == 0
    assert DeployResult(None, None, check=False, changed=5).exit_code == 0
