"""A secret revealed into a template reaches the host, and nothing that is shown.

`{{ secrets.x | reveal }}` puts the real value in the file uploaded to the host; the
planned Change's diff and summary (what --check --diff, -vv and --json show), a Noop's
reason, and any error message show *** instead, including an older value of the same
line in a diff's removed lines.
"""
from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl import session as session_mod
from clusterctl.engine.roles import load_playbook
from clusterctl.engine.runner import RunOptions, run_playbook
from clusterctl.engine.templating import render_file, render_string, tracking_reveals
from clusterctl.errors import InputError
from clusterctl.facts import FactRequest, Facts
from clusterctl.inventory import load_inventory
from clusterctl.ops import OPS, Change, Upload
from clusterctl.ops.base import mask_outcome
from clusterctl.secret import MASK, Masker, Secret, mask_text
from clusterctl.secret import to_jsonable
from localconn import LocalConnection

TOKEN = "hf_s3cr3tT0kenValue"
OLD = "hf_0ldT0kenFromLastMonth"
PATH = "/etc/clusterctl/hf.env"


def file_fact(content: bytes | None) -> Facts:
    import hashlib
    if content is None:
        fact = {"exists": False, "kind": None, "sha256": None, "size": None, "mode": None,
                "owner": None, "group": None, "content": None}
    else:
        fact = {"exists": True, "kind": "file", "sha256": hashlib.sha256(content).hexdigest(),
                "size": len(content), "mode": 0o600, "owner": "root", "group": "root",
                "content": content}
    return Facts({FactRequest("file", PATH): fact})


def plan_template(tmp_path, template: str, variables: dict, on_host: bytes | None,
                  name: str = "hf.env.j2"):
    """Render like the runner does, plan a `file`, and return (shown outcome, upload)."""
    t = tmp_path / name
    t.write_text(template)
    with tracking_reveals() as masker:
        content = render_file(t, variables)
        args = OPS["file"].validate({"path": PATH, "content": content, "mode": "0600"})
        outcome = OPS["file"].plan(file_fact(on_host), args)
    shown = mask_outcome(outcome, masker)
    uploads = [s for s in outcome.steps if isinstance(s, Upload)] \
        if isinstance(outcome, Change) else []
    return shown, uploads


def shown_fields(outcome) -> str:
    """Every field of a planned outcome that is displayed (diff, summary, reason), as one
    text (not the steps, which go to the host, nor the target, the op's key)."""
    return "\n".join(str(getattr(outcome, k)) for k in ("diff", "summary", "reason")
                     if getattr(outcome, k, None) is not None)


TEMPLATE = ("# written by clusterctl\n"
            "HF_HUB_OFFLINE=0\n"
            "HF_TOKEN={{ secrets.hf_token | reveal }}\n"
            "HF_HOME=/opt/hf\n")


@pytest.mark.parametrize("on_host", [
    None,                                                          # a new file
    b"# written by clusterctl\nHF_HUB_OFFLINE=1\nHF_TOKEN=" + OLD.encode() + b"\n",  # rotated
    b"# old\nHF_HUB_OFFLINE=1\nHF_TOKEN=" + TOKEN.encode() + b"\nHF_HOME=/opt/hf\n",  # same
])
def test_revealed_secret_uploaded_but_never_shown(tmp_path, on_host):
    v = {"secrets": {"hf_token": Secret(TOKEN)}}
    shown, uploads = plan_template(tmp_path, TEMPLATE, v, on_host)
    assert isinstance(shown, Change)
    assert len(uploads) == 1 and TOKEN.encode() in uploads[0].content  # the host gets it
    text = shown_fields(shown)
    assert TOKEN not in text and OLD not in text
    assert "HF_TOKEN=***" in shown.diff
    assert "HF_HOME=/opt/hf" in shown.diff          # the rest of the diff is still useful
    if on_host is not None:
        assert "-HF_HUB_OFFLINE=1" in shown.diff and "+HF_HUB_OFFLINE=0" in shown.diff


def test_masked_diff_of_a_rotated_secret_still_shows_the_change(tmp_path):
    old = f"HF_TOKEN={OLD}\n".encode()
    shown, uploads = plan_template(tmp_path, "HF_TOKEN={{ s | reveal }}\n",
                                   {"s": Secret(TOKEN)}, old)
    assert uploads[0].content == f"HF_TOKEN={TOKEN}\n".encode()
    assert "-HF_TOKEN=***" in shown.diff and "+HF_TOKEN=***" in shown.diff
    assert OLD not in shown.diff and TOKEN not in shown.diff


def test_a_line_that_is_only_the_secret(tmp_path):
    shown, uploads = plan_template(tmp_path, "{{ s | reveal }}\n", {"s": Secret(TOKEN)},
                                   f"{OLD}\n".encode())
    assert uploads[0].content == f"{TOKEN}\n".encode()
    assert OLD not in shown.diff and TOKEN not in shown.diff
    assert "-***" in shown.diff and "+***" in shown.diff


def test_transformed_secret_is_masked_too(tmp_path):
    # the masked rendering runs the same filters on ***, so a changed form is hidden too
    shown, uploads = plan_template(tmp_path, "T={{ s | reveal | upper }}\n",
                                   {"s": Secret(TOKEN)}, None)
    assert TOKEN.upper().encode() in uploads[0].content
    assert TOKEN.upper() not in shown.diff and "+T=***" in shown.diff


def test_multiline_secret(tmp_path):
    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\nQ2xvc2VkU2VjcmV0\n-----END KEY-----"
    shown, uploads = plan_template(tmp_path, "{{ k | reveal }}\nend\n", {"k": Secret(key)},
                                   None)
    assert key.encode() in uploads[0].content
    for line in key.splitlines():
        assert line not in shown.diff
    assert "+end" in shown.diff


def test_secret_without_reveal_is_never_in_the_content(tmp_path):
    shown, uploads = plan_template(tmp_path, "T={{ s }}\n", {"s": Secret(TOKEN)}, None)
    assert uploads[0].content == b"T=***\n"
    assert shown.diff.endswith("+T=***")


def test_summary_and_noop_reason_are_masked():
    masker = Masker()
    masker.add_secret(Secret(TOKEN))
    from clusterctl.ops import Noop
    change = Change("lineinfile", PATH, [["true"]], f"+T={TOKEN}", f"add T={TOKEN}")
    shown = mask_outcome(change, masker)
    assert TOKEN not in shown.diff + shown.summary and shown.steps == change.steps
    noop = mask_outcome(Noop("lineinfile", PATH, f"T={TOKEN} present"), masker)
    assert noop.reason == "T=*** present"
    assert mask_outcome(change, Masker()) is change


def test_render_errors_do_not_quote_a_revealed_value():
    v = {"s": Secret(TOKEN), "d": {}}
    for text in ("{{ d[s | reveal] }}", "x {{ d[s | reveal] }}", "{{ (s | reveal) | int + x }}"):
        with tracking_reveals(), pytest.raises(InputError) as err:
            render_string(text, v, source="roles/r/tasks.yaml", line=3)
        assert TOKEN not in str(err.value)
        assert str(err.value).startswith("roles/r/tasks.yaml:3: ")


def test_errors_leaving_the_tracked_block_are_masked():
    with pytest.raises(ValueError) as err, tracking_reveals():
        value = render_string("{{ s | reveal }}", {"s": Secret(TOKEN)})
        raise ValueError(f"mode: expected an octal mode, got {value!r}")
    assert TOKEN not in str(err.value) and MASK in str(err.value)


def test_masker_units():
    m = Masker()
    assert not m and m.mask("x") == "x" and m.mask(None) is None
    m.add_secret(Secret(""))
    assert not m                                     # nothing to hide
    m.add_secret(Secret("abc"))
    m.add_secret(Secret("abcdef"))
    assert m.mask("abcdef abc") == "*** ***"        # longest first: no half-masked value
    m.add_rendering("K=abc\nplain", "K=***\nplain")
    assert m.mask("-K=zzz\n+K=abc\n plain") == "-K=***\n+K=***\n plain"
    assert m.mask("--- /x (before)\n+++ /x (after)") == "--- /x (before)\n+++ /x (after)"
    opaque = Masker()
    opaque.opaque = True
    assert TOKEN not in opaque.mask(f"+{TOKEN}")


def test_mask_text_longest_first():
    assert mask_text("abcdef", [Secret("abc"), Secret("abcdef")]) == MASK


_ALPHABET = "".join(chr(c) for c in range(32, 127) if chr(c) not in "*{}%") + "é✓ß"
_VALUE = st.text(_ALPHABET, min_size=1, max_size=30)
_TEXT = st.text(_ALPHABET, max_size=20)


_EXAMPLES = itertools.count()


@settings(max_examples=100, deadline=None)
@given(secret=_VALUE, old=_VALUE, before=_TEXT, after=_TEXT)
def test_property_no_secret_in_shown_diff(tmp_path_factory, secret, old, before, after):
    """Whatever surrounds it, the revealed value is uploaded and never shown; the line
    it was on before (an older value) shows only as the masked line."""
    tmp = tmp_path_factory.getbasetemp() / "property"
    tmp.mkdir(exist_ok=True)
    template = before + "{{ s | reveal }}" + after + "\nother line\n"
    on_host = (before + old + after + "\nother line\n").encode()
    shown, uploads = plan_template(tmp, template, {"s": Secret(secret)}, on_host,
                                   name=f"t{next(_EXAMPLES)}.j2")
    if not isinstance(shown, Change):
        assert old == secret                        # the same file: nothing to do
        return
    assert uploads and (before + secret + after).encode() in uploads[0].content
    assert secret not in shown_fields(shown)
    if set(secret) & set("-+@ ,0123456789"):
        return  # it masks the diff's own syntax too: the lines cannot be told apart
    expected = mask_text("-" + before + MASK + after, [Secret(secret)])
    removed = [ln for ln in shown.diff.splitlines()[3:] if ln.startswith("-")]  # after ---/+++/@@
    assert removed and all(ln == expected for ln in removed), (removed, expected)


# ------------------------------------------------------------------ through the runner

@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "Connection", lambda host, **kw: LocalConnection(host))
    (tmp_path / "inventory.yaml").write_text(
        "all:\n"
        "  vars:\n"
        "    cluster: {network: lo}\n"
        f"    secrets: {{hf_token: {TOKEN}}}\n"
        "  hosts:\n"
        "    alpha: {ansible_host: 127.0.0.1, role: head}\n")
    role = tmp_path / "roles" / "r"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "hf.env.j2").write_text("HF_TOKEN={{ secrets.hf_token | reveal }}\n"
                                                  "HOST={{ inventory_hostname }}\n")
    (role / "tasks.yaml").write_text(
        "- name: token file\n"
        f"  template: {{src: hf.env.j2, dest: '{tmp_path}/out/hf.env', mode: '0600'}}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "pb.yaml").write_text("- {name: p, hosts: all, roles: [r]}\n")
    return tmp_path


def run(project, **opts):
    inv = load_inventory(project / "inventory.yaml")
    plays = load_playbook(project / "pb.yaml", [project / "roles"])
    return run_playbook(inv, plays, RunOptions(**opts))


def test_runner_check_diff_and_json_hide_the_secret(project):
    target = project / "out" / "hf.env"
    target.write_text(f"HF_TOKEN={OLD}\nHOST=alpha\n")
    report = run(project, check=True, diff=True)
    assert report.changed == 1 and not report.failed_hosts
    assert target.read_text() == f"HF_TOKEN={OLD}\nHOST=alpha\n"  # --check wrote nothing
    doc = json.dumps(to_jsonable(report.to_dict()))
    assert TOKEN not in doc and OLD not in doc
    result = [r for r in report.results if r.status == "changed"][0]
    assert "-HF_TOKEN=***" in result.diff and "+HF_TOKEN=***" in result.diff


def test_runner_uploads_the_real_value(project):
    report = run(project, diff=True)
    assert not report.failed_hosts
    assert (project / "out" / "hf.env").read_text() == f"HF_TOKEN={TOKEN}\nHOST=alpha\n"
    doc = json.dumps(to_jsonable(report.to_dict()))
    assert TOKEN not in doc and "HF_TOKEN=***" in doc


def test_runner_render_error_names_task_and_template(project):
    tpl = project / "roles" / "r" / "templates" / "hf.env.j2"
    tpl.write_text("HF_TOKEN={{ secrets.hf_token | reveal }}\nX={{ {}[secrets.hf_token | reveal] }}\n")
    report = run(project, check=True)
    error = report.recap["alpha"].error
    assert report.failed_hosts == ["alpha"]
    assert TOKEN not in error
    assert f"{tpl.resolve()}:2:" in error and "tasks.yaml:1" in error


def test_masked_pass_that_fails_hides_the_whole_text(tmp_path):
    # 1 // (len - 3) works with the real value and divides by zero with ***: nothing of
    # this rendering can be paired, so what is shown of it is hidden whole
    template = "N={{ 100 // ((s | reveal) | length - 3) }}\nT={{ s | reveal }}\n"
    shown, uploads = plan_template(tmp_path, template, {"s": Secret(TOKEN)}, None)
    assert uploads[0].content == f"N={100 // (len(TOKEN) - 3)}\nT={TOKEN}\n".encode()
    assert TOKEN not in shown_fields(shown) and "hidden" in shown.diff
