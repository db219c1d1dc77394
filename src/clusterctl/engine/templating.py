"""Jinja2 rendering with StrictUndefined; errors name the template and line."""
from __future__ import annotations

import functools
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from ..errors import InputError
from ..secret import Secret

_SINGLE_EXPR = re.compile(r"^\{\{\s*(.+?)\s*\}\}$", re.S)


def _to_yaml(value) -> str:
    import yaml
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip()


def _reveal(value):
    return value.reveal() if isinstance(value, Secret) else value


def make_environment(search_paths: list[Path] | None = None) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(p) for p in search_paths]) if search_paths else None
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
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


@functools.lru_cache(maxsize=2048)
def _compiled_expression(text: str):
    return _DEFAULT_ENV.compile_expression(text, undefined_to_none=False)


@functools.lru_cache(maxsize=2048)
def _compiled_template(text: str):
    return _DEFAULT_ENV.from_string(text)


def _where(exc: Exception, default_name: str) -> tuple[str, int | None]:
    name = getattr(exc, "filename", None) or getattr(exc, "name", None) or default_name
    line = getattr(exc, "lineno", None)
    return name, line


def render_string(text: str, variables: dict[str, Any], *, source: str = "<string>",
                  line: int | None = None, env: jinja2.Environment | None = None) -> Any:
    """Render one value. "{{ expr }}" alone keeps the native type (list, int, bool)."""
    if "{{" not in text and "{%" not in text:
        return text
    try:
        m = _SINGLE_EXPR.match(text)
        if m and "{{" not in m.group(1):
            expr = env.compile_expression(m.group(1), undefined_to_none=False) if env \
                else _compiled_expression(m.group(1))
            value = expr(**variables)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            return value
        template = env.from_string(text) if env else _compiled_template(text)
        return template.render(**variables)
    except jinja2.UndefinedError as exc:
        raise InputError(f"undefined variable in {text!r}: {exc.message}", file=source,
                         line=line) from None
    except jinja2.TemplateError as exc:
        raise InputError(f"template error in {text!r}: {exc}", file=source, line=line) from None


def render_value(value: Any, variables: dict[str, Any], *, source: str = "<string>",
                 line: int | None = None, env: jinja2.Environment | None = None) -> Any:
    """Render strings inside lists/dicts recursively."""
    if isinstance(value, str):
        return render_string(value, variables, source=source, line=line, env=env)
    if isinstance(value, list):
        return [render_value(v, variables, source=source, line=line, env=env) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, variables, source=source, line=line, env=env)
                for k, v in value.items()}
    return value


def render_file(path: Path, variables: dict[str, Any],
                env: jinja2.Environment | None = None,
                include_paths: list[Path] | None = None) -> str:
    """Render a template file; errors name the template file and its line.

    `include_paths` are searched after the template's own folder for {% include %}."""
    env = env or _DEFAULT_ENV
    try:
        search = [str(path.parent)] + [str(p) for p in include_paths or []]
        file_env = env.overlay(loader=jinja2.FileSystemLoader(search))
        return file_env.get_template(path.name).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"template syntax error: {exc.message}", file=str(path),
                         line=exc.lineno) from None
    except jinja2.UndefinedError as exc:
        line = _template_error_line(exc, path)
        raise InputError(f"undefined variable: {exc.message}", file=str(path), line=line) from None
    except jinja2.TemplateError as exc:
        line = _template_error_line(exc, path)
        raise InputError(f"template error: {exc}", file=str(path), line=line) from None
    except (OSError, jinja2.TemplateNotFound) as exc:
        raise InputError(f"cannot read template: {exc}", file=str(path)) from None


def _template_error_line(exc: Exception, path: Path) -> int | None:
    """Find the template line of a render-time error from its traceback."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def evaluate_condition(expr: Any, variables: dict[str, Any], *, source: str,
                       line: int | None = None) -> bool:
    """Evaluate a `when:` value: bool as is; a string as a Jinja2 expression."""
    if isinstance(expr, bool):
        return expr
    if isinstance(expr, list):
        return all(evaluate_condition(e, variables, source=source, line=line) for e in expr)
    text = str(expr).strip()
    m = _SINGLE_EXPR.match(text)
    if m:
        text = m.group(1)
    try:
        value = _compiled_expression(text)(**variables)
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        return bool(value)
    except jinja2.UndefinedError as exc:
        raise InputError(f"undefined variable in when: {expr!r}: {exc.message}", file=source,
                         line=line) from None
    except jinja2.TemplateError as exc:
        raise InputError(f"bad when: {expr!r}: {exc}", file=source, line=line) from None
