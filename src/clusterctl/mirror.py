"""Offline mirrors for hosts without internet: a flat apt repository and a pip wheelhouse,
built on a machine that has the package registries (with the ordinary clients: apt-get,
pip) and served over plain HTTP to the hosts that have not.

Layout of a mirror directory DEST:

    DEST/apt/        *.deb, Packages, Packages.gz, Release   (a flat repository)
    DEST/pip/        *.whl, index.html (find-links page), simple/NAME/ (PEP 503 index)
    DEST/manifest.json   what it was built from; a build with the same inputs does nothing
    DEST/.work/      apt lists and download caches (reused by the next build)

Hosts use it with

    apt:  deb [trusted=yes] http://ADDR:PORT/apt ./
    pip:  pip install --no-index --find-links http://ADDR:PORT/pip/ --trusted-host ADDR ...

apt packages are resolved as they would be installed on a fresh node: with `image` (a
rootfs, e.g. the lab's node image) only what that system is missing is downloaded (the
dpkg status of the image is the starting point); without, the packages and their whole
dependency closure are. The Debian archive is the one this host's apt sources name.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote

from .errors import ClusterctlError, InputError

MANIFEST_VERSION = 1
DEFAULT_PORT = 8080
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- pure helpers

def apt_source_line(url: str) -> str:
    """The sources.list line for a mirror's apt URL (http://ADDR:PORT/apt)."""
    return f"deb [trusted=yes] {url.rstrip('/')} ./"


def pip_install_args(url: str) -> list[str]:
    """pip options that install only from a mirror's wheelhouse URL."""
    from urllib.parse import urlsplit
    return ["--no-index", "--find-links", url.rstrip("/") + "/",
            "--trusted-host", urlsplit(url).hostname or ""]


_INST_RE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)")


def parse_simulated_installs(text: str) -> list[tuple[str, str, str]]:
    """(name, version, arch) of each `Inst` line of `apt-get install -s`."""
    out = []
    for line in text.splitlines():
        m = _INST_RE.match(line)
        if m:
            name, version, arch = m.groups()
            out.append((name.split(":")[0], version, arch))
    return out


def deb_filename(name: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded package (epoch ':' is quoted as %3a)."""
    return f"{name}_{quote(version, safe='~+-.')}_{arch}.deb".replace("%3A", "%3a")


def normalize_project(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_project(filename: str) -> str | None:
    """Project name of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        return normalize_project(filename.split("-")[0])
    m = re.match(r"^(.+?)-\d[^-]*\.(tar\.gz|zip|tar\.bz2)$", filename)
    return normalize_project(m.group(1)) if m else None


def find_links_page(files: Iterable[str], title: str = "clusterctl wheelhouse") -> str:
    links = "\n".join(f'<a href="{quote(f)}">{html.escape(f)}</a><br/>' for f in sorted(files))
    return (f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head>"
            f"<body>\n{links}\n</body></html>\n")


def parse_pip_download(text: str) -> list[str]:
    """File names pip reports for a download ("Saved X" / "File was already downloaded X")."""
    names = []
    for line in text.splitlines():
        line = line.strip()
        for prefix in ("Saved ", "File was already downloaded "):
            if line.startswith(prefix):
                names.append(Path(line[len(prefix):].strip()).name)
    return names


def release_file(files: dict[str, bytes]) -> str:
    """A minimal Release for a flat repository (hashes of its index files)."""
    lines = ["Origin: clusterctl", "Label: clusterctl mirror", "Suite: mirror",
             "Codename: mirror",
             "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())]
    for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{field}:")
        for name, data in sorted(files.items()):
            lines.append(f" {algo(data).hexdigest()} {len(data):>16} {name}")
    return "\n".join(lines) + "\n"


def read_package_lists(path: str | Path) -> tuple[list[str], list[str]]:
    """`apt: [...]` and `pip: [...]` from a YAML file like lab/mirror_packages.yaml."""
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with keys apt and pip")
    out = []
    for key in ("apt", "pip"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{path}: {key} must be a list of strings", file=str(path), key=key)
        out.append(list(value))
    return out[0], out[1]


# ----------------------------------------------------------------------------- build

def _run(argv: list[str], *, timeout: float = 1800, cwd: Path | None = None,
         stdout=None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, cwd=cwd, text=True, timeout=timeout,
                              stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE)
    except FileNotFoundError:
        pkg = {"dpkg-scanpackages": "dpkg-dev", "apt-get": "apt"}.get(argv[0], argv[0])
        raise ClusterctlError(f"{argv[0]} not found; install it with: apt-get install {pkg}") \
            from None
    except subprocess.TimeoutExpired:
        raise ClusterctlError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        tail = "\n".join("    " + ln for ln in
                         (proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise ClusterctlError(f"mirror build: command failed (exit {proc.returncode}): "
                              f"{' '.join(argv)}" + ("\n" + tail if tail else ""))
    return proc


def _image_python(image: Path | None) -> str | None:
    if image is None:
        return None
    for p in sorted((Path(image) / "usr/bin").glob("python3.*")):
        ver = p.name[len("python"):]
        if ver.replace(".", "").isdigit():
            return ver
    return None


def _image_fingerprint(image: Path | None) -> str | None:
    if image is None:
        return None
    status = Path(image) / "var/lib/dpkg/status"
    try:
        return hashlib.sha256(status.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise InputError(f"{image} is not a Debian root file system "
                         "(no var/lib/dpkg/status)") from None


def _swap_dir(new: Path, final: Path) -> None:
    """Replace `final` by `new` (what is served switches in two renames)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old)


def mirror_inputs(apt_packages, pip_requirements, image) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "apt": sorted(set(apt_packages)),
        "pip": list(dict.fromkeys(pip_requirements)),
        "image": _image_fingerprint(Path(image)) if image else None,
        "python": _image_python(Path(image)) if image else
        f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def read_manifest(dest: Path) -> dict:
    try:
        return json.loads((Path(dest) / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def mirror_is_current(dest: Path, apt_packages, pip_requirements, *, image=None) -> bool:
    dest = Path(dest)
    manifest = read_manifest(dest)
    return (manifest.get("inputs") == mirror_inputs(apt_packages, pip_requirements, image)
            and (dest / "apt/Packages").is_file() and (dest / "pip/index.html").is_file())


def build_mirror(dest: str | Path, apt_packages: list[str], pip_requirements: list[str], *,
                 image: str | Path | None = None, force: bool = False,
                 log: Log = print) -> dict:
    """Build (or bring up to date) the mirror in `dest`; returns its manifest.

    Idempotent: when the package lists and the image are the ones of the last build, it
    does nothing. A changed list rebuilds, reusing every file already downloaded.
    """
    dest = Path(dest)
    image = Path(image) if image else None
    for pkg in apt_packages:
        if not re.match(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?$", pkg):
            raise InputError(f"bad apt package name {pkg!r}", key="apt")
    inputs = mirror_inputs(apt_packages, pip_requirements, image)
    if not force and mirror_is_current(dest, apt_packages, pip_requirements, image=image):
        return read_manifest(dest)
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / ".work"
    work.mkdir(exist_ok=True)
    started = time.monotonic()
    with _lock(dest / ".lock"):
        if not force and mirror_is_current(dest, apt_packages, pip_requirements, image=image):
            return read_manifest(dest)          # built meanwhile by another clusterctl
        manifest = {"inputs": inputs, "built": None}
        t0 = time.monotonic()
        manifest["apt_files"] = _build_apt(dest, work, inputs["apt"], image, log)
        manifest["apt_seconds"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        manifest["pip_files"] = _build_pip(dest, work, inputs["pip"], inputs["python"], log)
        manifest["pip_seconds"] = round(time.monotonic() - t0, 1)
        manifest["built"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["build_seconds"] = round(time.monotonic() - started, 1)
        tmp = dest / ".manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, dest / "manifest.json")
    return manifest


class _lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {self.path} (another clusterctl is building this mirror)",
                  file=sys.stderr, flush=True)
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _apt_options(work: Path, status: Path) -> list[str]:
    """apt-get with its own lists, caches and dpkg status: the host's apt sources and
    configuration, nothing of the host's package state read or written."""
    return [
        "-o", f"Dir::State::Lists={work / 'lists'}",
        "-o", f"Dir::State::status={status}",
        "-o", f"Dir::State::extended_states={work / 'extended_states'}",
        "-o", f"Dir::Cache={work / 'cache'}",
        "-o", f"Dir::Cache::archives={work / 'archives'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Install-Recommends=true",     # a fresh Debian system's default
        "-o", "APT::Get::Assume-Yes=true",
        "-o", "quiet=1",
    ]


def _build_apt(dest: Path, work: Path, packages: list[str], image: Path | None,
               log: Log) -> list[str]:
    for sub in ("lists/partial", "cache", "archives/partial"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    status = image / "var/lib/dpkg/status" if image else work / "empty-status"
    if image is None:
        status.write_text("")
    opts = _apt_options(work, status)
    files: list[str] = []
    if packages:
        log(f"apt: resolving {len(packages)} packages"
            + (f" against the node image {image}" if image else " with all dependencies"))
        _run(["apt-get", *opts, "update"], timeout=600)
        sim = _run(["apt-get", *opts, "install", "-s", *packages], timeout=600).stdout
        wanted = parse_simulated_installs(sim)
        _run(["apt-get", *opts, "install", "--download-only", *packages], timeout=3600)
        archives = work / "archives"
        present = {p.name for p in archives.glob("*.deb")}
        missing = []
        for name, version, arch in wanted:
            fname = deb_filename(name, version, arch)
            if fname not in present:
                missing.append(fname)
            files.append(fname)
        if missing:
            raise ClusterctlError("apt downloaded less than it planned; missing: "
                                  + ", ".join(missing[:10]))
        for stale in present - set(files):             # keep the download cache lean
            (archives / stale).unlink(missing_ok=True)
    new = dest / ".apt.new"
    if new.exists():
        shutil.rmtree(new)
    new.mkdir()
    for fname in files:
        os.link(work / "archives" / fname, new / fname)
    packages_index = _run(["dpkg-scanpackages", "-m", ".", "/dev/null"], cwd=new).stdout
    data = packages_index.encode()
    (new / "Packages").write_bytes(data)
    gz = gzip.compress(data, mtime=0)
    (new / "Packages.gz").write_bytes(gz)
    (new / "Release").write_text(release_file({"Packages": data, "Packages.gz": gz}))
    _swap_dir(new, dest / "apt")
    size = sum((dest / "apt" / f).stat().st_size for f in files)
    log(f"apt: {len(files)} packages ({size / 1e6:.0f} MB) in {dest / 'apt'}")
    return sorted(files)


def _build_pip(dest: Path, work: Path, requirements: list[str], python: str | None,
               log: Log) -> list[str]:
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if requirements:
        log(f"pip: downloading {', '.join(requirements)} with dependencies")
        argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                "--progress-bar", "off", "-d", str(wheels)]
        host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if python and python != host_python:
            # the nodes run another Python: wheels only, for their version
            argv += ["--python-version", python, "--only-binary=:all:"]
        out = _run([*argv, *requirements], timeout=3600).stdout
        files = list(dict.fromkeys(parse_pip_download(out)))
        if not files:
            raise ClusterctlError("pip download reported no files; output:\n" + out[-2000:])
        files = [_ensure_wheel(wheels, f, log) for f in files]
        for stale in {p.name for p in wheels.iterdir() if p.is_file()} - set(files):
            (wheels / stale).unlink(missing_ok=True)
    new = dest / ".pip.new"
    if new.exists():
        shutil.rmtree(new)
    new.mkdir()
    by_project: dict[str, list[str]] = {}
    for fname in files:
        os.link(wheels / fname, new / fname)
        project = dist_project(fname)
        if project:
            by_project.setdefault(project, []).append(fname)
    (new / "index.html").write_text(find_links_page(files))
    simple = new / "simple"
    simple.mkdir()
    (simple / "index.html").write_text(
        "<!DOCTYPE html>\n<html><body>\n" + "\n".join(
            f'<a href="{p}/">{p}</a><br/>' for p in sorted(by_project)) + "\n</body></html>\n")
    for project, names in by_project.items():
        (simple / project).mkdir()
        (simple / project / "index.html").write_text(
            find_links_page([f"../../{n}" for n in names], title=project))
    _swap_dir(new, dest / "pip")
    size = sum((dest / "pip" / f).stat().st_size for f in files)
    log(f"pip: {len(files)} files ({size / 1e6:.0f} MB) in {dest / 'pip'}")
    return sorted(files)


def _ensure_wheel(wheels: Path, fname: str, log: Log) -> str:
    """Nodes have no build dependencies: turn an sdist into a wheel here."""
    if fname.endswith(".whl"):
        return fname
    before = {p.name for p in wheels.glob("*.whl")}
    log(f"pip: building a wheel from {fname}")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
          "-w", str(wheels), str(wheels / fname)], timeout=1800)
    built = sorted({p.name for p in wheels.glob("*.whl")} - before)
    if not built:
        return fname
    (wheels / fname).unlink(missing_ok=True)
    return built[0]


# ----------------------------------------------------------------------------- serve

@dataclass
class ServedMirror:
    """An HTTP server process serving a mirror directory (recorded to be stopped later)."""
    pid: int
    pid_start: int
    address: str
    port: int
    directory: str

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def to_dict(self) -> dict:
        return asdict(self)


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _server_argv(directory: Path, address: str, port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", "--bind", address,
            "--directory", str(directory), str(port)]


def is_serving(served: ServedMirror) -> bool:
    """The recorded server process is alive and is still the one we started."""
    if _start_time(served.pid) != served.pid_start:
        return False
    try:
        args = Path(f"/proc/{served.pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    args = [a.decode(errors="replace") for a in args]
    return "http.server" in args and served.directory in args


def _free_port(address: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ClusterctlError(f"no free TCP port on {address}")


def serve_mirror(directory: str | Path, address: str, port: int = DEFAULT_PORT, *,
                 log_file: str | Path | None = None, pick_free_port: bool = False,
                 timeout: float = 10.0) -> ServedMirror:
    """Start an HTTP server for `directory`, bound to `address` only, in the background.
    With pick_free_port, another port is used when `port` is taken."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise InputError(f"mirror directory {directory} does not exist")
    if pick_free_port:
        port = _free_port(address, port)
    out = open(log_file, "ab") if log_file else open(os.devnull, "wb")
    with out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(_server_argv(directory, address, port), stdin=devnull,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    started = _start_time(proc.pid) or 0
    served = ServedMirror(proc.pid, started, address, port, str(directory))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_file).read_text(errors="replace")[-1500:] if log_file else ""
            raise ClusterctlError(f"the mirror server on {address}:{port} exited "
                                  f"(exit {proc.returncode}); is the port taken?\n{tail}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                proc.returncode = 0          # tracked by PID from here on
                return served
        except OSError:
            time.sleep(0.05)
    stop_mirror(served)
    raise ClusterctlError(f"the mirror server on {address}:{port} did not start in "
                          f"{timeout:.0f}s")


def stop_mirror(served: ServedMirror, timeout: float = 5.0) -> bool:
    """Stop a server we started (only when its PID is still that server). True if gone."""
    import signal
    if not is_serving(served):
        return True
    os.kill(served.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(served.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if _start_time(served.pid) != served.pid_start:
            return True
        time.sleep(0.05)
    if is_serving(served):
        os.kill(served.pid, signal.SIGKILL)
    return True


def serve_foreground(directory: str | Path, address: str, port: int) -> None:
    """Serve in the foreground until interrupted (the CLI's `mirror serve`)."""
    directory = Path(directory).resolve()
    if not (directory / "apt").is_dir() and not (directory / "pip").is_dir():
        raise InputError(f"{directory} is not a mirror (no apt/ or pip/ in it); "
                         "build one with `clusterctl mirror build --dest DIR`")
    os.execv(sys.executable, _server_argv(directory, address, port))
