"""Shared click parameter types: finite bounded numbers, bounded counts, rates,
proportions and safe names; every bad value is a usage error (exit 2), never a crash."""
from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.cli.common import (BoundedInt, FiniteFloat, Proportions, Rate, SafeName,
                                   parse_proportions, parse_rate)


def _cmd(param_type):
    @click.command()
    @click.option("--x", type=param_type)
    def cmd(x):
        click.echo(repr(x))
    return cmd


def run(param_type, text: str):
    return CliRunner().invoke(_cmd(param_type), ["--x", text])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc",
                                  "", "0x10", "1,5"])
def test_finite_float_refuses_non_finite_and_junk(text):
    res = run(FiniteFloat(0.1, 100), text)
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--x'" in res.output


@pytest.mark.parametrize("text,ok", [("0.1", True), ("100", True), ("0.09", False),
                                     ("100.5", False), ("-1", False), ("1e1", True)])
def test_finite_float_range_is_inclusive(text, ok):
    res = run(FiniteFloat(0.1, 100), text)
    assert (res.exit_code == 0) is ok, res.output
    if ok:
        assert float(res.output) == float(text)
    else:
        assert "out of range" in res.output and ">= 0.1 and <= 100" in res.output


def test_finite_float_open_bounds():
    t = FiniteFloat(0, 1, min_open=True)
    assert run(t, "0").exit_code == 2 and run(t, "1").exit_code == 0
    assert "> 0" in run(t, "0").output


@pytest.mark.parametrize("text", ["100000000", "-1", "1.5", "1e3", "ten", "", "9" * 40])
def test_bounded_int_refuses_out_of_range_and_non_integers(text):
    res = run(BoundedInt(0, 10_000), text)
    assert res.exit_code == 2, res.output


def test_bounded_int_accepts_the_bounds():
    assert run(BoundedInt(1, 10_000), "10000").output.strip() == "10000"
    assert run(BoundedInt(1, 10_000), "1").output.strip() == "1"


@pytest.mark.parametrize("text,value", [("200M", 200 * 10**6), ("800mbit", 10**8),
                                        ("1.5G", 1_500_000_000), ("10", 10)])
def test_rate(text, value):
    assert parse_rate(text) == value
    assert run(Rate(), text).output.strip() == repr(text)


@pytest.mark.parametrize("text", ["nan", "inf", "0.1", "100T", "fast", "1e9"])
def test_rate_refuses(text):
    assert run(Rate(), text).exit_code == 2


@pytest.mark.parametrize("text", ["x,y", "1,nan", "inf,1", "0,0", "-1,2", "1," * 2000 + "1",
                                  "1e300,1"])
def test_proportions_refuse(text):
    res = run(Proportions(), text)
    assert res.exit_code == 2, res.output
    with pytest.raises(ValueError):
        parse_proportions(text)


def test_proportions_keep_the_text():
    assert run(Proportions(), "3,1,1").output.strip() == "'3,1,1'"
    assert parse_proportions("3/1/0") == [3.0, 1.0, 0.0]


@pytest.mark.parametrize("text", ["../../etc/x", "/etc/x", "..", ".hidden", "a/b", "a b",
                                  "x" * 64, "", "tiny\n", "-rf"])
def test_safe_name_refuses_paths_and_junk(text):
    assert run(SafeName(), text).exit_code == 2


@pytest.mark.parametrize("text", ["tiny", "tiny3", "TinyLlama-1.1B.Q4_K_M", "a" * 63])
def test_safe_name_accepts(text):
    assert run(SafeName(), text).exit_code == 0


# ------------------------------------------------------------------ property-based

FAST = settings(max_examples=150, deadline=None, database=None)


@FAST
@given(text=st.text(max_size=30) | st.floats().map(repr) | st.integers().map(str))
def test_fuzz_finite_float_is_a_value_in_range_or_a_usage_error(text):
    t = FiniteFloat(0.05, 1.0)
    try:
        value = t.convert(text, None, None)
    except click.BadParameter:
        return
    assert math.isfinite(value) and 0.05 <= value <= 1.0


@FAST
@given(text=st.text(max_size=30) | st.integers().map(str) | st.floats().map(repr))
def test_fuzz_bounded_int(text):
    try:
        value = BoundedInt(1, 10_000).convert(text, None, None)
    except click.BadParameter:
        return
    assert isinstance(value, int) and 1 <= value <= 10_000


@FAST
@given(text=st.text(alphabet="0123456789.,/-naifeNIx ", max_size=40))
def test_fuzz_proportions(text):
    try:
        values = parse_proportions(text)
    except ValueError:
        return
    assert values and all(math.isfinite(v) and v >= 0 for v in values) and any(values)


@FAST
@given(text=st.text(max_size=20))
def test_fuzz_rate(text):
    try:
        value = parse_rate(text)
    except ValueError:
        return
    assert isinstance(value, int) and 1 <= value <= 10**13


@FAST
@given(text=st.text(max_size=70))
def test_fuzz_safe_name_never_a_path(text):
    try:
        name = SafeName().convert(text, None, None)
    except click.BadParameter:
        return
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    assert len(name) <= 63 and "\n" not in name


@pytest.mark.parametrize("command", ["plan-model", "deploy-model", "netcheck", "sync-model"])
def test_help_of_commands_using_the_types(command):
    from clusterctl.cli import main
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_metavar_and_info_dict():
    ctx = click.Context(_cmd(BoundedInt(1, 5)))
    opt = ctx.command.params[0]
    assert "1..5" in opt.get_help_record(ctx)[0]
    assert BoundedInt(1, 5).to_info_dict()["max"] == 5
    assert FiniteFloat(0, 1).to_info_dict()["min"] == 0
