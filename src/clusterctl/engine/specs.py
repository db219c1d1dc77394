"""Role variable specs: each role declares its variables in its own folder.

``roles/<role>/argument_specs.yaml`` follows the shape of Ansible's
``meta/argument_specs.yml`` (one entry point, ``main``)::

    argument_specs:
      main:
        short_description: Ray head or worker as a systemd service
        options:
          ray_bin:                     # a top-level variable
            type: str
            description: the ray executable (its default is in defaults.yaml)
          ray:                         # a mapping: its keys are declared under options
            type: dict
            description: Ray version and ports
            options:
              port: {type: port, default: 6379, description: GCS port of the head}

Keys of an option: ``type`` (see TYPES), ``description`` (one line, required),
``default`` (or the value in the role's defaults.yaml; never both), ``required``,
``choices``, ``min``/``max`` (numbers), ``nullable`` (null is also accepted; implied by
a null default), ``also`` (other values accepted besides the type, e.g. ``[auto]``),
``secret`` (the value is never shown; Ansible's ``no_log``), ``elements`` (type of a
list's items) and ``options`` (keys of a dict).

The engine checks the variables of every host against the specs of the roles that run
on it before it connects to anything (`check_plays`); a bad value is one InputError
naming where it was set (file:line:col when known), the variable, the hosts, the role
and what was expected. Variables nobody declares are fine (users keep their own), but
one whose name is close to a declared name gets a warning with the suggestion.

Defaults of top-level variables given in the spec apply like the role's defaults.yaml.
``python -m clusterctl.engine.specs --write docs/inventory.md`` writes the table of every
shipped role's variables between the markers of that file (``--check`` says whether it
is stale). Pure: reads files, never touches a host.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import InputError
from ..secret import Secret
from .yamlfile import YDict, line_of, load_yaml

__all__ = ["SPEC_FILE", "TYPES", "Option", "RoleSpec", "load_role_spec", "check_plays",
           "check_values", "undeclared_defaults", "role_table", "update_doc",
           "BEGIN_MARK", "END_MARK", "main"]

SPEC_FILE = "argument_specs.yaml"

_UNSET = object()

#: type name -> what a value of it is, for messages
TYPES: dict[str, str] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
    "path": "an absolute path",
    "port": "an integer 1..65535",
    "version": "a version string (e.g. '2.60.0')",
    "url": "a URL (http://, https:// or file://)",
    "network": "a CIDR network (e.g. 10.0.0.0/24) or an interface name",
    "raw": "any value",
}
_ELEMENT_TYPES = {t for t in TYPES if t not in ("dict", "list")}

_OPTION_KEYS = ("type", "description", "default", "required", "choices", "min", "max",
                "nullable", "also", "secret", "elements", "options")
_ENTRY_KEYS = ("short_description", "description", "options")

_PLAIN_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_URL = re.compile(r"^(https?|file)://\S+$")
_IFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@dataclass(eq=False)
class Option:
    """One declared variable (or one key of a declared mapping)."""

    path: tuple[str, ...]
    type: str
    description: str
    file: str
    line: int | None
    default: Any = _UNSET
    required: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    also: tuple = ()
    secret: bool = False
    elements: str | None = None
    options: dict[str, "Option"] = field(default_factory=dict)
    default_from: str = ""          # "defaults.yaml" when the role's defaults.yaml sets it
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def has_default(self) -> bool:
        return self.default is not _UNSET

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def accepts_null(self) -> bool:
        return self.nullable or (self.has_default and self.default is None)

    def expected(self) -> str:
        """What a value must be, as a message says it."""
        if self.choices:
            base = "one of " + ", ".join(_show(c) for c in self.choices)
        else:
            base = TYPES[self.type]
            if self.type in ("int", "float"):
                word = "an integer" if self.type == "int" else "a number"
                if self.min is not None and self.max is not None:
                    base = f"{word} {_num(self.min)}..{_num(self.max)}"
                elif self.min is not None:
                    base = f"{word} >= {_num(self.min)}"
                elif self.max is not None:
                    base = f"{word} <= {_num(self.max)}"
            if self.type == "list" and self.elements:
                base = f"a list of {_plural(self.elements)}"
        extra = [_show(a) for a in self.also] + (["null"] if self.accepts_null() else [])
        if not extra:
            return base
        if len(extra) == 1:
            return f"{base} or {extra[0]}"
        return f"{base}, {', '.join(extra[:-1])} or {extra[-1]}"

    def short_type(self) -> str:
        """The type column of the doc table: `port`, `int 68..9216`, `str (a, b)`..."""
        text = self.type
        if self.type in ("int", "float") and (self.min is not None or self.max is not None):
            if self.min is not None and self.max is not None:
                text += f" {_num(self.min)}..{_num(self.max)}"
            elif self.min is not None:
                text += f" >= {_num(self.min)}"
            else:
                text += f" <= {_num(self.max)}"
        if self.type == "list" and self.elements:
            text = f"list of {self.elements}"
        if self.choices:
            text += " (" + ", ".join(_show(c) for c in self.choices) + ")"
        extra = [_show(a) for a in self.also] + (["null"] if self.accepts_null() else [])
        if extra:
            text += " or " + " or ".join(extra)
        if self.secret:
            text += ", secret"
        if self.required:
            text += ", required"
        return text


@dataclass(eq=False)
class RoleSpec:
    role: str
    file: str
    short_description: str
    options: dict[str, Option]

    def leaves(self) -> Iterable[Option]:
        """Every declared variable, depth first: the keys of a declared mapping instead
        of the mapping itself (a mapping without declared keys is a leaf)."""
        todo = list(reversed(list(self.options.values())))
        while todo:
            opt = todo.pop()
            if opt.options:
                todo.extend(reversed(list(opt.options.values())))
            else:
                yield opt


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plural(type_name: str) -> str:
    return {"str": "strings", "int": "integers", "float": "numbers", "bool": "booleans",
            "path": "absolute paths", "port": "ports", "version": "versions",
            "url": "URLs", "network": "networks", "raw": "values"}.get(type_name, type_name)


def _got(value: Any, secret: bool) -> str:
    """What a value is, for a message: its shape, or the value (never a secret's)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "null"
    if secret or isinstance(value, Secret):
        return "a value (*** not shown)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    return str(value)


# -- checking one value ------------------------------------------------------------

def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _PLAIN_INT.fullmatch(value):
        return int(value)
    return None


def _type_problem(type_name: str, opt: Option, value: Any) -> str | None:
    """None when `value` is of `type_name` (and in range), else a hint ('' for none)."""
    if type_name == "raw":
        return None
    if type_name == "str":
        return None if isinstance(value, str) else (
            "quote it" if isinstance(value, (int, float)) and not isinstance(value, bool)
            else "")
    if type_name in ("int", "port"):
        n = _as_int(value)
        if n is None:
            if isinstance(value, str) and re.fullmatch(r"[+-]?0[0-9_]+", value.strip()):
                return "write it without leading zeros"
            return ""
        lo, hi = (1, 65535) if type_name == "port" else (opt.min, opt.max)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            return ""
        return None
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            return ""
        if (opt.min is not None and value < opt.min) or \
                (opt.max is not None and value > opt.max):
            return ""
        return None
    if type_name == "bool":
        if isinstance(value, bool):
            return None
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return "write true or false without quotes (a quoted 'false' is true in a test)"
        return ""
    if type_name == "list":
        return None if isinstance(value, list) else ""
    if type_name == "dict":
        return None if isinstance(value, dict) else ""
    if not isinstance(value, str):
        return ""
    if type_name == "path":
        return None if value.startswith("/") else "an absolute path starts with '/'"
    if type_name == "version":
        return None if _VERSION.match(value) else ""
    if type_name == "url":
        return None if _URL.match(value) else ""
    if type_name == "network":
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError:
                try:
                    net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    return ""
                return f"host bits are set; did you mean '{net}'?"
            return None
        return None if _IFACE.match(value) else "an interface name is 1-15 of [A-Za-z0-9_.:-]"
    raise AssertionError(type_name)  # pragma: no cover - TYPES is closed


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _value_problem(opt: Option, value: Any) -> str | None:
    """None when `value` fits `opt` itself (not its declared keys), else a hint."""
    if value is None:
        return None if opt.accepts_null() else ""
    if any(_same(value, a) for a in opt.also):
        return None
    if _templated(value):
        return None          # rendered when a task uses it
    if isinstance(value, Secret):
        return None if opt.type in ("str", "raw") else ""
    hint = _type_problem(opt.type, opt, value)
    if hint is not None:
        return hint
    if opt.choices and not any(_same(value, c) or (opt.type in ("int", "port") and
                                                   _as_int(value) == c)
                               for c in opt.choices):
        return ""
    if opt.type == "list" and opt.elements:
        for item in value:
            if _templated(item):
                continue
            if item is None or _type_problem(opt.elements, opt, item) is not None:
                return f"item {_got(item, opt.secret)} is not {TYPES[opt.elements]}"
    return None


_MISS = object()
_SCALARS = (str, int, float, bool)


def _check_one(opt: Option, value: Any) -> str | None:
    """_value_problem, remembered per value (many hosts share a value)."""
    if value is None or isinstance(value, _SCALARS):
        key: Any = (type(value), value)
    elif type(value) is not dict and isinstance(value, list) and \
            all(type(v) is str for v in value):
        key = (list, tuple(value))
    else:
        return _value_problem(opt, value)
    memo = opt._memo
    hit = memo.get(key, _MISS)
    if hit is _MISS:
        if len(memo) > 4096:
            memo.clear()
        hit = memo[key] = _value_problem(opt, value)
    return hit


# -- loading a spec ---------------------------------------------------------------

def _fail(message: str, file: str, line: int | None, key: str | None = None):
    raise InputError(message, file=file, line=line, key=key)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_option(name: str, raw: Any, parent: tuple, file: str, line: int | None
                  ) -> Option:
    path = parent + (str(name),)
    dotted = ".".join(path)
    if not isinstance(raw, dict):
        _fail(f"option {dotted!r}: expected a mapping (type, description, ...), got "
              f"{_got(raw, False)}", file, line, dotted)
    for key in raw:
        if key not in _OPTION_KEYS:
            hint = " (Ansible's no_log is written secret here)" if key == "no_log" else \
                _suggest(key, _OPTION_KEYS)
            _fail(f"option {dotted!r}: unknown key {key!r}{hint}; expected one of "
                  + ", ".join(_OPTION_KEYS), file, line_of(raw, key) or line, dotted)
    type_name = raw.get("type", "str")
    if type_name not in TYPES:
        _fail(f"option {dotted!r}: unknown type {type_name!r}{_suggest(type_name, TYPES)}; "
              "expected one of " + ", ".join(TYPES), file, line_of(raw, "type") or line,
              dotted)
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in \
            description.strip():
        _fail(f"option {dotted!r}: description: expected one line of text", file,
              line_of(raw, "description") or line, dotted)
    for flag in ("required", "nullable", "secret"):
        if flag in raw and not isinstance(raw[flag], bool):
            _fail(f"option {dotted!r}: {flag}: expected true or false", file,
                  line_of(raw, flag) or line, dotted)
    for bound in ("min", "max"):
        if bound in raw:
            b = raw[bound]
            if type_name not in ("int", "float") or isinstance(b, bool) or \
                    not isinstance(b, (int, float)):
                _fail(f"option {dotted!r}: {bound}: a number, for type int or float only",
                      file, line_of(raw, bound) or line, dotted)
    for key in ("choices", "also"):
        if key in raw and not isinstance(raw[key], list):
            _fail(f"option {dotted!r}: {key}: expected a list", file,
                  line_of(raw, key) or line, dotted)
    elements = raw.get("elements")
    if elements is not None and (type_name != "list" or elements not in _ELEMENT_TYPES):
        _fail(f"option {dotted!r}: elements: a type of {', '.join(sorted(_ELEMENT_TYPES))}, "
              "for type list only", file, line_of(raw, "elements") or line, dotted)
    sub = raw.get("options")
    if sub is not None and (type_name != "dict" or not isinstance(sub, dict)):
        _fail(f"option {dotted!r}: options: a mapping of keys, for type dict only", file,
              line_of(raw, "options") or line, dotted)
    opt = Option(path=path, type=type_name, description=" ".join(description.split()),
                 file=file, line=line, required=bool(raw.get("required", False)),
                 choices=tuple(raw.get("choices") or ()), min=raw.get("min"),
                 max=raw.get("max"), nullable=bool(raw.get("nullable", False)),
                 also=tuple(raw.get("also") or ()), secret=bool(raw.get("secret", False)),
                 elements=elements)
    for key, value in (sub or {}).items():
        opt.options[str(key)] = _parse_option(key, value, path, file,
                                              line_of(sub, key) or line)
    if "default" in raw:
        if opt.required:
            _fail(f"option {dotted!r}: required and default exclude each other", file,
                  line_of(raw, "default") or line, dotted)
        opt.default = raw["default"]
        _check_default(opt, opt.default, file, line_of(raw, "default") or line)
    return opt


def _check_default(opt: Option, value: Any, file: str, line: int | None) -> None:
    found = _check_layers([(opt.path[-1], opt)], ({opt.path[-1]: value},))
    if found:
        sub, _, got, problem = found[0]
        _fail(f"default of {opt.name!r} does not fit its spec: {sub.name}: expected "
              f"{problem}, got {_got(got, sub.secret)}", file, line, opt.name)


def load_role_spec(role_dir: Path, defaults: dict | None = None, *, role: str = ""
                   ) -> RoleSpec | None:
    """The role's spec (None when it has no argument_specs.yaml). `defaults` (the role's
    defaults.yaml) give the defaults of the variables they set, checked against the
    spec; a default given in both places is an error. InputError names file:line."""
    path = Path(role_dir) / SPEC_FILE
    if not path.exists():
        return None
    file = str(path)
    data = load_yaml(path, default=None)
    if not isinstance(data, dict) or "argument_specs" not in data:
        _fail("expected a mapping with 'argument_specs:' (then 'main:' and its 'options:')",
              file, line_of(data) or 1)
    extra = [k for k in data if k != "argument_specs"]
    if extra:
        _fail(f"unknown key {extra[0]!r}; expected only argument_specs", file,
              line_of(data, extra[0]))
    entries = data["argument_specs"]
    if not isinstance(entries, dict) or "main" not in entries:
        _fail("argument_specs: expected a mapping with the entry point 'main'", file,
              line_of(data, "argument_specs"))
    others = [k for k in entries if k != "main"]
    if others:
        _fail(f"argument_specs: entry point {others[0]!r}: only 'main' is used (roles have "
              "one tasks.yaml)", file, line_of(entries, others[0]))
    main_ = entries["main"]
    if not isinstance(main_, dict):
        _fail("argument_specs.main: expected a mapping (short_description, options)", file,
              line_of(entries, "main"))
    for key in main_:
        if key not in _ENTRY_KEYS:
            _fail(f"argument_specs.main: unknown key {key!r}{_suggest(key, _ENTRY_KEYS)}",
                  file, line_of(main_, key))
    raw_options = main_.get("options") or {}
    if not isinstance(raw_options, dict):
        _fail("argument_specs.main.options: expected a mapping of variables", file,
              line_of(main_, "options"))
    options = {str(name): _parse_option(name, raw, (), file, line_of(raw_options, name))
               for name, raw in raw_options.items()}
    spec = RoleSpec(role=role or Path(role_dir).name, file=file,
                    short_description=str(main_.get("short_description") or ""),
                    options=options)
    defaults_file = str(Path(role_dir) / "defaults.yaml")
    for key, value in (defaults or {}).items():
        opt = options.get(str(key))
        if opt is None:
            continue     # undeclared_defaults() names these (a test of the shipped roles)
        dline = line_of(defaults, key) if isinstance(defaults, YDict) else None
        if opt.has_default:
            _fail(f"{opt.name}: default given twice: in {SPEC_FILE} (line {opt.line}) and in "
                  "defaults.yaml; keep one", defaults_file, dline, opt.name)
        opt.default, opt.default_from = value, "defaults.yaml"
        _check_default(opt, value, defaults_file, dline)
    return spec


def undeclared_defaults(spec: RoleSpec | None, defaults: dict) -> list[str]:
    """Variables the role's defaults.yaml sets that its spec does not declare."""
    declared = set(spec.options) if spec is not None else set()
    return [str(k) for k in defaults if str(k) not in declared]


def spec_defaults(spec: RoleSpec | None) -> dict:
    """Defaults given in the spec for top-level variables (they apply like the role's
    defaults.yaml)."""
    if spec is None:
        return {}
    return {name: opt.default for name, opt in spec.options.items()
            if opt.has_default and not opt.default_from}


# -- checking a run ----------------------------------------------------------------

def _where_text(where: tuple | None) -> str:
    if not where or not where[0]:
        return ""
    file, line, col = (list(where) + [None, None])[:3]
    text = str(file)
    if line:
        text += f":{line}"
        if col:
            text += f":{col}"
    return text


def check_plays(inventory, plays: list, hosts: list | None = None, *,
                extra_vars: dict | None = None,
                targets: Callable[[Any], Iterable[str]] | None = None) -> list[str]:
    """Check every host's variables against the specs of the roles its plays run, the
    way the runner layers them (role defaults < host vars < play vars < extra vars).
    Raises one InputError listing every problem (a value set once for many hosts is
    reported once, naming the hosts); returns warnings for set variables whose names are
    close to declared ones (typos). `hosts`: the selected hosts (default: all);
    `targets(play)`: names of a play's hosts (default: the runner's play_targets)."""
    if targets is None:
        from .runner import play_targets

        def targets(play):
            return {h.name for h in play_targets(inventory, play.hosts)}
    selected = list(hosts) if hosts is not None else list(inventory.hosts.values())
    extra = extra_vars or {}
    origins_all = getattr(inventory, "origins", {}) or {}
    problems: dict[tuple, list[str]] = {}
    declared: dict[str, dict[str, Option]] = {}       # top name -> role -> option
    done: set[tuple] = set()                          # (host, role, play vars) checked

    for play in plays:
        roles = [r for r in play.roles if getattr(r, "specs", None) is not None]
        if not roles:
            continue
        for role in roles:
            for name, opt in role.specs.options.items():
                declared.setdefault(name, {})[role.specs.role] = opt
        names = set(targets(play))
        play_vars = play.vars or {}
        layers_where = (("--extra-vars", None, None), (play.file, play.line or None, None))
        for role in roles:
            spec = role.specs
            items = list(spec.options.items())
            defaults_at = (str(Path(role.path) / "defaults.yaml"), None, None)
            stamp = (spec.role, id(role.defaults), id(play.vars) if play_vars else 0)
            for host in selected:
                if host.name not in names or (host.name, stamp) in done:
                    continue
                done.add((host.name, stamp))
                found = _check_layers(items, (extra, play_vars, host.vars, role.defaults))
                for opt, source, value, problem in found:
                    if source == 2:
                        where = _origin(origins_all.get(host.name, {}), opt.path)
                    elif source == 3:
                        where = defaults_at
                    elif source < 0:
                        where = (str(getattr(inventory, "path", "") or ""), None, None)
                    else:
                        where = layers_where[source]
                    if problem is None:
                        msg = (f"{opt.name}: required by role {spec.role!r} and not set "
                               f"({opt.description}; declared at {opt.where})")
                    else:
                        msg = f"{opt.name}: expected {problem}, got {_got(value, opt.secret)}"
                    problems.setdefault((where, msg, spec.role, opt.name),
                                        []).append(host.name)
    if problems:
        _raise(problems)
    return _typo_warnings(selected, declared, origins_all)


def check_values(spec: RoleSpec, *layers: dict) -> list[tuple]:
    """Problems of the variables `spec` declares, looked up in `layers` (highest
    precedence first; a variable comes whole from the first layer that has it):
    [(option, layer index or -1 when missing, value, what was expected or None when a
    required variable is missing)]."""
    return _check_layers(list(spec.options.items()), layers)


def _check_layers(items: list, layers: tuple) -> list:
    """[(option, layer index or -1 when missing, value, problem or None for missing)]
    for the declared variables in `items`; a variable comes whole from the first layer
    that has it (extra, play, host, role defaults), as in the runner."""
    out: list = []
    for name, opt in items:
        for source, layer in enumerate(layers):
            if name in layer:
                _check_tree(opt, layer[name], source, out)
                break
        else:
            if opt.required:
                out.append((opt, -1, None, None))
    return out


def _check_tree(opt: Option, value: Any, source: int, out: list) -> None:
    hint = _check_one(opt, value)
    if hint is not None:
        shown = f" ({hint})" if hint and not opt.secret else ""   # a hint may tell about
        out.append((opt, source, value, opt.expected() + shown))  # a secret
        return
    if opt.options and isinstance(value, dict):
        for key, sub in opt.options.items():
            if key in value:
                _check_tree(sub, value[key], source, out)
            elif sub.required:
                out.append((sub, -1, None, None))


def _origin(origins: dict, path: tuple) -> tuple:
    """Where the inventory set `path` (or the mapping holding it)."""
    for n in range(len(path), 0, -1):
        where = origins.get(path[:n])
        if where:
            return tuple(where)
    return ("built-in default", None, None)


def _raise(problems: dict[tuple, list[str]]) -> None:
    lines = []
    for (where, msg, role, _name), hosts in problems.items():
        shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3
                                        else "")
        noun = "host" if len(hosts) == 1 else "hosts"
        lines.append((where, f"{msg} ({noun} {shown}; role {role})"))
    (where, first), rest = lines[0], lines[1:]
    message = first
    if rest:
        message += f" (and {len(rest)} more problem{'s' if len(rest) > 1 else ''})"
        for w, m in rest:
            shown_at = _where_text(w)
            message += "\n  " + (f"{shown_at}: " if shown_at else "") + m
    key = next(iter(problems))[3]
    file, line, col = (list(where or ()) + [None, None, None])[:3]
    if not file:
        raise InputError(message, key=key)
    raise InputError(message, file=str(file), line=line or None,
                     column=(col or None) if line else None, key=key)


def _typo_warnings(hosts: list, declared: dict[str, dict[str, Option]],
                   origins_all: dict) -> list[str]:
    """Warnings for variables set in the inventory whose names are close to a declared
    name but are not declared themselves (nor built in). Once per place it is set."""
    if not declared:
        return []
    from ..inventory import KNOWN_VARS
    top_names = set(declared) | set(KNOWN_VARS)
    top_choices = sorted(declared)
    sub_keys: dict[str, dict[str, Option]] = {}      # declared mapping -> its keys
    sub_known: dict[str, set] = {}
    for name, by_role in declared.items():
        keys: dict[str, Option] = {}
        for opt in by_role.values():
            keys.update(opt.options)
        if keys:
            sub_keys[name] = keys
            builtin = KNOWN_VARS.get(name)
            sub_known[name] = set(keys) | (set(builtin) if isinstance(builtin, dict) else set())
    seen: set[tuple] = set()
    out: list[str] = []
    memo: dict[tuple, str] = {}

    def close(word: str, choices: list, group: str) -> str:
        key = (word, group)
        if key not in memo:
            hit = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
            memo[key] = hit[0] if hit else ""
        return memo[key]

    for host in hosts:
        origins = origins_all.get(host.name)
        if not origins:
            continue
        for name, value in host.vars.items():
            if name in top_names:
                known = sub_known.get(name)
                if known is None or not isinstance(value, dict):
                    continue
                for sub in value:
                    if sub in known:
                        continue
                    keys = sub_keys[name]
                    guess = close(str(sub), sorted(keys), name)
                    where = origins.get((name, sub)) or origins.get((name,))
                    if guess and where and where[0] != "--extra-vars":
                        _warn_once(out, seen, where, f"{name}.{sub}", f"{name}.{guess}",
                                   keys[guess])
                continue
            where = origins.get((name,))
            if not where or where[0] == "--extra-vars":
                continue
            guess = close(str(name), top_choices, "")
            if guess:
                _warn_once(out, seen, where, name, guess, next(iter(declared[guess].values())))
    return out


def _warn_once(out: list, seen: set, where: tuple, name: str, guess: str, opt: Option):
    key = (tuple(where), name)
    if key in seen:
        return
    seen.add(key)
    roles = Path(opt.file).parent.name
    out.append(f"{_where_text(where)}: variable {name!r} is not declared by any role that "
               f"runs (did you mean {guess!r}? declared by role {roles}: {opt.description})")


# -- the doc table ------------------------------------------------------------------

BEGIN_MARK = ("<!-- role variables: generated from roles/*/argument_specs.yaml by "
              "`python -m clusterctl.engine.specs --write docs/inventory.md`; do not edit -->")
END_MARK = "<!-- end of role variables -->"


def _default_cell(opt: Option) -> str:
    if opt.required:
        return "required"
    if not opt.has_default:
        return "—"
    value = opt.default
    if opt.secret and value is not None:
        return "`***`"
    if isinstance(value, str) and ("\n" in value or len(value) > 48):
        return "see `defaults.yaml`"
    if isinstance(value, list) and len(_flow(value)) > 48:
        return f"{len(value)} items, see `defaults.yaml`"
    text = _flow(value)
    return "`" + text.replace("|", "\\|") + "`"


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value == "" or value.strip() != value or value.lower() in (
                "null", "true", "false", "yes", "no", "~") or _PLAIN_INT.fullmatch(value):
            return '"' + value + '"'
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def role_table(specs: list[RoleSpec]) -> str:
    """The markdown table of every declared variable: one row per variable (a variable
    declared by several roles is one row naming them), sorted by name."""
    rows: dict[str, tuple[Option, list[str]]] = {}
    for spec in specs:
        for opt in spec.leaves():
            name = opt.name
            if name in rows:
                first, roles = rows[name]
                _same_declaration(first, opt)
                if spec.role not in roles:
                    roles.append(spec.role)
            else:
                rows[name] = (opt, [spec.role])
    lines = ["| variable | role | type | default | meaning |", "|---|---|---|---|---|"]
    for name in sorted(rows):
        opt, roles = rows[name]
        cells = [f"`{name}`", ", ".join(roles), opt.short_type().replace("|", "\\|"),
                 _default_cell(opt), opt.description.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _same_declaration(a: Option, b: Option) -> None:
    """Two roles declaring one variable must agree on all but the description."""
    def sig(o: Option):
        return (o.type, o.default if o.has_default else "<unset>", o.required, o.choices,
                o.min, o.max, o.accepts_null(), o.also, o.secret, o.elements)
    if sig(a) != sig(b):
        raise InputError(f"{a.name}: declared differently at {a.where} and {b.where} "
                         "(type, default, choices, range, nullable, secret and required "
                         "must agree)", file=b.file, line=b.line, key=a.name)


def shipped_specs(roles_dir: Path) -> list[RoleSpec]:
    """The specs of every role folder in `roles_dir`, by role name (with each role's
    defaults.yaml applied)."""
    out = []
    for role_dir in sorted(p for p in Path(roles_dir).iterdir() if p.is_dir()):
        defaults = {}
        if (role_dir / "defaults.yaml").exists():
            defaults = load_yaml(role_dir / "defaults.yaml", default={}) or {}
        spec = load_role_spec(role_dir, defaults)
        if spec is not None:
            out.append(spec)
    return out


def update_doc(text: str, table: str, *, file: str = "document") -> str:
    """`text` with the part between BEGIN_MARK and END_MARK replaced by `table`."""
    start = text.find(BEGIN_MARK)
    end = text.find(END_MARK)
    if start < 0 or end < start:
        raise InputError(f"no role variables markers in {file}: put the lines\n  "
                         f"{BEGIN_MARK}\n  {END_MARK}\nwhere the table goes", file=file)
    return text[:start + len(BEGIN_MARK)] + "\n\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    """python -m clusterctl.engine.specs [--roles DIR] (--markdown | --write DOC |
    --check DOC)"""
    import argparse
    from .roles import project_root
    parser = argparse.ArgumentParser(prog="python -m clusterctl.engine.specs",
                                     description="The table of role variables, from "
                                     "roles/*/argument_specs.yaml.")
    parser.add_argument("--roles", default=None, help="roles folder (default: the "
                        "shipped roles)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the table")
    group.add_argument("--write", metavar="DOC", help="write the table into DOC between "
                       "its markers")
    group.add_argument("--check", metavar="DOC", help="exit 1 when DOC's table is stale")
    args = parser.parse_args(argv)
    try:
        specs = shipped_specs(Path(args.roles) if args.roles else project_root() / "roles")
        table = role_table(specs)
        if args.markdown:
            sys.stdout.write(table)
            return 0
        doc = Path(args.write or args.check)
        text = doc.read_text(encoding="utf-8")
        new = update_doc(text, table, file=str(doc))
        if args.check:
            if new != text:
                print(f"{doc}: the role variables table is stale; run python -m "
                      f"clusterctl.engine.specs --write {doc}", file=sys.stderr)
                return 1
            return 0
        if new != text:
            doc.write_text(new, encoding="utf-8")
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
