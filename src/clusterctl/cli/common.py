"""What every command of the command line shares: error handling (one clear message and
its exit code, no traceback for expected errors), the inventory options and loading, and
the click parameter types (numbers that are finite and in a sane range, bounded counts,
rates, names and lists of proportions).

click's own FloatRange lets ``nan`` through (every comparison with NaN is false) and
IntRange without a maximum lets ``--nodes 100000000`` grow a plan without bound; the types
here refuse both with a usage error (exit 2) that names the option and the range.

Command-family modules (``cli/engine.py``, ``cli/deploy.py``, ...) import this module,
never the package ``clusterctl.cli`` itself. Output goes through ``clusterctl.render``
(terminal and JSON).
"""
from __future__ import annotations

import functools
import math
import re
import sys
import traceback
from typing import Any

import click

from ..errors import (EXIT_HOST_FAILED, ClusterctlError, interrupted_exit_code,
                      interrupted_message)

__all__ = ["CONTEXT", "handle_errors", "ExpectedErrorsGroup", "echo_error",
           "inventory_options", "load_inventory_arg",
           "FiniteFloat", "BoundedInt", "Rate", "Proportions", "SafeName", "parse_rate",
           "parse_proportions", "NAME_PATTERN"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ------------------------------------------------------------------------ error handling

def echo_error(exc: ClusterctlError) -> None:
    """An expected error as the one line every command prints: `error: ...` in red."""
    click.secho(f"error: {exc}", fg="red", err=True)


def handle_errors(fn):
    """Expected errors: one clear message and their exit code. Bugs: a traceback with -v."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0)
        try:
            return fn(*args, **kwargs)
        except ClusterctlError as exc:
            echo_error(exc)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException):
            raise  # click reports its own usage errors
        except KeyboardInterrupt as exc:
            click.secho(interrupted_message(exc), fg="red", err=True)
            sys.exit(interrupted_exit_code(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: say so plainly
            if verbose:
                traceback.print_exc()
            click.secho(f"internal error: {type(exc).__name__}: {exc}"
                        + ("" if verbose else " (run with -v for the traceback)"),
                        fg="red", err=True)
            sys.exit(EXIT_HOST_FAILED)
    return wrapper


class ExpectedErrorsGroup(click.Group):
    """A group whose commands' expected errors become one clear message and their exit
    code (also when the group is used on its own, without the main `clusterctl` command)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClusterctlError as exc:
            echo_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            click.secho(interrupted_message(exc), fg="red", err=True)
            ctx.exit(interrupted_exit_code(exc))


# ------------------------------------------------------------------------ the inventory

def inventory_options(fn):
    """-i/--inventory and --limit: the hosts a command works on."""
    fn = click.option("-i", "--inventory", "inventory_opt", metavar="FILE",
                      help="Inventory file (default ./inventory.yaml, then "
                           "$CLUSTERCTL_INVENTORY).")(fn)
    fn = click.option("-l", "--limit", multiple=True, metavar="PATTERN",
                      help="Only hosts matching PATTERN (host, group, glob, !exclude); "
                           "repeatable.")(fn)
    return fn


def load_inventory_arg(positional: str | None, option: str | None,
                       extra_vars: dict | None = None):
    """The inventory named by a command's [INVENTORY] argument or -i (they must agree),
    its warnings printed on stderr."""
    from ..errors import InputError
    from ..inventory import load_inventory, resolve_inventory_path
    if positional and option and positional != option:
        raise InputError(f"two inventories given: {positional} and -i {option}")
    inv = load_inventory(resolve_inventory_path(positional or option), extra_vars=extra_vars)
    for warning in inv.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return inv


# ------------------------------------------------------------------------ parameter types

def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class FiniteFloat(click.ParamType):
    """A finite float in [min, max] (either end may be open). NaN and inf are refused."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def describe(self) -> str:
        lo = "" if self.min is None else ("> " if self.min_open else ">= ") + _fmt(self.min)
        hi = "" if self.max is None else ("< " if self.max_open else "<= ") + _fmt(self.max)
        return " and ".join(p for p in (lo, hi) if p) or "any finite number"

    def to_info_dict(self) -> dict[str, Any]:
        info = super().to_info_dict()
        info.update(min=self.min, max=self.max, min_open=self.min_open,
                    max_open=self.max_open)
        return info

    def get_metavar(self, param, ctx=None) -> str:        # click >= 8.2 passes ctx too
        return "NUMBER"

    def check(self, value: float) -> str | None:
        """None when `value` is acceptable, else why not."""
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return f"{_fmt(value)} is out of range: need a number {self.describe()}"
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            return f"{_fmt(value)} is out of range: need a number {self.describe()}"
        return None

    def convert(self, value: Any, param, ctx) -> float:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, (int, float)):
            number = float(value)
        else:
            text = str(value).strip()
            if len(text) > 64:
                self.fail(f"{text[:20]}... is not a number", param, ctx)
            try:
                number = float(text)
            except ValueError:
                self.fail(f"{text!r} is not a number", param, ctx)
        problem = self.check(number)
        if problem:
            self.fail(problem, param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.describe()})"


class BoundedInt(click.ParamType):
    """An integer in [min, max]; both bounds are required, so no count is unbounded."""

    name = "integer"

    def __init__(self, min: int, max: int):
        if min > max:
            raise ValueError("min > max")
        self.min, self.max = min, max

    def to_info_dict(self) -> dict[str, Any]:
        info = super().to_info_dict()
        info.update(min=self.min, max=self.max)
        return info

    def get_metavar(self, param, ctx=None) -> str:
        return f"INTEGER {self.min}..{self.max}"

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not an integer", param, ctx)
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            text = str(value).strip()
            if not re.fullmatch(r"[+-]?\d{1,19}", text):
                self.fail(f"{text[:24]!r} is not an integer", param, ctx)
            number = int(text)
        if not self.min <= number <= self.max:
            self.fail(f"{number} is out of range: need an integer from {self.min} to "
                      f"{self.max}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"BoundedInt({self.min}, {self.max})"


_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_RATE = 10**13                          # 10 TB/s: above any link


def parse_rate(text: str) -> int:
    """Bytes per second from '200M' (MB/s), '1.5G', '800mbit', '1gbit' or a plain number.
    ValueError when it is not a rate, below 1 byte/s or above 10 TB/s."""
    m = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,15})?)\s*([kmgt]?)(bit|b|bps)?(?:/s)?\s*",
                     text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a rate (e.g. 200M, 1.5G, 800mbit)")
    value = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if m.group(3) == "bit":
        value /= 8
    if value < 1:
        raise ValueError(f"{text!r} is less than one byte per second")
    if value > MAX_RATE:
        raise ValueError(f"{text!r} is more than 10 TB/s")
    return int(value)


class _CheckedText(click.ParamType):
    """Text checked by `parse` when the option is parsed; the value stays the text given
    (the command parses it again where it uses it)."""

    parse = staticmethod(lambda text: text)

    def convert(self, value: Any, param, ctx) -> str:
        text = str(value)
        try:
            self.parse(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


class Rate(_CheckedText):
    """A transfer rate ('200M', '800mbit'); commands parse it with parse_rate."""

    name = "rate"
    parse = staticmethod(parse_rate)


MAX_PROPORTIONS = 1024


def parse_proportions(text: str) -> list[float]:
    """'3,1,1' -> [3.0, 1.0, 1.0]: finite, >= 0, at least one above 0, at most 1024."""
    parts = [p.strip() for p in re.split(r"[,/]", text)]
    if len(parts) > MAX_PROPORTIONS:
        raise ValueError(f"more than {MAX_PROPORTIONS} proportions")
    values = []
    for p in parts:
        try:
            v = float(p) if len(p) <= 32 else math.nan
        except ValueError:
            raise ValueError(f"{text[:40]!r}: expected proportions like 3,1,1") from None
        if not math.isfinite(v) or v < 0 or v > 1e9:
            raise ValueError(f"{text[:40]!r}: {p[:20]} is not a proportion (a finite number "
                             f"from 0 to 1e9)")
        values.append(v)
    if not any(v > 0 for v in values):
        raise ValueError(f"{text[:40]!r}: at least one proportion must be above 0")
    return values


class Proportions(_CheckedText):
    """A list of proportions like '3,1,1' (llama.cpp's --tensor-split)."""

    name = "proportions"
    parse = staticmethod(parse_proportions)


# A name that becomes part of unit file names, record paths and URLs: no '/', no '..'.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)


class SafeName(click.ParamType):
    """A name safe in file names and systemd unit names: letters, digits, _ . -, at most
    63, starting with a letter or digit (so never '..' or a path)."""

    name = "name"

    def convert(self, value: Any, param, ctx) -> str:
        text = str(value)
        if not _NAME_RE.fullmatch(text):
            self.fail(f"{text[:80]!r} is not a safe name: letters, digits, _ . - (at most "
                      f"63, starting with a letter or digit)", param, ctx)
        return text
