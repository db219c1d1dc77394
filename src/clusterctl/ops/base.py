"""The op contract: pure planners from (facts, desired args) to a Change or a Noop.

An op never does I/O. `validate` checks and normalises task args (filling
defaults); `requests` names the facts it needs; `plan` compares facts with the
desired state and returns the exact steps (argv lists and uploads) or says why
nothing needs doing.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from clusterctl.errors import ClusterctlError
from clusterctl.facts import FactRequest, Facts
from clusterctl.secret import Secret

Command = list[str]                     # argv; the executor joins it with shlex


@dataclass
class Upload:
    """Write `content` to `path` atomically, then apply mode/owner/group (None: leave default)."""

    path: str
    content: bytes = field(repr=False)
    mode: int | None = None
    owner: str | None = None
    group: str | None = None

    def __repr__(self) -> str:
        mode = f"0{self.mode:o}" if self.mode is not None else None
        return (f"Upload(path={self.path!r}, {len(self.content)} bytes, mode={mode}, "
                f"owner={self.owner!r}, group={self.group!r})")


Step = Command | Upload


@dataclass
class Change:
    op: str
    target: str
    steps: list[Step]
    diff: str | None
    summary: str


@dataclass
class Noop:
    op: str
    target: str
    reason: str


def mask_outcome(outcome: Change | Noop, masker) -> Change | Noop:
    """The outcome as it may be shown: what `masker` (a secret.Masker of the secrets
    revealed while its args were rendered) knows is *** in the diff, summary and reason.
    The steps keep the real values: they are what reaches the host."""
    if not masker:
        return outcome
    if isinstance(outcome, Change):
        return dataclasses.replace(outcome, diff=masker.mask(outcome.diff),
                                   summary=masker.mask(outcome.summary))
    if isinstance(outcome, Noop):
        return dataclasses.replace(outcome, reason=masker.mask(outcome.reason))
    return outcome


class PlanError(ClusterctlError, ValueError):
    """The desired state cannot be planned from these facts (e.g. a file where a directory
    should be, a masked unit). An expected error: one message, no traceback."""


_MISSING = object()


@dataclass
class Param:
    type: type | tuple
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple | None = None


def _type_name(t: type | tuple) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return {type(None): "null"}.get(t, t.__name__)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, Secret) else "***"
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(name: str, value: Any, types: tuple) -> Any:
    """Accept `value` if it is one of `types`; convert template-rendered strings to int/bool."""
    if isinstance(value, bool):
        if bool in types:
            return value
    elif any(isinstance(value, t) for t in types if t is not bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if bool in types and text.lower() in ("true", "yes", "on", "false", "no", "off"):
            return text.lower() in ("true", "yes", "on")
        if int in types and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    if list in types and isinstance(value, tuple):
        return list(value)
    raise ValueError(f"{name}: expected {_type_name(types)}, got {type(value).__name__} {_show(value)}")


class Op:
    """Base of every op. Subclasses set `name`, `params` and implement `requests`/`plan`."""

    name: str = ""
    params: dict[str, Param] = {}
    #: seconds the engine lets one host's change of this op run before it cuts that
    #: host's connection and names it (probes and files: short; installs: long)
    deadline: float = 300.0

    def validate(self, args: dict) -> dict:
        """Check types/choices, fill defaults, normalise. Idempotent. Raises ValueError
        "param: expected ..., got ..." (the engine adds file:line)."""
        if not isinstance(args, dict):
            raise ValueError(f"{self.name}: expected a mapping of parameters, got {type(args).__name__}")
        unknown = sorted(set(args) - set(self.params))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown parameter of {self.name} "
                             f"(known: {', '.join(self.params)})")
        out: dict[str, Any] = {}
        for pname, p in self.params.items():
            value = args.get(pname, None)
            if value is None:
                if p.required:
                    raise ValueError(f"{pname}: required parameter of {self.name} is missing")
                out[pname] = p.default() if callable(p.default) else p.default
                continue
            types = p.type if isinstance(p.type, tuple) else (p.type,)
            value = _coerce(pname, value, types)
            if p.choices is not None and value not in p.choices:
                raise ValueError(f"{pname}: expected one of {', '.join(map(str, p.choices))}, got {_show(value)}")
            out[pname] = value
        return self.normalize(out)

    def normalize(self, args: dict) -> dict:
        """Op-specific checks and conversions after the generic ones."""
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        raise NotImplementedError

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<op {self.name}>"


# ------------------------------------------------------------------ shared argument checks

def check_abs_path(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{name}: expected an absolute path, got {_show(value)}")
    if "\x00" in value or "\n" in value:
        raise ValueError(f"{name}: path contains a NUL or newline")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"{name}: path must not contain '..', got {_show(value)}")
    norm = "/" + "/".join(p for p in parts if p not in ("", "."))
    return norm


def parse_mode(name: str, value: int | str | None) -> int | None:
    """0o644 (int, e.g. YAML 0644) or an octal string "0644"/"644"/"0o644"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an octal mode like \"0644\", got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        text = text[2:] if text.startswith("0o") else text
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError(f"{name}: expected an octal mode like \"0644\", got {value!r}")
        mode = int(text, 8)
    elif isinstance(value, int):
        mode = value
    else:
        raise ValueError(f"{name}: expected an octal mode like \"0644\", got {type(value).__name__}")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{name}: mode out of range (0000..7777 octal), got {value!r}")
    return mode


def fmt_mode(mode: int | None) -> str:
    return "-" if mode is None else f"{mode:04o}"


_OWNER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


def check_owner(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not _OWNER_RE.match(value):
        raise ValueError(f"{name}: expected a user/group name, got {_show(value)}")
    return value


def metadata_steps(path: str, current: dict | None, mode: int | None, owner: str | None,
                   group: str | None) -> tuple[list[Command], list[str]]:
    """chmod/chown steps (and diff lines) to bring an existing path's metadata in line."""
    steps: list[Command] = []
    diff: list[str] = []
    cur = current or {}
    if mode is not None and cur.get("mode") != mode:
        steps.append(["chmod", f"{mode:04o}", path])
        diff.append(f"mode: {fmt_mode(cur.get('mode'))} -> {fmt_mode(mode)}")
    new_owner = owner if owner is not None and cur.get("owner") != owner else None
    new_group = group if group is not None and cur.get("group") != group else None
    if new_owner or new_group:
        spec = (new_owner or "") + (f":{new_group}" if new_group else "")
        steps.append(["chown", spec, path])
        if new_owner:
            diff.append(f"owner: {cur.get('owner') or '-'} -> {new_owner}")
        if new_group:
            diff.append(f"group: {cur.get('group') or '-'} -> {new_group}")
    return steps, diff


def show_command(argv: Command) -> str:
    return shlex.join(argv)


def as_list(name: str, value: Any) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{name}: expected a list or a string, got {type(value).__name__}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
