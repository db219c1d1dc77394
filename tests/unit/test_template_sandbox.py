"""Templates are untrusted input: the sandbox, confined template folders, compile at load.

Each payload below would run code on the controller (or read a file outside the
templates folders) with a plain Jinja2 environment; here each is one InputError naming
file:line, and the marker file the payload would create never appears.
"""
from __future__ import annotations

import os

import pytest

from clusterctl.engine.roles import load_playbook
from clusterctl.engine.templating import (MAX_REPEAT, check_expression, check_template_file,
                                          check_text, evaluate_condition, find_template,
                                          render_file, render_string)
from clusterctl.errors import EXIT_BAD_INPUT, InputError


def payloads(marker):
    """Well-known ways out of a Jinja2 template into Python; each would touch `marker`."""
    cmd = f"touch {marker}"
    return [
        f"cycler.__init__.__globals__.os.popen('{cmd}').read()",
        f"joiner.__init__.__globals__.os.system('{cmd}')",
        f"namespace.__init__.__globals__.os.system('{cmd}')",
        f"lipsum.__globals__['os'].system('{cmd}')",
        "''.__class__.__mro__[1].__subclasses__()",
        f"(cycler | attr('__init__')).__globals__.os.system('{cmd}')",
        f"self._TemplateReference__context.cycler.__init__.__globals__.os.system('{cmd}')",
    ]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a template ran code on the controller"


def test_payloads_in_task_args_are_refused_at_render(marker):
    for expr in payloads(marker):
        for text in (f"{{{{ {expr} }}}}", f"x {{{{ {expr} }}}} y"):
            with pytest.raises(InputError) as err:
                render_string(text, {}, source="roles/r/tasks.yaml", line=7)
            assert str(err.value).startswith("roles/r/tasks.yaml:7: ")
            assert err.value.exit_code == EXIT_BAD_INPUT


def test_payloads_in_when_are_refused(marker):
    for expr in payloads(marker):
        with pytest.raises(InputError) as err:
            evaluate_condition(expr, {}, source="roles/r/tasks.yaml", line=3)
        assert str(err.value).startswith("roles/r/tasks.yaml:3: ")
        with pytest.raises(InputError) as err:
            check_expression(expr, file="roles/r/tasks.yaml", line=3)
        assert str(err.value).startswith("roles/r/tasks.yaml:3: ")


def test_payloads_are_refused_at_compile_time(marker):
    # visible without running: an attribute or item starting with _ (also through `attr`)
    for expr in payloads(marker):
        with pytest.raises(InputError) as err:
            check_text(f"a {{{{ {expr} }}}}", file="vars.yaml", line=2)
        assert str(err.value).startswith("vars.yaml:2: ")
        assert "not allowed" in str(err.value)


def test_payload_in_template_file_names_its_line(tmp_path, marker):
    t = tmp_path / "unit.j2"
    for expr in payloads(marker):
        t.write_text(f"[Unit]\nDescription={{{{ {expr} }}}}\n")
        with pytest.raises(InputError) as err:
            render_file(t, {}, origin="roles/r/tasks.yaml:5")
        msg = str(err.value)
        assert msg.startswith(f"{t}:2: ") and "roles/r/tasks.yaml:5" in msg
        with pytest.raises(InputError) as err:
            check_template_file(t, origin="roles/r/tasks.yaml:5")
        assert str(err.value).startswith(f"{t}:2: ")


def test_name_built_at_run_time_is_still_refused(tmp_path, marker):
    # `attr(name)` with the name in a variable cannot be seen at load; the sandbox refuses it
    cmd = f"touch {marker}"
    text = "{{ (cycler | attr(a) | attr(b)).os.system('" + cmd + "') }}"
    check_text(text, file="t.yaml", line=1)  # compiles: nothing static to see
    with pytest.raises(InputError) as err:
        render_string(text, {"a": "__init__", "b": "__globals__"}, source="t.yaml", line=1)
    assert str(err.value).startswith("t.yaml:1: ")


def test_mutating_methods_are_refused():
    with pytest.raises(InputError) as err:
        render_string("{{ items.append(3) }}", {"items": [1, 2]}, source="t.yaml", line=4)
    assert "t.yaml:4:" in str(err.value)
    with pytest.raises(InputError):
        evaluate_condition("d.update({'a': 1})", {"d": {}}, source="t.yaml", line=4)


def test_resource_exhaustion_is_refused():
    for text in ("{{ 'a' * 100000000 }}", "{{ [0] * 100000000 }}", "{{ 2 ** 100000 }}",
                 "{{ range(10000000) | list }}"):
        check_text(text, file="t.yaml", line=1)  # never folded at compile time
        with pytest.raises(InputError) as err:
            render_string(text, {}, source="t.yaml", line=1)
        assert err.value.line == 1
    assert len(render_string("{{ 'ab' * n }}", {"n": MAX_REPEAT // 2})) == MAX_REPEAT
    assert render_string("{{ 2 ** 10 }}", {}) == 1024


def test_everyday_templates_still_work():
    v = {"facts": {"gpus": [1, 2]}, "unit": {"name": "x"}, "f": lambda a: a * 2}
    assert render_string("{{ facts.gpus | length }}", v) == 2
    assert render_string("{{ facts.get('gpus') }}", v) == [1, 2]
    assert render_string("{{ f(2) }}", v) == 4
    assert render_string("{% for g in facts.gpus %}{{ g }},{% endfor %}", v) == "1,2,"
    assert evaluate_condition("unit.name == 'x' and facts.gpus", v, source="t") is True


# ------------------------------------------------------------------ confinement

@pytest.fixture
def folders(tmp_path):
    role = tmp_path / "roles" / "r" / "templates"
    shared = tmp_path / "templates"
    role.mkdir(parents=True)
    shared.mkdir()
    (tmp_path / "outside.txt").write_text("not a template of ours\n")
    (role / "ok.j2").write_text("ok {{ 1 + 1 }}\n")
    (shared / "common.j2").write_text("common\n")
    (role / "sub").mkdir()
    (role / "sub" / "nested.j2").write_text("nested\n")
    return tmp_path, [role, shared]


def test_find_template_in_role_then_shared(folders):
    _root, dirs = folders
    assert find_template("ok.j2", dirs) == (dirs[0] / "ok.j2").resolve()
    assert find_template("common.j2", dirs) == (dirs[1] / "common.j2").resolve()
    assert find_template("sub/nested.j2", dirs) == (dirs[0] / "sub" / "nested.j2").resolve()
    assert find_template("sub/../ok.j2", dirs) == (dirs[0] / "ok.j2").resolve()


@pytest.mark.parametrize("src", ["../../../../etc/hostname", "../../../outside.txt",
                                 "/etc/hostname", "~/x.j2", "sub/../../../../outside.txt"])
def test_sources_outside_the_folders_are_refused(folders, src):
    _root, dirs = folders
    with pytest.raises(InputError) as err:
        find_template(src, dirs, file="roles/r/tasks.yaml", line=9)
    msg = str(err.value)
    assert msg.startswith("roles/r/tasks.yaml:9: ")
    assert "outside" in msg or "absolute" in msg or "not found" in msg


def test_symlink_out_is_refused(folders):
    root, dirs = folders
    os.symlink(root / "outside.txt", dirs[0] / "link.j2")
    os.symlink(root, dirs[0] / "up")
    for src in ("link.j2", "up/outside.txt"):
        with pytest.raises(InputError) as err:
            find_template(src, dirs, file="tasks.yaml", line=2)
        assert "resolves outside" in str(err.value)


def test_include_is_confined(folders):
    root, dirs = folders
    os.symlink(root / "outside.txt", dirs[1] / "sneaky.j2")
    t = dirs[0] / "main.j2"
    for include in ("../../../outside.txt", "/etc/hostname", "sneaky.j2"):
        t.write_text(f"a\n{{% include '{include}' %}}\n")
        with pytest.raises(InputError) as err:
            render_file(t, {}, include_paths=dirs, origin="tasks.yaml:3")
        assert str(err.value).startswith(f"{t}:2: "), str(err.value)
        assert "not a template of ours" not in str(err.value)
        with pytest.raises(InputError):
            check_template_file(t, dirs)
    t.write_text("{% include 'common.j2' %}{% include 'sub/nested.j2' %}")
    assert render_file(t, {}, include_paths=dirs) == "common\nnested\n"


def test_error_in_included_template_names_that_template(folders):
    _root, dirs = folders
    (dirs[1] / "bad.j2").write_text("one\ntwo {{ 1 // 0 }}\n")
    t = dirs[0] / "main.j2"
    t.write_text("{% include 'bad.j2' %}\n")
    with pytest.raises(InputError) as err:
        render_file(t, {}, include_paths=dirs, origin="roles/r/tasks.yaml:4")
    msg = str(err.value)
    assert msg.startswith(f"{(dirs[1] / 'bad.j2').resolve()}:2: ")
    assert "ZeroDivisionError" in msg and "roles/r/tasks.yaml:4" in msg


# ------------------------------------------------------------------ compiled at load

@pytest.fixture
def project(tmp_path):
    role = tmp_path / "roles" / "r"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "conf.j2").write_text("name={{ inventory_hostname }}\n")
    (role / "tasks.yaml").write_text(
        "- name: conf\n"
        "  template: {src: conf.j2, dest: /etc/x.conf}\n"
        "  when: inventory_hostname == 'a'\n")
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: all, roles: [r]}\n")
    return tmp_path


def load(project):
    return load_playbook(project / "pb.yaml", [project / "roles"])


def test_good_project_loads(project):
    assert [t.name for t in load(project)[0].roles[0].tasks] == ["conf"]


@pytest.mark.parametrize("text, line, needle", [
    ("ok\n{% if %}\n", 2, "syntax"),
    ("ok\n\n{{ x | no_such_filter }}\n", 3, "no_such_filter"),
    ("{% if x is no_such_test %}{% endif %}\n", 1, "no_such_test"),
    ("a\n{{ cycler.__init__ }}\n", 2, "__init__"),
    ("{% include 'missing.j2' %}\n", 1, "missing.j2"),
    ("{% include '../../../pb.yaml' %}\n", 1, "pb.yaml"),
])
def test_bad_template_is_input_error_at_load(project, text, line, needle):
    path = project / "roles" / "r" / "templates" / "conf.j2"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load(project)
    msg = str(err.value)
    assert msg.startswith(f"{path.resolve()}:{line}: "), msg
    assert needle in msg


def test_bad_template_src_is_input_error_at_load(project):
    tasks = project / "roles" / "r" / "tasks.yaml"
    for src in ("../../../../etc/hostname", "/etc/hostname", "nope.j2"):
        tasks.write_text(f"- name: conf\n  template:\n    src: {src}\n    dest: /etc/x\n")
        with pytest.raises(InputError) as err:
            load(project)
        assert str(err.value).startswith(f"{tasks}:3: "), str(err.value)


@pytest.mark.parametrize("task, line, needle", [
    ("- name: a\n  command: {argv: [true]}\n  when: x ==\n", 3, "when"),
    ("- name: a\n  command: {argv: [true]}\n  when: x | nope\n", 3, "nope"),
    ("- name: a\n  command: {argv: [true]}\n  when: [a, x.__class__]\n", 3, "__class__"),
    ("- name: a\n  command:\n    argv: [true]\n    creates: '{{ x | nope }}'\n", 4, "nope"),
    ("- name: a\n  directory: {path: '{% for %}'}\n", 2, "template error"),
])
def test_bad_task_template_is_input_error_at_load(project, task, line, needle):
    tasks = project / "roles" / "r" / "tasks.yaml"
    tasks.write_text(task)
    with pytest.raises(InputError) as err:
        load(project)
    msg = str(err.value)
    assert msg.startswith(f"{tasks}:{line}: "), msg
    assert needle in msg


def test_bad_defaults_and_play_vars_are_input_errors_at_load(project):
    defaults = project / "roles" / "r" / "defaults.yaml"
    defaults.write_text("a: 1\nb: '{{ a | nope }}'\n")
    with pytest.raises(InputError) as err:
        load(project)
    assert str(err.value).startswith(f"{defaults}:2: ")
    defaults.unlink()
    pb = project / "pb.yaml"
    pb.write_text("- name: p\n  hosts: all\n  roles: [r]\n  vars:\n    x: '{{ y.__class__ }}'\n")
    with pytest.raises(InputError) as err:
        load(project)
    assert str(err.value).startswith(f"{pb}:5: ")


def test_templated_src_compiles_every_role_template(project):
    tasks = project / "roles" / "r" / "tasks.yaml"
    tasks.write_text("- name: unit\n  systemd_unit: {name: x.service, src: '{{ kind }}.j2'}\n")
    load(project)
    (project / "roles" / "r" / "templates" / "other.j2").write_text("{{ x | nope }}\n")
    with pytest.raises(InputError) as err:
        load(project)
    assert "other.j2:1: " in str(err.value)


def test_shipped_roles_and_playbooks_compile():
    from clusterctl.engine.roles import default_roles_paths, load_role
    plays = load_playbook("bootstrap")
    assert plays
    for name in ("llamacpp_serve", "vllm_serve"):
        assert load_role(name, default_roles_paths()).tasks
