#!/usr/bin/env python3
"""clusterctl sync: the agent that runs on nodes (and, imported, on the controller).

Standard library only; it is uploaded to a per-sync directory on each node
(/tmp/clusterctl-sync-RUNID/agent.py) and run with the node's python3. The
controller imports the same file for its own side of the stream, so both ends speak
exactly one protocol.

Commands (all output is one JSON document on stdout):

    scan ROOT [--hash] [--cache FILE]   list a source (file or folder): path, size, mtime_ns,
                                        sha256 (from the cache, or computed with --hash)
    survey SPEC.json [--relay RUNDIR]   what a destination already holds: final files
                                        (stat; sha256 with "hash": true), resumable partial
                                        files, free bytes where the files go; with --relay,
                                        starts a relay if the node needs anything
    relay RUNDIR                        listen on the cluster IP, write the stream to disk
                                        and forward the same bytes to the next node;
                                        daemonizes and prints {"port", "pid"}
    send RUNDIR                         stream local files to the first relay (a source or
                                        seed node); daemonizes and prints {"pid"}
    kill RUNDIR                         stop this sync's relay/sender (SIGTERM, then SIGKILL)

Stream protocol (one TCP connection per hop, upstream -> downstream):

    b"CCSYNC1\\n" | u64 header length | header JSON
        {"token": receiver's nonce, "next": [{"name","ip","port","token"}...],
         "files": [{"path","size","offset","sha256" (or null),"mtime_ns"}...],
         "want": {node name: {path: {"key": partial file key}}}}
    for each file: bytes [offset, size) of the file, then the 32-byte sha256 of the whole
    file [0, size) (computed by the sender while reading, or the manifest's value).

Back up the same connection (downstream -> upstream) flow status records, one JSON object
per line: every relay's progress every STATUS_INTERVAL, its final record (with per-file
results) when it is done, and the lines of the nodes after it. A relay closes its
upstream connection only after its downstream closed, so the feeder's connection ends
exactly when the whole chain is over.

A receiver writes a file it wants to STAGING/<partial key>.part (never to the final
path), checks the sha256 of the whole file against the manifest value (or the sender's
digest when the manifest value was not known yet), then fsyncs, sets mtime and renames
it into place. Partial files survive an interruption; the next sync resumes them from
the byte where the slowest node stopped. The token only keeps stray connections out;
integrity comes from the sha256 check against the manifest the controller holds.
"""
import errno
import hashlib
import json
import os
import queue
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time

MAGIC = b"CCSYNC1\n"
CHUNK = 1 << 20
DIGEST_LEN = 32
STAGING = ".clusterctl-sync"
EXCLUDED_DIRS = (STAGING, ".cache/huggingface")   # ours, and huggingface_hub's metadata
STATUS_INTERVAL = 0.25
PIPE_SIZE = 1 << 20          # the relay's kernel pipe (F_SETPIPE_SZ)
F_SETPIPE_SZ = 1031


# ----------------------------------------------------------------------------- helpers

def partial_key(path, size, mtime_ns):
    """Stable name of the partial file of one version of one file."""
    text = "%s\0%d\0%d" % (path, int(size), int(mtime_ns))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def partial_path(staging, key):
    return os.path.join(staging, key + ".part")


def sha256_file(path, limit=None, chunk=CHUNK):
    """sha256 of a file, or of its first `limit` bytes."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb", buffering=0) as fh:
        while left is None or left > 0:
            n = chunk if left is None else min(chunk, left)
            data = fh.read(n)
            if not data:
                break
            h.update(data)
            if left is not None:
                left -= len(data)
    if left:
        raise OSError(errno.EIO, "file is shorter than %d bytes" % limit, path)
    return h


def write_json_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def free_bytes(path):
    """(nearest existing parent of path, bytes available to unprivileged users there)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    st = os.statvfs(p)
    return p, st.f_bavail * st.f_frsize


def parallel_map(fn, items, workers=None):
    """Map in threads (hashlib and file I/O release the GIL); results in input order."""
    items = list(items)
    if not items:
        return []
    workers = max(1, min(workers or (os.cpu_count() or 1), len(items), 8))
    if workers == 1:
        return [fn(x) for x in items]
    results = [None] * len(items)
    errors = []
    lock = threading.Lock()
    todo = list(enumerate(items))

    def work():
        while True:
            with lock:
                if not todo:
                    return
                i, x = todo.pop(0)
            try:
                results[i] = fn(x)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ----------------------------------------------------------------------------- scan

class HashCache:
    """sha256 by absolute path, valid while (size, mtime_ns, inode) are unchanged."""

    def __init__(self, path):
        self.path = path
        self.data = {}
        self.dirty = False
        if path:
            try:
                with open(path) as fh:
                    self.data = json.load(fh)
            except (OSError, ValueError):
                self.data = {}

    def get(self, abspath, st):
        rec = self.data.get(abspath)
        if rec and rec[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]:
            return rec[3]
        return None

    def put(self, abspath, st, digest):
        self.data[abspath] = [st.st_size, st.st_mtime_ns, st.st_ino, digest]
        self.dirty = True

    def save(self):
        if not (self.path and self.dirty):
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_json_atomic(self.path, self.data)
            self.dirty = False
        except OSError:
            pass


def walk_files(root):
    """[(relpath, abspath, stat)] of regular files under root (symlinked files followed,
    symlinked folders skipped), sorted; plus the list of skipped entries."""
    out, skipped = [], []
    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = os.path.join(rel_dir, d) if rel_dir else d
            if rel in EXCLUDED_DIRS:
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                skipped.append(rel + "/ (symlinked folder)")
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            rel = os.path.join(rel_dir, f) if rel_dir else f
            full = os.path.join(dirpath, f)
            try:
                st = os.stat(full)
            except OSError:
                skipped.append(rel + " (dangling symlink)")
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(rel + " (not a regular file)")
                continue
            out.append((rel, full, st))
    out.sort(key=lambda x: x[0])
    return out, skipped


def scan(root, want_hash=False, cache_path=None):
    """The listing of a source: a folder's files, or one file."""
    root = os.path.abspath(root)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SystemExit(_fail("cannot read %s: %s" % (root, exc.strerror or exc)))
    if stat.S_ISREG(st.st_mode):
        kind, entries, skipped = "file", [(os.path.basename(root), root, st)], []
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
        entries, skipped = walk_files(root)
    else:
        raise SystemExit(_fail("%s is neither a file nor a folder" % root))
    cache = HashCache(cache_path)
    digests = [cache.get(full, s) for _, full, s in entries]
    if want_hash:
        missing = [i for i, d in enumerate(digests) if d is None]

        def one(i):
            return sha256_file(entries[i][1]).hexdigest()

        for i, d in zip(missing, parallel_map(one, missing)):
            digests[i] = d
            cache.put(entries[i][1], entries[i][2], d)
        cache.save()
    files = [{"path": rel, "size": s.st_size, "mtime_ns": s.st_mtime_ns, "sha256": d}
             for (rel, _, s), d in zip(entries, digests)]
    return {"kind": kind, "root": root, "files": files, "skipped": skipped}


def remember_hashes(cache_path, root, kind, digests):
    """Record sha256 values computed while sending ({relpath: sha256})."""
    cache = HashCache(cache_path)
    for rel, digest in digests.items():
        full = root if kind == "file" else os.path.join(root, rel)
        try:
            st = os.stat(full)
        except OSError:
            continue
        cache.put(full, st, digest)
    cache.save()


# ----------------------------------------------------------------------------- survey

def survey(spec):
    """What a destination holds. spec: {"root", "staging", "files": [{"path", "size",
    "key"}], "hash": bool}. Output: {"files": {path: {size, mtime_ns[, sha256]}},
    "partials": {key: bytes}, "space_path", "avail"}."""
    root, staging = spec["root"], spec["staging"]
    found = {}
    to_hash = []
    for f in spec["files"]:
        full = os.path.join(root, f["path"])
        try:
            st = os.stat(full)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            found[f["path"]] = {"size": -1, "mtime_ns": 0, "kind": "not a regular file"}
            continue
        found[f["path"]] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if spec.get("hash") and st.st_size == f["size"]:
            to_hash.append(f["path"])

    def one(rel):
        try:
            return sha256_file(os.path.join(root, rel)).hexdigest()
        except OSError:
            return None

    for rel, digest in zip(to_hash, parallel_map(one, to_hash)):
        found[rel]["sha256"] = digest
    partials = {}
    for f in spec["files"]:
        try:
            partials[f["key"]] = os.stat(partial_path(staging, f["key"])).st_size
        except OSError:
            pass
    space_path, avail = free_bytes(root)
    return {"files": found, "partials": partials, "space_path": space_path, "avail": avail,
            "needs": survey_needs(spec, found)}


def survey_needs(spec, found):
    """Does this node need any file? The controller's manifest.diff rules (size; then
    sha256 with "hash", else mtime to the microsecond): decides here whether a relay is
    worth starting; the controller's diff stays the authority."""
    for f in spec["files"]:
        have = found.get(f["path"])
        if have is None or have["size"] != f["size"] or "mtime_ns" not in f:
            return True
        if spec.get("hash"):
            if have.get("sha256") != f.get("sha256"):
                return True
        elif have["mtime_ns"] // 1000 != int(f["mtime_ns"]) // 1000:
            return True
    return False


# ----------------------------------------------------------------------------- stream

class StreamError(Exception):
    pass


def recv_exact(sock, n):
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(CHUNK, n - got))
        if not data:
            raise StreamError("connection closed after %d of %d bytes" % (got, n))
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def encode_header(header):
    body = json.dumps(header).encode()
    return MAGIC + struct.pack(">Q", len(body)) + body


def read_header(sock):
    magic = recv_exact(sock, len(MAGIC))
    if magic != MAGIC:
        raise StreamError("not a clusterctl sync stream")
    (n,) = struct.unpack(">Q", recv_exact(sock, 8))
    if n > 256 << 20:
        raise StreamError("header too large")
    return json.loads(recv_exact(sock, n).decode())


def connect(ip, port, timeout=30.0):
    """Connect with retries until `timeout` (the peer may still be starting)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError as exc:
            last = exc
            if time.monotonic() >= deadline:
                raise StreamError("cannot connect to %s:%s: %s" % (ip, port, last))
            time.sleep(0.2)


def send_stream(out, files, first, rest, sources, on_bytes=None, stop=None, bwlimit=None,
                want=None):
    """Send `files` to the first hop over `out` (a socket, or anything with sendall).

    files: [{"path","size","offset","sha256","mtime_ns"}]; sources: {path: local file};
    first: the receiving hop {"token", ...}; rest: the hops after it; bwlimit: bytes per
    second at most (None: as fast as the links go); want: {node name: {path: {"key"}}},
    what each relay writes (a relay started without its list takes it from here).

    A file whose sha256 is not known yet is hashed while it is read; a file whose sha256
    the manifest knows is sent as is (zero-copy to a socket) with that value as its
    digest: every receiver hashes what it got and compares, so nothing unverified lands.
    Returns {path: sha256 hex} (computed here, or the manifest's). Raises StreamError when
    a source file changes while being sent.
    """
    header = {"token": first["token"], "next": rest, "files": files, "want": want or {}}
    out.sendall(encode_header(header))
    digests = {}
    clock = {"started": time.monotonic(), "sent": 0}
    zero_copy = isinstance(out, socket.socket) and not bwlimit
    for f in files:
        src = sources[f["path"]]
        offset, size = int(f["offset"]), int(f["size"])
        with open(src, "rb", buffering=0) as fh:
            before = os.fstat(fh.fileno())
            if before.st_size != size:
                raise StreamError("%s has %d bytes, the manifest says %d (it changed)"
                                  % (src, before.st_size, size))
            known = f.get("sha256")
            if known and zero_copy:
                _sendfile(out, fh, offset, size - offset, on_bytes, stop)
            else:
                h = None if known else (sha256_file(src, limit=offset) if offset
                                        else hashlib.sha256())
                _send_read(out, fh, offset, size - offset, h, on_bytes, stop, bwlimit, clock)
            after = os.fstat(fh.fileno())
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise StreamError("%s changed while being sent" % src)
        digest = bytes.fromhex(known) if known else h.digest()
        out.sendall(digest)
        digests[f["path"]] = digest.hex()
    return digests


def _sendfile(out, fh, offset, count, on_bytes, stop=None):
    while count > 0:
        if stop is not None and stop.is_set():
            raise StreamError("stopped")
        n = out.sendfile(fh, offset, min(count, 8 * CHUNK))   # honours the socket timeout
        if n == 0:
            raise StreamError("%s shrank while being sent" % fh.name)
        offset += n
        count -= n
        if on_bytes is not None:
            on_bytes(n)


def _send_read(out, fh, offset, count, h, on_bytes, stop, bwlimit, clock):
    fh.seek(offset)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while count > 0:
        if stop is not None and stop.is_set():
            raise StreamError("stopped")
        n = fh.readinto(view[:min(CHUNK, count)])
        if not n:
            raise StreamError("%s shrank while being sent" % fh.name)
        if h is not None:
            h.update(view[:n])
        out.sendall(view[:n])
        count -= n
        clock["sent"] += n
        if on_bytes is not None:
            on_bytes(n)
        if bwlimit:
            ahead = clock["sent"] / float(bwlimit) - (time.monotonic() - clock["started"])
            if ahead > 0:
                time.sleep(ahead)


def merge_record(records, rec):
    """Keep the latest record per node; a final record is never replaced by a progress
    record; {"node", "lost"} marks a node whose connection broke before its final record."""
    name = rec.get("node")
    if not name:
        return
    have = records.get(name)
    if have is not None and have.get("final"):
        return
    if rec.get("lost"):
        merged = dict(have or {})
        merged.update(lost=True, lost_error=rec.get("error"))
        records[name] = merged
        return
    records[name] = rec


def read_records(sock, on_line, stop=None):
    """Read newline-delimited records from `sock` until EOF, calling on_line(bytes) with
    each complete line. A socket timeout is not the end (unless `stop` is set)."""
    buf = b""
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            if stop is not None and stop.is_set():
                return
            continue
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            on_line(line + b"\n")


class _Upward:
    """Status records sent back towards the feeder on the stream's own connection: this
    node's (progress every STATUS_INTERVAL, then a final one with per-file results) and,
    line by line, those of the nodes further down the chain."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()
        self.broken = False
        self.closed = False          # after this node's final record: no more progress

    def send_line(self, line):
        with self.lock:
            if self.broken:
                return
            try:
                self.sock.sendall(line)
            except OSError:
                self.broken = True

    def send(self, record):
        self.send_line((json.dumps(record) + "\n").encode())


class _RecordPump(threading.Thread):
    """Reads the records coming back from the next hop; hands each line to on_line; when
    the connection breaks, reports the hop as lost."""

    def __init__(self, sock, hop_name, on_line, on_lost):
        super().__init__(daemon=True)
        self.sock, self.hop_name = sock, hop_name
        self.on_line, self.on_lost = on_line, on_lost

    def run(self):
        try:
            read_records(self.sock, self.on_line)
        except OSError as exc:
            self.on_lost(self.hop_name, str(exc))


class _Status:
    """A JSON status file the controller polls over SSH (written atomically)."""

    def __init__(self, path, **initial):
        self.path = path
        self.data = dict(initial)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def update(self, **kw):
        with self.lock:
            self.data.update(kw)

    def add(self, key, n):
        with self.lock:
            self.data[key] = self.data.get(key, 0) + n

    def file_result(self, path, **kw):
        with self.lock:
            self.data.setdefault("files", {})[path] = kw

    def flush(self):
        with self.lock:
            snap = json.dumps(self.data)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(snap)
        os.replace(tmp, self.path)

    def snapshot(self, with_files=False):
        with self.lock:
            data = dict(self.data)
        if not with_files:
            data.pop("files", None)
            data.pop("digests", None)
        return data

    def start(self, reporter=None):
        """Write the file every STATUS_INTERVAL; call reporter() as often."""
        def loop():
            while not self._stop.wait(STATUS_INTERVAL):
                try:
                    self.flush()
                except OSError:
                    pass
                if reporter is not None:
                    reporter()

        self.flush()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()


class _Writer(threading.Thread):
    """Writes and hashes the files this node wants, off the forwarding thread."""

    def __init__(self, cfg, status):
        super().__init__(daemon=True)
        self.root, self.staging = cfg["root"], cfg["staging"]
        self.want = cfg.get("want") or {}        # {path: {"key"}}; or from the header
        self.fsync = cfg.get("fsync", True)
        # flush as we go, so the fsync before the rename does not meet gigabytes of dirty
        # pages (many nodes sharing one disk would all flush at the very end)
        self.sync_every = int(cfg.get("sync_every", 128 << 20))
        self.unsynced = 0
        self.status = status
        self.q = queue.Queue()
        # the buffers the stream is received into; a full pool stalls the stream, which
        # bounds memory to pool size x CHUNK when the disk is slower than the network
        self.pool = queue.Queue()
        for _ in range(int(cfg.get("buffers", 32))):
            self.pool.put(bytearray(CHUNK))
        self.disk_error = None
        self.fh = None
        self.cur = None
        self.h = None
        self.ok = True

    # -- the splice path: the forwarding thread writes, this thread hashes and renames
    def open_spliced(self, f):
        """Open the partial file of `f` for the forwarding thread (resumed at the
        stream's offset); None when this node does not write it."""
        if self.disk_error:
            return None
        w = self.want[f["path"]]
        partial = partial_path(self.staging, w["key"])
        offset = int(f["offset"])
        try:
            os.makedirs(self.staging, exist_ok=True)
            have = os.stat(partial).st_size if os.path.exists(partial) else 0
            if have < offset:
                self.status.file_result(f["path"], ok=False, retry=True,
                                        error="partial file has %d bytes, stream resumes "
                                              "at %d" % (have, offset))
                return None
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(fd, offset)
        except OSError as exc:
            self.cur = f
            self._failure(exc)
            return None
        self.status.update(current=f["path"])
        self.status.add("bytes_resumed", offset)
        return _SplicedFile(f, fd, partial, offset)

    def spliced_failure(self, sf, exc):
        """A write of the forwarding thread failed: this file is lost on this node (and,
        for a disk that cannot take it, every later file); the stream goes on."""
        code = getattr(exc, "errno", None)
        what = (os.strerror(code) if code else str(exc)) or type(exc).__name__
        self.status.file_result(sf.f["path"], ok=False, error=what)
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                    errno.EIO):
            self.disk_error = "%s (writing under %s)" % (what, self.root)
            self.status.update(disk_error=self.disk_error)
        self.ok = False
        sf.finish(failed=what)

    def _spliced(self, sf):
        """Hash the file from byte 0 while the forwarding thread writes it; at its end
        check the sha256, then fsync, set mtime and rename it into place."""
        h = hashlib.sha256()
        done, synced = 0, 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        self.cur = sf.f                  # for _failure, when this raises
        try:
            while True:
                with sf.cond:
                    while done >= sf.written and sf.digest is None and sf.failed is None:
                        sf.cond.wait()
                    target, over, failed = sf.written, sf.digest is not None, sf.failed
                if failed is not None:
                    if failed == "aborted":      # the stream broke: keep it to resume
                        return
                    try:
                        os.unlink(sf.partial)
                    except OSError:
                        pass
                    return
                while done < target:
                    end = min(target, done + HASH_WINDOW)
                    done = _hash_range(h, sf.fd, done, end, view)
                    if self.fsync and self.sync_every and done - synced >= self.sync_every:
                        os.fdatasync(sf.fd)
                        synced = done
                if over and done >= sf.written:
                    break
            self._finish_spliced(sf, h.hexdigest())
            self.cur = None
        finally:
            with sf.cond:                # the forwarding thread may still wait to finish
                while sf.digest is None and sf.failed is None:
                    sf.cond.wait()
            os.close(sf.fd)

    def _finish_spliced(self, sf, digest):
        f = sf.f
        expected = f.get("sha256") or sf.digest.hex()
        if sf.digest.hex() != expected or digest != expected:
            why = ("the source file changed during the sync" if sf.digest.hex() != expected
                   else "sha256 mismatch after transfer")
            self.status.file_result(f["path"], ok=False, sha256=digest, retry=True, error=why)
            os.unlink(sf.partial)
            return
        if self.fsync:
            os.fsync(sf.fd)
        os.fchmod(sf.fd, 0o644)
        os.utime(sf.fd, ns=(int(f["mtime_ns"]), int(f["mtime_ns"])))
        self._install(sf.partial, f, digest)

    def _install(self, partial, f, digest):
        """Move a verified partial file to its final path (atomic rename) and count it."""
        final = os.path.join(self.root, f["path"])
        parent = os.path.dirname(final)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if os.path.isdir(final) and not os.path.islink(final):
            raise OSError(errno.EISDIR, "a folder is in the way of %s" % final)
        os.replace(partial, final)
        self.status.file_result(f["path"], ok=True, sha256=digest)
        self.status.add("files_done", 1)

    # messages: ("begin", f) ("data", (buffer, n)) ("end", digest) ("abort", reason)
    # ("spliced", _SplicedFile) None
    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            kind, arg = item
            try:
                getattr(self, "_" + kind)(arg)
            except Exception as exc:  # noqa: BLE001 - reported, the stream goes on
                self._failure(exc)
            finally:
                if kind == "data":
                    self.pool.put(arg[0])

    def _failure(self, exc):
        code = getattr(exc, "errno", None)
        what = (os.strerror(code) if code else str(exc)) or type(exc).__name__
        if self.cur is not None:
            self.status.file_result(self.cur["path"], ok=False, error=what)
        self._close(remove=True)
        self.ok = False
        # a disk that cannot take the files is this node's problem: stop writing, keep
        # forwarding; anything else only loses the file at hand
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                    errno.EIO) or not isinstance(exc, OSError):
            self.disk_error = "%s (writing under %s)" % (what, self.root)
            self.status.update(disk_error=self.disk_error)

    def _close(self, remove=False):
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
            if remove:
                try:
                    os.unlink(self._partial)
                except OSError:
                    pass
        self.fh = self.cur = self.h = None

    def _begin(self, f):
        self.cur = None
        if self.disk_error:
            return
        w = self.want[f["path"]]
        self._partial = partial_path(self.staging, w["key"])
        offset = int(f["offset"])
        os.makedirs(self.staging, exist_ok=True)
        have = os.stat(self._partial).st_size if os.path.exists(self._partial) else 0
        if have < offset:
            self.status.file_result(f["path"], ok=False, error="partial file has %d bytes, "
                                    "stream resumes at %d" % (have, offset), retry=True)
            return
        self.cur = f
        self.unsynced = 0
        fh = open(self._partial, "r+b" if os.path.exists(self._partial) else "wb",
                  buffering=0)
        self.fh = fh
        fh.truncate(offset)
        self.h = sha256_file(self._partial, limit=offset) if offset else hashlib.sha256()
        fh.seek(offset)
        self.status.update(current=f["path"])
        self.status.add("bytes_resumed", offset)

    def _data(self, arg):
        if self.cur is None:
            return
        buf, n = arg
        data = memoryview(buf)[:n]
        view = data
        while view:
            w = self.fh.write(view)
            view = view[w:]
        self.h.update(data)
        self.status.add("bytes_written", n)
        self.unsynced += n
        if self.fsync and self.sync_every and self.unsynced >= self.sync_every:
            os.fdatasync(self.fh.fileno())
            self.unsynced = 0

    def _end(self, sender_digest):
        f = self.cur
        if f is None:
            return
        digest = self.h.hexdigest()
        expected = f.get("sha256") or sender_digest.hex()
        if sender_digest.hex() != expected:
            self.status.file_result(f["path"], ok=False, sha256=digest, retry=True,
                                    error="the source file changed during the sync")
            self._close(remove=True)
            return
        if digest != expected:
            self.status.file_result(f["path"], ok=False, sha256=digest, retry=True,
                                    error="sha256 mismatch after transfer")
            self._close(remove=True)
            return
        if self.fsync:
            os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        os.chmod(self._partial, 0o644)
        os.utime(self._partial, ns=(int(f["mtime_ns"]), int(f["mtime_ns"])))
        self._install(self._partial, f, digest)
        self.cur = self.h = None

    def _abort(self, reason):
        # keep the partial file: the next sync resumes it
        if self.fh is not None:
            try:
                self.fh.flush()
            except OSError:
                pass
        self._close(remove=False)


# ----------------------------------------------------------------------------- low-copy relay

def can_splice(up, down):
    """The kernel path: bytes go socket -> pipe -> file (page cache) and, forwarded,
    file -> socket (sendfile) or pipe -> socket, never through Python buffers."""
    return (hasattr(os, "splice") and isinstance(up, socket.socket)
            and (down is None or isinstance(down, socket.socket)))


def _make_pipe():
    r, w = os.pipe()
    try:
        import fcntl
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ImportError):
        pass
    return r, w


def _wait_fd(fd, events, timeout):
    p = select.poll()
    p.register(fd, events)
    if not p.poll(None if timeout is None else int(timeout * 1000)):
        raise socket.timeout("no progress for %ss" % timeout)


def _splice_into_pipe(sock, pipe_w, count, timeout):
    """Move up to `count` bytes from the socket into the (empty) pipe; returns how many."""
    fd = sock.fileno()
    while True:
        try:
            n = os.splice(fd, pipe_w, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            _wait_fd(fd, select.POLLIN, timeout)
            continue
        if n == 0:
            raise StreamError("upstream closed the stream")
        return n


def _splice_out(pipe_r, fd, count, timeout, offset=None):
    """Move exactly `count` bytes from the pipe to fd (a socket, or a file at `offset`)."""
    while count > 0:
        try:
            if offset is None:
                n = os.splice(pipe_r, fd, count, flags=_SPLICE_FLAGS)
            else:
                n = os.splice(pipe_r, fd, count, offset_dst=offset, flags=_SPLICE_FLAGS)
                offset += n
        except BlockingIOError:
            _wait_fd(fd, select.POLLOUT, timeout)
            continue
        if n == 0:
            raise OSError(errno.EIO, "splice moved nothing")
        count -= n
    return offset


def _sendfile_out(sock, fd, offset, count, timeout):
    out = sock.fileno()
    while count > 0:
        try:
            n = os.sendfile(out, fd, offset, count)
        except BlockingIOError:
            _wait_fd(out, select.POLLOUT, timeout)
            continue
        if n == 0:
            raise OSError(errno.EIO, "sendfile moved nothing")
        offset += n
        count -= n


_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


HASH_WINDOW = 64 << 20


def _hash_range(h, fd, start, end, view):
    """h.update(file bytes [start, end)); returns end. The pages are mapped (populated in
    one call) and hashed in place: no copy out of the page cache (a read() into a buffer
    costs about as much as the hash itself on small VMs). Falls back to preadv."""
    try:
        import mmap
        base = start - start % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, end - base, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                      prot=mmap.PROT_READ, offset=base)
    except (OSError, ValueError, ImportError):
        m = None
    if m is not None:
        whole = memoryview(m)
        part = whole[start - base:]
        try:
            h.update(part)
        finally:
            part.release()
            whole.release()
            m.close()
        return end
    while start < end:
        n = os.preadv(fd, [view[:min(len(view), end - start)]], start)
        if n <= 0:
            raise OSError(errno.EIO, "short read at byte %d" % start)
        h.update(view[:n])
        start += n
    return end


class _SplicedFile:
    """One file the relay writes with splice; the writer thread hashes it behind."""

    def __init__(self, f, fd, partial, offset):
        self.f, self.fd, self.partial = f, fd, partial
        self.written = offset              # bytes [0, written) are in the file
        self.failed = None                 # an error: the writer removes the partial
        self.digest = None                 # the sender's digest, once the file is over
        self.cond = threading.Condition()

    def advance(self, n):
        with self.cond:
            self.written += n
            self.cond.notify()

    def finish(self, digest=None, failed=None):
        with self.cond:
            self.digest, self.failed = digest, failed
            self.cond.notify()


def relay_spliced(cfg, up, down, files, want, writer, status, nxt):
    """The stream of `files` from `up`: written with splice (socket -> pipe -> file),
    forwarded from the page cache with sendfile (or pipe -> socket for files this node
    does not write), hashed by the writer thread reading the file behind the stream.
    Returns the downstream socket (None once forwarding failed)."""
    idle = float(cfg.get("idle_timeout", 600))
    pipe_r, pipe_w = _make_pipe()
    null = os.open(os.devnull, os.O_WRONLY)

    def forward_failed(exc):
        status.update(forward_error="%s: %s" % (nxt[0].get("name"), exc))
        try:
            down.close()
        except OSError:
            pass
        return None

    try:
        for f in files:
            sf = writer.open_spliced(f) if f["path"] in want else None
            if sf is not None:
                writer.q.put(("spliced", sf))
            left = int(f["size"]) - int(f["offset"])
            pos = int(f["offset"])
            try:
                while left > 0:
                    n = _splice_into_pipe(up, pipe_w, min(left, PIPE_SIZE), idle)
                    status.add("bytes_in", n)
                    in_file, write_error = 0, None
                    if sf is not None and sf.failed is None:
                        try:
                            _splice_out(pipe_r, sf.fd, n, idle, offset=pos)
                            in_file = n
                            sf.advance(n)
                            status.add("bytes_written", n)
                        except OSError as exc:
                            # what the failed splice did not move is still in the pipe
                            in_file = max(0, min(n, os.fstat(sf.fd).st_size - pos))
                            write_error = exc
                    rest = n - in_file
                    if down is not None:
                        try:
                            if in_file:
                                _sendfile_out(down, sf.fd, pos, in_file, idle)
                            if rest:
                                _splice_out(pipe_r, down.fileno(), rest, idle)
                                rest = 0
                        except OSError as exc:
                            down = forward_failed(exc)
                    if rest:
                        _splice_out(pipe_r, null, rest, idle)
                    if write_error is not None:      # after the file's last use here
                        writer.spliced_failure(sf, write_error)
                    pos += n
                    left -= n
                digest = recv_exact(up, DIGEST_LEN)
            except BaseException:
                if sf is not None:
                    sf.finish(failed="aborted")
                raise
            if down is not None:
                try:
                    down.sendall(digest)
                except OSError as exc:
                    down = forward_failed(exc)
            if sf is not None:
                sf.finish(digest=digest)
    finally:
        for fd in (pipe_r, pipe_w, null):
            os.close(fd)
    return down


def run_relay(cfg, listener, status):
    """Receive the stream, forward it downstream, write what this node wants; send status
    records back up the chain."""
    writer = _Writer(cfg, status)
    writer.start()
    name = None             # read once the upstream connected (as "want" is), not before
    up = down = upward = pump = None
    idle = float(cfg.get("idle_timeout", 600))
    stopping = False
    try:
        deadline = time.monotonic() + float(cfg.get("accept_timeout", 300))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError("no upstream connected within %ss" % cfg.get("accept_timeout"))
            listener.settimeout(left)
            try:
                conn, addr = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(10)
            try:
                header = read_header(conn)
            except (StreamError, OSError, ValueError):
                conn.close()
                continue
            if header.get("token") != cfg["token"]:
                conn.close()
                continue
            up = conn
            break
        listener.close()
        name = cfg.get("name")
        up.settimeout(idle)
        upward = _Upward(up)
        status.update(state="receiving", upstream="%s:%s" % addr[:2])
        status.reporter = lambda: (None if upward.closed else
                                   upward.send(dict(status.snapshot(), node=name)))
        nxt = header.get("next") or []
        if nxt:
            hop = nxt[0]
            status.update(downstream=hop.get("name"))
            try:
                down = connect(hop["ip"], int(hop["port"]),
                               timeout=float(cfg.get("connect_timeout", 30)))
                # the next node may pause (hashing the start of a partial file it resumes)
                down.settimeout(idle)
                down.sendall(encode_header({"token": hop["token"], "next": nxt[1:],
                                            "files": header["files"],
                                            "want": header.get("want") or {}}))
                status.update(forwarding=True)
                pump = _RecordPump(down, hop.get("name"), upward.send_line,
                                   lambda n, e: upward.send({"node": n, "lost": True,
                                                             "error": e}))
                pump.start()
            except (StreamError, OSError) as exc:
                down = None
                status.update(forward_error="%s: %s" % (hop.get("name"), exc))
        # what this node writes: its entry in the header's "want" (the controller knows it
        # only after the relays started), else the list it was started with
        want = (header.get("want") or {}).get(name)
        if want is None:
            want = cfg.get("want") or {}
        writer.want = want
        files = header["files"]
        if cfg.get("splice", True) and can_splice(up, down):
            status.update(path="splice")
            down = relay_spliced(cfg, up, down, files, want, writer, status, nxt)
            files = []
        for f in files:
            wanted = f["path"] in want
            if wanted:
                writer.q.put(("begin", f))
            left = int(f["size"]) - int(f["offset"])
            while left > 0:
                buf = writer.pool.get()
                view = memoryview(buf)
                target, got = min(CHUNK, left), 0
                while got < target:     # forward each piece at once, write whole buffers
                    n = up.recv_into(view[got:target])
                    if not n:
                        raise StreamError("upstream closed the stream in %s" % f["path"])
                    if down is not None:
                        try:
                            down.sendall(view[got:got + n])
                        except OSError as exc:
                            status.update(forward_error="%s: %s" % (nxt[0].get("name"), exc))
                            down.close()
                            down = None
                    got += n
                    status.add("bytes_in", n)
                left -= got
                if wanted:
                    writer.q.put(("data", (buf, got)))
                else:
                    writer.pool.put(buf)
            digest = recv_exact(up, DIGEST_LEN)
            if down is not None:
                try:
                    down.sendall(digest)
                except OSError as exc:
                    status.update(forward_error="%s: %s" % (nxt[0].get("name"), exc))
                    down.close()
                    down = None
            if wanted:
                writer.q.put(("end", digest))
        if down is not None:
            try:
                down.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        writer.q.put(None)
        writer.join()
        t = os.times()
        status.update(state="done" if writer.disk_error is None else "failed",
                      current=None, error=writer.disk_error,
                      cpu_seconds=round(t.user + t.system, 3),
                      cpu_user=round(t.user, 3), cpu_system=round(t.system, 3))
    except (StreamError, OSError, socket.timeout) as exc:
        writer.q.put(("abort", str(exc)))
        writer.q.put(None)
        writer.join()
        t = os.times()
        status.update(state="failed", error=str(exc) or type(exc).__name__, current=None,
                      cpu_seconds=round(t.user + t.system, 3))
    except SystemExit:
        stopping = True                 # SIGTERM: the partial file stays, leave at once
        status.update(state="failed", error="stopped", current=None)
        raise
    finally:
        if upward is not None:
            # this node's final record, then those of the nodes after it, then close:
            # the upstream learns that everything from here down is over
            upward.closed = True
            upward.send(dict(status.snapshot(with_files=True), node=name, final=True))
            if pump is not None and not stopping:
                pump.join(timeout=idle)
        for sock in (up, down):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def run_sender(cfg, status):
    """A source or seed node streams local files to the first relay and collects the
    chain's status records into its status file ("chain")."""
    records = {}

    def on_line(line):
        try:
            rec = json.loads(line.decode())
        except ValueError:
            return
        with status.lock:
            merge_record(records, rec)
            status.data["chain"] = dict(records)
            if rec.get("node"):     # liveness: when each node was last heard from
                status.data.setdefault("seen", {})[rec["node"]] = time.time()

    try:
        first = cfg["chain"][0]
        sock = connect(first["ip"], int(first["port"]),
                       timeout=float(cfg.get("connect_timeout", 30)))
        sock.settimeout(float(cfg.get("idle_timeout", 600)))
        status.update(state="sending")
        pump = _RecordPump(sock, first.get("name"), on_line,
                           lambda n, e: on_line((json.dumps({"node": n, "lost": True,
                                                             "error": e}) + "\n").encode()))
        pump.start()
        digests = send_stream(sock, cfg["files"], first, cfg["chain"][1:], cfg["sources"],
                              on_bytes=lambda n: status.add("bytes_sent", n),
                              bwlimit=cfg.get("bwlimit"), want=cfg.get("want"))
        sock.shutdown(socket.SHUT_WR)
        status.update(state="sent", digests=digests)
        if cfg.get("cache"):
            remember_hashes(cfg["cache"], cfg["cache_root"], cfg.get("kind", "dir"), digests)
        pump.join(timeout=float(cfg.get("idle_timeout", 600)))
        sock.close()
        status.update(state="done")
    except (StreamError, OSError) as exc:
        status.update(state="failed", error=str(exc))


# ----------------------------------------------------------------------------- daemon

def _daemonize(rundir, role):
    """Fork; the parent returns the child's pid, the child returns 0 detached from the
    SSH session (own session, stdio to a log file)."""
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        return pid
    os.setsid()
    os.umask(0o022)          # model files and folders readable by every user
    log = os.open(os.path.join(rundir, role + ".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    with open(os.path.join(rundir, role + ".pid"), "w") as fh:
        fh.write(str(os.getpid()))
    return 0


def _terminate(signum, frame):
    raise SystemExit(143)


def start_relay(rundir):
    """Bind the relay's socket, then fork it into the background. Returns {"port", "pid"}
    (or {"error"}) in the calling process; the relay itself never returns."""
    with open(os.path.join(rundir, "relay.json")) as fh:
        cfg = json.load(fh)
    family = socket.AF_INET6 if ":" in cfg["listen"] else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((cfg["listen"], int(cfg.get("port", 0))))
    except OSError as exc:
        listener.close()
        return {"error": "cannot listen on %s: %s" % (cfg["listen"], exc)}
    listener.listen(8)
    port = listener.getsockname()[1]
    status_path = os.path.join(rundir, "relay.status")
    status = _Status(status_path, role="relay", state="listening", port=port,
                     bytes_in=0, bytes_written=0, bytes_resumed=0, files_done=0, files={})
    status.flush()
    pid = _daemonize(rundir, "relay")
    if pid:
        listener.close()
        return {"port": port, "pid": pid}
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status.update(pid=os.getpid())
    status.reporter = None
    status.start(reporter=lambda: status.reporter and status.reporter())
    try:
        run_relay(cfg, listener, status)
    except SystemExit:
        status.update(state="failed", error="stopped")
    finally:
        status.stop()
    os._exit(0)


def cmd_relay(rundir):
    out = start_relay(rundir)
    print(json.dumps(out))
    return 1 if "error" in out else 0


def cmd_send(rundir):
    with open(os.path.join(rundir, "send.json")) as fh:
        cfg = json.load(fh)
    status = _Status(os.path.join(rundir, "send.status"), role="sender", state="starting",
                     bytes_sent=0)
    status.flush()
    pid = _daemonize(rundir, "send")
    if pid:
        print(json.dumps({"pid": pid}))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status.update(pid=os.getpid())
    status.start()
    try:
        run_sender(cfg, status)
    except SystemExit:
        status.update(state="failed", error="stopped")
    finally:
        status.stop()
    os._exit(0)


def cmd_kill(rundir):
    pids = []
    for role in ("relay", "send"):
        try:
            with open(os.path.join(rundir, role + ".pid")) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                if b"agent.py" not in fh.read():
                    continue          # not ours (pid reused)
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 3
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    print(json.dumps({"stopped": pids}))
    return 0


def _fail(msg):
    print(json.dumps({"error": msg}))
    return 3


def main(argv):
    if not argv:
        return _fail("usage: agent.py scan|survey|relay|send|kill ...")
    cmd, args = argv[0], argv[1:]
    if cmd == "scan":
        want_hash = "--hash" in args
        cache = None
        if "--cache" in args:
            cache = args[args.index("--cache") + 1]
        root = [a for i, a in enumerate(args)
                if not a.startswith("--") and (i == 0 or args[i - 1] != "--cache")][0]
        print(json.dumps(scan(root, want_hash, cache)))
        return 0
    if cmd == "survey":
        with open(args[0]) as fh:
            spec = json.load(fh)
        out = survey(spec)
        if "--relay" in args and out["needs"]:
            out["relay"] = start_relay(args[args.index("--relay") + 1])
        print(json.dumps(out))
        return 0
    if cmd == "relay":
        return cmd_relay(args[0])
    if cmd == "send":
        return cmd_send(args[0])
    if cmd == "kill":
        return cmd_kill(args[0])
    return _fail("unknown command %r" % cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
