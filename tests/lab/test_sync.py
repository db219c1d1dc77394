"""sync-model against real lab nodes: fresh sync, unchanged re-sync, a corrupted file found
and repaired, an interrupted sync resumed, a full disk on one node, a relay killed
mid-stream, an unreachable node, a node as the source, a single file, the SSH tunnel
fallback, and a Hugging Face source (a stand-in huggingface_hub: the lab is offline)."""
from __future__ import annotations

import hashlib
import json
import os
import shlex

import pytest

from clusterctl import lab as labapi
from clusterctl.inventory import load_inventory
from clusterctl.remote import Connection
from clusterctl.sync import sync_model
from clusterctl.sync.report import FAILED, SYNCED, UNCHANGED, to_json

pytestmark = pytest.mark.lab
MB = 1_000_000
PREFIX = "synctest-"            # every model these tests put under models_dir


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def inv(lab):
    inventory = load_inventory(lab.inventory_path)
    yield inventory
    for host in inventory.hosts.values():              # leave the nodes as we found them
        with Connection(host) as c:
            models = host.vars["models_dir"]
            c.run(f"for d in {shlex.quote(models)}/{PREFIX}*; do umount \"$d\" 2>/dev/null; "
                  "done; rm -rf " + shlex.quote(models) + f"/{PREFIX}* "
                  f"{shlex.quote(models)}/.clusterctl-sync /tmp/clusterctl-sync-*", check=False)


def _write(path, data: bytes, mtime_ns: int = 1_700_000_000_000_000_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model folder: config and tokenizer first, then two weight shards (~40 MB)."""
    root = tmp_path_factory.mktemp("models") / "tiny-model"
    _write(root / "config.json", b'{"architectures": ["LlamaForCausalLM"]}\n')
    _write(root / "tokenizer" / "tokenizer.json", os.urandom(300_000))
    _write(root / "model-00001-of-00002.safetensors", os.urandom(25 * MB))
    _write(root / "model-00002-of-00002.safetensors", os.urandom(15 * MB))
    return root


def _local_sums(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _remote_sums(host, dest) -> dict[str, str]:
    with Connection(host) as c:
        res = c.run(f"cd {shlex.quote(dest)} && find . -path ./.clusterctl-sync -prune -o "
                    "-type f -print0 | xargs -0 -r sha256sum", check=False)
    out = {}
    for line in res.stdout.splitlines():
        digest, path = line.split(maxsplit=1)
        out[path.removeprefix("./")] = digest
    return out


def _run(host, cmd, **kw):
    with Connection(host) as c:
        return c.run(cmd, **kw)


def _dest(inv, name):
    return f"{next(iter(inv.hosts.values())).vars['models_dir']}/{name}"


def _assert_everywhere(inv, model_root, name, hosts=None):
    want = _local_sums(model_root)
    for host in hosts or inv.hosts.values():
        assert _remote_sums(host, _dest(inv, name)) == want, host.name
        st = _run(host, ["stat", "-c", "%a %Y", f"{_dest(inv, name)}/config.json"]).stdout
        assert st.split() == ["644", "1700000000"], host.name
        assert _run(host, ["test", "-e", f"{_dest(inv, name)}/.clusterctl-sync"],
                    check=False).exit_code != 0, f"staging folder left on {host.name}"


def _no_agent_left(inv):
    for host in inv.hosts.values():
        res = _run(host, "ls -d /tmp/clusterctl-sync-* 2>/dev/null; "
                         "ps -eo args | grep -c '^python3 /tmp/clusterctl-sync-'", check=False)
        lines = res.stdout.split()
        assert lines == ["0"], f"{host.name}: {res.stdout}"


def test_fresh_sync_puts_identical_files_everywhere(inv, model):
    name = PREFIX + "fresh"
    report = sync_model(inv, str(model), name)
    assert report.ok, to_json(report)
    assert report.destination == _dest(inv, name)
    assert {r.state for r in report.nodes.values()} == {SYNCED}
    assert all(r.files_sent == 4 and r.check == "sha256" for r in report.nodes.values())
    # one copy left the controller; the nodes forwarded the rest
    assert report.controller_bytes == report.manifest.total_bytes
    assert len(report.rounds) == 1 and report.rounds[0].chain.count("->") == len(inv.hosts)
    assert report.manifest.complete
    _assert_everywhere(inv, model, name)
    _no_agent_left(inv)
    data = json.loads(to_json(report))
    assert data["ok"] and data["files"] == 4 and len(data["manifest"]["files"]) == 4


def test_unchanged_resync_sends_nothing(inv, model):
    name = PREFIX + "fresh"
    report = sync_model(inv, str(model), name)
    assert report.ok
    assert {r.state for r in report.nodes.values()} == {UNCHANGED}
    assert report.rounds == [] and report.controller_bytes == 0
    assert all(r.bytes_received == 0 for r in report.nodes.values())


def test_corrupted_file_is_found_by_verify_and_repaired(inv, model):
    name = PREFIX + "fresh"
    victim = list(inv.hosts.values())[1]
    shard = f"{_dest(inv, name)}/model-00001-of-00002.safetensors"
    # flip bytes in the middle, keep size and mtime: only a hash can tell
    _run(victim, f"printf CORRUPT | dd of={shard} bs=1 seek=1000000 conv=notrunc status=none"
                 f" && touch -d @1700000000 {shard}")
    assert sync_model(inv, str(model), name).ok          # the cheap check cannot see it
    report = sync_model(inv, str(model), name, verify=True)
    assert report.ok, to_json(report)
    assert report.nodes[victim.name].state == SYNCED
    assert report.nodes[victim.name].files_sent == 1
    assert report.nodes[victim.name].check == "sha256"
    others = [n for n in inv.hosts if n != victim.name]
    assert all(report.nodes[n].state == UNCHANGED and report.nodes[n].check == "sha256"
               for n in others)
    # a node that holds the model fed the repair; the controller's link was spared
    assert report.controller_bytes == 0
    assert report.rounds[0].chain.split(" -> ")[0] in others
    _assert_everywhere(inv, model, name)


def test_truncated_file_is_found_without_verify(inv, model):
    name = PREFIX + "fresh"
    victim = list(inv.hosts.values())[2]
    _run(victim, ["truncate", "-s", "1000", f"{_dest(inv, name)}/tokenizer/tokenizer.json"])
    report = sync_model(inv, str(model), name)
    assert report.ok and report.nodes[victim.name].files_sent == 1
    _assert_everywhere(inv, model, name)


def test_interrupted_sync_resumes_without_resending_complete_files(inv, model):
    name = PREFIX + "resume"
    seen = []

    def stop_midway(p):
        seen.append(p)
        if p.phase == "transferring" and p.done > 20 * MB:
            raise Boom(p.done)

    with pytest.raises(Boom):
        sync_model(inv, str(model), name, progress=stop_midway, bwlimit=10 * MB)
    _no_agent_left(inv)
    big = f"{_dest(inv, name)}/model-00001-of-00002.safetensors"
    for host in inv.hosts.values():
        # the file in flight is not at its final path; what arrived is kept aside
        assert _run(host, ["test", "-e", big], check=False).exit_code != 0
        parts = _run(host, f"du -cb {_dest(inv, name)}/.clusterctl-sync/*.part | tail -1",
                     check=False).stdout.split()
        assert parts and int(parts[0]) > 5 * MB, host.name
        assert _run(host, ["test", "-f", f"{_dest(inv, name)}/config.json"],
                    check=False).exit_code == 0
    report = sync_model(inv, str(model), name)
    assert report.ok, to_json(report)
    for r in report.nodes.values():
        assert r.state == SYNCED
        assert r.files_sent == 3          # config.json (first in the stream) was complete
        assert r.bytes_resumed > 5 * MB
        assert r.bytes_received < 40 * MB - 5 * MB
    assert report.rounds[0].stream_bytes < report.manifest.total_bytes - 5 * MB
    _assert_everywhere(inv, model, name)


def test_full_disk_on_one_node_fails_that_node_only(inv, model):
    name = PREFIX + "disk"
    full = list(inv.hosts.values())[-1]
    dest = _dest(inv, name)
    _run(full, f"mkdir -p {dest} && mount -t tmpfs -o size=20M tmpfs {dest}")
    try:
        report = sync_model(inv, str(model), name)
        assert not report.ok and report.failed == [full.name]
        assert report.exit_code == 1
        r = report.nodes[full.name]
        assert r.state == FAILED
        assert "not enough disk space" in r.error and full.name in r.error
        assert str(report.manifest.total_bytes) in r.error and "20971520" in r.error
        others = [h for h in inv.hosts.values() if h.name != full.name]
        assert all(report.nodes[h.name].state == SYNCED for h in others)
        _assert_everywhere(inv, model, name, hosts=others)
        assert _run(full, f"ls -A {dest}").stdout.strip() == ""    # nothing written there
    finally:
        _run(full, f"umount {dest}; rm -rf {dest}", check=False)


def test_relay_killed_mid_stream_is_retried_and_the_others_finish(inv, model):
    name = PREFIX + "killed"
    hosts = list(inv.hosts.values())
    middle = hosts[1]
    killed = []

    def kill_middle(p):
        if p.phase == "transferring" and p.done > 10 * MB and not killed:
            res = _run(middle, "kill -9 $(cat /tmp/clusterctl-sync-*-" + middle.name
                       + "/relay.pid)", check=False)
            killed.append(res.exit_code)

    report = sync_model(inv, str(model), name, progress=kill_middle, bwlimit=20 * MB)
    assert killed == [0]
    assert report.ok, to_json(report)
    assert len(report.rounds) == 2                      # the cut-off nodes went again
    assert middle.name in report.rounds[1].chain
    _assert_everywhere(inv, model, name)


def test_unreachable_node_is_named_and_the_others_sync(lab, inv, model):
    name = PREFIX + "down"
    down = list(inv.hosts.values())[-1]
    labapi.fault(lab.name, down.name, "down")
    try:
        report = sync_model(inv, str(model), name)
    finally:
        labapi.heal(lab.name, down.name)
    assert report.failed == [down.name]
    assert "timed out" in report.nodes[down.name].error or \
        "connect" in report.nodes[down.name].error
    others = [h for h in inv.hosts.values() if h.name != down.name]
    _assert_everywhere(inv, model, name, hosts=others)


def test_node_path_as_source(inv, model):
    """NODE:/path: the node streams its copy; it also receives one at models_dir/NAME."""
    src_name = PREFIX + "fresh"
    head = inv.head
    report = sync_model(inv, f"{head.name}:{_dest(inv, src_name)}", PREFIX + "copy")
    assert report.ok, to_json(report)
    assert report.controller_bytes == 0
    assert report.rounds[0].chain.startswith(f"{head.name} -> {head.name} -> ")
    _assert_everywhere(inv, model, PREFIX + "copy")


def test_single_file_model(inv, tmp_path):
    gguf = tmp_path / "tiny.gguf"
    _write(gguf, b"GGUF" + os.urandom(2 * MB))
    name = PREFIX + "tiny.gguf"
    report = sync_model(inv, str(gguf), name)
    assert report.ok and report.manifest.kind == "file"
    want = hashlib.sha256(gguf.read_bytes()).hexdigest()
    for host in inv.hosts.values():
        out = _run(host, ["sha256sum", _dest(inv, name)]).stdout.split()[0]
        assert out == want


def test_controller_outside_the_cluster_network_tunnels_through_ssh(inv, model,
                                                                     monkeypatch):
    """The controller cannot open a TCP connection to the first relay: its stream goes
    through that node's SSH connection instead."""
    from clusterctl.sync import nodes as sync_nodes

    def unreachable(*args, **kw):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(sync_nodes.socket, "create_connection", unreachable)
    name = PREFIX + "tunnel"
    report = sync_model(inv, str(model), name)
    assert report.ok, to_json(report)
    assert report.controller_bytes == report.manifest.total_bytes
    _assert_everywhere(inv, model, name)


FAKE_HUB = '''
import json, os
def _log(**kw):
    with open("/tmp/fake-hub.log", "a") as fh:
        fh.write(json.dumps(kw) + "\\n")
class HfApi:
    def model_info(self, repo, revision=None, files_metadata=False):
        raise RuntimeError("offline")
def snapshot_download(repo_id, revision=None, local_dir=None):
    _log(repo_id=repo_id, revision=revision, local_dir=local_dir,
         token=os.environ.get("HF_TOKEN"))
    os.makedirs(local_dir, exist_ok=True)
    with open(os.path.join(local_dir, "config.json"), "w") as fh:
        fh.write('{"model_type": "llama"}\\n')
    with open(os.path.join(local_dir, "model.safetensors"), "wb") as fh:
        fh.write(bytes(range(256)) * 40000)
    os.makedirs(os.path.join(local_dir, ".cache", "huggingface"), exist_ok=True)
    with open(os.path.join(local_dir, ".cache", "huggingface", "meta"), "w") as fh:
        fh.write("hub metadata")
    return local_dir
'''
HF_VENV = "/opt/clusterctl-synctest/venv"
HF_TOKEN = "hf_labTestTokenValue123"


@pytest.fixture
def hf_inv(inv):
    """python.venv of every host -> a venv made by hand (pyvenv.cfg + python symlink)
    whose huggingface_hub is a stand-in: the lab has no internet."""
    head = inv.head
    site = f"{HF_VENV}/lib/python3/site-packages"
    _run(head, f"mkdir -p {HF_VENV}/bin {site}/huggingface_hub && "
               f"ln -sf /usr/bin/python3 {HF_VENV}/bin/python && "
               f"printf 'home = /usr/bin\\ninclude-system-site-packages = false\\n' "
               f"> {HF_VENV}/pyvenv.cfg && "
               "v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])') && "
               f"ln -sfn python3 {HF_VENV}/lib/python$v && rm -f /tmp/fake-hub.log")
    with Connection(head) as c:
        c.put(FAKE_HUB.encode(), f"{site}/huggingface_hub/__init__.py")
    saved = {n: h.vars.get("python") for n, h in inv.hosts.items()}
    for h in inv.hosts.values():
        h.vars["python"] = dict(h.vars.get("python") or {}, venv=HF_VENV)
    yield inv
    for n, h in inv.hosts.items():
        h.vars["python"] = saved[n]
    _run(head, "rm -rf /opt/clusterctl-synctest /tmp/fake-hub.log", check=False)


def test_hugging_face_repo_is_downloaded_on_the_head_then_fanned_out(hf_inv, monkeypatch):
    inv = hf_inv
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    name = PREFIX + "hf"
    report = sync_model(inv, "hf:test-org/tiny-llama@main", name)
    assert report.ok, to_json(report)
    log = [json.loads(line) for line in
           _run(inv.head, ["cat", "/tmp/fake-hub.log"]).stdout.splitlines()]
    assert log == [{"repo_id": "test-org/tiny-llama", "revision": "main",
                    "local_dir": _dest(inv, name), "token": HF_TOKEN}]
    assert HF_TOKEN not in to_json(report)
    assert report.nodes[inv.head.name].check == "source"
    assert sorted(report.manifest.files) == ["config.json", "model.safetensors"]
    assert report.controller_bytes == 0
    want = hashlib.sha256(bytes(range(256)) * 40000).hexdigest()
    for host in inv.hosts.values():
        sums = _remote_sums(host, _dest(inv, name))
        assert sums["model.safetensors"] == want, host.name
        assert ".cache/huggingface/meta" not in sums or host.name == inv.head.name


def test_hugging_face_without_the_hub_package_says_what_to_install(hf_inv):
    inv = hf_inv
    _run(inv.head, f"rm -rf {HF_VENV}/lib/python3/site-packages/huggingface_hub")
    from clusterctl.errors import HostError
    with pytest.raises(HostError, match="pip install huggingface_hub"):
        sync_model(inv, "test-org/other-model", PREFIX + "hf2")


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """Two 30 MB shards: long enough at a few MB/s to cut a node in the middle."""
    root = tmp_path_factory.mktemp("models") / "big-model"
    _write(root / "config.json", b'{"architectures": ["LlamaForCausalLM"]}\n')
    _write(root / "model-00001-of-00002.safetensors", os.urandom(30 * MB))
    _write(root / "model-00002-of-00002.safetensors", os.urandom(30 * MB))
    return root


def _sync_with_deadline(deadline_s, *args, on_hang=None, **kw):
    """sync_model in a thread; a run still going after `deadline_s` fails the test (after
    `on_hang`, which should let it end) instead of hanging it."""
    import threading
    box = {}

    def target():
        try:
            box["report"] = sync_model(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        if on_hang is not None:
            on_hang()
        t.join(120)
        pytest.fail(f"sync_model still running after {deadline_s}s")
    if "error" in box:
        raise box["error"]
    return box["report"]


def test_node_down_mid_sync_is_named_and_the_chain_goes_around_it(lab, inv, big_model):
    """The middle node of the chain goes down while it receives: it is named with what it
    was doing, the others finish through a chain without it (exit 1), and a run after
    the node is back resumes what it holds and removes what the cut run left there."""
    name = PREFIX + "nodedown"
    hosts = list(inv.hosts.values())
    victim = hosts[1]
    downed = []

    def cut_victim(p):
        if p.phase == "transferring" and p.done > 15 * MB and not downed:
            labapi.fault(lab.name, victim.name, "down")
            downed.append(True)

    try:
        report = _sync_with_deadline(300, inv, str(big_model), name, progress=cut_victim,
                                     bwlimit=5 * MB,
                                     on_hang=lambda: labapi.heal(lab.name, victim.name))
    finally:
        if downed:
            labapi.heal(lab.name, victim.name)
    assert downed
    assert report.failed == [victim.name], to_json(report)
    assert report.exit_code == 1
    err = report.nodes[victim.name].error
    assert "stopped answering" in err and "while receiving" in err, err
    others = [h for h in hosts if h.name != victim.name]
    assert all(report.nodes[h.name].state == SYNCED for h in others), to_json(report)
    assert len(report.rounds) >= 2
    assert victim.name not in report.rounds[-1].chain.split(" -> ")
    _assert_everywhere(inv, big_model, name, hosts=others)
    # back: the next run resumes the node's partial file and stops the cut run's relay
    report = _sync_with_deadline(300, inv, str(big_model), name)
    assert report.ok, to_json(report)
    assert report.nodes[victim.name].state == SYNCED
    assert report.nodes[victim.name].bytes_resumed > 5 * MB
    assert all(report.nodes[h.name].state == UNCHANGED for h in others)
    _assert_everywhere(inv, big_model, name)
    _no_agent_left(inv)


def test_sigterm_mid_sync_exits_143_and_leaves_nothing_running(lab, inv, big_model):
    import signal
    import subprocess
    import sys
    import time
    name = PREFIX + "sigterm"
    last = list(inv.hosts.values())[-1]
    staging = f"{_dest(inv, name)}/.clusterctl-sync"
    proc = subprocess.Popen([sys.executable, "-m", "clusterctl.cli", "sync-model",
                             str(big_model), "--name", name, "-i", str(lab.inventory_path),
                             "--bwlimit", "5M"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:           # the last node of the chain holds part of a file
            res = _run(last, f"du -cb {staging}/*.part 2>/dev/null | tail -1", check=False)
            got = res.stdout.split()
            if got and int(got[0]) > 2 * MB:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sync never got going"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (out[-2000:], err[-2000:])
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err, err[-2000:]
    _no_agent_left(inv)                     # no relay, no run folder on any node
    report = _sync_with_deadline(300, inv, str(big_model), name)
    assert report.ok, to_json(report)
    assert report.nodes[last.name].bytes_resumed > 0
    _assert_everywhere(inv, big_model, name)          # no staging folder left either
    _no_agent_left(inv)
