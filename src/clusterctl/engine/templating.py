"""Jinja2 for roles, playbooks and templates: sandboxed, strict, confined, compiled at load.

- Every template and expression runs in an `ImmutableSandboxedEnvironment` with
  StrictUndefined: no attribute starting with `_`, no mutating method, no huge ranges or
  products; an unsafe operation is an InputError naming the file and line.
- Template files are read only from their allowed folders (a role's templates/ and the
  project's templates/): `find_template` resolves a `src` and refuses a path that lands
  outside them (absolute, `..`, or a symlink out); `{% include %}`/`{% import %}` go
  through a loader confined the same way.
- `check_*` compile expressions, templated values and template files when roles and
  playbooks load, so syntax errors, unknown filters/tests and static unsafe attribute
  access are bad input (exit 2) before any connection.
- A render error (undefined variable, `1 // 0`, ...) is an InputError naming the task's
  file:line and the template's file:line, never a bare exception.
- `{{ secret | reveal }}` yields the real value for the host. Inside `tracking_reveals()`
  every revealed value is recorded in a `Masker`, and each text that revealed one is
  rendered a second time with `reveal` giving ***; the Masker then hides those values
  in whatever is shown (diffs, summaries, error messages).
"""
from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import functools
import itertools
import operator
import posixpath
import re
import shlex
from collections import ChainMap
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import jinja2
import jinja2.parser
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ClusterctlError, InputError
from ..secret import MASK, Masker, Secret
from .yamlfile import YDict, YList

_SINGLE_EXPR = re.compile(r"^\{\{\s*(.+?)\s*\}\}$", re.S)

#: limits of the sandbox's arithmetic (a template must not exhaust the controller)
MAX_REPEAT = 1_000_000       # items/characters a `*` may produce
MAX_POWER_BITS = 4096        # size of an integer `**` may produce
MAX_TEMPLATE_BYTES = 1 << 20  # size of a template file


# ---------------------------------------------------------------- revealing secrets

_MASKER: contextvars.ContextVar[Masker | None] = contextvars.ContextVar("clusterctl_masker",
                                                                        default=None)
_MASKED_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("clusterctl_masked_pass",
                                                                    default=False)


class tracking_reveals:
    """Record the secrets revealed by renders in this block (this thread) in a Masker.

    The message of an error leaving the block is masked with it too. (A class, not a
    generator: planning enters one per task and host.)"""

    __slots__ = ("masker", "token")

    def __enter__(self) -> Masker:
        self.masker = Masker()
        self.token = _MASKER.set(self.masker)
        return self.masker

    def __exit__(self, kind, exc, tb) -> bool:
        _MASKER.reset(self.token)
        if isinstance(exc, Exception) and self.masker:
            exc.args = tuple(self.masker.mask(a) if isinstance(a, str) else a
                             for a in exc.args)
        return False


def _reveal(value):
    if not isinstance(value, Secret):
        return value
    if _MASKED_PASS.get():
        return MASK
    masker = _MASKER.get()
    if masker is not None:
        masker.add_secret(value)
    return value.reveal()


def _revealed_count() -> int:
    masker = _MASKER.get()
    return -1 if masker is None else masker.count


def revealed_any() -> bool:
    """Whether a render in the current tracking_reveals() block revealed a secret."""
    masker = _MASKER.get()
    return masker is not None and masker.count > 0


@contextlib.contextmanager
def _masked_pass() -> Iterator[None]:
    token = _MASKED_PASS.set(True)
    try:
        yield
    finally:
        _MASKED_PASS.reset(token)


def _pair_renderings(real: Any, render_masked) -> None:
    """After a render that revealed a secret: render again with *** and pair the texts."""
    masker = _MASKER.get()
    if masker is None or not isinstance(real, str):
        return
    try:
        with _masked_pass():
            masked = render_masked()
    except Exception:  # noqa: BLE001 - the masked pass failed: show nothing of it
        masker.opaque = True
        return
    if isinstance(masked, str):
        masker.add_rendering(real, masked)


def _masked(text: str) -> str:
    masker = _MASKER.get()
    return masker.mask(text) if masker else text


# ---------------------------------------------------------------- the environment

def _to_yaml(value) -> str:
    import yaml
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip()


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with bounded `*` and `**` (also kept from compile-time folding)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, op: str, left, right):
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                        len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"the product has more than {MAX_REPEAT} items")
            return operator.mul(left, right)
        if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                abs(left) > 1 and abs(left).bit_length() * right > MAX_POWER_BITS:
            raise SecurityError(f"the power has more than {MAX_POWER_BITS} bits")
        return operator.pow(left, right)


class ConfinedLoader(jinja2.BaseLoader):
    """Loads templates from `roots` only: names with `..` are refused by Jinja2, and a
    file whose real path (symlinks resolved) is outside its root is refused here."""

    def __init__(self, roots: list[Path]):
        self.roots = [Path(r) for r in roots]

    def get_source(self, environment, template: str):
        pieces = jinja2.loaders.split_template_path(template)
        for root in self.roots:
            path = root.joinpath(*pieces)
            if not path.is_file():
                continue
            real = path.resolve()
            if not _inside(real, root):
                raise SecurityError(f"template {template!r} resolves outside {root} "
                                    f"(to {real})")
            mtime = real.stat().st_mtime
            if real.stat().st_size > MAX_TEMPLATE_BYTES:
                raise SecurityError(f"template {template!r} is larger than "
                                    f"{MAX_TEMPLATE_BYTES // 1024} KiB")
            text = real.read_text(encoding="utf-8")

            def uptodate(real=real, mtime=mtime) -> bool:
                try:
                    return real.stat().st_mtime == mtime
                except OSError:
                    return False
            return text, str(real), uptodate
        raise jinja2.TemplateNotFound(template, f"template {template!r} not found in "
                                      + ", ".join(map(str, self.roots)))

    def list_templates(self) -> list[str]:
        found = set()
        for root in self.roots:
            if root.is_dir():
                found.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                             if p.is_file())
        return sorted(found)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def make_environment(search_paths: list[Path] | None = None) -> jinja2.Environment:
    """The sandboxed environment; `search_paths`: the folders templates may be loaded from."""
    loader = ConfinedLoader(list(search_paths)) if search_paths else None
    env = _Sandbox(loader=loader, undefined=jinja2.StrictUndefined,
                   keep_trailing_newline=True, trim_blocks=True,
                   lstrip_blocks=True, autoescape=False)
    env.filters["to_yaml"] = _to_yaml
    env.filters["reveal"] = _reveal
    env.filters["quote"] = lambda v: shlex.quote(str(v))
    env.filters["dirname"] = lambda v: posixpath.dirname(str(v))
    env.filters["basename"] = lambda v: posixpath.basename(str(v))
    env.filters["urlhost"] = lambda v: urlsplit(str(v)).hostname or ""
    env.filters["comment"] = lambda v: "".join(("# " + ln).rstrip() + "\n"
                                               for ln in str(v).splitlines())
    return env


_DEFAULT_ENV = make_environment()


@functools.lru_cache(maxsize=64)
def _file_environment(roots: tuple[str, ...]) -> jinja2.Environment:
    """One environment (and compiled-template cache) per set of allowed folders."""
    return _DEFAULT_ENV.overlay(loader=ConfinedLoader([Path(r) for r in roots]), cache_size=400)


@functools.lru_cache(maxsize=2048)
def _compiled_expression(text: str):
    return _DEFAULT_ENV.compile_expression(text, undefined_to_none=False)


@functools.lru_cache(maxsize=2048)
def _compiled_template(text: str):
    return _DEFAULT_ENV.from_string(text)


def _render(template: jinja2.Template, variables) -> str:
    """`template.render(**variables)` without copying the variables twice per call (the
    keyword unpacking and Jinja's own merge with its globals): the context looks them up
    through a ChainMap instead. Same precedence (variables before globals), same error
    rewriting. Planning renders every task's arguments for every host, so this is on the
    hot path."""
    ctx = template.new_context(ChainMap(variables, template.globals), shared=True)
    try:
        return template.environment.concat(template.root_render_func(ctx))
    except Exception:  # noqa: BLE001 - re-raised with the template's own lines
        return template.environment.handle_exception()


def _evaluate(expr, variables) -> Any:
    """`expr(**variables)` for a compiled expression, without the copies (see _render)."""
    template = getattr(expr, "_template", None)
    if template is None:                       # another Jinja2 layout: the public call
        return expr(**variables)
    ctx = template.new_context(ChainMap(variables, template.globals), shared=True)
    for _ in template.root_render_func(ctx):
        pass
    value = ctx.vars["result"]
    if getattr(expr, "_undefined_to_none", False) and isinstance(value, jinja2.Undefined):
        return None
    return value


# ---------------------------------------------------------------- memoized rendering
#
# Planning renders the same task arguments, `when:` conditions and templates for every
# host, and most of them reference only variables every host shares (role defaults, the
# inventory's group variables). A RenderCache (one per run) keeps a render's result per
# distinct tuple of the values of the variables it references, so each distinct
# rendering is computed once:
#
# - what a template references is read from its parsed AST once: every name it does not
#   set itself, refined to attribute paths (`mirror.apt`, `facts.net_manager`) where the
#   name is only used through constant attributes, so a host-specific object (the facts)
#   still shares the renders that read a shared attribute of it;
# - a template is never memoized when its result could differ between two renders with
#   the same values: `reveal` (a secret must be recorded by each render's Masker), any
#   filter, test or global not known to be pure (`random`, `lipsum`, a filter added
#   later), a filter named dynamically, `sameas` (identity), `{% include %}`/`{% import %}`
#   (the included file's names are not in the AST), or a custom environment;
# - the key of a value: str/int/float/bool/None as themselves (with their type), lists,
#   tuples and dicts by content (frozen once per object, up to a size), anything else
#   (facts, peers, hosts, secrets, big mappings) by identity, the object held by the
#   cache so its id is never reused while the cache lives. Values are treated as
#   read-only during a run (as the engine already does with the shared peer entries);
# - errors are never cached (each host re-renders and reports its own error), and a
#   template whose renders keep missing (a host-specific one) stops being looked up.
#
# `CLUSTERCTL_RENDER_CACHE=0` turns memoization off (bench_scale prints both).

_MISSING = ("<missing>",)         # a name the variables lack: key part, never a value
_UNDEF = ("<undefined>",)         # an attribute path that resolved to Undefined

#: filters whose result depends only on their arguments (Jinja2's builtins but `random`,
#: and clusterctl's but `reveal`); anything else makes a template unmemoizable
PURE_FILTERS = frozenset(set(jinja2.filters.FILTERS) - {"random"}) | frozenset(
    {"to_yaml", "quote", "dirname", "basename", "urlhost", "comment"})
PURE_TESTS = frozenset(set(jinja2.tests.TESTS) - {"sameas"})
PURE_GLOBALS = frozenset({"range", "dict", "cycler", "joiner", "namespace"})
#: filters that apply another filter or test given by name as an argument
_BY_NAME = frozenset({"map", "select", "reject", "selectattr", "rejectattr"})
#: words that make a text unmemoizable wherever they appear (a belt to the AST's braces)
_IMPURE_WORDS = ("reveal", "random", "lipsum", "sameas")


def render_cache_enabled() -> bool:
    """False when the environment sets CLUSTERCTL_RENDER_CACHE=0 (measuring, debugging)."""
    import os
    return os.environ.get("CLUSTERCTL_RENDER_CACHE", "1").strip().lower() not in (
        "0", "no", "off", "false")


def _dependencies(ast: nodes.Node, text: str, env: jinja2.Environment = None
                  ) -> tuple[tuple[str, ...], ...] | None:
    """The attribute paths of outside variables a parsed template reads, sorted; None
    when it must not be memoized."""
    import jinja2.meta
    env = env or _DEFAULT_ENV
    if any(word in text for word in _IMPURE_WORDS):
        return None
    if isinstance(ast, nodes.Template):
        # Jinja2 leaves out names that are globals, but a variable of that name wins
        undeclared = jinja2.meta.find_undeclared_variables(ast) | {
            n.name for n in ast.find_all(nodes.Name)
            if n.ctx == "load" and n.name in env.globals}
    else:                                    # an expression: every name is outside
        undeclared = {n.name for n in ([ast] if isinstance(ast, nodes.Name) else [])
                      + list(ast.find_all(nodes.Name)) if n.ctx == "load"}
    impure_filters = set(env.filters) - PURE_FILTERS
    everything = [ast, *ast.find_all(nodes.Node)]
    for node in everything:
        if isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            return None
        if isinstance(node, nodes.Filter):
            if node.name not in PURE_FILTERS:
                return None
            if node.name in _BY_NAME:
                for arg in node.args:
                    if not isinstance(arg, nodes.Const):
                        return None
                    if isinstance(arg.value, str) and (arg.value in impure_filters or
                                                       arg.value == "sameas"):
                        return None
        if isinstance(node, nodes.Test) and node.name not in PURE_TESTS:
            return None
        if isinstance(node, nodes.Name) and node.name in env.globals and \
                node.name not in PURE_GLOBALS:
            return None
    paths: set[tuple[str, ...]] = set()

    def chain(expr: nodes.Node) -> None:
        """An object expression: Name(.attr)* records its path; else walk into it."""
        attrs = []
        base = expr
        while isinstance(base, nodes.Getattr):
            attrs.append(base.attr)
            base = base.node
        if isinstance(base, nodes.Name):
            if base.ctx == "load" and base.name in undeclared:
                paths.add((base.name, *reversed(attrs)))
            return
        walk(base)

    def walk(node: nodes.Node) -> None:
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            chain(node.node.node)            # a method call: the object, not the method
            for child in node.iter_child_nodes(exclude=("node",)):
                walk(child)
        elif isinstance(node, (nodes.Getattr, nodes.Name)):
            chain(node)
        else:
            for child in node.iter_child_nodes():
                walk(child)
    walk(ast)
    # a path read whole covers the longer paths under it
    kept = [p for p in paths if not any(q != p and p[:len(q)] == q for q in paths)]
    return tuple(sorted(kept))


@functools.lru_cache(maxsize=4096)
def text_dependencies(text: str) -> tuple[tuple[str, ...], ...] | None:
    """What a templated string (as render_string renders it) reads; None: unmemoizable.
    A plain string reads nothing: ()."""
    if "{{" not in text and "{%" not in text:
        return ()
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group(1):
            ast = _parse_expression(m.group(1))
        else:
            ast = _DEFAULT_ENV.parse(text)
    except jinja2.TemplateError:
        return None
    return _dependencies(ast, text)


@functools.lru_cache(maxsize=4096)
def condition_dependencies(text: str) -> tuple[tuple[str, ...], ...] | None:
    """What a `when:` expression (its text, braces stripped) reads; None: unmemoizable."""
    try:
        return _dependencies(_parse_expression(text), text)
    except jinja2.TemplateError:
        return None


def value_dependencies(value: Any) -> tuple[tuple[str, ...], ...] | None:
    """What rendering `value` (strings inside lists and dicts) reads; None: unmemoizable."""
    found: set = set()

    def visit(v) -> bool:
        if isinstance(v, str):
            deps = text_dependencies(v)
            if deps is None:
                return False
            found.update(deps)
        elif isinstance(v, list):
            return all(visit(x) for x in v)
        elif isinstance(v, dict):
            return all(visit(x) for x in v.values())
        return True
    if not visit(value):
        return None
    return tuple(sorted(p for p in found
                        if not any(q != p and p[:len(q)] == q for q in found)))


def file_dependencies(path: Path, include_paths: list[Path] | None = None
                      ) -> tuple[tuple[str, ...], ...] | None:
    """What a template file reads; None: unmemoizable (or unreadable)."""
    roots = tuple(dict.fromkeys(str(p) for p in [path.parent, *(include_paths or [])]))
    return _file_dependencies(str(path), roots)


@functools.lru_cache(maxsize=512)
def _file_dependencies(path: str, roots: tuple[str, ...]):
    env = _file_environment(roots)
    try:
        source, filename, _ = env.loader.get_source(env, Path(path).name)
        return _dependencies(env.parse(source, Path(path).name, filename), source, env)
    except Exception:  # noqa: BLE001 - not memoized; the render reports the problem
        return None


class _Failed:
    """A computation that raised (kept only where the caller asked for it)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


#: mapping types whose keys the sandbox reads as attributes when the type has no such
#: attribute -> the attributes the type has
_PLAIN_MAPPINGS = {dict: frozenset(dir(dict)), YDict: frozenset(dir(YDict))}
_DATA = frozenset({str, int, float, bool, type(None), dict, list, tuple, YDict, YList})
_MUTABLE = (dict, list, set, collections.abc.MutableMapping, collections.abc.MutableSequence,
            collections.abc.MutableSet)
#: type -> whether it is one of clusterctl's own (or derives from one) and not mutable
_OWN_TYPES: dict[type, bool] = {}


class RenderCache:
    """Memoized renders for one run (see above). Not shared between runs: the objects
    keyed by identity are held until the cache goes."""

    #: lookups after which a site whose hits stay under a quarter of its misses stops
    #: being memoized (a host-specific template: every host misses)
    PROBATION = 64
    #: entries one site keeps at most
    MAX_ENTRIES = 4096
    #: items a value's content key may have; a bigger value is keyed by identity
    MAX_FREEZE = 512

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._sites: dict[Any, list] = {}          # site -> [entries, hits, misses, off]
        self._ids: dict[int, tuple[Any, Any]] = {}  # id(value) -> (value, token)
        self._interned: dict[Any, int] = {}
        self._templates: dict[tuple, jinja2.Template] = {}
        self._tokens = itertools.count(1)          # next() is atomic: handlers plan in threads
        self.hits = 0
        self.misses = 0

    # keys ------------------------------------------------------------------
    def _new_token(self) -> int:
        return next(self._tokens)

    def _token(self, value: Any) -> Any:
        t = type(value)
        if t is str or value is None:
            return value
        if t is bool or t is int or t is float or t is bytes:
            return (t, value)
        held = self._ids.get(id(value))
        if held is not None and held[0] is value:
            return held[1]
        frozen = self._freeze(value, [self.MAX_FREEZE])
        if frozen is None:
            token = self._new_token()
        else:
            token = self._interned.get(frozen)
            if token is None:
                token = self._interned[frozen] = self._new_token()
        self._ids[id(value)] = (value, token)
        return token

    def _freeze(self, value: Any, budget: list) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            return None
        t = type(value)
        if t is str or value is None:
            return value
        if t is bool or t is int or t is float or t is bytes:
            return (t, value)
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                fk, fv = self._freeze(k, budget), self._freeze(v, budget)
                if (fk is None and k is not None) or (fv is None and v is not None):
                    return None
                items.append((fk, fv))
            return ("d", t, tuple(items))
        if isinstance(value, (list, tuple)):
            items = []
            for v in value:
                fv = self._freeze(v, budget)
                if fv is None and v is not None:
                    return None
                items.append(fv)
            return ("l", t, tuple(items))
        params = getattr(t, "__dataclass_params__", None)
        if params is not None and params.frozen:
            try:
                hash(value)
            except TypeError:
                return None
            return ("o", t, value)
        return None

    def key(self, variables, paths, env: jinja2.Environment | None = None) -> tuple | None:
        """The key of `paths`' values in `variables`; None when one cannot be read."""
        env = env or _DEFAULT_ENV
        out = []
        try:
            for path in paths:
                value = variables.get(path[0], _MISSING)
                for attr in path[1:]:
                    if value is _MISSING or value is _UNDEF:
                        break
                    t = type(value)
                    plain = _PLAIN_MAPPINGS.get(t)
                    if plain is not None and attr not in plain and (
                            t is dict or attr not in value.__dict__):
                        # what the sandbox's getattr does for a plain mapping's key,
                        # without its AttributeError round
                        value = value.get(attr, _UNDEF)
                        continue
                    own = _OWN_TYPES.get(t)
                    if own is None:
                        own = _OWN_TYPES[t] = any(
                            k.__module__.startswith("clusterctl.") for k in t.__mro__) \
                            and not issubclass(t, _MUTABLE)
                    if own and attr[:1] != "_":
                        # clusterctl's own objects (facts, views): a data attribute is
                        # what the sandbox's getattr would return, without its checks
                        got = getattr(value, attr, _MISSING)
                        if type(got) in _DATA:
                            value = got
                            continue
                    value = env.getattr(value, attr)
                    if isinstance(value, jinja2.Undefined):
                        value = _UNDEF
                out.append(value if value is _MISSING or value is _UNDEF
                           else self._token(value))
        except Exception:  # noqa: BLE001 - an attribute that raises: render it fresh
            return None
        return tuple(out)

    # sites ---------------------------------------------------------------------
    def lookup(self, site: Any, key: tuple | None) -> tuple[bool, Any]:
        """(True, value) on a hit; (False, None) otherwise (a miss counts when its
        value is stored)."""
        if key is None:
            return False, None
        entry = self._sites.get(site)
        if entry is None:
            return False, None
        found = entry[0].get(key, _MISSING)
        if found is _MISSING:
            return False, None
        entry[1] += 1
        self.hits += 1
        return True, found

    def active(self, site: Any) -> bool:
        entry = self._sites.get(site)
        return self.enabled and (entry is None or not entry[3])

    def store(self, site: Any, key: tuple | None, value: Any) -> None:
        if key is None:
            return
        entry = self._sites.get(site)
        if entry is None:
            entry = self._sites[site] = [{}, 0, 0, False]
        entry[2] += 1
        self.misses += 1
        if entry[2] >= self.PROBATION and entry[1] * 4 < entry[2]:
            entry[3] = True              # keeps missing: stop looking it up
            entry[0].clear()
            return
        if len(entry[0]) < self.MAX_ENTRIES:
            entry[0][key] = value

    def memoized(self, site: Any, paths, variables, compute, env=None, *,
                 failures: bool = False):
        """compute() once per distinct key of `paths` in `variables` at `site`. `paths`
        None: always computed. An exception is not kept (each call computes it again
        and raises its own), unless `failures`: then it is raised again on a hit (for
        callers that only need to know that it failed)."""
        if paths is None or not self.enabled:
            return compute()
        entry = self._sites.get(site)
        if entry is not None and entry[3]:
            return compute()
        key = self.key(variables, paths, env)
        if key is not None and entry is not None:           # lookup(), inlined: hot
            value = entry[0].get(key, _MISSING)
            if value is not _MISSING:
                entry[1] += 1
                self.hits += 1
                if type(value) is _Failed:
                    raise value.error.with_traceback(None)
                return value
        try:
            value = compute()
        except Exception as exc:
            if failures:
                self.store(site, key, _Failed(exc))
            raise
        self.store(site, key, value)
        return value

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses,
                "sites": len(self._sites),
                "off": sum(1 for e in self._sites.values() if e[3])}


# ---------------------------------------------------------------- template files

def find_template(src: str, folders: list[Path], *, file: str | None = None,
                  line: int | None = None) -> Path:
    """The template file `src` names, searched in `folders` in order; its real path.

    `src` is relative to those folders: an absolute path, or one that resolves outside
    the folder it was found in (`..`, a symlink out), is an InputError at file:line."""
    text = str(src)
    if not text or "\x00" in text:
        raise InputError(f"template src {text!r}: not a file name", file=file, line=line,
                         key="src")
    if text.startswith(("/", "~")) or Path(text).is_absolute():
        raise InputError(f"template src {text!r}: must be a path relative to "
                         + " or ".join(map(str, folders)) + " (absolute paths are refused)",
                         file=file, line=line, key="src")
    for base in folders:
        candidate = base / text
        if not (candidate.is_file() or candidate.is_symlink()):
            continue
        real = candidate.resolve()
        if not _inside(real, base):
            raise InputError(f"template src {text!r} resolves outside {base} (to {real}); "
                             "templates are read only from the role's and the project's "
                             "templates folders", file=file, line=line, key="src")
        if real.is_file():
            return real
    raise InputError(f"template {text!r} not found in " + " or ".join(map(str, folders)),
                     file=file, line=line, key="src")


def render_file(path: Path, variables: dict[str, Any],
                env: jinja2.Environment | None = None,
                include_paths: list[Path] | None = None, *,
                origin: str | None = None, cache: RenderCache | None = None) -> str:
    """Render a template file; errors name the template file and its line.

    `include_paths` are searched after the template's own folder for {% include %}; no
    other file can be included. `origin` (e.g. the task's "file:line") is added to error
    messages. With a `cache` (and the default environment) the render is memoized."""
    roots = tuple(dict.fromkeys(str(p) for p in [path.parent, *(include_paths or [])]))
    if cache is not None and env is None and cache.enabled:
        return cache.memoized(("f", str(path), roots), file_dependencies(path, include_paths),
                              variables, lambda: _render_file(path, variables, None, roots,
                                                              origin, cache._templates))
    return _render_file(path, variables, env, roots, origin, None)


def _render_file(path: Path, variables, env: jinja2.Environment | None,
                 roots: tuple[str, ...], origin: str | None,
                 templates: dict | None) -> str:
    """render_file's work. `templates`: compiled templates kept for a run (Jinja2 itself
    checks the file's mtime on every load)."""
    file_env = env.overlay(loader=ConfinedLoader([Path(r) for r in roots])) if env \
        else _file_environment(roots)
    where = f" (rendering for {origin})" if origin else ""
    before = _revealed_count()
    try:
        if templates is not None:
            # loaded once per run (Jinja2 checks the file's mtime on every load; what it
            # includes still is, per render)
            key = (str(path), roots)
            template = templates.get(key)
            if template is None:
                template = templates[key] = file_env.get_template(path.name)
        else:
            template = file_env.get_template(path.name)
        text = _render(template, variables)
        if _revealed_count() != before:
            _pair_renderings(text, lambda: _render(template, variables))
        return text
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"template syntax error: {exc.message}{where}",
                         file=exc.filename or str(path), line=exc.lineno) from None
    except jinja2.TemplateNotFound as exc:
        file, line = _template_error_place(exc, path)
        raise InputError(f"template {exc.name!r} not found in {', '.join(roots)}{where}",
                         file=file, line=line) from None
    except ClusterctlError:
        raise
    except Exception as exc:  # noqa: BLE001 - any render error is the template's fault
        file, line = _template_error_place(exc, path)
        raise InputError(_masked(_describe(exc)) + where, file=file, line=line) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"unsafe template operation refused by the sandbox: {exc}"
    if isinstance(exc, jinja2.TemplateError):
        return f"template error: {exc}"
    if isinstance(exc, OSError):
        return f"cannot read template: {exc}"
    return f"template error: {type(exc).__name__}: {exc}"


def _template_error_place(exc: Exception, path: Path) -> tuple[str, int | None]:
    """The template file and line a render-time error happened at (an included template's
    own file when it happened there), from the traceback Jinja2 rewrites to templates."""
    tb = exc.__traceback__
    file, line = str(path), None
    while tb is not None:
        frame = tb.tb_frame
        code_file = frame.f_code.co_filename
        if ("__jinja_exception__" in frame.f_globals or code_file == str(path)) and \
                not code_file.startswith("<"):
            file, line = code_file, tb.tb_lineno
        tb = tb.tb_next
    return file, line


# ---------------------------------------------------------------- strings and conditions

def render_string(text: str, variables: dict[str, Any], *, source: str = "<string>",
                  line: int | None = None, env: jinja2.Environment | None = None,
                  cache: RenderCache | None = None) -> Any:
    """Render one value. "{{ expr }}" alone keeps the native type (list, int, bool).
    With a `cache` (and the default environment) a render is memoized (RenderCache)."""
    if "{{" not in text and "{%" not in text:
        return text
    if cache is not None and env is None and cache.enabled:
        return cache.memoized(("s", text), text_dependencies(text), variables,
                              lambda: render_string(text, variables, source=source,
                                                    line=line))
    before = _revealed_count()
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group(1):
            expr = env.compile_expression(m.group(1), undefined_to_none=False) if env \
                else _compiled_expression(m.group(1))

            def run():
                value = _evaluate(expr, variables)
                if isinstance(value, jinja2.Undefined):
                    value._fail_with_undefined_error()
                return value
        else:
            template = env.from_string(text) if env else _compiled_template(text)

            def run():
                return _render(template, variables)
        value = run()
        if _revealed_count() != before:
            _pair_renderings(value, run)
        return value
    except ClusterctlError:
        raise
    except jinja2.UndefinedError as exc:
        raise InputError(_masked(f"undefined variable in {text!r}: {exc.message}"),
                         file=source, line=line) from None
    except SecurityError as exc:
        raise InputError(_masked(f"unsafe template operation in {text!r} refused by the "
                                 f"sandbox: {exc}"), file=source, line=line) from None
    except jinja2.TemplateError as exc:
        raise InputError(_masked(f"template error in {text!r}: {exc}"), file=source,
                         line=line) from None
    except Exception as exc:  # noqa: BLE001 - e.g. 1 // 0: the template's fault
        raise InputError(_masked(f"template error in {text!r}: {type(exc).__name__}: {exc}"),
                         file=source, line=line) from None


def render_value(value: Any, variables: dict[str, Any], *, source: str = "<string>",
                 line: int | None = None, env: jinja2.Environment | None = None,
                 cache: RenderCache | None = None) -> Any:
    """Render strings inside lists/dicts recursively."""
    if isinstance(value, str):
        return render_string(value, variables, source=source, line=line, env=env,
                             cache=cache)
    if isinstance(value, list):
        return [render_value(v, variables, source=source, line=line, env=env, cache=cache)
                for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, variables, source=source, line=line, env=env, cache=cache)
                for k, v in value.items()}
    return value


def _line_of(container, key, default: int | None) -> int | None:
    lines = getattr(container, "key_lines", None)
    if isinstance(lines, dict) and key in lines:
        return lines[key]
    return default


def _condition_text(expr: Any) -> str:
    text = str(expr).strip()
    m = _SINGLE_EXPR.match(text)
    return m.group(1) if m else text


def evaluate_condition(expr: Any, variables: dict[str, Any], *, source: str,
                       line: int | None = None, cache: RenderCache | None = None) -> bool:
    """Evaluate a `when:` value: bool as is; a string as a Jinja2 expression. With a
    `cache`, memoized per distinct values of what it reads (RenderCache)."""
    if isinstance(expr, bool):
        return expr
    if isinstance(expr, list):
        return all(evaluate_condition(e, variables, source=source, line=line, cache=cache)
                   for e in expr)
    text = _condition_text(expr)
    try:
        if cache is None or not cache.enabled:
            return _truth(_compiled_expression(text), variables)
        parts = _conjuncts(text)
        whole = ("w", text)
        if len(parts) > 1 and cache.active(whole):
            return cache.memoized(whole, condition_dependencies(text), variables,
                                  lambda: _parts_truth(parts, variables, cache))
        return _parts_truth(parts, variables, cache)
    except ClusterctlError:
        raise
    except jinja2.UndefinedError as exc:
        raise InputError(_masked(f"undefined variable in when: {expr!r}: {exc.message}"),
                         file=source, line=line) from None
    except SecurityError as exc:
        raise InputError(_masked(f"unsafe operation in when: {expr!r} refused by the "
                                 f"sandbox: {exc}"), file=source, line=line) from None
    except jinja2.TemplateError as exc:
        raise InputError(_masked(f"bad when: {expr!r}: {exc}"), file=source, line=line) from None
    except Exception as exc:  # noqa: BLE001 - e.g. 1 // 0 in the expression
        raise InputError(_masked(f"bad when: {expr!r}: {type(exc).__name__}: {exc}"),
                         file=source, line=line) from None


def _parts_truth(parts, variables, cache: RenderCache) -> bool:
    """`a and b and ...` part by part, each memoized, stopping at the first false one
    (as Jinja2 does): where the whole condition is host-specific (its memo keeps
    missing), a shared false part before the host-specific one still answers once."""
    for site, compiled, deps in parts:
        if not cache.memoized(site, deps, variables, lambda c=compiled: _truth(c, variables)):
            return False
    return True


def _truth(compiled, variables) -> bool:
    value = _evaluate(compiled, variables)
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return bool(value)


@functools.lru_cache(maxsize=2048)
def _conjuncts(text: str) -> tuple[tuple[Any, Any, Any], ...]:
    """A condition as its top-level `and` parts: (cache site, compiled part, what it
    reads) each; one part when it is not an `and`."""
    ast = _parse_expression(text)
    if not isinstance(ast, nodes.And):
        return ((("w", text, 0), _compiled_expression(text), condition_dependencies(text)),)
    parts: list[nodes.Node] = []

    def flatten(node: nodes.Node) -> None:
        if isinstance(node, nodes.And):
            flatten(node.left)
            flatten(node.right)
        else:
            parts.append(node)
    flatten(ast)
    out = []
    for i, part in enumerate(parts):
        body = [nodes.Assign(nodes.Name("result", "store"), part, lineno=1)]
        compiled = jinja2.environment.TemplateExpression(
            _DEFAULT_ENV.from_string(nodes.Template(body, lineno=1)), False)
        # the whole text is checked for impure words: a part is pure only if all are
        deps = _dependencies(part, text)
        out.append((("w", text, i), compiled, deps))
    return tuple(out)


# ---------------------------------------------------------------- compiling at load time

def _static_checks(ast: nodes.Node, env: jinja2.Environment) -> tuple[str, int] | None:
    """(problem, line) of what the sandbox would refuse that is visible without running
    it: attributes or items starting with `_` (all of them on the first line that has
    one, in source order), or an unknown test."""
    kinds = (nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)
    found = ([ast] if isinstance(ast, kinds) else []) + list(ast.find_all(kinds))
    unsafe: list[tuple[int, str]] = []
    for node in found:
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and \
                isinstance(node.args[0], nodes.Const):
            name = node.args[0].value
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            return f"no test named {node.name!r}", node.lineno
        if isinstance(name, str) and name.startswith("_"):
            unsafe.append((node.lineno, name))
    if not unsafe:
        return None
    line = min(ln for ln, _ in unsafe)
    # an outer access is found before the inner one it applies to: reverse for source order
    names = list(dict.fromkeys(n for ln, n in reversed(unsafe) if ln == line))
    return (f"access to {', '.join(map(repr, names))} is not allowed in templates (names "
            "starting with _ are refused by the sandbox)"), line


def _parse_expression(text: str) -> nodes.Node:
    parser = jinja2.parser.Parser(_DEFAULT_ENV, text, state="variable")
    return parser.parse_expression()


def check_expression(expr: Any, *, file: str | None, line: int | None,
                     what: str = "when") -> None:
    """Compile a `when:` value (a bool, a string expression or a list of them)."""
    if expr is None or isinstance(expr, bool):
        return
    if isinstance(expr, list):
        for e in expr:
            check_expression(e, file=file, line=line, what=what)
        return
    text = _condition_text(expr)
    try:
        _compiled_expression(text)
        problem = _static_checks(_parse_expression(text), _DEFAULT_ENV)
    except jinja2.TemplateError as exc:
        raise InputError(f"bad {what}: {expr!r}: {getattr(exc, 'message', None) or exc}",
                         file=file, line=line) from None
    if problem:
        raise InputError(f"bad {what}: {expr!r}: {problem[0]}", file=file, line=line)


def check_text(text: str, *, file: str | None, line: int | None) -> None:
    """Compile one templated string (a task argument, a variable)."""
    if "{{" not in text and "{%" not in text:
        return
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group(1):
            _compiled_expression(m.group(1))
            ast = _parse_expression(m.group(1))
        else:
            _compiled_template(text)
            ast = _DEFAULT_ENV.parse(text)
        problem = _static_checks(ast, _DEFAULT_ENV)
    except jinja2.TemplateError as exc:
        raise InputError(f"template error in {text!r}: {getattr(exc, 'message', None) or exc}",
                         file=file, line=line) from None
    if problem:
        raise InputError(f"template error in {text!r}: {problem[0]}", file=file, line=line)


def check_value(value: Any, *, file: str | None, line: int | None) -> None:
    """Compile every templated string inside a value (lists and mappings recursively);
    errors name the line of the mapping key when it is known."""
    if isinstance(value, str):
        check_text(value, file=file, line=line)
    elif isinstance(value, list):
        lines = getattr(value, "lines", None)
        for i, v in enumerate(value):
            check_value(v, file=file,
                        line=lines[i] if isinstance(lines, list) and i < len(lines) else line)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_value(v, file=file, line=_line_of(value, k, line))


def is_templated(text: Any) -> bool:
    return isinstance(text, str) and ("{{" in text or "{%" in text)


def check_template_file(path: Path, include_paths: list[Path] | None = None, *,
                        origin: str | None = None) -> None:
    """Compile a template file and every template it includes/imports by a literal name
    (each must exist in the allowed folders); errors name the template's file:line."""
    roots = tuple(dict.fromkeys(str(p) for p in [path.parent, *(include_paths or [])]))
    env = _file_environment(roots)
    seen: set[str] = set()
    where = f" (used by {origin})" if origin else ""
    pending = [(path.name, str(path), None)]
    while pending:
        name, parent, parent_line = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            source, filename, _ = env.loader.get_source(env, name)
            env.get_template(name)  # compiles (and caches for the render)
            ast = env.parse(source, name, filename)
        except jinja2.TemplateSyntaxError as exc:
            kind = "template error" if isinstance(exc, jinja2.TemplateAssertionError) \
                else "template syntax error"
            raise InputError(f"{kind}: {exc.message}{where}",
                             file=exc.filename or filename, line=exc.lineno) from None
        except jinja2.TemplateNotFound:
            raise InputError(f"included template {name!r} not found in "
                             + ", ".join(roots) + where, file=parent,
                             line=parent_line) from None
        except SecurityError as exc:
            raise InputError(f"{exc}{where}", file=parent, line=parent_line) from None
        except jinja2.TemplateError as exc:
            raise InputError(f"template error: {getattr(exc, 'message', None) or exc}{where}",
                             file=getattr(exc, "filename", None) or filename,
                             line=getattr(exc, "lineno", None)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read template: {exc}{where}", file=parent,
                             line=parent_line) from None
        problem = _static_checks(ast, env)
        if problem:
            raise InputError(f"template error: {problem[0]}{where}", file=filename,
                             line=problem[1])
        for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport,
                                  nodes.Extends)):
            target = node.template
            if isinstance(target, nodes.Const) and isinstance(target.value, str):
                pending.append((target.value, filename, node.lineno))


__all__ = ["make_environment", "render_string", "render_value", "render_file",
           "evaluate_condition", "find_template", "tracking_reveals", "check_expression",
           "check_text", "check_value", "check_template_file", "is_templated",
           "ConfinedLoader", "MAX_REPEAT", "MAX_POWER_BITS", "RenderCache",
           "render_cache_enabled", "text_dependencies", "condition_dependencies",
           "value_dependencies", "file_dependencies"]
