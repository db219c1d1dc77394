"""Roles and playbooks are data: YAML files loaded with line numbers.

roles/<role>/tasks.yaml     list of tasks: {name, <op>: args, when, notify}
roles/<role>/handlers.yaml  list of tasks, addressed by name from `notify`
roles/<role>/defaults.yaml  role variables, lowest precedence
roles/<role>/argument_specs.yaml  what the role's variables must be (engine/specs.py)
roles/<role>/templates/     Jinja2 templates for `template:` and `systemd_unit: {src: ...}`
playbooks/<name>.yaml       list of plays: {name, hosts, roles: [...]}
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .templating import (check_expression, check_template_file, check_value, find_template,
                         is_templated)
from .yamlfile import YDict, YList, line_of, load_yaml

TASK_KEYS = {"name", "when", "notify", "tags"}
#: ops handled by the engine itself (everything else comes from clusterctl.ops.OPS)
ENGINE_OPS = {"template"}


def project_root() -> Path:
    """Folder holding roles/, playbooks/, templates/, inventory/: $CLUSTERCTL_HOME, the
    source checkout's root, or the data packaged with clusterctl (clusterctl.resources)."""
    from .. import resources
    return resources.data_root()


def default_roles_paths(extra: list[str] | None = None) -> list[Path]:
    """Where roles are looked up, first match wins: the user's folders (--roles-path, then
    $CLUSTERCTL_ROLES_PATH, os.pathsep-separated), then the roles shipped with clusterctl."""
    paths = [Path(p).expanduser() for p in (extra or []) if p]
    env = os.environ.get("CLUSTERCTL_ROLES_PATH")
    if env:
        paths += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    paths.append(project_root() / "roles")
    return paths


@dataclass
class Task:
    name: str
    op: str
    args: Any
    role: str
    file: str
    line: int
    when: Any = None
    notify: list[str] = field(default_factory=list)
    tags: tuple[str, ...] = ()

    def selected(self, tags: set[str], skip_tags: set[str]) -> bool:
        """--tags / --skip-tags as in Ansible: with --tags, a task runs when it has one of
        them (or `always`); a task tagged `never` runs only when asked by name; a task
        with a --skip-tags tag never runs."""
        mine = set(self.tags)
        if mine & skip_tags:
            return False
        if "never" in mine and not (mine & tags):
            return False
        if not tags or "all" in tags:
            return True
        return bool(mine & tags) or "always" in mine

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Role:
    name: str
    path: Path
    tasks: list[Task]
    handlers: dict[str, Task]
    defaults: dict
    specs: Any = None          # engine.specs.RoleSpec, from argument_specs.yaml (optional)

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"

    @property
    def template_folders(self) -> list[Path]:
        """Where its templates (and what they include) are read from, in order: the
        role's templates/, then the project's templates/. Nothing else is readable."""
        return [self.templates_dir, project_root() / "templates"]


@dataclass
class Play:
    name: str
    hosts: str
    roles: list[Role]
    file: str
    line: int
    vars: dict = field(default_factory=dict)


def _known_ops() -> set[str]:
    from ..ops import OPS
    return set(OPS) | ENGINE_OPS


def parse_task(raw: Any, *, role: str, file: str, line: int, known_ops: set[str]) -> Task:
    if not isinstance(raw, dict):
        raise InputError(f"a task must be a mapping, got {type(raw).__name__}", file=file,
                         line=line)
    op_keys = [k for k in raw if k not in TASK_KEYS]
    if not op_keys:
        raise InputError("task has no operation (one of: " + ", ".join(sorted(known_ops)) + ")",
                         file=file, line=line)
    if len(op_keys) > 1:
        raise InputError(f"task has several operations or unknown keys: {', '.join(op_keys)} "
                         "(a task is {name, <op>: args, when, notify})", file=file, line=line)
    op = op_keys[0]
    if op not in known_ops:
        hint = difflib.get_close_matches(str(op), sorted(known_ops | TASK_KEYS), n=1)
        raise InputError(f"unknown operation {op!r}" + (f" (did you mean {hint[0]!r}?)"
                                                         if hint else ""),
                         file=file, line=line_of(raw, op) or line, key=str(op))
    notify = raw.get("notify") or []
    if isinstance(notify, str):
        notify = [notify]
    # compiled now: a syntax error, unknown filter or unsafe name is bad input (exit 2)
    check_expression(raw.get("when"), file=file, line=line_of(raw, "when") or line)
    check_value(raw[op], file=file, line=line_of(raw, op) or line)
    tags = raw.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InputError("tags: expected a tag name or a list of tag names", file=file,
                         line=line_of(raw, "tags") or line, key="tags")
    return Task(name=str(raw.get("name") or f"{op}"), op=op, args=raw[op], role=role,
                file=file, line=line, when=raw.get("when"), notify=list(notify),
                tags=tuple(tags))


def template_src(task: Task):
    """The `src` of a task that renders a template (template, file/systemd_unit with src)."""
    if not isinstance(task.args, dict):
        return None
    if task.op == "template" or (task.op in ("file", "systemd_unit") and "src" in task.args):
        return task.args.get("src")
    return None


def check_role_templates(role: Role) -> None:
    """Compile every template the role's tasks and handlers name (a templated `src`: every
    *.j2 of its templates/), with what they include; errors name file:line."""
    folders = role.template_folders
    compiled_all = False
    for task in list(role.tasks) + list(role.handlers.values()):
        src = template_src(task)
        if not src:
            continue
        if is_templated(src):
            if not compiled_all and role.templates_dir.is_dir():
                for path in sorted(role.templates_dir.rglob("*.j2")):
                    check_template_file(find_template(
                        path.relative_to(role.templates_dir).as_posix(), folders,
                        file=task.file, line=task.line), folders, origin=task.where)
            compiled_all = True
            continue
        path = find_template(str(src), folders, file=task.file,
                             line=line_of(task.args, "src") or task.line)
        check_template_file(path, folders, origin=task.where)


def _load_task_list(path: Path, role: str, known_ops: set[str]) -> list[Task]:
    if not path.exists():
        return []
    data = load_yaml(path, default=[])
    if not isinstance(data, list):
        raise InputError("expected a list of tasks", file=str(path), line=line_of(data))
    return [parse_task(item, role=role, file=str(path), line=line_of(data, i) or 1,
                       known_ops=known_ops)
            for i, item in enumerate(data)]


def load_role(name: str, roles_paths: list[Path], *, file: str = "", line: int | None = None
              ) -> Role:
    for base in roles_paths:
        path = base / name
        if path.is_dir():
            break
    else:
        available = sorted({p.name for base in roles_paths if base.is_dir()
                            for p in base.iterdir() if p.is_dir()})
        hint = difflib.get_close_matches(name, available, n=1)
        from .. import resources
        raise InputError(f"role {name!r} not found; tried: "
                         + ", ".join(str(base / name) for base in roles_paths)
                         + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + resources.missing_data_note(),
                         file=file or None, line=line)
    known = _known_ops()
    tasks = _load_task_list(path / "tasks.yaml", name, known)
    handlers = {t.name: t for t in _load_task_list(path / "handlers.yaml", name, known)}
    for t in tasks:
        for h in t.notify:
            if h not in handlers:
                raise InputError(f"notify: no handler named {h!r} in {path / 'handlers.yaml'}",
                                 file=t.file, line=t.line)
    defaults = {}
    if (path / "defaults.yaml").exists():
        defaults = load_yaml(path / "defaults.yaml", default={})
        if not isinstance(defaults, dict):
            raise InputError("defaults must be a mapping", file=str(path / "defaults.yaml"))
        check_value(defaults, file=str(path / "defaults.yaml"), line=line_of(defaults))
    from .specs import load_role_spec, spec_defaults
    specs = load_role_spec(path, defaults, role=name)
    role = Role(name=name, path=path, tasks=tasks, handlers=handlers,
                defaults={**spec_defaults(specs), **defaults}, specs=specs)
    check_role_templates(role)
    return role


def find_playbook(given: str | Path) -> Path:
    """A playbook path as given, else (for a bare name) playbooks/NAME[.yaml|.yml] of the
    data folder. Not found: an InputError naming every path tried."""
    path = Path(given).expanduser()
    tried = [path]
    if not path.is_absolute() and len(path.parts) == 1:
        folder = project_root() / "playbooks"
        names = [path.name] if path.suffix in (".yaml", ".yml") else \
            [f"{path.name}.yaml", f"{path.name}.yml", path.name]
        tried += [folder / n for n in names]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    shown = [str(p.absolute()) if i == 0 else str(p) for i, p in enumerate(tried)]
    available = []
    if (project_root() / "playbooks").is_dir():
        available = sorted(p.stem for p in (project_root() / "playbooks").glob("*.y*ml"))
    hint = difflib.get_close_matches(path.stem, available, n=1)
    from .. import resources
    raise InputError(f"playbook {str(given)!r} not found; tried: " + ", ".join(shown)
                     + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + resources.missing_data_note())


def load_playbook(path: str | Path, roles_paths: list[Path] | None = None) -> list[Play]:
    path = find_playbook(path)
    roles_paths = roles_paths or default_roles_paths()
    data = load_yaml(path, default=[])
    if not isinstance(data, list) or not data:
        raise InputError("a playbook is a non-empty list of plays", file=str(path))
    plays = []
    for i, raw in enumerate(data):
        line = line_of(data, i) or 1
        if not isinstance(raw, dict):
            raise InputError("a play must be a mapping {name, hosts, roles}", file=str(path),
                             line=line)
        unknown = set(raw) - {"name", "hosts", "roles", "vars"}
        if unknown:
            raise InputError(f"unknown play key(s): {', '.join(sorted(map(str, unknown)))} "
                             "(expected name, hosts, roles, vars)", file=str(path), line=line)
        if "hosts" not in raw or "roles" not in raw:
            raise InputError("a play needs `hosts` and `roles`", file=str(path), line=line)
        role_names = raw["roles"]
        if isinstance(role_names, str):
            role_names = [role_names]
        roles = [load_role(str(r), roles_paths, file=str(path),
                           line=line_of(raw["roles"], j) if isinstance(raw["roles"], YList)
                           else line)
                 for j, r in enumerate(role_names)]
        check_value(raw.get("vars"), file=str(path), line=line_of(raw, "vars") or line)
        plays.append(Play(name=str(raw.get("name") or ", ".join(r.name for r in roles)),
                          hosts=str(raw["hosts"]), roles=roles, file=str(path), line=line,
                          vars=dict(raw.get("vars") or {})))
    return plays


__all__ = ["Task", "Role", "Play", "load_role", "load_playbook", "check_role_templates",
           "template_src", "find_playbook", "parse_task",
           "default_roles_paths", "project_root", "YDict"]
