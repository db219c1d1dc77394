"""Role variable specs (roles/<role>/argument_specs.yaml): the shipped specs are complete
and agree with the built-in defaults, the doc table is current, a bad value stops the run
before any connection with one message naming where it was set, typos get a warning."""
from pathlib import Path

import pytest

from clusterctl import session as session_mod
from clusterctl.engine import specs
from clusterctl.engine.roles import load_playbook, load_role
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.engine.yamlfile import load_yaml
from clusterctl.errors import InputError
from clusterctl.inventory import DEFAULTS, load_inventory, validate_vars

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
DOC = REPO / "docs" / "inventory.md"


def shipped_roles():
    return sorted(p for p in ROLES.iterdir() if p.is_dir())


# -- the shipped roles ---------------------------------------------------------------

def test_every_default_of_every_shipped_role_is_declared():
    missing = []
    for role_dir in shipped_roles():
        defaults = {}
        if (role_dir / "defaults.yaml").exists():
            defaults = load_yaml(role_dir / "defaults.yaml", default={}) or {}
        spec_file = f"roles/{role_dir.name}/{specs.SPEC_FILE}"
        spec = specs.load_role_spec(role_dir, defaults)
        if spec is None:
            missing.append(f"roles/{role_dir.name} has no {specs.SPEC_FILE}: write one "
                           "declaring the variables the role reads"
                           + (f" (its defaults.yaml sets {', '.join(map(str, defaults))})"
                              if defaults else ""))
            continue
        for name in specs.undeclared_defaults(spec, defaults):
            missing.append(f"roles/{role_dir.name}/defaults.yaml sets {name!r}, which "
                           f"{spec_file} does not declare: add '{name}:' with its type "
                           "and a one-line description under argument_specs.main.options")
    assert not missing, "\n".join(missing)


def _leaf_default(path):
    value = DEFAULTS
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _plain(value):
    """A value with its type, containers as plain dicts and lists (YAML's keep lines)."""
    if isinstance(value, dict):
        return ("dict", {k: _plain(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [_plain(v) for v in value])
    return (type(value).__name__, value)


def test_spec_defaults_agree_with_the_inventory_built_in_defaults():
    wrong, checked = [], 0
    for spec in specs.shipped_specs(ROLES):
        for opt in spec.leaves():
            known, value = _leaf_default(opt.path)
            if not known:
                parent_known, parent = _leaf_default(opt.path[:-1])
                if opt.has_default and len(opt.path) > 1 and parent_known \
                        and isinstance(parent, dict):
                    # templates see the built-in defaults, not the spec's: a leaf missing
                    # there is undefined on every host (`llamacpp.x` in a task's args)
                    wrong.append(f"{opt.where}: {opt.name}: spec default {opt.default!r}, "
                                 f"missing from the built-in defaults of "
                                 f"{'.'.join(map(str, opt.path[:-1]))}")
                continue
            checked += 1
            if not opt.has_default or _plain(opt.default) != _plain(value):
                wrong.append(f"{opt.where}: {opt.name}: spec default "
                             f"{opt.default if opt.has_default else '(none)'!r}, built-in "
                             f"default {value!r}")
    assert checked >= 25
    assert not wrong, "\n".join(wrong)


def test_doc_table_is_generated_from_the_specs():
    text = DOC.read_text(encoding="utf-8")
    table = specs.role_table(specs.shipped_specs(ROLES))
    assert specs.update_doc(text, table, file=str(DOC)) == text, (
        "docs/inventory.md's role variables table is stale: run "
        "python -m clusterctl.engine.specs --write docs/inventory.md")
    assert "| `ray.port` | ray | port | `6379` |" in text


def test_generator_command_writes_and_checks(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# x\n\n{specs.BEGIN_MARK}\nSTALE TABLE\n{specs.END_MARK}\nafter\n")
    assert specs.main(["--roles", str(ROLES), "--check", str(doc)]) == 1
    assert "stale" in capsys.readouterr().err
    assert specs.main(["--roles", str(ROLES), "--write", str(doc)]) == 0
    assert specs.main(["--roles", str(ROLES), "--check", str(doc)]) == 0
    text = doc.read_text()
    assert "STALE TABLE" not in text and text.endswith(f"{specs.END_MARK}\nafter\n")
    assert "`base_packages` | base | list of str" in text
    no_marks = tmp_path / "plain.md"
    no_marks.write_text("# nothing\n")
    assert specs.main(["--roles", str(ROLES), "--check", str(no_marks)]) == 2
    assert "markers" in capsys.readouterr().err


def test_bootstrap_and_deploy_roles_accept_the_example_inventory():
    inv = load_inventory(REPO / "inventory" / "example.yaml")
    plays = load_playbook("bootstrap")
    assert specs.check_plays(inv, plays) == []
    for name in ("vllm_serve", "llamacpp_serve"):
        role = load_role(name, [ROLES])
        assert role.specs is not None and "unit" in role.specs.options


# -- checking a run ------------------------------------------------------------------

@pytest.fixture
def no_ssh(monkeypatch):
    def refuse(host, **kw):
        raise AssertionError(f"connected to {host.name} before the variables were checked")
    monkeypatch.setattr(session_mod, "Connection", refuse)


def make_role(tmp_path, spec: str, defaults: str = "", name: str = "r"):
    role = tmp_path / "roles" / name
    role.mkdir(parents=True)
    (role / "tasks.yaml").write_text(
        "- name: touch\n  command: {argv: ['true']}\n")
    if defaults:
        (role / "defaults.yaml").write_text(defaults)
    (role / specs.SPEC_FILE).write_text(spec)
    (tmp_path / "pb.yaml").write_text(f"- {{name: p, hosts: all, roles: [{name}]}}\n")
    return role


SPEC = """\
argument_specs:
  main:
    short_description: a test role
    options:
      packages:
        type: list
        elements: str
        description: what to install
      greeting:
        type: str
        default: hello
        description: a word
      level:
        type: int
        min: 1
        max: 5
        default: 3
        description: how much
      app:
        type: dict
        description: the app
        options:
          mode: {type: str, choices: [fast, safe], default: safe, description: how}
          token: {type: str, secret: true, default: null, description: a token}
"""


def write_inventory(tmp_path, body: str) -> Path:
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  hosts:\n    a: {ansible_host: 127.0.0.1, role: head}\n"
                   "    b: {ansible_host: 127.0.0.2}\n    c: {ansible_host: 127.0.0.3}\n"
                   + body)
    return inv


def run(tmp_path, inv, extra_vars=None):
    """What the runner does first: check the variables of the run's hosts."""
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    return specs.check_plays(load_inventory(inv), plays, extra_vars=extra_vars)


def test_bad_value_is_one_error_naming_file_line_hosts_and_role(tmp_path):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = write_inventory(tmp_path, "  vars:\n    packages: curl\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, inv)
    msg = str(err.value)
    assert msg.startswith(f"{inv}:7:15: packages: expected a list of strings, got 'curl' "
                          "(hosts a, b, c; role r)")
    assert err.value.key == "packages" and err.value.line == 7 and err.value.column == 15


def test_the_runner_checks_before_it_connects(tmp_path, no_ssh):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = write_inventory(tmp_path, "  vars:\n    app: {mode: slow}\n")
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    with pytest.raises(InputError) as err:
        run_playbook(load_inventory(inv), plays, RunOptions(check=True))
    assert str(err.value).startswith(f"{inv}:7:") and "app.mode: expected one of fast, " \
        "safe, got 'slow' (hosts a, b, c; role r)" in str(err.value)


def test_every_problem_is_listed_once_with_its_hosts(tmp_path):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = write_inventory(tmp_path, "  children:\n    g:\n      hosts: {b: , c: }\n"
                          "      vars: {level: 9, app: {mode: slow}}\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, inv)
    msg = str(err.value)
    assert "(and 1 more problem)" in msg
    assert msg.count("level: expected an integer 1..5, got 9 (hosts b, c; role r)") == 1
    assert "app.mode: expected one of fast, safe, got 'slow' (hosts b, c; role r)" in msg
    assert f"{inv}:9:" in msg


def test_a_secret_is_never_shown(tmp_path):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = write_inventory(tmp_path, "  vars:\n    app: {token: [hunter2]}\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, inv)
    assert "app.token: expected a string or null, got a list" in str(err.value)
    assert "hunter2" not in str(err.value)
    spec = specs.load_role_spec(tmp_path / "roles" / "r")
    found = specs.check_values(spec, {"app": {"token": 42, "mode": "safe"}})
    assert [(o.name, source, p, specs._got(v, o.secret)) for o, source, v, p in found] == \
        [("app.token", 0, "a string or null", "a value (*** not shown)")]


def test_extra_vars_and_play_vars_are_checked_where_they_come_from(tmp_path):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = write_inventory(tmp_path, "")
    extra, _ = validate_vars({"level": "0"})
    with pytest.raises(InputError) as err:
        run(tmp_path, inv, extra_vars=extra)
    assert str(err.value).startswith("--extra-vars: level: expected an integer 1..5, got "
                                     "'0'")
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: b, roles: [r], vars: {greeting: 7}}\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, inv)
    assert str(err.value).startswith(f"{tmp_path / 'pb.yaml'}:1: greeting: expected a "
                                     "string (quote it), got 7 (host b; role r)")


def test_unknown_variables_are_allowed_and_typos_warned(tmp_path):
    make_role(tmp_path, SPEC, "packages: [curl]\n")
    inv = load_inventory(write_inventory(
        tmp_path, "  vars:\n    my_own_setting: 1\n    pakages: [git]\n"
                  "    app: {mdoe: fast, extra_key: 1}\n"))
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    warnings = specs.check_plays(inv, plays)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"{inv.path}:8:14: variable 'pakages' is not declared by "
                                  "any role that runs (did you mean 'packages'?")
    assert "'app.mdoe'" in warnings[1] and "did you mean 'app.mode'?" in warnings[1]
    assert not any("my_own_setting" in w or "extra_key" in w for w in warnings)


def test_templates_are_not_checked_and_required_must_be_set(tmp_path):
    spec = SPEC.replace("        description: what to install\n",
                        "        description: what to install\n        required: true\n")
    make_role(tmp_path, spec)
    inv = write_inventory(tmp_path, "  vars:\n    level: '{{ 2 + 2 }}'\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, inv)
    msg = str(err.value)
    assert msg.startswith(f"{inv}: packages: required by role 'r' and not set (what to "
                          "install; declared at ")
    assert "level" not in msg


def test_inline_defaults_of_top_level_variables_apply(tmp_path):
    role = make_role(tmp_path, SPEC, "packages: [curl]\n")
    loaded = load_role("r", [role.parent])
    assert loaded.defaults == {"greeting": "hello", "level": 3, "packages": ["curl"]}
    assert loaded.specs.options["packages"].default_from == "defaults.yaml"


def test_a_role_without_a_spec_is_not_checked(tmp_path):
    role = make_role(tmp_path, SPEC)
    (role / specs.SPEC_FILE).unlink()
    inv = write_inventory(tmp_path, "  vars:\n    packages: curl\n")
    plays = load_playbook(tmp_path / "pb.yaml", [tmp_path / "roles"])
    assert plays[0].roles[0].specs is None
    assert specs.check_plays(load_inventory(inv), plays) == []


# -- the spec files themselves -------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    (("type: int\n        min: 1", "tpye: int\n        min: 1"),
     "option 'level': unknown key 'tpye' (did you mean 'type'?)"),
    (("type: int", "type: integer"), "option 'level': unknown type 'integer' (did you mean "
     "'int'?)"),
    (("default: 3", "default: 7"), "default of 'level' does not fit its spec: level: "
     "expected an integer 1..5, got 7"),
    (("description: how much", "description: ''"), "option 'level': description: expected "
     "one line of text"),
    (("  main:", "  other:"), "argument_specs: expected a mapping with the entry point "
     "'main'"),
    (("default: hello", "no_log: true"), "Ansible's no_log is written secret here"),
    (("elements: str", "elements: dict"), "option 'packages': elements:"),
])
def test_spec_errors_name_the_file_and_line(tmp_path, change, expected):
    old, new = change
    assert old in SPEC
    role = make_role(tmp_path, SPEC.replace(old, new, 1))
    with pytest.raises(InputError) as err:
        load_role("r", [role.parent])
    assert expected in str(err.value)
    assert str(err.value).startswith(f"{role / specs.SPEC_FILE}:")


def test_a_default_given_twice_is_an_error(tmp_path):
    role = make_role(tmp_path, SPEC, "greeting: hi\n")
    with pytest.raises(InputError) as err:
        load_role("r", [role.parent])
    assert str(err.value).startswith(f"{role / 'defaults.yaml'}:1: greeting: default given "
                                     "twice")


def test_a_bad_value_in_defaults_yaml_is_an_error(tmp_path):
    role = make_role(tmp_path, SPEC, "packages: [curl, 3]\n")
    with pytest.raises(InputError) as err:
        load_role("r", [role.parent])
    assert "packages: expected a list of strings (item 3 is not a string)" in str(err.value)


def test_two_roles_declaring_one_variable_differently_is_an_error(tmp_path):
    make_role(tmp_path, SPEC, name="one")
    make_role(tmp_path, SPEC.replace("default: hello", "default: bye"), name="two")
    with pytest.raises(InputError) as err:
        specs.role_table(specs.shipped_specs(tmp_path / "roles"))
    assert "greeting: declared differently at" in str(err.value)


@pytest.mark.parametrize("type_name, good, bad", [
    ("port", [1, 65535, "22"], [0, 65536, "0022", True, "x", 2.0]),
    ("bool", [True, False], ["false", 1, None]),
    ("path", ["/opt/x"], ["opt/x", 3]),
    ("version", ["2.60", "0.3.36+cpu"], ["", "-1", 2.6]),
    ("url", ["https://a/b", "file:///x"], ["ftp://a", "a"]),
    ("network", ["10.0.0.0/24", "eth0", "fe80::/64"], ["10.0.0.5/24", "x" * 16]),
    ("float", [0.5, 2], [True, float("nan"), "1"]),
    ("raw", [None, [1], {"a": 1}, "x"], []),
])
def test_types_accept_and_refuse(type_name, good, bad):
    opt = specs.Option(path=("v",), type=type_name, description="d", file="f", line=1)
    if type_name == "raw":
        opt.nullable = True
    for value in good:
        assert specs._value_problem(opt, value) is None, (type_name, value)
    for value in bad:
        assert specs._value_problem(opt, value) is not None, (type_name, value)
