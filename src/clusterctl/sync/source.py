"""What SOURCE means, the model's name, and the Hugging Face download command. Pure.

SOURCE is, in this order:
  hf:ORG/NAME[@REVISION]      a Hugging Face repo (explicit)
  NODE:/abs/path              a file or folder on an inventory host
  PATH                        a file or folder on the controller (if it exists)
  ORG/NAME[@REVISION]         a Hugging Face repo id (when no such local path exists)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import InputError
from ..secret import Secret

_HF_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@([^\s@]+))?$")
_NODE_RE = re.compile(r"^([A-Za-z0-9_.\-]+):(/.*)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+@=-]*$")


@dataclass(frozen=True)
class LocalSource:
    path: Path                     # absolute, on the controller

    def __str__(self) -> str:
        return str(self.path)

    @property
    def default_name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class NodeSource:
    host: str
    path: str                      # absolute, on that host

    def __str__(self) -> str:
        return f"{self.host}:{self.path}"

    @property
    def default_name(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or "model"


@dataclass(frozen=True)
class HFSource:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def default_name(self) -> str:
        return self.repo_id.split("/", 1)[1]


Source = LocalSource | NodeSource | HFSource


def parse_source(text: str, host_names, *, cwd: str | None = None,
                 exists=os.path.exists) -> Source:
    """Parse SOURCE; `host_names` are the inventory's hosts."""
    text = (text or "").strip()
    if not text:
        raise InputError("SOURCE is empty: give a folder or file, NODE:/path or a Hugging "
                         "Face repo id", key="SOURCE")
    if text.startswith("hf:"):
        m = _HF_RE.match(text[3:])
        if not m:
            raise InputError(f"{text!r} is not a Hugging Face repo id (hf:ORG/NAME[@REVISION])",
                             key="SOURCE")
        return HFSource(m.group(1), m.group(2))
    m = _NODE_RE.match(text)
    if m and not exists(text):
        host, path = m.group(1), os.path.normpath(m.group(2))
        if host not in host_names:
            close = [h for h in host_names if h.startswith(host) or host in h][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(f"{text!r}: {host!r} is not a host of the inventory{hint}",
                             key="SOURCE")
        return NodeSource(host, path)
    local = Path(cwd or os.getcwd(), text) if not os.path.isabs(text) else Path(text)
    if exists(str(local)):
        return LocalSource(Path(os.path.normpath(os.path.abspath(local))))
    m = _HF_RE.match(text)
    if m:
        return HFSource(m.group(1), m.group(2))
    raise InputError(f"{text!r} is not a file or folder on this machine, not NODE:/path and "
                     "not a Hugging Face repo id (ORG/NAME)", key="SOURCE")


def check_name(name: str) -> str:
    """The model's folder (or file) name under models_dir."""
    if not name or name in (".", "..") or len(name) > 200 or not _NAME_RE.match(name):
        raise InputError(f"--name {name!r}: use letters, digits and . _ - + @ = (no '/'), "
                         "at most 200 characters", key="--name")
    return name


# --------------------------------------------------------------------- Hugging Face

HF_NO_HUB_EXIT = 3
HF_NO_SPACE_EXIT = 4

# Runs on the download node with the venv's python. Reads HF_TOKEN from its environment
# (huggingface_hub does), never from its arguments. Checks disk space first when the hub
# tells file sizes. Prints one JSON line.
HF_DOWNLOAD_SCRIPT = r"""
import json, os, sys
try:
    from huggingface_hub import HfApi, snapshot_download
except ImportError as exc:
    print(json.dumps({"error": "no huggingface_hub: %s" % exc})); sys.exit(3)
repo, local_dir, rev = sys.argv[1], sys.argv[2], sys.argv[3] or None
need = None
try:
    info = HfApi().model_info(repo, revision=rev, files_metadata=True)
    need = 0
    for s in info.siblings or []:
        p = os.path.join(local_dir, s.rfilename)
        have = os.path.getsize(p) if os.path.isfile(p) else -1
        need += 0 if have == (s.size or 0) else (s.size or 0)
except Exception:
    need = None   # sizes unknown (offline metadata, old hub): the download itself will tell
if need:
    p = local_dir
    while not os.path.exists(p):
        p = os.path.dirname(p)
    st = os.statvfs(p)
    avail = st.f_bavail * st.f_frsize
    if need > avail:
        print(json.dumps({"error": "no space", "needed": need, "available": avail, "path": p}))
        sys.exit(4)
path = snapshot_download(repo_id=repo, revision=rev, local_dir=local_dir)
print(json.dumps({"path": path, "needed": need}))
"""


def hf_python(venv: str) -> str:
    return f"{venv.rstrip('/')}/bin/python"


def hf_download_command(venv: str, source: HFSource, local_dir: str) -> list[str]:
    """argv of the download on the node: no token in it (the token travels in the env)."""
    return [hf_python(venv), "-c", HF_DOWNLOAD_SCRIPT, source.repo_id, local_dir,
            source.revision or ""]


def hf_token(environ: Mapping[str, str], host_vars: Mapping) -> Secret | None:
    """HF_TOKEN from the controller's environment, else the inventory's secrets.hf_token."""
    value = environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN")
    if value:
        return Secret(value)
    token = (host_vars.get("secrets") or {}).get("hf_token")
    if isinstance(token, Secret):
        return token if token else None
    return Secret(token) if token else None


def hf_env(token: Secret | None) -> dict[str, str | Secret]:
    env: dict[str, str | Secret] = {"HF_HUB_DISABLE_TELEMETRY": "1",
                                    "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if token:
        env["HF_TOKEN"] = token
    return env
