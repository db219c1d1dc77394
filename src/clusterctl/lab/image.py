"""The node image: Debian 12 as a freshly installed server would be, built once with
debootstrap and cached under $CLUSTERCTL_CACHE/images/ (default /var/cache/clusterctl).

The image is shared read-only by every node (each node has its own overlay upper dir).
It has systemd, sshd, python3, iproute2 and ping, and nothing the roles install. Things
that must differ per node (host keys, machine-id, hostname) are removed from the image
and written into each node's upper dir before boot.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ClusterctlError
from . import host
from .state import cache_root

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2",
            "iputils-ping", "python3")
RECIPE_VERSION = 1      # bump when the post-install steps below change


def recipe_key() -> str:
    text = json.dumps([SUITE, VARIANT, sorted(PACKAGES), RECIPE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_dir() -> Path:
    return cache_root() / "images" / f"debian12-{recipe_key()}"


def image_rootfs() -> Path:
    return image_dir() / "rootfs"


def image_manifest() -> Path:
    return image_dir() / "manifest.json"


# ----------------------------------------------------------------------------- apt sources

def _one_line_sources(text: str) -> list[tuple[list[str], str, list[str]]]:
    """(types, uri, suites) of each `deb URI SUITE COMPONENTS` line."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        kind = parts[0]
        rest = parts[1:]
        if rest and rest[0].startswith("["):          # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            out.append(([kind], rest[0], [rest[1]]))
    return out


def _deb822_sources(text: str) -> list[tuple[list[str], str, list[str]]]:
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and last:
                fields[last] += " " + raw.strip()
                continue
            if ":" in raw:
                key, value = raw.split(":", 1)
                last = key.strip().lower()
                fields[last] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append((fields.get("types", "").split(), uri, fields.get("suites", "").split()))
    return out


def debian_mirror_url(files: dict[str, str], suite: str = SUITE) -> str | None:
    """The Debian archive URL this host's apt uses for `suite` (from sources.list and
    sources.list.d/*.list|*.sources, given as path -> text). Pure."""
    for path in sorted(files, key=lambda p: (not p.endswith("sources.list"), p)):
        text = files[path]
        entries = _deb822_sources(text) if path.endswith(".sources") else \
            _one_line_sources(text)
        for types, uri, suites in entries:
            if "deb" in types and suite in suites:
                return uri.rstrip("/")
    return None


def host_apt_sources() -> dict[str, str]:
    files: dict[str, str] = {}
    main = Path("/etc/apt/sources.list")
    if main.is_file():
        files[str(main)] = main.read_text(errors="replace")
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.suffix in (".list", ".sources") and p.is_file():
                files[str(p)] = p.read_text(errors="replace")
    return files


def host_debian_mirror() -> str:
    url = debian_mirror_url(host_apt_sources())
    if not url:
        raise ClusterctlError(
            f"no Debian '{SUITE}' archive in this host's apt sources (/etc/apt/sources.list, "
            "/etc/apt/sources.list.d/); the lab image is built from the same archive "
            "the host uses")
    return url


# ----------------------------------------------------------------------------- build

@contextmanager
def cache_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} (another clusterctl is building the same cache)",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def image_ready() -> bool:
    return image_manifest().is_file() and (image_rootfs() / "usr/lib/systemd/systemd").exists()


def ensure_image(log=print) -> Path:
    """The cached image's rootfs, building it first when there is none (~1-2 minutes)."""
    if image_ready():
        return image_rootfs()
    with cache_lock(cache_root() / "images" / ".lock"):
        if image_ready():
            return image_rootfs()
        host.require_tools(["debootstrap"])
        build_image(image_dir(), log=log)
    return image_rootfs()


def build_image(dest: Path, log=print) -> None:
    mirror = host_debian_mirror()
    tmp = dest.parent / f".build-{dest.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    rootfs = tmp / "rootfs"
    rootfs.parent.mkdir(parents=True)
    started = time.monotonic()
    log(f"building the node image with debootstrap ({SUITE}, {VARIANT}); "
        f"this happens once, it is cached in {dest}")
    logfile = tmp / "debootstrap.log"
    try:
        with open(logfile, "w") as fh:
            proc = subprocess.run(
                ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                 SUITE, str(rootfs), mirror],
                stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
        if proc.returncode != 0:
            tail = "\n".join("    " + ln for ln in
                             logfile.read_text(errors="replace").splitlines()[-15:])
            raise ClusterctlError(f"debootstrap failed (exit {proc.returncode}); "
                                  f"log {logfile}:\n{tail}")
        _post_install(rootfs)
        manifest = {
            "suite": SUITE, "variant": VARIANT, "packages": list(PACKAGES),
            "recipe": RECIPE_VERSION, "key": recipe_key(), "archive": mirror,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - started, 1),
            "python": _python_version(rootfs),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"node image built in {time.monotonic() - started:.0f}s")


def _post_install(rootfs: Path) -> None:
    """Make the debootstrapped tree a shared, per-node-neutral server image."""
    host.run(["chroot", str(rootfs), "systemctl", "enable", "systemd-networkd"])
    host.run(["chroot", str(rootfs), "apt-get", "clean"])
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")          # each node gets its own
    (rootfs / "etc/hostname").unlink(missing_ok=True)   # debootstrap copied the host's
    # sshd reads drop-ins; each node's upper dir adds the host key it has
    (rootfs / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)


def _python_version(rootfs: Path) -> str | None:
    for p in sorted((rootfs / "usr/bin").glob("python3.*")):
        name = p.name[len("python"):]
        if name.replace(".", "").isdigit():
            return name
    return None


def image_info() -> dict:
    try:
        return json.loads(image_manifest().read_text())
    except FileNotFoundError:
        return {}
