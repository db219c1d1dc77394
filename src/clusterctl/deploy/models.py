"""Where a model is, how big it is, and getting it onto the nodes that load it.

MODEL (what `deploy-model` / `plan-model` accept), tried in this order:

1. a file or folder on the controller -> synced to models_dir/NAME on the nodes;
2. an absolute path on the head, or a path relative to models_dir on the head;
3. a Hugging Face repo id ORG/NAME[@REV] (or hf:ORG/NAME) -> downloaded on one node and
   fanned out by `clusterctl.sync.sync_model`.

A model that is only on the head is sized without copying it: the small files (config and
index JSON), each safetensors header and the start of a GGUF are fetched into a local
"shadow" folder that `read_model_info` reads like the real thing.
"""
from __future__ import annotations

import base64
import json
import posixpath
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterctlError, HostError, InputError
from .modelinfo import ModelInfo, read_model_info

_HF_RE = re.compile(r"^(?:hf:)?([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
                    r"(?:@([^\s@]+))?$")
_NAME_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")

GGUF_PREFIX_START = 8 * 1024 * 1024          # bytes of a remote GGUF read for its header
GGUF_PREFIX_MAX = 512 * 1024 * 1024


@dataclass
class ModelRef:
    """A resolved MODEL argument."""

    given: str
    kind: str                          # local | head | hf
    remote_path: str                   # where the nodes find it (models_dir/NAME or as given)
    sync_source: str | None            # what to hand sync_model (None: already in place)
    sync_name: str | None              # its name under models_dir
    local_path: Path | None = None

    @property
    def is_gguf(self) -> bool:
        p = self.remote_path.lower()
        return p.endswith(".gguf")


def default_deployment_name(ref_or_text: str) -> str:
    """'~/m/TinyLlama-1.1B.Q4_K_M.gguf' -> 'TinyLlama-1.1B.Q4_K_M'; 'org/Qwen2-0.5B' -> 'Qwen2-0.5B'."""
    text = ref_or_text.rstrip("/").split("@", 1)[0]
    base = text.rsplit("/", 1)[-1].removeprefix("hf:")
    if base.lower().endswith(".gguf"):
        base = base[:-5]
    m = re.match(r"^(.*)-0000\d-of-\d{5}$", base)
    if m:
        base = m.group(1)
    name = _NAME_CLEAN.sub("-", base).strip("-.") or "model"
    if not name[0].isalnum():
        name = "m" + name
    return name[:63]


def resolve_model(model: str, models_dir: str, head_exists) -> ModelRef:
    """Resolve MODEL. `head_exists(path) -> bool` asks the head (only called when needed)."""
    text = model.strip()
    if not text:
        raise InputError("MODEL is empty: give a GGUF file or model folder, a path on the "
                         "head or in models_dir, or a Hugging Face repo id", key="MODEL")
    local = Path(text).expanduser()
    if local.exists() and not text.startswith("hf:"):
        local = local.resolve()
        name = local.name
        return ModelRef(text, "local", posixpath.join(models_dir, name), str(local), name,
                        local_path=local)
    if text.startswith("/"):
        if head_exists(text):
            return ModelRef(text, "head", posixpath.normpath(text), None, None)
        raise InputError(f"{text}: not on this machine and not on the head", key="MODEL")
    in_dir = posixpath.normpath(posixpath.join(models_dir, text))
    if not text.startswith("hf:") and in_dir.startswith(models_dir.rstrip("/") + "/") \
            and head_exists(in_dir):
        return ModelRef(text, "head", in_dir, None, None)
    m = _HF_RE.match(text)
    if m:
        repo, rev = m.group(1), m.group(2)
        name = repo.split("/", 1)[1]
        source = f"hf:{repo}" + (f"@{rev}" if rev else "")
        return ModelRef(text, "hf", posixpath.join(models_dir, name), source, name)
    raise InputError(f"{text!r} is not a file or folder here, not a path on the head or in "
                     f"models_dir ({models_dir}), and not a Hugging Face repo id (ORG/NAME)",
                     key="MODEL")


# --------------------------------------------------------------------------- remote sizing

# Prints one JSON object describing PATH: small JSON files (contents), safetensors
# headers (base64), sizes of other weight files, GGUF files. Runs with the node's python3.
_SURVEY = r"""
import base64, json, os, struct, sys
p = sys.argv[1]
out = {"path": p, "kind": None, "json": {}, "st": {}, "sizes": {}, "gguf": []}
def st_header(f):
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > 100 * 1024 * 1024 or n + 8 > os.path.getsize(f):
            return None
        return base64.b64encode(head + fh.read(n)).decode()
if os.path.isfile(p):
    out["kind"] = "file"
    out["sizes"][os.path.basename(p)] = os.path.getsize(p)
    if p.lower().endswith(".gguf") or open(p, "rb").read(4) == b"GGUF":
        out["gguf"].append(os.path.basename(p))
elif os.path.isdir(p):
    out["kind"] = "dir"
    for name in sorted(os.listdir(p)):
        f = os.path.join(p, name)
        if not os.path.isfile(f):
            continue
        size = os.path.getsize(f)
        out["sizes"][name] = size
        low = name.lower()
        if low.endswith(".json") and size <= 16 * 1024 * 1024:
            with open(f, "rb") as fh:
                out["json"][name] = fh.read().decode("utf-8", "replace")
        elif low.endswith(".safetensors"):
            out["st"][name] = st_header(f)
        elif low.endswith(".gguf"):
            out["gguf"].append(name)
print(json.dumps(out))
"""


def survey_command(path: str) -> list[str]:
    return ["python3", "-c", _SURVEY, path]


def build_shadow(survey: dict, shadow: Path, fetch_prefix) -> Path:
    """Recreate the model's metadata under `shadow` from a survey; returns the path to
    hand read_model_info. `fetch_prefix(remote_file, nbytes) -> bytes` reads GGUF starts."""
    remote = survey["path"]
    if survey.get("kind") is None:
        raise InputError(f"{remote}: not found on the head", key="MODEL")
    shadow.mkdir(parents=True, exist_ok=True)
    if survey["kind"] == "file":
        name = posixpath.basename(remote)
        if name not in survey.get("gguf", []):
            raise InputError(f"{remote}: a single file must be a GGUF model", key="MODEL")
        _gguf_prefix(shadow / name, remote, fetch_prefix)
        return shadow / name
    for name, text in survey.get("json", {}).items():
        (shadow / name).write_text(text)
    for name, header in survey.get("st", {}).items():
        if header is None:
            raise InputError(f"{posixpath.join(remote, name)}: not a safetensors file",
                             key="MODEL")
        (shadow / name).write_bytes(base64.b64decode(header))
    for name, size in survey.get("sizes", {}).items():
        target = shadow / name
        if target.exists():
            continue
        if name in survey.get("gguf", []):
            _gguf_prefix(target, posixpath.join(remote, name), fetch_prefix)
        elif name.endswith(".bin"):
            with open(target, "wb") as fh:              # sparse: only its size matters
                fh.truncate(int(size))
    return shadow


def _gguf_prefix(target: Path, remote: str, fetch_prefix) -> None:
    """Fetch the start of a remote GGUF, growing the read until its header parses."""
    from .modelinfo import read_gguf_header
    n = GGUF_PREFIX_START
    while True:
        data = fetch_prefix(remote, n)
        target.write_bytes(data)
        try:
            read_gguf_header(target)
            return
        except InputError as exc:
            if "truncated GGUF header" in str(exc) and len(data) >= n and n < GGUF_PREFIX_MAX:
                n *= 4
                continue
            raise


def remote_model_info(conn, path: str) -> ModelInfo:
    """ModelInfo of a model on the host behind `conn`, without copying its weights."""
    res = conn.run(survey_command(path), check=False)
    if res.exit_code != 0:
        raise HostError(conn.name, f"cannot inspect {path}: {res.stderr.strip()[-300:]}")
    try:
        survey = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostError(conn.name, f"cannot inspect {path}: {res.stdout[-200:]!r}") from None

    def fetch_prefix(remote: str, nbytes: int) -> bytes:
        out = conn.run(f"head -c {int(nbytes)} {shlex.quote(remote)} | base64 -w0")
        return base64.b64decode(out.stdout.strip())

    with tempfile.TemporaryDirectory(prefix="clusterctl-model-") as tmp:
        shadow = build_shadow(survey, Path(tmp) / "m", fetch_prefix)
        info = read_model_info(shadow)
    info.path = path if survey["kind"] == "dir" else posixpath.dirname(path)
    return info


def local_model_info(path: Path) -> ModelInfo:
    return read_model_info(path)


def sync_to(inventory, ref: ModelRef, hosts: list[str], *, progress=None,
            accept_new_host_keys: bool = False, session=None):
    """Put the model at ref.remote_path on `hosts` with clusterctl.sync (skipped when it
    is already there: the sync checks sizes and mtimes and sends nothing)."""
    if ref.sync_source is None:
        return None
    try:
        from ..sync import sync_model
    except ImportError:                                   # pragma: no cover
        raise ClusterctlError("model sync is not available in this install") from None
    report = sync_model(inventory, ref.sync_source, ref.sync_name, hosts=hosts,
                        progress=progress, accept_new_host_keys=accept_new_host_keys,
                        session=session)
    if not report.ok:
        details = "; ".join(f"{n}: {r.error or r.state}" for n, r in report.nodes.items()
                            if not r.ok)
        raise ClusterctlError(f"model sync failed on {', '.join(report.failed)}: {details}")
    return report


def models_dir_of(inventory) -> str:
    dirs = {h.vars.get("models_dir") or "/opt/models" for h in inventory.hosts.values()}
    if len(dirs) != 1:
        raise InputError("models_dir must be the same on every host (got "
                         + ", ".join(sorted(dirs)) + ")", key="models_dir")
    return dirs.pop().rstrip("/") or "/"


__all__ = ["ModelRef", "resolve_model", "remote_model_info", "local_model_info", "sync_to",
           "default_deployment_name", "build_shadow", "survey_command", "models_dir_of"]
