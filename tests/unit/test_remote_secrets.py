"""remote.build_command: secret env values travel on stdin, never in the command text
(which is the argv of the remote shell, and of sudo for a non-root user)."""
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.remote import SECRET_MISSING_EXIT, build_command
from clusterctl.secret import Secret

TOKEN = "hf_T0k3n'with \"quotes\" $(rm -rf /) and\nnewline "


def _run_like_sshd(text: str, stdin: str | None) -> subprocess.CompletedProcess:
    """Run a command text the way sshd does for root: `sh -c TEXT` (the login shell)."""
    return subprocess.run(["sh", "-c", text], input=(stdin or "").encode(),
                          capture_output=True, timeout=30)


def test_secret_is_not_in_the_text_but_first_on_stdin():
    built = build_command(["printenv", "TOKEN"], env={"TOKEN": Secret(TOKEN)},
                          stdin="caller\n")
    assert TOKEN not in built.text
    assert built.stdin == TOKEN + "\0" + "caller\n"
    assert built.secrets == (Secret(TOKEN),)
    assert built.shown == "TOKEN=*** printenv TOKEN"


def test_root_runs_the_text_under_bash_and_a_user_under_sudo():
    env = {"TOKEN": Secret(TOKEN)}
    as_root = build_command("true", env=env, as_root=True)
    as_user = build_command("true", env=env, as_root=False)
    assert as_root.text.startswith("bash -c ")
    assert as_user.text.startswith("sudo -n bash -c ")
    assert shlex.split(as_root.text)[2] == shlex.split(as_user.text)[4]   # the same script
    for built in (as_root, as_user):
        assert TOKEN not in built.text and all(TOKEN not in a for a in shlex.split(built.text))


def test_without_secrets_the_text_is_unchanged_for_root():
    assert build_command(["echo", "a b"]).text == "echo 'a b'"
    assert build_command("echo $X", env={"X": "1 2"}).text == "export X='1 2'; echo $X"
    assert build_command("cat", stdin=b"bytes\n").stdin == "bytes\n"
    assert build_command("true").stdin is None
    assert build_command(["id"], as_root=False).text == "sudo -n bash -c id"


def test_plain_values_stay_in_the_text_secrets_do_not():
    built = build_command("env", env={"PLAIN": "seen", "TOKEN": Secret("s3cret"),
                                      "OTHER": Secret("0ther")})
    assert "PLAIN=seen" in built.text
    assert "s3cret" not in built.text and "0ther" not in built.text
    assert built.stdin == "s3cret\0" + "0ther\0"
    assert built.shown == "PLAIN=seen TOKEN=*** OTHER=*** env"


def test_the_text_really_delivers_secrets_and_the_callers_stdin():
    built = build_command('printf "[%s][%s][%s]" "$TOKEN" "$OTHER" "$PLAIN"; cat',
                          env={"TOKEN": Secret(TOKEN), "OTHER": Secret(""), "PLAIN": "p q"},
                          stdin="rest of\nstdin\n")
    proc = _run_like_sshd(built.text, built.stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"[{TOKEN}][][p q]rest of\nstdin\n"


def test_secrets_are_exported_to_child_processes():
    built = build_command(["printenv", "TOKEN"], env={"TOKEN": Secret("abc")})
    proc = _run_like_sshd(built.text, built.stdin)
    assert proc.stdout == b"abc\n"


def test_a_missing_secret_stops_the_command():
    built = build_command("echo ran", env={"TOKEN": Secret("abc")})
    proc = _run_like_sshd(built.text, "")            # stdin lost on the way
    assert proc.returncode == SECRET_MISSING_EXIT
    assert proc.stdout == b""
    assert b"secret TOKEN did not arrive on stdin" in proc.stderr


def test_bad_input_is_refused():
    with pytest.raises(TypeError):
        build_command(["curl", "-H", Secret("Authorization: x")])   # argv is public
    with pytest.raises(ValueError):
        build_command("true", env={"A; rm -rf /": "x"})
    with pytest.raises(ValueError):
        build_command("true", env={"T": Secret("a\0b")})


@settings(max_examples=40, deadline=None)
@given(value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                     max_size=40),
       stdin=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_any_secret_value_round_trips_and_the_text_does_not_depend_on_it(value, stdin):
    built = build_command('printf %s "$S"; printf "|"; cat', env={"S": Secret(value)},
                          stdin=stdin)
    # the text does not depend on the value at all: it cannot carry it
    assert built.text == build_command('printf %s "$S"; printf "|"; cat',
                                       env={"S": Secret("x")}).text
    proc = _run_like_sshd(built.text, built.stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == value + "|" + stdin
