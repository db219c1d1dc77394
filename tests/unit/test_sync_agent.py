"""The node agent in-process over loopback: scan, survey, and the relay chain (temp names,
sha256 check, resume, forwarding past a node that cannot write)."""
import errno
import hashlib
import json
import os
import socket
import threading
import time

import pytest

from clusterctl.sync import node_agent as agent

TOKEN = "nonce"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(3 * agent.CHUNK + 123), "sub/b.json": b'{"x": 1}\n',
             "empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
        os.utime(src / rel, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return src, files


def _stream_files(files, *, offsets=None, hashed=True):
    out = []
    for rel in sorted(files):
        data = files[rel]
        out.append({"path": rel, "size": len(data), "offset": (offsets or {}).get(rel, 0),
                    "sha256": _sha(data) if hashed else None,
                    "mtime_ns": 1_700_000_000_123_456_789})
    return out


def _want(stream, paths=None):
    return {f["path"]: {"key": agent.partial_key(f["path"], f["size"], f["mtime_ns"])}
            for f in stream if paths is None or f["path"] in paths}


@pytest.fixture(params=["splice", "buffers"], autouse=True)
def relay_path(request, monkeypatch):
    """Every relay test runs on both paths: the kernel one (splice/sendfile, hashed
    behind the stream) and the buffer one (recv_into, the fallback without splice)."""
    monkeypatch.setattr(Relay, "splice", request.param == "splice")
    return request.param


class Relay:
    splice = True

    def __init__(self, root, want, token=TOKEN):
        self.root = root
        self.staging = os.path.join(root, agent.STAGING)
        self.cfg = {"listen": "127.0.0.1", "token": token, "root": str(root),
                    "staging": self.staging, "want": want, "accept_timeout": 10,
                    "idle_timeout": 10, "fsync": False, "splice": self.splice}
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.status = agent._Status(os.path.join(str(root) + ".status"))
        self.thread = threading.Thread(target=agent.run_relay,
                                       args=(self.cfg, self.listener, self.status))
        self.thread.start()

    def hop(self, name="n"):
        return {"name": name, "ip": "127.0.0.1", "port": self.port, "token": TOKEN}

    def join(self):
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        return self.status.data


def _send(stream, src, hops, **kw):
    sock = agent.connect(hops[0]["ip"], hops[0]["port"], timeout=5)
    sources = {f["path"]: str(src / f["path"]) for f in stream}
    digests = agent.send_stream(sock, stream, hops[0], hops[1:], sources, **kw)
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    return digests


def test_chain_of_two_writes_what_each_wants_and_forwards_everything(tmp_path, source,
                                                                      relay_path):
    src, files = source
    stream = _stream_files(files)
    r1 = Relay(tmp_path / "n1", _want(stream))
    r2 = Relay(tmp_path / "n2", _want(stream, {"sub/b.json"}))
    digests = _send(stream, src, [r1.hop("n1"), r2.hop("n2")])
    s1, s2 = r1.join(), r2.join()
    assert (s1.get("path") == "splice") == (relay_path == "splice")
    assert digests == {rel: _sha(d) for rel, d in files.items()}
    assert s1["state"] == "done" and s2["state"] == "done"
    assert s1["forwarding"] is True and "forward_error" not in s1
    for rel, data in files.items():
        p = tmp_path / "n1" / rel
        assert p.read_bytes() == data
        assert p.stat().st_mtime_ns == 1_700_000_000_123_456_789
        assert oct(p.stat().st_mode & 0o777) == "0o644"
        assert s1["files"][rel] == {"ok": True, "sha256": _sha(data)}
    assert (tmp_path / "n2" / "sub/b.json").read_bytes() == files["sub/b.json"]
    assert not (tmp_path / "n2" / "a.bin").exists()
    assert s2["bytes_in"] == s1["bytes_in"] == sum(len(d) for d in files.values())
    assert s2["bytes_written"] == len(files["sub/b.json"])
    assert os.listdir(r1.staging) == []                 # no partial left behind


def test_relays_started_early_take_their_lists_from_the_header(tmp_path, source):
    """Relays start before the controller knows what each node needs; the header says."""
    src, files = source
    stream = _stream_files(files)
    r1 = Relay(tmp_path / "n1", {})
    r2 = Relay(tmp_path / "n2", {})
    r1.cfg["name"], r2.cfg["name"] = "n1", "n2"
    sock = agent.connect("127.0.0.1", r1.port)
    sources = {f["path"]: str(src / f["path"]) for f in stream}
    agent.send_stream(sock, stream, r1.hop("n1"), [r2.hop("n2")], sources,
                      want={"n1": _want(stream, {"empty"}), "n2": _want(stream)})
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    s1, s2 = r1.join(), r2.join()
    assert set(s1["files"]) == {"empty"} and set(s2["files"]) == set(files)
    assert not (tmp_path / "n1" / "a.bin").exists()
    assert (tmp_path / "n2" / "a.bin").read_bytes() == files["a.bin"]


def test_status_records_come_back_up_the_chain(tmp_path, source):
    """Each relay's final record (with per-file results) reaches the feeder on the stream's
    own connection, and the connection closes only when the whole chain is over."""
    src, files = source
    stream = _stream_files(files)
    r1, r2 = Relay(tmp_path / "n1", {}), Relay(tmp_path / "n2", {})
    r1.cfg["name"], r2.cfg["name"] = "n1", "n2"
    sock = agent.connect("127.0.0.1", r1.port)
    records = {}
    pump = agent._RecordPump(sock, "n1",
                             lambda line: agent.merge_record(records, json.loads(line)),
                             lambda n, e: None)
    pump.start()
    sources = {f["path"]: str(src / f["path"]) for f in stream}
    agent.send_stream(sock, stream, r1.hop("n1"), [r2.hop("n2")], sources,
                      want={"n1": _want(stream), "n2": _want(stream, {"empty"})})
    sock.shutdown(socket.SHUT_WR)
    pump.join(timeout=20)
    assert not pump.is_alive()
    r1.join(), r2.join()
    assert set(records) == {"n1", "n2"}
    assert records["n1"]["final"] and records["n1"]["state"] == "done"
    assert records["n1"]["files"]["a.bin"] == {"ok": True, "sha256": _sha(files["a.bin"])}
    assert set(records["n2"]["files"]) == {"empty"} and records["n2"]["final"]


def test_a_relay_named_after_it_started_reports_under_that_name(tmp_path, source):
    """The relay's name is read when its upstream connects, not when it starts listening
    (a relay thread that already runs must not report its records as nameless)."""
    src, files = source
    stream = _stream_files(files)
    r1 = Relay(tmp_path / "n1", {})
    time.sleep(0.2)                     # the relay thread is surely waiting in accept()
    r1.cfg["name"] = "n1"
    sock = agent.connect("127.0.0.1", r1.port)
    records = {}
    pump = agent._RecordPump(sock, "n1",
                             lambda line: agent.merge_record(records, json.loads(line)),
                             lambda n, e: None)
    pump.start()
    sources = {f["path"]: str(src / f["path"]) for f in stream}
    agent.send_stream(sock, stream, r1.hop("n1"), [], sources, want={"n1": _want(stream)})
    sock.shutdown(socket.SHUT_WR)
    pump.join(timeout=20)
    sock.close()
    r1.join()
    assert set(records) == {"n1"} and records["n1"]["final"]
    assert records["n1"]["state"] == "done"


def test_merge_record_keeps_final_records():
    records = {}
    agent.merge_record(records, {"node": "a", "bytes_in": 5})
    agent.merge_record(records, {"node": "a", "bytes_in": 9, "final": True, "state": "done"})
    agent.merge_record(records, {"node": "a", "bytes_in": 7})          # late progress record
    agent.merge_record(records, {"node": "a", "lost": True, "error": "reset"})
    assert records["a"] == {"node": "a", "bytes_in": 9, "final": True, "state": "done"}
    agent.merge_record(records, {"node": "b", "bytes_in": 1})
    agent.merge_record(records, {"node": "b", "lost": True, "error": "reset"})
    assert records["b"]["lost"] is True and records["b"]["lost_error"] == "reset"
    agent.merge_record(records, {"bytes_in": 1})                         # no node: ignored
    assert set(records) == {"a", "b"}


def test_unknown_manifest_sha_uses_the_senders_digest(tmp_path, source):
    src, files = source
    stream = _stream_files(files, hashed=False)
    r = Relay(tmp_path / "n1", _want(stream))
    _send(stream, src, [r.hop()])
    st = r.join()
    assert all(st["files"][rel]["sha256"] == _sha(d) for rel, d in files.items())


def test_sha_mismatch_never_reaches_the_final_path(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    stream[0]["sha256"] = "0" * 64                     # a.bin: manifest disagrees
    r = Relay(tmp_path / "n1", _want(stream))
    _send(stream, src, [r.hop()])
    st = r.join()
    bad = st["files"]["a.bin"]
    assert bad["ok"] is False and bad["retry"] is True
    assert bad["error"] == "sha256 mismatch after transfer"
    assert bad["sha256"] == _sha(files["a.bin"])
    assert not (tmp_path / "n1" / "a.bin").exists()
    assert os.listdir(r.staging) == []
    assert st["files"]["empty"]["ok"] is True


def test_resume_from_a_partial_file(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    want = _want(stream)
    os.makedirs(tmp_path / "n1" / agent.STAGING)
    partial = agent.partial_path(str(tmp_path / "n1" / agent.STAGING), want["a.bin"]["key"])
    data = files["a.bin"]
    with open(partial, "wb") as fh:
        fh.write(data[:agent.CHUNK + 7])
    for f in stream:
        if f["path"] == "a.bin":
            f["offset"] = agent.CHUNK + 7
    r = Relay(tmp_path / "n1", want)
    _send(stream, src, [r.hop()])
    st = r.join()
    assert (tmp_path / "n1" / "a.bin").read_bytes() == data
    assert st["bytes_resumed"] == agent.CHUNK + 7
    assert st["bytes_in"] == sum(len(d) for d in files.values()) - (agent.CHUNK + 7)


def test_a_longer_partial_is_cut_back_to_the_stream_offset(tmp_path, source):
    """Another node stopped earlier: the stream resumes at its point; this node's extra
    bytes are rewritten from the stream."""
    src, files = source
    stream = _stream_files(files)
    want = _want(stream)
    os.makedirs(tmp_path / "n1" / agent.STAGING)
    partial = agent.partial_path(str(tmp_path / "n1" / agent.STAGING), want["a.bin"]["key"])
    data = files["a.bin"]
    with open(partial, "wb") as fh:
        fh.write(data[:500] + b"garbage-that-must-go" + data[520:2000])
    stream[0]["offset"] = 500
    r = Relay(tmp_path / "n1", want)
    _send(stream, src, [r.hop()])
    r.join()
    assert (tmp_path / "n1" / "a.bin").read_bytes() == data


def test_corrupt_partial_prefix_is_caught_and_dropped(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    want = _want(stream)
    os.makedirs(tmp_path / "n1" / agent.STAGING)
    partial = agent.partial_path(str(tmp_path / "n1" / agent.STAGING), want["a.bin"]["key"])
    with open(partial, "wb") as fh:
        fh.write(b"\0" * 1000)
    stream[0]["offset"] = 1000
    r = Relay(tmp_path / "n1", want)
    _send(stream, src, [r.hop()])
    st = r.join()
    assert st["files"]["a.bin"]["ok"] is False
    assert st["files"]["a.bin"]["error"] == "sha256 mismatch after transfer"
    assert not os.path.exists(partial) and not (tmp_path / "n1" / "a.bin").exists()


def test_partial_shorter_than_the_stream_offset_is_retried(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    stream[0]["offset"] = 100                           # but this node has no partial
    r = Relay(tmp_path / "n1", _want(stream))
    _send(stream, src, [r.hop()])
    st = r.join()
    assert st["files"]["a.bin"]["ok"] is False and st["files"]["a.bin"]["retry"] is True
    assert st["files"]["sub/b.json"]["ok"] is True


def test_stray_connection_with_a_wrong_token_is_ignored(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    r = Relay(tmp_path / "n1", _want(stream))
    stray = socket.create_connection(("127.0.0.1", r.port))
    stray.sendall(agent.encode_header({"token": "wrong", "next": [], "files": []}))
    stray.close()
    junk = socket.create_connection(("127.0.0.1", r.port))
    junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
    junk.close()
    _send(stream, src, [r.hop()])
    assert r.join()["state"] == "done"
    assert (tmp_path / "n1" / "a.bin").read_bytes() == files["a.bin"]


def test_upstream_dying_mid_file_keeps_the_partial(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    want = _want(stream)
    r = Relay(tmp_path / "n1", want)
    sock = agent.connect("127.0.0.1", r.port)
    sock.sendall(agent.encode_header({"token": TOKEN, "next": [], "files": stream}))
    sock.sendall(files["a.bin"][:2 * agent.CHUNK])
    time.sleep(0.3)
    sock.close()
    st = r.join()
    assert st["state"] == "failed" and "closed" in st["error"]
    partial = agent.partial_path(r.staging, want["a.bin"]["key"])
    assert os.path.getsize(partial) == 2 * agent.CHUNK
    assert not (tmp_path / "n1" / "a.bin").exists()


def test_a_node_that_cannot_write_still_forwards(tmp_path, source, monkeypatch):
    src, files = source
    stream = _stream_files(files)
    r1 = Relay(tmp_path / "n1", _want(stream))
    r2 = Relay(tmp_path / "n2", _want(stream))
    real = agent._Writer._data

    def full_on_n1(self, data):
        if str(tmp_path / "n1") in self.root:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(agent._Writer, "_data", full_on_n1)
    real_splice = agent._splice_out

    def full_splice_on_n1(pipe_r, fd, count, timeout, offset=None):
        if offset is not None and os.readlink(f"/proc/self/fd/{fd}").startswith(
                str(tmp_path / "n1")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_splice(pipe_r, fd, count, timeout, offset)

    monkeypatch.setattr(agent, "_splice_out", full_splice_on_n1)
    _send(stream, src, [r1.hop("n1"), r2.hop("n2")])
    s1, s2 = r1.join(), r2.join()
    assert s1["state"] == "failed" and "No space left" in s1["disk_error"]
    assert s2["state"] == "done"
    for rel, data in files.items():
        assert (tmp_path / "n2" / rel).read_bytes() == data
    assert not (tmp_path / "n1" / "a.bin").exists()


def test_unreachable_next_hop_is_reported_and_this_node_still_writes(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    r = Relay(tmp_path / "n1", _want(stream))
    r.cfg["connect_timeout"] = 0.5
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    _send(stream, src, [r.hop("n1"), {"name": "n2", "ip": "127.0.0.1", "port": port,
                                      "token": "x"}])
    st = r.join()
    assert st["state"] == "done" and st["forward_error"].startswith("n2:")
    assert (tmp_path / "n1" / "a.bin").read_bytes() == files["a.bin"]


def test_sender_notices_a_source_file_that_changed_size(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    r = Relay(tmp_path / "n1", _want(stream))
    (src / "a.bin").write_bytes(b"short")
    with pytest.raises(agent.StreamError, match="it changed"):
        _send(stream, src, [r.hop()])
    assert r.join()["state"] == "failed"


def test_sender_notices_a_source_file_rewritten_while_sent(tmp_path, source, monkeypatch):
    src, files = source
    stream = _stream_files(files, hashed=False)
    r = Relay(tmp_path / "n1", _want(stream))
    real = agent._send_read

    def touch_then_send(out, fh, *args):
        os.utime(fh.name, ns=(1, 1))
        return real(out, fh, *args)

    monkeypatch.setattr(agent, "_send_read", touch_then_send)
    with pytest.raises(agent.StreamError, match="changed while being sent"):
        _send(stream, src, [r.hop()])
    r.join()


def test_known_sha_goes_zero_copy_and_is_still_checked_by_the_receiver(tmp_path, source):
    src, files = source
    stream = _stream_files(files)
    r = Relay(tmp_path / "n1", _want(stream))
    digests = _send(stream, src, [r.hop()])            # a real socket: sendfile
    st = r.join()
    assert digests["a.bin"] == _sha(files["a.bin"])
    assert st["files"]["a.bin"] == {"ok": True, "sha256": _sha(files["a.bin"])}


def test_bwlimit_paces_the_sender(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(600_000)
    (src / "x").write_bytes(data)
    stream = [{"path": "x", "size": len(data), "offset": 0, "sha256": _sha(data),
               "mtime_ns": 1}]
    r = Relay(tmp_path / "n1", _want(stream))
    started = time.monotonic()
    _send(stream, src, [r.hop()], bwlimit=2_000_000)
    r.join()
    assert time.monotonic() - started >= 0.25            # 0.6 MB at 2 MB/s is 0.3 s


# ------------------------------------------------------------------ scan and survey

def test_scan_folder_skips_our_staging_and_hub_metadata(tmp_path, source):
    src, files = source
    (src / agent.STAGING).mkdir()
    (src / agent.STAGING / "x.part").write_bytes(b"p")
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "meta").write_bytes(b"m")
    (src / "link.bin").symlink_to(src / "a.bin")
    (src / "linkdir").symlink_to(src / "sub")
    out = agent.scan(str(src), want_hash=True, cache_path=str(tmp_path / "cache.json"))
    paths = [f["path"] for f in out["files"]]
    assert paths == ["a.bin", "empty", "link.bin", "sub/b.json"]
    assert out["kind"] == "dir"
    assert out["skipped"] == ["linkdir/ (symlinked folder)"]
    by = {f["path"]: f for f in out["files"]}
    assert by["a.bin"]["sha256"] == _sha(files["a.bin"])
    assert by["link.bin"]["size"] == len(files["a.bin"])


def test_scan_uses_the_hash_cache_until_the_file_changes(tmp_path, source):
    src, _ = source
    cache = str(tmp_path / "cache.json")
    agent.scan(str(src), want_hash=True, cache_path=cache)
    entry = json.load(open(cache))[str(src / "sub/b.json")]
    entry[3] = "c" * 64                                 # a cached value is trusted ...
    data = json.load(open(cache))
    data[str(src / "sub/b.json")] = entry
    json.dump(data, open(cache, "w"))
    out = agent.scan(str(src), want_hash=False, cache_path=cache)
    assert {f["path"]: f["sha256"] for f in out["files"]}["sub/b.json"] == "c" * 64
    (src / "sub/b.json").write_bytes(b"changed")       # ... until size/mtime/inode change
    out = agent.scan(str(src), want_hash=False, cache_path=cache)
    assert {f["path"]: f["sha256"] for f in out["files"]}["sub/b.json"] is None


def test_scan_single_file(tmp_path):
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF")
    out = agent.scan(str(f))
    assert out["kind"] == "file" and [x["path"] for x in out["files"]] == ["tiny.gguf"]


def test_survey_lists_files_partials_and_space(tmp_path, source):
    src, files = source
    staging = src / agent.STAGING
    staging.mkdir()
    (staging / "k1.part").write_bytes(b"12345")
    spec = {"root": str(src), "staging": str(staging), "hash": True,
            "files": [{"path": "a.bin", "size": len(files["a.bin"]), "key": "k0"},
                      {"path": "sub/b.json", "size": 999, "key": "k1"},
                      {"path": "gone", "size": 1, "key": "k2"}]}
    out = agent.survey(spec)
    assert out["files"]["a.bin"]["sha256"] == _sha(files["a.bin"])
    assert "sha256" not in out["files"]["sub/b.json"]    # wrong size: not worth hashing
    assert "gone" not in out["files"]
    assert out["partials"] == {"k1": 5}
    assert out["avail"] > 0 and out["space_path"] == str(src)


def test_free_bytes_walks_up_to_an_existing_parent(tmp_path):
    path, avail = agent.free_bytes(str(tmp_path / "not" / "yet" / "there"))
    assert path == str(tmp_path) and avail > 0


@pytest.mark.parametrize("verify", [False, True])
def test_the_agents_quick_decision_agrees_with_the_controllers_diff(verify):
    from clusterctl.sync.manifest import Manifest, RemoteFile, diff
    m = Manifest.from_scan({"kind": "dir", "files": [
        {"path": "a", "size": 10, "mtime_ns": 5_000_001_234, "sha256": "a" * 64},
        {"path": "b", "size": 20, "mtime_ns": 7_000_000_000, "sha256": "b" * 64}]}, "m")
    spec = m.survey_spec("/r", "/r/.clusterctl-sync", verify=verify)
    same = {"a": {"size": 10, "mtime_ns": 5_000_001_999, "sha256": "a" * 64},
            "b": {"size": 20, "mtime_ns": 7_000_000_000, "sha256": "b" * 64}}
    cases = [same, {"a": same["a"]}, dict(same, b={"size": 21, "mtime_ns": 7_000_000_000}),
             dict(same, b={"size": 20, "mtime_ns": 9_000_000_000, "sha256": "b" * 64}),
             dict(same, b={"size": 20, "mtime_ns": 7_000_000_000, "sha256": "f" * 64})]
    for found in cases:
        listing = {p: RemoteFile(v["size"], v["mtime_ns"], v.get("sha256"))
                   for p, v in found.items()}
        assert agent.survey_needs(spec, found) == (not diff(m, listing, verify=verify).complete)


@pytest.mark.parametrize("use_mmap", [True, False])
def test_hash_range_reads_the_file_in_windows(tmp_path, monkeypatch, use_mmap):
    """The splice path hashes the file behind the stream in windows that start anywhere
    (not page aligned); mapped, or read when mapping fails."""
    import mmap
    if not use_mmap:
        def refuse(*a, **kw):
            raise OSError(19, "No such device")
        monkeypatch.setattr(mmap, "mmap", refuse)
    data = os.urandom(3 * 4096 + 777)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        h = hashlib.sha256()
        view = memoryview(bytearray(1000))
        done = 0
        for end in (1, 4095, 4097, 9000, len(data)):
            done = agent._hash_range(h, fd, done, end, view)
        assert done == len(data) and h.hexdigest() == _sha(data)
    finally:
        os.close(fd)
