"""file: a regular file with exact content (and optionally mode/owner/group).

Also home of `plan_file`, reused by apt_source, lineinfile, systemd_unit and sysctl.
"""
from __future__ import annotations

import difflib
import hashlib
import posixpath

from clusterctl.facts import CONTENT_LIMIT, FactRequest, Facts
from clusterctl.ops.base import (Change, Noop, Op, Param, PlanError, Upload, check_abs_path,
                                 check_owner, fmt_mode, metadata_steps, parse_mode)
from clusterctl.secret import Secret


def content_bytes(value: str | bytes | Secret) -> bytes:
    if isinstance(value, Secret):
        return value.reveal().encode("utf-8")
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def content_diff(path: str, old: bytes | None, new: bytes, *, existed: bool, secret: bool) -> str:
    """Unified diff of the text, or a one-line description for binary/hidden/unknown content."""
    if secret:
        return f"{path}: (content hidden)"
    if existed and old is None:
        return (f"{path}: content changed (old content not fetched: larger than "
                f"{CONTENT_LIMIT // 1024} KiB)")
    try:
        old_text = (old or b"").decode("utf-8")
        new_text = new.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path}: binary file changed ({len(old or b'')} -> {len(new)} bytes)"
    lines = difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                 fromfile=f"{path} (before)" if existed else "/dev/null",
                                 tofile=f"{path} (after)")
    out = []
    for ln in lines:
        out.append(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n")
    return "".join(out).rstrip("\n")


def plan_file(op: str, path: str, content: bytes, current: dict, *, mode: int | None = None,
              owner: str | None = None, group: str | None = None, secret: bool = False,
              target: str | None = None) -> Change | Noop:
    """Plan writing `content` to `path` given the `file` fact `current`.

    An existing file's mode/owner/group are kept on rewrite unless given (the upload
    replaces the file, so they are passed explicitly). A new file's parent directory is
    created first (`mkdir -p`, a no-op when it exists).
    """
    target = target or path
    if current.get("kind") not in (None, "file"):
        raise PlanError(f"{path} exists and is a {current['kind']}, not a regular file")
    if not current.get("exists"):
        diff = content_diff(path, None, content, existed=False, secret=secret)
        meta = [f"mode: {fmt_mode(mode)}"] if mode is not None else []
        meta += [f"owner: {owner}"] if owner else []
        meta += [f"group: {group}"] if group else []
        if meta:
            diff = "\n".join(meta + [diff])
        parent = posixpath.dirname(path)
        steps: list = [["mkdir", "-p", parent]] if parent not in ("", "/") else []
        steps.append(Upload(path, content, mode, owner, group))
        return Change(op, target, steps, diff, f"create {path} ({len(content)} bytes)")
    new_sha = hashlib.sha256(content).hexdigest()
    if current.get("sha256") != new_sha:
        up = Upload(path, content,
                    mode if mode is not None else current.get("mode"),
                    owner if owner is not None else current.get("owner"),
                    group if group is not None else current.get("group"))
        _, meta = metadata_steps(path, current, mode, owner, group)
        diff = "\n".join(meta + [content_diff(path, current.get("content"), content,
                                              existed=True, secret=secret)])
        return Change(op, target, [up], diff, f"update {path} ({len(content)} bytes)")
    steps, meta = metadata_steps(path, current, mode, owner, group)
    if steps:
        return Change(op, target, list(steps), "\n".join(f"{path}: {m}" for m in meta),
                      f"set {', '.join(m.split(':')[0] for m in meta)} of {path}")
    return Noop(op, target, f"{path} already has the desired content" +
                (" and metadata" if (mode, owner, group) != (None, None, None) else ""))


class FileOp(Op):
    name = "file"
    params = {
        "path": Param(str, required=True, help="absolute path of the file"),
        "content": Param((str, bytes, Secret), help="exact content (required when state=present)"),
        "mode": Param((int, str), help='octal mode, e.g. "0644"'),
        "owner": Param(str, help="user name"),
        "group": Param(str, help="group name"),
        "state": Param(str, default="present", choices=("present", "absent")),
        "secret": Param(bool, default=False, help="hide the content in diffs"),
    }

    def normalize(self, args: dict) -> dict:
        args["path"] = check_abs_path("path", args["path"])
        args["mode"] = parse_mode("mode", args["mode"])
        args["owner"] = check_owner("owner", args["owner"])
        args["group"] = check_owner("group", args["group"])
        if args["state"] == "present" and args["content"] is None:
            raise ValueError("content: required parameter of file is missing (state=present)")
        if isinstance(args["content"], Secret):
            args["secret"] = True
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        args = self.validate(args)
        return [FactRequest("file", args["path"])]

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        path = args["path"]
        current = facts.get(FactRequest("file", path))
        if args["state"] == "absent":
            if current.get("kind") is None:
                return Noop(self.name, path, f"{path} already absent")
            if current["kind"] != "file":
                raise PlanError(f"{path} is a {current['kind']}, not a regular file; refusing to remove it")
            return Change(self.name, path, [["rm", "-f", path]], f"{path}: remove file", f"remove {path}")
        return plan_file(self.name, path, content_bytes(args["content"]), current,
                         mode=args["mode"], owner=args["owner"], group=args["group"],
                         secret=args["secret"])


OP = FileOp()
