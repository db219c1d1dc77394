"""llama.cpp with RPC: built once per class of identical nodes, copied to the rest.

The op `llamacpp_build` plans purely: the build id is a hash of the source spec,
the CMake flags and the node class (OS, arch, CUDA version, GPU architectures);
a node whose `PREFIX/BUILD-INFO.json` carries that id is a noop. The cluster
executor then, for each class with work to do:

1. stages the source once on the controller (~/.cache/clusterctl/llamacpp):
   a pip requirement such as `llama-cpp-python==0.3.36` (its sdist vendors the
   whole llama.cpp tree), a git URL + ref, or a local folder / tarball;
2. builds on one node of the class (static binaries: ggml-rpc-server or
   rpc-server, llama-server, llama-cli), reporting progress while it runs;
3. brings the installed prefix back to the controller's artifact cache and
   sends it through the relay chain of clusterctl.sync to the other nodes of the class
   (and to any later node): the controller's link carries one copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from ..errors import ClusterctlError, HostError, InputError
from ..facts import FactRequest, Facts
from ..ops import OPS
from ..ops.base import Change, Noop, Op, Param, check_abs_path, plural
from ..session import failure_reason as _message
from .results import TaskResult

BUILD_INFO = "BUILD-INFO.json"
REMOTE_CACHE = "/var/cache/clusterctl"
BINARIES = ("rpc-server", "llama-server", "llama-cli")


def cache_dir() -> Path:
    base = os.environ.get("CLUSTERCTL_CACHE_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clusterctl")
    return Path(base)


_ARCH = re.compile(r"^(\d{2,3})([af]?)(-real|-virtual)?$")


def check_architectures(value) -> list[str] | None:
    """The inventory's `llamacpp.cuda_architectures` as CMake wants them (None: not given).
    Entries as CMAKE_CUDA_ARCHITECTURES writes them: `90` (SASS + PTX), `90-real`,
    `90-virtual`, `90a`; `native`/`all` need a GPU at build time or build for every
    architecture, so they are refused."""
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("cuda_architectures: expected a non-empty list such as [\"90\"] "
                         f"(compute capability 9.0 -> 90), got {value!r}")
    out = []
    for item in value:
        text = str(item).strip().replace(".", "") if isinstance(item, (str, int)) else ""
        if not _ARCH.match(text):
            raise ValueError(f"cuda_architectures: {item!r} is not a CUDA architecture; "
                             "write the compute capability without the dot (8.6 -> \"86\"), "
                             "optionally with -real or -virtual")
        if text not in out:
            out.append(text)
    return out


def cuda_architectures(facts: Facts) -> list[str]:
    """The compute capabilities of the node's GPUs (facts), as CMake architectures."""
    caps = sorted({str(g.compute_cap).replace(".", "") for g in facts.gpus
                   if getattr(g, "compute_cap", None)})
    return caps


def covers(archs: list[str], cap: str) -> bool:
    """Can a build for `archs` run on a GPU of compute capability `cap` ("86")? SASS runs
    on the same major at an equal or higher minor; PTX (plain or -virtual) is compiled by
    the driver for any equal or newer GPU; `a`/`f` variants only on their own family."""
    want = int(cap)
    for a in archs:
        m = _ARCH.match(a)
        if not m:
            continue
        num, variant, kind = int(m.group(1)), m.group(2), m.group(3)
        if variant:
            if num == want or (variant == "f" and num // 10 == want // 10 and num <= want):
                return True
            continue
        if kind != "-real" and num <= want:                   # PTX: forward compatible
            return True
        if kind != "-virtual" and num // 10 == want // 10 and num <= want:   # SASS
            return True
    return False


def target_architectures(facts: Facts, given: list[str] | None) -> list[str]:
    """The architectures a CUDA build is made for: the inventory's list when given (a build
    node without a GPU, or one class built for several GPU models), else the node's GPUs.
    A GPU of the node that the given list cannot run on is refused (the build would fail at
    the first kernel with "no kernel image is available")."""
    found = cuda_architectures(facts)
    if given is None:
        return found
    missed = [c for c in found if not covers(given, c)]
    if missed:
        from ..ops.base import PlanError
        raise PlanError(f"llamacpp.cuda_architectures {given} cannot run on this node's "
                        f"GPU(s) of compute capability {', '.join(missed)}; add "
                        f"{', '.join(repr(c) for c in missed)} to the list or leave it unset "
                        "to build for the GPUs found")
    return list(given)


def build_flags(facts: Facts, cuda: str | bool,
                architectures: list[str] | None = None) -> tuple[list[str], bool]:
    use_cuda = (cuda is True or cuda == "on" or
                (cuda in ("auto", None) and bool(facts.gpus) and bool(facts.nvcc)))
    flags = ["-DGGML_RPC=ON", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF",
             "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    if use_cuda:
        flags.append("-DGGML_CUDA=ON")
        archs = target_architectures(facts, architectures)
        if archs:
            flags.append("-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(archs))
    return flags, use_cuda


def node_class(facts: Facts, use_cuda: bool, architectures: list[str] | None = None) -> dict:
    os_info = facts.os or {}
    return {"os": f"{os_info.get('id', '?')}-{os_info.get('version_id', '?')}",
            "arch": facts.arch, "cuda": facts.nvcc if use_cuda else None,
            "gpu_arch": target_architectures(facts, architectures) if use_cuda else []}


def build_id(source: str, ref: str | None, flags: list[str], klass: dict) -> str:
    blob = json.dumps({"source": source, "ref": ref, "flags": flags, "class": klass},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class LlamaCppBuild(Op):
    name = "llamacpp_build"
    params = {
        "source": Param(str, required=True, help="pip requirement, git URL, or local path"),
        "ref": Param((str, type(None)), help="git ref (tag/commit) for a git URL"),
        "prefix": Param(str, required=True, help="install prefix, the same on every node"),
        "cuda": Param((str, bool), default="auto", help="auto | true | false"),
        "cuda_architectures": Param((list, str, int, type(None)),
                                    help="CMAKE_CUDA_ARCHITECTURES, e.g. [\"90\"]; default: "
                                         "the node's GPUs"),
        "jobs": Param((int, type(None)), help="parallel build jobs (default: CPUs)"),
    }

    def normalize(self, args):
        args["prefix"] = check_abs_path("prefix", args["prefix"])
        if isinstance(args["cuda"], str) and args["cuda"] not in ("auto", "on", "off",
                                                                  "true", "false"):
            raise ValueError(f"cuda: expected auto, true or false, got {args['cuda']!r}")
        if args["cuda"] in ("true", "on"):
            args["cuda"] = True
        elif args["cuda"] in ("false", "off"):
            args["cuda"] = False
        args["cuda_architectures"] = check_architectures(args.get("cuda_architectures"))
        return args

    def requests(self, args):
        return [FactRequest("file", f"{args['prefix']}/{BUILD_INFO}")]

    def desired(self, facts: Facts, args) -> dict:
        archs = args.get("cuda_architectures")
        flags, use_cuda = build_flags(facts, args["cuda"], archs)
        klass = node_class(facts, use_cuda, archs)
        return {"id": build_id(args["source"], args["ref"], flags, klass), "flags": flags,
                "class": klass, "cuda": use_cuda, "source": args["source"], "ref": args["ref"]}

    def plan(self, facts: Facts, args):
        want = self.desired(facts, args)
        current = facts.get(FactRequest("file", f"{args['prefix']}/{BUILD_INFO}"))
        have = None
        if current.get("exists") and current.get("content"):
            try:
                have = json.loads(current["content"]).get("id")
            except (ValueError, AttributeError):
                have = None
        what = "RPC" + (" + CUDA " + ",".join(want["class"]["gpu_arch"]) if want["cuda"] else "")
        if have == want["id"]:
            return Noop(self.name, args["prefix"],
                        f"llama.cpp build {have} ({what}) already in {args['prefix']}")
        diff = f"build id: {have or '-'} -> {want['id']}\nflags: {' '.join(want['flags'])}"
        return Change(self.name, args["prefix"], [], diff,
                      f"build llama.cpp ({what}) from {args['source']} into {args['prefix']}")


OPS.setdefault("llamacpp_build", LlamaCppBuild())


# -- controller side: staging the source ---------------------------------------

_stage_lock = threading.Lock()


def _is_git(source: str) -> bool:
    return source.endswith(".git") or source.startswith(("git@", "git://", "git+")) or \
        bool(re.match(r"https?://.*(github|gitlab|codeberg)", source))


def stage_source(source: str, ref: str | None) -> Path:
    """A tarball of the llama.cpp source on the controller (cached by spec)."""
    key = hashlib.sha256(f"{source}@{ref}".encode()).hexdigest()[:16]
    out = cache_dir() / "llamacpp" / f"src-{key}.tar.gz"
    with _stage_lock:
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        local = Path(source).expanduser()
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tmp_path = Path(tmp)
            if local.exists():
                if local.is_file():
                    (tmp_path / "src.tar.gz").write_bytes(local.read_bytes())
                else:
                    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
                        tar.add(local, arcname="llama.cpp")
                (tmp_path / "src.tar.gz").rename(out)
                return out
            if _is_git(source):
                url = source[4:] if source.startswith("git+") else source
                cmd = ["git", "clone", "--depth", "1"] + (["--branch", ref] if ref else []) \
                    + [url, str(tmp_path / "llama.cpp")]
                _controller_run(cmd, "git clone of the llama.cpp source")
                with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
                    tar.add(tmp_path / "llama.cpp", arcname="llama.cpp",
                            filter=lambda ti: None if "/.git" in ti.name else ti)
                (tmp_path / "src.tar.gz").rename(out)
                return out
            # a pip requirement: its sdist (llama-cpp-python vendors llama.cpp)
            import sys
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
                   "-d", str(tmp_path), source]
            _controller_run(cmd, f"pip download of {source}")
            found = [p for p in tmp_path.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
            if not found:
                raise InputError(f"llamacpp.source {source!r}: pip fetched no source archive")
            found[0].rename(out)
            return out


def _controller_run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterctlError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise ClusterctlError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")


# -- node side: the build script ---------------------------------------------------

# The toolkit of the nvcc the node has: nvcc on PATH is often a wrapper script or a link
# (/usr/local/bin/nvcc, /usr/bin/nvcc), from which CMake's FindCUDAToolkit would take the
# wrong root; nvcc's own dry run names the folder it runs from (`_HERE_`).
_CUDA_LOCATE = r"""nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] || { echo "GGML_CUDA=ON but no nvcc on PATH or in /usr/local/cuda/bin" >&2; exit 4; }
here=$("$nvcc" -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)
[ -n "$here" ] && [ -x "$here/nvcc" ] || here=$(dirname "$nvcc")
here=$(dirname "$(readlink -f "$here/nvcc")")
export CUDACXX="$here/nvcc"
cuda_args="-DCUDAToolkit_ROOT=$(dirname "$here")"
echo "CUDA toolkit: $(dirname "$here"), $("$here/nvcc" --version | grep release)"
"""


def build_script(src_tar: str, workdir: str, prefix: str, flags: list[str], jobs: int | None,
                 info: dict) -> str:
    q = shlex.quote
    return f"""set -eu
work={q(workdir)}; prefix={q(prefix)}
rm -rf "$work"; mkdir -p "$work/src"
tar -xzf {q(src_tar)} -C "$work/src"
root=$(dirname "$(find "$work/src" -maxdepth 6 -path '*/ggml/CMakeLists.txt' | awk '{{ print length($0), $0 }}' | sort -n | head -n 1 | cut -d' ' -f2-)")
root=$(dirname "$root")
[ -f "$root/CMakeLists.txt" ] || {{ echo "no llama.cpp tree (ggml/CMakeLists.txt) in the source" >&2; exit 3; }}
cd "$root"
{_CUDA_LOCATE if "-DGGML_CUDA=ON" in flags else 'cuda_args=""'}
echo "STEP configure $(date +%s)"
cmake -B build {' '.join(q(f) for f in flags)} $cuda_args
targets=$(cmake --build build --target help)
want=""
has_target() {{ printf '%s\\n' "$targets" | grep -Eq -- "(^|[[:space:]])$1(:|[[:space:]]|\\$)"; }}
if has_target ggml-rpc-server; then want="ggml-rpc-server"; else want="rpc-server"; fi
for t in llama-server llama-cli; do if has_target "$t"; then want="$want $t"; fi; done
echo "STEP build $(date +%s)"
cmake --build build -j{jobs or '"$(nproc)"'} --target $want
echo "STEP install $(date +%s)"
echo "CPU of the build (user, system): $(times | tail -n 1)"
mkdir -p "$prefix/bin.new"
for t in $want; do cp "build/bin/$t" "$prefix/bin.new/$t"; done
if [ -x "$prefix/bin.new/ggml-rpc-server" ] && [ ! -e "$prefix/bin.new/rpc-server" ]; then
  ln -s ggml-rpc-server "$prefix/bin.new/rpc-server"; fi
if [ -x "$prefix/bin.new/rpc-server" ] && [ ! -e "$prefix/bin.new/ggml-rpc-server" ]; then
  ln -s rpc-server "$prefix/bin.new/ggml-rpc-server"; fi
cp -r gguf-py "$prefix/gguf-py.new" 2>/dev/null || true
rm -rf "$prefix/bin" && mv "$prefix/bin.new" "$prefix/bin"
echo {q(json.dumps(info, sort_keys=True))} > "$prefix/{BUILD_INFO}.new"
mv "$prefix/{BUILD_INFO}.new" "$prefix/{BUILD_INFO}"
mkdir -p {REMOTE_CACHE}
tar -czf {REMOTE_CACHE}/llamacpp-{info['id']}.tar.gz -C "$prefix" bin {BUILD_INFO}
rm -rf "$work"
echo BUILD-DONE
"""


def _remote_build(runner, state, src: Path, prefix: str, want: dict, jobs: int | None) -> None:
    conn = state.conn
    remote_src = f"{REMOTE_CACHE}/llamacpp-{src.name}"
    conn.run(["mkdir", "-p", REMOTE_CACHE, prefix])
    size = conn.run(f"stat -c %s {shlex.quote(remote_src)} 2>/dev/null || echo 0",
                    check=False).stdout.strip()
    if size != str(src.stat().st_size):
        conn.put(src.read_bytes(), remote_src)
    log = f"{REMOTE_CACHE}/llamacpp-build-{want['id']}.log"
    script_path = f"{REMOTE_CACHE}/llamacpp-build-{want['id']}.sh"
    info = {"id": want["id"], "source": want["source"], "ref": want["ref"],
            "flags": want["flags"], "class": want["class"], "built_on": state.host.name,
            "built_at": int(time.time())}
    conn.put(build_script(remote_src, f"/var/tmp/clusterctl-llamacpp-{want['id']}", prefix,
                          want["flags"], jobs, info), script_path, mode=0o700)
    pid = conn.run(f"nohup bash {shlex.quote(script_path)} > {shlex.quote(log)} 2>&1 & echo $!"
                   ).stdout.strip()
    progress = getattr(runner.reporter, "progress", None)
    last = ""
    while True:
        time.sleep(5)
        res = conn.run(f"kill -0 {int(pid)} 2>/dev/null && echo RUNNING; "
                       f"tail -n 40 {shlex.quote(log)}", check=False)
        running = res.stdout.startswith("RUNNING")
        pct = re.findall(r"\[\s*(\d+)%\]", res.stdout)
        line = f"building llama.cpp: {pct[-1]}%" if pct else "building llama.cpp: configuring"
        if progress and line != last:
            progress(state.host.name, line)
            last = line
        if not running:
            break
    if "BUILD-DONE" not in res.stdout:
        tail = conn.run(["tail", "-n", "25", log], check=False).stdout
        raise HostError(state.host.name, f"llama.cpp build failed (log {log}):\n"
                        + "\n".join("    " + ln for ln in tail.rstrip().splitlines()))


def execute_llamacpp(runner, play, role, task, planned_states) -> dict:
    """CLUSTER_EXECUTORS entry: build once per class, copy to the rest."""
    results: dict[str, TaskResult] = {}
    classes: dict[str, list] = {}
    op = OPS["llamacpp_build"]
    for state, planned in planned_states:
        if not isinstance(planned.outcome, Change):
            results[state.host.name] = runner.outcome_result(state, planned)
            continue
        want = op.desired(state.facts, planned.args)
        classes.setdefault(want["id"], []).append((state, planned, want))

    def do_class(items):
        out = {}
        first_state, first_planned, want = items[0]
        args = first_planned.args
        artifact = cache_dir() / "llamacpp" / f"llamacpp-{want['id']}.tar.gz"
        start = time.monotonic()
        built_on = None
        if not artifact.exists():
            src = stage_source(args["source"], args["ref"])
            _remote_build(runner, first_state, src, args["prefix"], want, args["jobs"])
            data = first_state.conn.get(f"{REMOTE_CACHE}/llamacpp-{want['id']}.tar.gz")
            artifact.parent.mkdir(parents=True, exist_ok=True)
            tmp = artifact.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(artifact)
            built_on = first_state.host.name
            out[built_on] = TaskResult(built_on, task, "changed",
                                       f"built llama.cpp {want['id']} "
                                       f"({' '.join(want['flags'])}) in "
                                       f"{time.monotonic() - start:.0f}s")
        rest = [state for state, _p, _w in items if state.host.name != built_on]
        if not rest:
            return out
        # the build travels the relay chain: the controller's link carries one copy
        t_copy = time.monotonic()
        remote = f"{REMOTE_CACHE}/{artifact.name}"
        names = [state.host.name for state in rest]
        from ..sync import sync_path
        report = sync_path(runner.inventory, artifact, REMOTE_CACHE, artifact.name,
                           hosts=names, session=runner.session)
        size = artifact.stat().st_size
        src_host = f" from {built_on}" if built_on else " from the controller's cache"
        sent = (f"{size / 1e6:.1f} MB; the controller sent "
                f"{report.controller_bytes / 1e6:.1f} MB for {plural(len(names), 'node')}")

        def unpack(state):
            why = report.lost(state.host.name)
            if why is not None:
                raise HostError(state.host.name, f"the llama.cpp build did not arrive: {why}")
            state.conn.run(f"mkdir -p {shlex.quote(args['prefix'])} && "
                           f"cd {shlex.quote(args['prefix'])} && rm -rf bin && "
                           f"tar -xzf {shlex.quote(remote)}")
            return TaskResult(state.host.name, task, "changed",
                              f"installed llama.cpp build {want['id']}{src_host} ({sent}, "
                              f"{time.monotonic() - t_copy:.1f}s)")

        group = runner.session.map(unpack, rest, step="llamacpp : unpack the build")
        for state in rest:
            res = group.outcome(state.host.name)
            out[state.host.name] = res if isinstance(res, TaskResult) else TaskResult(
                state.host.name, task, "failed", _message(res))
        return out

    for build, items in classes.items():
        try:
            results.update(do_class(items))
        except ClusterctlError as exc:
            for state, _p, _w in items:
                results.setdefault(state.host.name,
                                   TaskResult(state.host.name, task, "failed", _message(exc)))
    for name, res in results.items():
        if res.status == "failed":
            runner.states[name].failed = res.message
        elif res.status == "changed":
            runner.states[name].changed_in_play = True
    return results

