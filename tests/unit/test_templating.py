"""Jinja2 rendering: native single expressions, StrictUndefined, errors with file:line."""
import pytest

from clusterctl.engine.templating import (evaluate_condition, render_file, render_string,
                                          render_value)
from clusterctl.errors import InputError
from clusterctl.secret import Secret


def test_single_expression_keeps_native_type():
    assert render_string("{{ pkgs }}", {"pkgs": ["a", "b"]}) == ["a", "b"]
    assert render_string("{{ n + 1 }}", {"n": 41}) == 42
    assert render_string("{{ x }}", {"x": None}) is None


def test_mixed_text_renders_to_string():
    assert render_string("mtu {{ m }} on {{ i }}", {"m": 9000, "i": "eth1"}) == "mtu 9000 on eth1"


def test_plain_text_untouched():
    assert render_string("no templates here", {}) == "no templates here"


def test_undefined_variable_names_source_and_line():
    with pytest.raises(InputError) as err:
        render_string("{{ missing_var }}", {}, source="roles/x/tasks.yaml", line=7)
    msg = str(err.value)
    assert msg.startswith("roles/x/tasks.yaml:7:")
    assert "missing_var" in msg


def test_render_value_recurses():
    out = render_value({"a": ["{{ x }}", {"b": "{{ x }}-y"}]}, {"x": "v"})
    assert out == {"a": ["v", {"b": "v-y"}]}


def test_render_file_error_names_template_and_line(tmp_path):
    t = tmp_path / "unit.j2"
    t.write_text("line one\nline two {{ nope }}\n")
    with pytest.raises(InputError) as err:
        render_file(t, {})
    assert f"{t}:2:" in str(err.value)
    assert "nope" in str(err.value)


def test_render_file_syntax_error_has_line(tmp_path):
    t = tmp_path / "bad.j2"
    t.write_text("ok\n{% if %}\n")
    with pytest.raises(InputError) as err:
        render_file(t, {})
    assert f"{t}:2:" in str(err.value)


def test_render_file_include_from_shared_templates(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "env.j2").write_text("A={{ a }}\n")
    t = tmp_path / "role" / "unit.j2"
    t.parent.mkdir()
    t.write_text("{% filter comment %}{% include 'env.j2' %}{% endfilter %}\nX\n")
    assert render_file(t, {"a": 1}, include_paths=[shared]) == "# A=1\nX\n"


def test_filters():
    v = {"u": "http://198.18.0.1:8780/pip", "p": "/opt/clusterctl/venv"}
    assert render_string("{{ u | urlhost }}", v) == "198.18.0.1"
    assert render_string("{{ p | dirname }}", v) == "/opt/clusterctl"
    assert render_string("{{ s | reveal }}", {"s": Secret("tok")}) == "tok"
    assert render_string("x{{ s }}", {"s": Secret("tok")}) == "x***"


def test_conditions():
    v = {"facts": {"gpus": []}, "flag": True, "name": "n1"}
    assert evaluate_condition(True, v, source="t") is True
    assert evaluate_condition("flag", v, source="t") is True
    assert evaluate_condition("facts.gpus", v, source="t") is False
    assert evaluate_condition("{{ name == 'n1' }}", v, source="t") is True
    assert evaluate_condition(["flag", "name == 'n2'"], v, source="t") is False
    with pytest.raises(InputError):
        evaluate_condition("undefined_thing", v, source="t", line=3)


def test_environment_is_sandboxed_and_strict():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from clusterctl.engine.templating import make_environment
    env = make_environment()
    assert isinstance(env, ImmutableSandboxedEnvironment) and env.undefined is StrictUndefined


def test_runtime_errors_are_input_errors_with_place(tmp_path):
    for text in ("{{ 1 // 0 }}", "x {{ 1 // 0 }}", "{{ 'a' | int + [] }}"):
        with pytest.raises(InputError) as err:
            render_string(text, {}, source="roles/r/tasks.yaml", line=5)
        assert str(err.value).startswith("roles/r/tasks.yaml:5: template error")
    with pytest.raises(InputError) as err:
        evaluate_condition("1 // 0", {}, source="roles/r/tasks.yaml", line=6)
    assert str(err.value).startswith("roles/r/tasks.yaml:6: ")
    t = tmp_path / "x.j2"
    t.write_text("a\nb\n{{ 1 // 0 }}\n")
    with pytest.raises(InputError) as err:
        render_file(t, {}, origin="roles/r/tasks.yaml:7")
    assert str(err.value).startswith(f"{t}:3: ") and "roles/r/tasks.yaml:7" in str(err.value)
    assert "ZeroDivisionError" in str(err.value)


def test_reveal_is_recorded_while_tracking():
    from clusterctl.engine.templating import tracking_reveals
    assert render_string("{{ s | reveal }}", {"s": Secret("tok")}) == "tok"
    with tracking_reveals() as masker:
        assert render_string("a={{ s | reveal }}", {"s": Secret("tok")}) == "a=tok"
        assert render_string("{{ [s | reveal] }}", {"s": Secret("tok")}) == ["tok"]
    assert masker.mask("+a=tok\n-a=old\nx tok") == "+a=***\n-a=***\nx ***"
