"""Memoized rendering (templating.RenderCache, runner.PlanMemo): a memoized render, condition,
template file, task plan and op plan equal the fresh one for every host, a template is
computed once per distinct value of what it reads, and what must not be shared (secrets
revealed, random, identity tests, errors) is computed every time."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, Runner, run_playbook
from clusterctl.engine.templating import (RenderCache, condition_dependencies,
                                          evaluate_condition, render_file, render_string,
                                          render_value, text_dependencies, tracking_reveals)
from clusterctl.errors import InputError
from clusterctl.inventory import load_inventory
from clusterctl.secret import Secret
from standins import local  # noqa: F401  (the fixture)


class Peers(list):
    """A host-specific sequence of shared entries, as the cluster view hands out."""


def _hosts() -> list[dict]:
    """Variables of five hosts as the runner builds them: shared values (equal mappings
    that are different objects, as the inventory copies them per host), host-specific
    ones, and two hosts that differ from the rest in one nested value."""
    head = {"name": "h0", "cluster_ip": "10.0.0.1"}
    groups = {"all": ["h0", "h1", "h2", "h3", "h4"], "gpu": ["h3", "h4"]}
    out = []
    for i in range(5):
        out.append({
            "inventory_hostname": f"h{i}",
            "is_head": i == 0,
            "cluster_ip": f"10.0.0.{i + 1}",
            "cluster_iface": "eth1",
            "mirror": {"apt": "http://m/apt" if i != 4 else None, "pip": None},
            "python": {"venv": "/opt/venv" if i != 3 else "/srv/venv", "ray": None},
            "ray": {"version": "2.9.0", "port": 6379},
            "pkgs": ["iperf3", "jq"],
            "facts": {"net_manager": "networkd",
                      "networkd_files": {"eth1": "/run/systemd/network/10-eth1.network"}},
            "head": head,
            "groups": groups,
            "peers": Peers([{"name": f"h{j}", "ip": f"10.0.0.{j + 1}"}
                            for j in range(5) if j != i]),
            "gpus": 1 if i >= 3 else 0,
            "flag": [1, True, "1", 1.0, None][i],
        })
    return out


TEXTS = [
    "deb [trusted=yes] {{ mirror.apt }} ./",
    "{{ '/etc/apt/x.list' if mirror.apt else none }}",
    "{{ python.venv | dirname }}",
    "{{ python.venv }}/bin/ray",
    "ray[default]=={{ python.ray or ray.version }}",
    "{{ pkgs }}",
    "{{ pkgs | map('upper') | list }}",
    "{{ inventory_hostname }}",
    "{{ '[' ~ cluster_ip ~ ']' if ':' in cluster_ip else cluster_ip }}",
    "{{ facts.networkd_files[cluster_iface] }}.d/90-mtu.conf",
    "{{ facts.networkd_files.get(cluster_iface) }}",
    "{% for p in peers %}{{ p.name }}={{ p.ip }} {% endfor %}",
    "{{ peers | map(attribute='name') | join(',') }}",
    "{{ groups['gpu'] | length }} {{ groups.all[0] }} {{ head.name }}",
    "{{ undefined_thing | default('d') }} {{ 'yes' if nope is defined else 'no' }}",
    "{{ flag }}",
    "{{ flag | string }}-{{ flag is number }}",
    "{% set v = python.venv %}{% for x in [1, 2] %}{{ v }}{{ x }}{% endfor %}",
    "{{ range(gpus) | list }}",
]

CONDITIONS = [
    "mirror.apt",
    "is_head",
    "not is_head",
    "facts.net_manager == 'networkd' and facts.networkd_files.get(cluster_iface)",
    "gpus > 0 and inventory_hostname in groups.gpu",
    "python.venv.startswith('/opt')",
    "flag is sameas true",
]


@pytest.mark.parametrize("text", TEXTS)
def test_memoized_render_equals_fresh_render_on_every_host(text):
    cache = RenderCache()
    for _ in range(2):                       # the second round is all hits
        for variables in _hosts():
            fresh = render_string(text, variables)
            memo = render_string(text, variables, cache=cache)
            assert memo == fresh and type(memo) is type(fresh), (text, variables)


@pytest.mark.parametrize("expr", CONDITIONS)
def test_memoized_condition_equals_fresh_condition_on_every_host(expr):
    cache = RenderCache()
    for _ in range(2):
        for variables in _hosts():
            assert evaluate_condition(expr, variables, source="t", cache=cache) == \
                evaluate_condition(expr, variables, source="t"), (expr, variables)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                     st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["", "a", "1", "True"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner,
                                                 max_size=3)), max_leaves=6)
_SHARED_CACHE = RenderCache()      # shared across examples: entries of earlier ones hit
_TEMPLATES = ["{{ x }}", "{{ x }}-{{ y }}", "{{ x.a if x is mapping and 'a' in x else y }}",
              "{{ x | string }}", "{% for i in (x if x is iterable and x is not string "
              "else [x]) %}[{{ i }}]{% endfor %}", "{{ x == y }}", "{{ x is sameas y }}",
              "{{ [x, y] | tojson }}", "{{ x.a }}"]


@settings(max_examples=150, deadline=None)
@given(x=_VALUES, y=_VALUES, text=st.sampled_from(_TEMPLATES))
def test_memoized_render_equals_fresh_for_any_values(x, y, text):
    variables = {"x": x, "y": y}
    try:
        fresh = render_string(text, variables)
    except InputError as exc:
        with pytest.raises(InputError) as err:
            render_string(text, variables, cache=_SHARED_CACHE)
        assert str(err.value) == str(exc)
        return
    memo = render_string(text, variables, cache=_SHARED_CACHE)
    assert memo == fresh and type(memo) is type(fresh)
    assert repr(memo) == repr(fresh)


def test_render_value_recurses_with_the_cache():
    cache = RenderCache()
    value = {"a": ["{{ python.venv }}", {"b": "{{ inventory_hostname }}-x"}], "c": 3}
    for variables in _hosts():
        assert render_value(value, variables, cache=cache) == render_value(value, variables)


def test_a_shared_template_is_rendered_once_per_distinct_value():
    cache = RenderCache()
    calls = []

    def compute(variables):
        calls.append(1)
        return render_string("{{ python.venv | dirname }}", variables)
    hosts = _hosts()
    deps = text_dependencies("{{ python.venv | dirname }}")
    assert deps == (("python", "venv"),)
    for variables in hosts * 3:
        cache.memoized("site", deps, variables, lambda v=variables: compute(v))
    # two distinct venvs over five hosts (the dicts are distinct objects, equal content)
    assert len(calls) == 2
    assert cache.stats()["hits"] == 13


def test_what_a_template_reads_is_refined_to_attribute_paths():
    assert text_dependencies("{{ mirror.apt }} {{ mirror.pip }}") == (
        ("mirror", "apt"), ("mirror", "pip"))
    assert text_dependencies("{{ mirror }} {{ mirror.apt }}") == (("mirror",),)
    assert text_dependencies("{{ facts.networkd_files.get(cluster_iface) }}") == (
        ("cluster_iface",), ("facts", "networkd_files"))
    assert text_dependencies("{% for x in xs %}{{ x.a }}{% endfor %}") == (("xs",),)
    assert text_dependencies("plain text") == ()
    assert condition_dependencies("a.b and not c") == (("a", "b"), ("c",))


@pytest.mark.parametrize("text", [
    "{{ s | reveal }}",
    "{{ xs | map('reveal') | list }}",
    "{{ xs | random }}",
    "{{ lipsum(1) }}",
    "{{ a is sameas b }}",
    "{{ xs | map(name) | list }}",
    "{% include 'x.j2' %}",
])
def test_unsafe_or_impure_templates_are_never_memoized(text):
    assert text_dependencies(text) is None


def test_a_variable_shadowing_a_global_is_part_of_the_key():
    cache = RenderCache()
    assert render_string("{{ range }}", {"range": 1}, cache=cache) == 1
    assert render_string("{{ range }}", {"range": 2}, cache=cache) == 2


def test_secrets_revealed_are_recorded_on_every_render_never_cached():
    cache = RenderCache()
    for _ in range(3):
        with tracking_reveals() as masker:
            out = render_string("token={{ s | reveal }}", {"s": Secret("hunter2")},
                                cache=cache)
        assert out == "token=hunter2"
        assert masker.mask("x token=hunter2 y") == "x token=*** y"
    assert cache.stats()["hits"] == 0


def test_an_unrevealed_secret_renders_masked_and_stays_masked_from_the_cache():
    cache = RenderCache()
    for _ in range(2):
        out = render_string("t={{ s }}", {"s": Secret("hunter2")}, cache=cache)
        assert "hunter2" not in out and "***" in out


def test_errors_are_not_cached():
    cache = RenderCache()
    for _ in range(3):
        with pytest.raises(InputError, match="nope"):
            render_string("{{ nope }}", {}, source="roles/r/tasks.yaml", line=3, cache=cache)
    assert render_string("{{ nope }}", {"nope": 5}, cache=cache) == 5
    with pytest.raises(InputError, match="nope"):
        evaluate_condition("nope", {}, source="t", cache=cache)


def test_memoized_template_file_equals_fresh(tmp_path):
    t = tmp_path / "unit.j2"
    t.write_text("ExecStart={{ python.venv }}/bin/ray --address={{ head.cluster_ip }}\n"
                 "{% if mirror.apt %}mirror={{ mirror.apt }}\n{% endif %}")
    cache = RenderCache()
    for variables in _hosts() * 2:
        assert render_file(t, variables, cache=cache) == render_file(t, variables)
    assert cache.stats()["hits"] >= 6


def test_a_disabled_cache_renders_fresh():
    cache = RenderCache(enabled=False)
    for variables in _hosts():
        assert render_string("{{ python.venv }}", variables, cache=cache) == \
            variables["python"]["venv"]
    assert cache.stats() == {"hits": 0, "misses": 0, "sites": 0, "off": 0}


# ---------------------------------------------------------------- the whole runner

@pytest.fixture
def project(tmp_path):
    """Five hosts (one head), a shared and a host-specific template, conditions on host
    variables, a secret revealed into a file, group variables that differ on two hosts."""
    inv = tmp_path / "inventory.yaml"
    inv.write_text(
        "all:\n"
        "  vars: {cluster: {network: lo}, tier: gold}\n"
        "  hosts:\n"
        "    h0: {ansible_host: 127.0.0.1, role: head}\n"
        "    h1: {ansible_host: 127.0.0.1, ansible_port: 2201}\n"
        "    h2: {ansible_host: 127.0.0.1, ansible_port: 2202}\n"
        "  children:\n"
        "    silver:\n"
        "      vars: {tier: silver}\n"
        "      hosts:\n"
        "        h3: {ansible_host: 127.0.0.1, ansible_port: 2203}\n"
        "        h4: {ansible_host: 127.0.0.1, ansible_port: 2204}\n")
    role = tmp_path / "roles" / "r"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "shared.j2").write_text("tier={{ tier }}\nhead={{ head.name }}\n")
    (role / "templates" / "mine.j2").write_text("me={{ inventory_hostname }}\n"
                                                "{% for p in peers %}peer={{ p.name }}\n"
                                                "{% endfor %}")
    (role / "templates" / "secret.j2").write_text("token={{ token | reveal }}\n")
    (role / "defaults.yaml").write_text(f"base: {tmp_path}/out\n"
                                        "tier_dir: \"{{ base }}/{{ tier }}\"\n"
                                        "token: plain\n")
    (role / "tasks.yaml").write_text(
        "- name: tier folder\n"
        "  directory: {path: '{{ tier_dir }}'}\n"
        "- name: shared file\n"
        "  template: {src: shared.j2, dest: '{{ tier_dir }}/shared'}\n"
        "- name: own file\n"
        "  template: {src: mine.j2, dest: '{{ base }}/{{ inventory_hostname }}'}\n"
        "- name: secret file\n"
        "  template: {src: secret.j2, dest: '{{ base }}/secret-{{ tier }}', mode: '0600'}\n"
        "- name: gold only\n"
        "  file: {path: '{{ base }}/gold', content: \"{{ tier }}\\n\"}\n"
        "  when: tier == 'gold' and not is_head\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: all, roles: [r]}\n")
    return tmp_path


def _run(project, memo: bool, *, runner: bool = False):
    inv = load_inventory(project / "inventory.yaml")
    plays = load_playbook(project / "pb.yaml", [project / "roles"])
    options = RunOptions(check=True, diff=True, render_cache=memo,
                         extra_vars={"token": Secret("s3cr3t")})
    if not runner:
        return run_playbook(inv, plays, options)
    r = Runner(inv, plays, options)
    return r.run(), r


def _shown(report):
    return [(r.host, r.task.name if r.task else None, r.status, r.message, r.diff,
             r.commands) for r in report.results]


def test_a_memoized_run_plans_exactly_what_a_fresh_run_plans(project, local):
    fresh_report, fresh_runner = _run(project, memo=False, runner=True)
    memo_report, memo_runner = _run(project, memo=True, runner=True)
    fresh, memo = _shown(fresh_report), _shown(memo_report)
    assert memo == fresh
    assert fresh_runner.render_cache.stats()["hits"] == 0
    assert memo_runner.render_cache.stats()["hits"] > 0           # it was used
    assert sum(site[0] for site in memo_runner._plans._sites.values()) > 0
    statuses = {(h, t): s for h, t, s, *_ in memo}
    assert statuses[("h1", "gold only")] == "changed"
    assert statuses[("h0", "gold only")] == "skipped"
    assert statuses[("h3", "gold only")] == "skipped"
    own = {h: d for h, t, _s, _m, d, _c in memo if t == "own file"}
    assert "me=h2" in own["h2"] and "peer=h1" in own["h2"] and "peer=h2" not in own["h2"]
    shared = {h: d for h, t, _s, _m, d, _c in memo if t == "shared file"}
    assert "tier=silver" in shared["h4"] and "tier=gold" in shared["h1"]


def test_a_revealed_secret_stays_masked_on_every_host_of_a_memoized_run(project, local):
    report = _run(project, memo=True)
    text = repr(_shown(report))
    assert "s3cr3t" not in text
    secret = [r for r in report.results if r.task and r.task.name == "secret file"]
    assert len(secret) == 5 and all(r.status == "changed" for r in secret)
    assert all("***" in (r.diff or "") for r in secret)


@pytest.mark.parametrize("variables", [{"a": 1}, {"a": 0}, {"a": 1, "zz": 0}, {}])
def test_a_condition_evaluated_in_parts_answers_and_fails_as_the_whole(variables):
    cache = RenderCache()
    for expr in ["a and zz", "a and not zz and a > 0", "(a or zz) and a"]:
        try:
            fresh = evaluate_condition(expr, variables, source="t.yaml", line=2)
        except InputError as exc:
            with pytest.raises(InputError) as err:
                evaluate_condition(expr, variables, source="t.yaml", line=2, cache=cache)
            assert str(err.value) == str(exc)
        else:
            assert evaluate_condition(expr, variables, source="t.yaml", line=2,
                                      cache=cache) is fresh
