"""Unit tests for clusterctl.ops: every op's change and noop branch from recorded facts,
argument validation, purity, and argv-only steps.

Facts come from tests/unit/fixtures (see test_facts.py): debian12_node (recorded files,
venv, sysctl, links), debian12_base (recorded dpkg), gpu_node (hand-written systemd units,
packages, IPoIB link).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from clusterctl.errors import ClusterctlError
from clusterctl.facts import FactRequest, Facts, parse_output
from clusterctl.ops import OPS, Change, Noop, Op, Param, PlanError, Upload
from clusterctl.ops.pip import clause_ok, parse_requirement, version_key
from clusterctl.secret import Secret

FIXTURES = Path(__file__).resolve().parent / "fixtures"
APT = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]


def load(name: str) -> Facts:
    reqs = [FactRequest(*ln.split(":", 1))
            for ln in (FIXTURES / f"{name}.requests").read_text().splitlines() if ln]
    return parse_output((FIXTURES / f"{name}.out").read_text(), reqs)


NODE = load("debian12_node")
BASE = load("debian12_base")
GPU = load("gpu_node")
ALL = NODE.merged(BASE).merged(GPU)


def F(kind: str, arg: str = "") -> FactRequest:
    return FactRequest(kind, arg)


def plan(op_name: str, args: dict, facts: Facts = ALL) -> Change | Noop:
    """Validate, check requests are gathered, plan twice (pure, deterministic)."""
    op = OPS[op_name]
    before_args = copy.deepcopy(args)
    before_facts = facts.to_dict()
    validated = op.validate(args)
    for req in op.requests(validated):
        assert req in facts, f"{op_name} requests {req}, not in the fixture"
    first = op.plan(facts, validated)
    second = op.plan(facts, op.validate(copy.deepcopy(args)))
    assert first == second, "plan() is not deterministic"
    assert op.plan(facts, validated) == first
    assert args == before_args, "validate/plan mutated the task args"
    assert facts.to_dict() == before_facts, "plan() mutated the facts"
    if isinstance(first, Change):
        assert first.steps, "a Change without steps"
        for step in first.steps:
            assert isinstance(step, Upload) or (isinstance(step, list) and step
                                                and all(isinstance(a, str) for a in step)), step
        assert first.summary
    else:
        assert first.reason
    assert first.op == op_name
    return first


def text(name: str) -> str:
    return NODE.get(F("file", name))["content"].decode()


# ------------------------------------------------------------------ registry and base

def test_registry():
    expected = {"package", "apt_source", "venv", "pip", "file", "lineinfile", "directory",
                "systemd_unit", "service", "command", "sysctl", "link_mtu"}
    assert expected <= set(OPS)
    assert "template" not in OPS
    for name, op in OPS.items():
        assert isinstance(op, Op) and op.name == name
        assert all(isinstance(p, Param) for p in op.params.values())


@pytest.mark.parametrize("name", ["package", "apt_source", "venv", "pip", "file", "lineinfile",
                                  "directory", "systemd_unit", "service", "command", "sysctl",
                                  "link_mtu"])
def test_missing_required_and_unknown_param(name):
    op = OPS[name]
    required = [k for k, p in op.params.items() if p.required]
    with pytest.raises(ValueError, match=f"^{required[0]}: required parameter of {name} is missing"):
        op.validate({})
    with pytest.raises(ValueError, match=f"^bogus: unknown parameter of {name}"):
        op.validate({"bogus": 1})
    with pytest.raises(ValueError, match="expected a mapping"):
        op.validate(["not", "a", "dict"])


def test_validate_is_idempotent():
    args = OPS["file"].validate({"path": "/etc//x/./y", "content": "a", "mode": "0640"})
    assert args["path"] == "/etc/x/y" and args["mode"] == 0o640
    assert OPS["file"].validate(dict(args)) == args


def test_plan_error_is_an_expected_error():
    assert issubclass(PlanError, ValueError) and issubclass(PlanError, ClusterctlError)


def test_upload_repr_hides_content():
    up = Upload("/etc/x", b"TOPSECRET", 0o600)
    assert "TOPSECRET" not in repr(up) and "9 bytes" in repr(up) and "0600" in repr(up)


# ------------------------------------------------------------------ package

def test_package_noop():
    res = plan("package", {"names": ["bash", "iproute2", "rdma-core", "python3", "nvidia-driver"]})
    assert res == Noop("package", "bash, iproute2, rdma-core, python3, nvidia-driver",
                       "all 5 packages present")
    assert plan("package", {"names": "bash", "update_cache": True}).reason == "bash present"


def test_package_noop_recorded_dpkg():
    assert isinstance(plan("package", {"names": ["bash", "dpkg"]}, BASE), Noop)


def test_package_installs_only_missing():
    res = plan("package", {"names": ["bash", "opensm", "half-configured-pkg", "iproute2"],
                           "update_cache": True})
    assert res.steps == [APT + ["update"],
                         APT + ["install", "-y", "--no-install-recommends", "opensm",
                                "half-configured-pkg"]]
    assert res.diff == "+ opensm\n+ half-configured-pkg"
    assert res.summary == "install 2 of 4 packages: opensm half-configured-pkg"


def test_package_no_update_without_flag_and_version_pins():
    res = plan("package", {"names": ["opensm"]})
    assert res.steps == [APT + ["install", "-y", "--no-install-recommends", "opensm"]]
    assert isinstance(plan("package", {"names": ["bash=5.2.15-2+b7"]}), Noop)
    res = plan("package", {"names": ["bash=5.2.21-1", "iproute2:amd64"]})
    assert res.steps[-1][-1] == "bash=5.2.21-1"
    assert res.diff == "~ bash 5.2.15-2+b7 -> 5.2.21-1"


def test_package_absent():
    res = plan("package", {"names": ["opensm", "rdma-core"], "state": "absent"})
    assert res.steps == [APT + ["remove", "-y", "rdma-core"]]
    assert res.diff == "- rdma-core 44.0-2"
    noop = plan("package", {"names": ["opensm", "half-configured-pkg"], "state": "absent"})
    assert noop.reason == "none of 2 packages installed"


@pytest.mark.parametrize("args, message", [
    ({"names": []}, "names: expected at least one package name"),
    ({"names": ["Bad Name"]}, "names: expected Debian package names"),
    ({"names": ["curl; rm -rf /"]}, "names: expected Debian package names"),
    ({"names": 5}, "names: expected list or str, got int 5"),
    ({"names": "curl", "state": "latest"}, "state: expected one of present, absent, got 'latest'"),
    ({"names": "curl", "update_cache": "maybe"}, "update_cache: expected bool, got str 'maybe'"),
])
def test_package_validation(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        OPS["package"].validate(args)


def test_package_coerces_rendered_strings():
    args = OPS["package"].validate({"names": "curl", "update_cache": "true"})
    assert args["update_cache"] is True and args["names"] == ["curl"]


# ------------------------------------------------------------------ apt_source

MIRROR = "deb [trusted=yes] http://198.18.0.1:8080/ ./"


def test_apt_source_noop():
    res = plan("apt_source", {"name": "clusterctl-mirror", "line": MIRROR})
    assert isinstance(res, Noop) and "/etc/apt/sources.list.d/clusterctl-mirror.list" in res.reason


def test_apt_source_change_and_update():
    res = plan("apt_source", {"name": "clusterctl-mirror.list",
                              "line": "deb [trusted=yes] http://198.18.0.2:8080/ ./"})
    up, update = res.steps
    assert up == Upload("/etc/apt/sources.list.d/clusterctl-mirror.list",
                        b"deb [trusted=yes] http://198.18.0.2:8080/ ./\n", 0o644, "root", "root")
    assert update == APT + ["update"]
    assert "-deb [trusted=yes] http://198.18.0.1:8080/ ./" in res.diff
    assert "+deb [trusted=yes] http://198.18.0.2:8080/ ./" in res.diff


def test_apt_source_new_file():
    res = plan("apt_source", {"name": "other", "line": MIRROR},
               ALL.merged(Facts({F("file", "/etc/apt/sources.list.d/other.list"):
                                 NODE.get(F("file", "/etc/clusterctl/absent.conf"))})))
    assert res.steps[0] == ["mkdir", "-p", "/etc/apt/sources.list.d"]
    assert res.steps[1].mode == 0o644 and res.steps[-1] == APT + ["update"]


@pytest.mark.parametrize("args, message", [
    ({"name": "../etc/passwd", "line": MIRROR}, "name: expected letters"),
    ({"name": "x", "line": "http://example/ ./"}, "line: expected a line starting with 'deb '"),
    ({"name": "x", "line": MIRROR + "\ndeb x y"}, "line: expected one non-empty"),
])
def test_apt_source_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["apt_source"].validate(args)


# ------------------------------------------------------------------ venv

def test_venv_noop_and_change():
    assert plan("venv", {"path": "/opt/ray"}) == Noop("venv", "/opt/ray",
                                                      "venv /opt/ray exists (python 3.11.2)")
    res = plan("venv", {"path": "/opt/absent-venv"})
    assert res.steps == [["python3", "-m", "venv", "/opt/absent-venv"]]
    res = plan("venv", {"path": "/opt/absent-venv", "python": "/usr/bin/python3.11",
                        "system_site_packages": True})
    assert res.steps == [["/usr/bin/python3.11", "-m", "venv", "--system-site-packages",
                          "/opt/absent-venv"]]


@pytest.mark.parametrize("args, message", [
    ({"path": "opt/ray"}, "path: expected an absolute path"),
    ({"path": "/opt/../etc"}, "path: path must not contain '..'"),
    ({"path": "/opt/ray", "python": "python3; id"}, "python: expected an interpreter"),
])
def test_venv_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["venv"].validate(args)


# ------------------------------------------------------------------ pip

def test_pip_noop():
    res = plan("pip", {"venv": "/opt/ray",
                       "packages": ["ray==2.59.0", "numpy", "pyyaml==6.0.1", "Typing_Extensions>=4.0",
                                    "torch==2.13.0", "numpy>=1.20,<2", "ray[default]==2.59.*"]})
    assert res == Noop("pip", "/opt/ray", "all 7 requirements satisfied in /opt/ray")
    assert plan("pip", {"venv": "/opt/ray", "packages": "ray"}).reason == \
        "ray satisfied in /opt/ray (2.59.0)"


def test_pip_installs_only_missing_or_wrong():
    res = plan("pip", {"venv": "/opt/ray", "packages": ["ray==2.60.0", "numpy==1.26.4", "requests",
                                                        "pyyaml>=7"],
                       "find_links": "http://198.18.0.1:8081/wheels/", "no_index": True,
                       "trusted_host": "198.18.0.1", "extra_args": ["--prefer-binary"]})
    assert res.steps == [["/opt/ray/bin/pip", "install", "--disable-pip-version-check", "--no-input",
                          "--no-index", "--find-links", "http://198.18.0.1:8081/wheels/",
                          "--trusted-host", "198.18.0.1", "--prefer-binary",
                          "ray==2.60.0", "requests", "pyyaml>=7"]]
    assert res.diff == "ray: 2.59.0 -> 2.60.0\nrequests: absent -> any\npyyaml: 6.0.1 -> >=7"
    assert res.summary.startswith("install 3 of 4 requirements into /opt/ray")


def test_pip_absent_venv_installs_all():
    res = plan("pip", {"venv": "/opt/absent-venv", "packages": ["ray==2.60.0"],
                       "index_url": "http://198.18.0.1:8081/simple"})
    assert res.steps[0][:1] == ["/opt/absent-venv/bin/pip"]
    assert ["--index-url", "http://198.18.0.1:8081/simple"] == res.steps[0][4:6]
    assert res.diff == "ray: absent -> 2.60.0" and "venv not created yet" in res.summary


def test_pip_url_requirement_presence_only():
    assert isinstance(plan("pip", {"venv": "/opt/ray",
                                   "packages": ["ray @ http://198.18.0.1/ray.whl"]}), Noop)


@pytest.mark.parametrize("args, message", [
    ({"venv": "/opt/ray", "packages": []}, "packages: expected at least one requirement"),
    ({"venv": "/opt/ray", "packages": ["ray==="]}, "packages: bad version specifier"),
    ({"venv": "/opt/ray", "packages": ["ray=2.0"]}, "packages: bad version specifier"),
    ({"venv": "/opt/ray", "packages": ["ray>=2.*"]}, "only goes with == or !="),
    ({"venv": "/opt/ray", "packages": ["ray; python_version<'3'"]}, "packages: expected requirements"),
    ({"venv": "/opt/ray", "packages": [3]}, "packages: expected requirement strings"),
    ({"venv": "/opt/ray", "packages": "ray", "extra_args": [1]}, "extra_args: expected strings"),
    ({"venv": "/opt/ray", "packages": "ray", "extra_args": "--pre"}, "extra_args: expected list"),
    ({"venv": "/opt/ray", "packages": "ray", "find_links": "a b"}, "find_links: expected a value"),
    ({"venv": "relative", "packages": "ray"}, "venv: expected an absolute path"),
])
def test_pip_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["pip"].validate(args)


def test_version_ordering_and_specifiers():
    ordered = ["1.0.dev1", "1.0a1", "1.0a2.dev1", "1.0a2", "1.0b1", "1.0rc1", "1.0", "1.0.post1",
               "1.0.1", "1.1", "2.0", "1!0.1"]
    keys = [version_key(v) for v in ordered]
    assert keys == sorted(keys)
    assert version_key("2.60") == version_key("2.60.0")
    assert version_key("not a version") is None
    assert clause_ok("2.13.0+cpu", "==", "2.13.0")
    assert not clause_ok("2.13.0", "==", "2.13.0+cpu")
    assert clause_ok("1.26.4", "~=", "1.26.0") and not clause_ok("1.27.0", "~=", "1.26.0")
    assert clause_ok("2.60.1", "==", "2.60.*") and clause_ok("2.61", "!=", "2.60.*")
    assert clause_ok("3.0", ">", "2.9") and clause_ok("2.9", "<=", "2.9.0")
    assert not clause_ok("garbage", ">=", "1.0")
    assert clause_ok("1.0", "===", "1.0") and not clause_ok("1.0.0", "===", "1.0")
    assert parse_requirement("Ray[default] >= 2.0, <3") == ("ray", [(">=", "2.0"), ("<", "3")], False)


# ------------------------------------------------------------------ file

HOSTS = "127.0.0.1\tlocalhost\n198.18.0.11\tnode1\n198.18.0.12\tnode2\n"


def test_file_noop():
    assert plan("file", {"path": "/etc/hosts", "content": HOSTS}) == \
        Noop("file", "/etc/hosts", "/etc/hosts already has the desired content")
    res = plan("file", {"path": "/etc/hosts", "content": HOSTS.encode(), "mode": "0644",
                        "owner": "root", "group": "root"})
    assert res.reason == "/etc/hosts already has the desired content and metadata"
    assert isinstance(plan("file", {"path": "/etc/hosts", "content": HOSTS, "mode": 0o644}), Noop)


def test_file_content_change_keeps_metadata_and_diffs():
    new = HOSTS.replace("198.18.0.12\tnode2", "198.18.0.13\tnode3")
    res = plan("file", {"path": "/etc/hosts", "content": new})
    assert res.steps == [Upload("/etc/hosts", new.encode(), 0o644, "root", "root")]
    assert res.diff.splitlines() == [
        "--- /etc/hosts (before)", "+++ /etc/hosts (after)", "@@ -1,3 +1,3 @@",
        " 127.0.0.1\tlocalhost", " 198.18.0.11\tnode1", "-198.18.0.12\tnode2", "+198.18.0.13\tnode3"]
    assert res.summary == f"update /etc/hosts ({len(new)} bytes)"


def test_file_metadata_only():
    res = plan("file", {"path": "/etc/hosts", "content": HOSTS, "mode": "600", "owner": "ray"})
    assert res.steps == [["chmod", "0600", "/etc/hosts"], ["chown", "ray", "/etc/hosts"]]
    assert res.diff == "/etc/hosts: mode: 0644 -> 0600\n/etc/hosts: owner: root -> ray"
    res = plan("file", {"path": "/etc/hosts", "content": HOSTS, "owner": "ray", "group": "ray"})
    assert res.steps == [["chown", "ray:ray", "/etc/hosts"]]
    res = plan("file", {"path": "/etc/hosts", "content": HOSTS, "group": "adm"})
    assert res.steps == [["chown", ":adm", "/etc/hosts"]]


def test_file_content_and_mode_change():
    res = plan("file", {"path": "/etc/hosts", "content": "x\n", "mode": "0600"})
    assert res.steps == [Upload("/etc/hosts", b"x\n", 0o600, "root", "root")]
    assert res.diff.startswith("mode: 0644 -> 0600\n--- /etc/hosts (before)")


def test_file_create():
    res = plan("file", {"path": "/etc/clusterctl/absent.conf", "content": "a=1\n", "mode": "0640",
                        "owner": "root", "group": "ray"})
    assert res.steps == [["mkdir", "-p", "/etc/clusterctl"],
                         Upload("/etc/clusterctl/absent.conf", b"a=1\n", 0o640, "root", "ray")]
    assert res.diff.splitlines() == ["mode: 0640", "owner: root", "group: ray",
                                     "--- /dev/null", "+++ /etc/clusterctl/absent.conf (after)",
                                     "@@ -0,0 +1 @@", "+a=1"]
    assert res.summary == "create /etc/clusterctl/absent.conf (4 bytes)"
    res = plan("file", {"path": "/etc/clusterctl/absent.conf", "content": "no newline"})
    assert res.steps[1].mode is None
    assert res.diff.endswith("+no newline\n\\ No newline at end of file")


def test_file_secret_hidden():
    for args in ({"path": "/etc/clusterctl/ray.env", "content": "RAY_TOKEN=n3w-s3cr3t\n", "secret": True},
                 {"path": "/etc/clusterctl/ray.env", "content": Secret("RAY_TOKEN=n3w-s3cr3t\n")}):
        res = plan("file", args)
        assert res.diff == "/etc/clusterctl/ray.env: (content hidden)"
        assert "n3w" not in res.summary and "n3w" not in repr(res) and "s3cr3t" not in repr(res)
        assert res.steps == [Upload("/etc/clusterctl/ray.env", b"RAY_TOKEN=n3w-s3cr3t\n", 0o600,
                                    "root", "root")]
    res = plan("file", {"path": "/etc/clusterctl/absent.conf", "content": "tok", "secret": True})
    assert "tok" not in res.diff


def test_file_binary_and_large():
    res = plan("file", {"path": "/opt/blob.bin", "content": b"\xff\xfe\x00"})
    assert res.diff == "/opt/blob.bin: binary file changed (256 -> 3 bytes)"
    assert isinstance(plan("file", {"path": "/opt/blob.bin", "content": bytes(range(256))}), Noop)
    res = plan("file", {"path": "/opt/models/big.gguf", "content": b"GGUF"})
    assert "old content not fetched" in res.diff


def test_file_absent_state():
    res = plan("file", {"path": "/etc/hosts", "state": "absent"})
    assert res.steps == [["rm", "-f", "/etc/hosts"]]
    assert plan("file", {"path": "/etc/clusterctl/absent.conf", "state": "absent"}).reason == \
        "/etc/clusterctl/absent.conf already absent"


def test_file_on_a_directory_is_a_plan_error():
    with pytest.raises(PlanError, match="/var/lib/clusterctl exists and is a directory"):
        plan("file", {"path": "/var/lib/clusterctl", "content": "x"})
    with pytest.raises(PlanError, match="refusing to remove"):
        plan("file", {"path": "/var/lib/clusterctl", "state": "absent"})


@pytest.mark.parametrize("args, message", [
    ({"path": "etc/hosts", "content": "x"}, "path: expected an absolute path"),
    ({"path": "/etc/hosts"}, "content: required parameter of file is missing"),
    ({"path": "/etc/hosts", "content": 5}, "content: expected str or bytes or Secret, got int 5"),
    ({"path": "/etc/hosts", "content": "x", "mode": "rw-r--r--"}, 'mode: expected an octal mode'),
    ({"path": "/etc/hosts", "content": "x", "mode": "0999"}, 'mode: expected an octal mode'),
    ({"path": "/etc/hosts", "content": "x", "mode": 0o17777}, "mode: mode out of range"),
    ({"path": "/etc/hosts", "content": "x", "mode": True}, "mode: expected int or str, got bool"),
    ({"path": "/etc/hosts", "content": "x", "owner": "ro ot"}, "owner: expected a user/group name"),
    ({"path": "/etc/hosts", "content": "x", "state": "gone"}, "state: expected one of present, absent"),
    ({"path": "/etc/hosts\nx", "content": "x"}, "path: path contains a NUL or newline"),
])
def test_file_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["file"].validate(args)


# ------------------------------------------------------------------ lineinfile

LIMITS = "/etc/security/limits.d/90-clusterctl.conf"


def test_lineinfile_noop():
    assert plan("lineinfile", {"path": LIMITS, "line": "* soft memlock unlimited"}) == \
        Noop("lineinfile", LIMITS, f"line already present in {LIMITS}")
    res = plan("lineinfile", {"path": LIMITS, "line": "* soft memlock unlimited",
                              "regexp": r"^\*\s+soft\s+memlock"})
    assert isinstance(res, Noop)


def test_lineinfile_append_and_replace():
    res = plan("lineinfile", {"path": LIMITS, "line": "* hard memlock unlimited"})
    assert res.steps == [Upload(LIMITS, b"* soft memlock unlimited\n* hard memlock unlimited\n",
                                0o644, "root", "root")]
    assert "+* hard memlock unlimited" in res.diff
    res = plan("lineinfile", {"path": LIMITS, "line": "* soft memlock 1048576",
                              "regexp": r"^\*\s+soft\s+memlock"})
    assert res.steps[0].content == b"* soft memlock 1048576\n"


def test_lineinfile_replaces_last_match():
    res = plan("lineinfile", {"path": "/etc/hosts", "line": "198.18.0.99\tnodeX", "regexp": r"^198\.18\."})
    assert res.steps[0].content == b"127.0.0.1\tlocalhost\n198.18.0.11\tnode1\n198.18.0.99\tnodeX\n"


def test_lineinfile_absent():
    res = plan("lineinfile", {"path": "/etc/hosts", "regexp": "node2$", "state": "absent"})
    assert res.steps[0].content == b"127.0.0.1\tlocalhost\n198.18.0.11\tnode1\n"
    res = plan("lineinfile", {"path": "/etc/hosts", "line": "198.18.0.11\tnode1", "state": "absent"})
    assert res.steps[0].content == b"127.0.0.1\tlocalhost\n198.18.0.12\tnode2\n"
    assert plan("lineinfile", {"path": "/etc/hosts", "line": "nope", "state": "absent"}).reason == \
        "no line matching 'nope' in /etc/hosts"
    assert plan("lineinfile", {"path": "/etc/clusterctl/absent.conf", "line": "x",
                               "state": "absent"}).reason == "/etc/clusterctl/absent.conf does not exist"


def test_lineinfile_create():
    res = plan("lineinfile", {"path": "/etc/clusterctl/absent.conf", "line": "a=1", "mode": "0600"})
    assert res.steps == [["mkdir", "-p", "/etc/clusterctl"],
                         Upload("/etc/clusterctl/absent.conf", b"a=1\n", 0o600, None, None)]
    with pytest.raises(PlanError, match="does not exist \\(set create: true"):
        plan("lineinfile", {"path": "/etc/clusterctl/absent.conf", "line": "a=1", "create": False})


def test_lineinfile_no_trailing_newline():
    facts = Facts({F("file", "/etc/x"): {"exists": True, "kind": "file", "sha256": "0" * 64,
                                         "size": 5, "mode": 0o644, "owner": "root", "group": "root",
                                         "content": b"a=1\nb"}})
    res = plan("lineinfile", {"path": "/etc/x", "line": "c=3"}, facts)
    assert res.steps[0].content == b"a=1\nb\nc=3\n"


def test_lineinfile_unusable_content():
    with pytest.raises(PlanError, match="larger than 256 KiB"):
        plan("lineinfile", {"path": "/opt/models/big.gguf", "line": "x"})
    with pytest.raises(PlanError, match="not a UTF-8 text file"):
        plan("lineinfile", {"path": "/opt/blob.bin", "line": "x"})
    with pytest.raises(PlanError, match="is a directory"):
        plan("lineinfile", {"path": "/var/lib/clusterctl", "line": "x"})


@pytest.mark.parametrize("args, message", [
    ({"path": LIMITS}, "line: required parameter of lineinfile is missing"),
    ({"path": LIMITS, "line": "a\nb"}, "line: expected a single line"),
    ({"path": LIMITS, "line": "a", "regexp": "("}, "regexp: invalid regular expression"),
    ({"path": LIMITS, "state": "absent"}, "line: state=absent needs line or regexp"),
])
def test_lineinfile_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["lineinfile"].validate(args)


# ------------------------------------------------------------------ directory

def test_directory_noop():
    assert plan("directory", {"path": "/var/lib/clusterctl"}).reason == "directory /var/lib/clusterctl exists"
    res = plan("directory", {"path": "/var/lib/clusterctl/", "mode": "0755", "owner": "root"})
    assert res == Noop("directory", "/var/lib/clusterctl",
                       "directory /var/lib/clusterctl exists with the desired metadata")


def test_directory_create_and_chmod():
    res = plan("directory", {"path": "/srv/absent", "mode": "0750", "owner": "ray", "group": "ray"})
    assert res.steps == [["mkdir", "-p", "/srv/absent"], ["chmod", "0750", "/srv/absent"],
                         ["chown", "ray:ray", "/srv/absent"]]
    assert res.diff == "+ /srv/absent/\nmode: 0750\nowner: ray\ngroup: ray"
    res = plan("directory", {"path": "/models", "mode": "0755"})
    assert res.steps == [["chmod", "0755", "/models"]]
    assert res.diff == "/models: mode: 0750 -> 0755"


def test_directory_absent():
    res = plan("directory", {"path": "/models", "state": "absent"})
    assert res.steps == [["rm", "-rf", "--", "/models"]]
    assert isinstance(plan("directory", {"path": "/srv/absent", "state": "absent"}), Noop)
    with pytest.raises(PlanError, match="not a directory"):
        plan("directory", {"path": "/etc/hosts", "state": "absent"})


def test_directory_on_a_file():
    with pytest.raises(PlanError, match="/etc/hosts exists and is a file, not a directory"):
        plan("directory", {"path": "/etc/hosts"})


@pytest.mark.parametrize("args, message", [
    ({"path": "/", "state": "absent"}, "path: refusing to remove /"),
    ({"path": "//.", "state": "absent"}, "path: refusing to remove /"),
    ({"path": "/x", "mode": "u+x"}, "mode: expected an octal mode"),
    ({"path": "~/x"}, "path: expected an absolute path"),
])
def test_directory_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["directory"].validate(args)


# ------------------------------------------------------------------ systemd_unit

UNIT = "/etc/systemd/system/ray-head.service"


def test_systemd_unit_noop():
    res = plan("systemd_unit", {"name": "ray-head.service", "content": text(UNIT)})
    assert isinstance(res, Noop) and res.target == "ray-head.service"


def test_systemd_unit_change_reloads():
    new = text(UNIT).replace("Restart=on-failure", "Restart=always")
    res = plan("systemd_unit", {"name": "ray-head", "content": new})
    assert res.steps == [Upload(UNIT, new.encode(), 0o644, "root", "root"),
                         ["systemctl", "daemon-reload"]]
    assert "-Restart=on-failure\n+Restart=always" in res.diff
    res = plan("systemd_unit", {"name": "ray-worker", "content": new})
    assert res.steps[1].path == "/etc/systemd/system/ray-worker.service"
    assert res.steps[-1] == ["systemctl", "daemon-reload"]


def test_systemd_unit_mode_only_needs_no_reload():
    res = plan("systemd_unit", {"name": "ray-head.service", "content": text(UNIT), "mode": "0640"})
    assert res.steps == [["chmod", "0640", UNIT]]


@pytest.mark.parametrize("name", ["../evil", "a b", "", ".service"])
def test_systemd_unit_validation(name):
    with pytest.raises(ValueError, match="name: expected a systemd unit name"):
        OPS["systemd_unit"].validate({"name": name, "content": "x"})


# ------------------------------------------------------------------ service

def test_service_noop():
    assert plan("service", {"name": "ray-head", "state": "started", "enabled": True}) == \
        Noop("service", "ray-head.service", "ray-head.service already active and enabled")
    assert plan("service", {"name": "nvidia-persistenced", "state": "stopped",
                            "enabled": False}).reason == \
        "nvidia-persistenced.service already inactive and disabled"
    assert plan("service", {"name": "ray-head.service"}).reason == "ray-head.service already active"


def test_service_start_enable():
    res = plan("service", {"name": "ray-worker.service", "enabled": True})   # failed, enabled
    assert res.steps == [["systemctl", "start", "ray-worker.service"]]
    assert res.diff == "active: failed -> active"
    res = plan("service", {"name": "nvidia-persistenced.service", "enabled": True})
    assert res.steps == [["systemctl", "enable", "--now", "nvidia-persistenced.service"]]
    assert res.diff == "enabled: disabled -> enabled\nactive: inactive -> active"
    res = plan("service", {"name": "opensm", "state": "started", "enabled": True})   # not-found yet
    assert res.steps == [["systemctl", "enable", "--now", "opensm.service"]]


def test_service_enable_only_when_running():
    facts = Facts({F("unit", "x.service"): {"available": True, "id": "x.service", "load_state": "loaded",
                                            "active_state": "active", "sub_state": "running",
                                            "unit_file_state": "disabled", "fragment_path": "/x"}})
    res = plan("service", {"name": "x.service", "enabled": True}, facts)
    assert res.steps == [["systemctl", "enable", "x.service"]]
    assert res.summary == "enable x.service"


def test_service_stop_disable_restart():
    res = plan("service", {"name": "ray-head", "state": "stopped", "enabled": False})
    assert res.steps == [["systemctl", "disable", "--now", "ray-head.service"]]
    res = plan("service", {"name": "ray-head", "state": "stopped"})
    assert res.steps == [["systemctl", "stop", "ray-head.service"]]
    res = plan("service", {"name": "ray-head", "state": "restarted"})
    assert res.steps == [["systemctl", "restart", "ray-head.service"]]
    res = plan("service", {"name": "nvidia-persistenced", "state": "restarted", "enabled": True})
    assert res.steps == [["systemctl", "enable", "nvidia-persistenced.service"],
                         ["systemctl", "restart", "nvidia-persistenced.service"]]


def test_service_plan_errors():
    with pytest.raises(PlanError, match="nvidia-fabricmanager.service is masked"):
        plan("service", {"name": "nvidia-fabricmanager"})
    with pytest.raises(PlanError, match="systemd did not answer"):
        plan("service", {"name": "ray-head.service"}, NODE)       # recorded without systemd


@pytest.mark.parametrize("args, message", [
    ({"name": "ray-head", "state": "running"}, "state: expected one of started, stopped, restarted"),
    ({"name": "ray-head", "enabled": "perhaps"}, "enabled: expected bool"),
    ({"name": "ray head"}, "name: expected a systemd unit name"),
])
def test_service_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["service"].validate(args)


# ------------------------------------------------------------------ command

def test_command_guards_noop():
    assert plan("command", {"argv": ["ray", "start"], "creates": "/opt/ray/bin/python"}).reason == \
        "creates /opt/ray/bin/python exists"
    assert plan("command", {"argv": ["rm", "/opt/ray/bin/ray"], "removes": "/opt/ray/bin/ray"}).reason == \
        "removes /opt/ray/bin/ray does not exist"
    assert plan("command", {"argv": "echo 198.18.0.11 node1 >> /etc/hosts",
                            "unless": "grep -q node1 /etc/hosts"}).reason == \
        "unless `grep -q node1 /etc/hosts` succeeded"
    assert plan("command", {"argv": ["true"], "only_if": "exit 3"}).reason == \
        "only_if `exit 3` failed (exit 3)"


def test_command_runs():
    res = plan("command", {"argv": ["/opt/ray/bin/pip", "install", "ray", 2],
                           "creates": "/opt/ray/bin/ray", "unless": "test -x /opt/ray/bin/ray",
                           "only_if": "grep -q node1 /etc/hosts"})
    assert res.steps == [["/opt/ray/bin/pip", "install", "ray", "2"]]
    assert res.diff is None and res.summary == "run /opt/ray/bin/pip install ray 2"
    res = plan("command", {"argv": "ip -br link | grep -q ib0 && echo ok"})
    assert res.steps == [["bash", "-c", "ip -br link | grep -q ib0 && echo ok"]]


def test_command_requests():
    args = OPS["command"].validate({"argv": "x", "creates": "/a", "removes": "/b", "unless": "u",
                                    "only_if": "o"})
    assert OPS["command"].requests(args) == [F("path", "/a"), F("path", "/b"), F("check", "u"),
                                             F("check", "o")]
    assert OPS["command"].requests(OPS["command"].validate({"argv": ["true"]})) == []


@pytest.mark.parametrize("args, message", [
    ({"argv": []}, "argv: expected a non-empty list"),
    ({"argv": "  "}, "argv: expected a command"),
    ({"argv": [["nested"]]}, "argv: expected a non-empty list"),
    ({"argv": ["x"], "creates": "relative"}, "creates: expected an absolute path"),
    ({"argv": ["x"], "unless": " "}, "unless: expected a shell command"),
])
def test_command_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["command"].validate(args)


# ------------------------------------------------------------------ sysctl

SYSCTL_CONF = "/etc/sysctl.d/90-clusterctl.conf"
RMEM = NODE.get(F("sysctl", "net.core.rmem_max"))        # recorded live value: 4194304


def test_sysctl_noop():
    assert RMEM == "4194304"
    assert plan("sysctl", {"key": "net.core.rmem_max", "value": 4194304}) == \
        Noop("sysctl", "net.core.rmem_max",
             f"net.core.rmem_max already 4194304 (persisted in {SYSCTL_CONF})")
    assert plan("sysctl", {"key": "net.ipv4.tcp_rmem", "value": "4096   131072\t33554432",
                           "persist": False}).reason == "net.ipv4.tcp_rmem already 4096 131072 33554432"


def test_sysctl_set_and_persist():
    res = plan("sysctl", {"key": "net.core.rmem_max", "value": "268435456"})
    assert res.steps == [["sysctl", "-w", "net.core.rmem_max=268435456"],
                         Upload(SYSCTL_CONF, b"# Written by clusterctl\nnet.core.rmem_max = 268435456\n"
                                b"net.core.wmem_max=16777216\n", 0o644, "root", "root")]
    assert res.diff.startswith("net.core.rmem_max: 4194304 -> 268435456\n")
    assert res.summary == f"set net.core.rmem_max=268435456; persist in {SYSCTL_CONF}"


def test_sysctl_persist_only_and_spaced_values():
    res = plan("sysctl", {"key": "net.ipv4.tcp_rmem", "value": "4096 131072 33554432"})
    assert res.steps == [Upload(SYSCTL_CONF, b"# Written by clusterctl\nnet.core.rmem_max = 4194304\n"
                                b"net.core.wmem_max=16777216\nnet.ipv4.tcp_rmem = 4096 131072 33554432\n",
                                0o644, "root", "root")]
    assert res.summary == f"persist in {SYSCTL_CONF}"
    # the live value differs but the file already says it (written without spaces)
    res = plan("sysctl", {"key": "net.core.wmem_max", "value": "16777216"})
    assert res.steps == [["sysctl", "-w", "net.core.wmem_max=16777216"]]


def test_sysctl_missing_key_and_new_file():
    res = plan("sysctl", {"key": "net.nonexistent.key", "value": "1", "persist": False})
    assert res.diff == "net.nonexistent.key: (missing) -> 1"
    facts = ALL.merged(Facts({F("file", "/etc/sysctl.d/99-x.conf"):
                              NODE.get(F("file", "/etc/clusterctl/absent.conf"))}))
    res = plan("sysctl", {"key": "net.ipv4.ip_forward", "value": "1", "file": "/etc/sysctl.d/99-x.conf"},
               facts)
    assert res.steps == [["sysctl", "-w", "net.ipv4.ip_forward=1"],
                         ["mkdir", "-p", "/etc/sysctl.d"],
                         Upload("/etc/sysctl.d/99-x.conf", b"net.ipv4.ip_forward = 1\n", 0o644)]


@pytest.mark.parametrize("args, message", [
    ({"key": "net core", "value": "1"}, "key: expected a sysctl key"),
    ({"key": "net/../../etc", "value": "1"}, "key: expected a sysctl key"),
    ({"key": "net.core.rmem_max", "value": "  "}, "value: expected a non-empty value"),
    ({"key": "net.core.rmem_max", "value": 1.5}, "value: expected str or int, got float"),
    ({"key": "net.core.rmem_max", "value": 1, "file": "x.conf"}, "file: expected an absolute path"),
])
def test_sysctl_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["sysctl"].validate(args)


# ------------------------------------------------------------------ link_mtu

def test_link_mtu_noop_and_change():
    eth0 = NODE.get(F("link", "eth0"))["mtu"]
    assert plan("link_mtu", {"interface": "eth0", "mtu": eth0}) == \
        Noop("link_mtu", "eth0", f"mtu already {eth0} on eth0")
    res = plan("link_mtu", {"interface": "ib0", "mtu": "4092"})        # rendered template value
    assert res.steps == [["ip", "link", "set", "dev", "ib0", "mtu", "4092"]]
    assert res.diff == "ib0 mtu: 2044 -> 4092" and res.summary == "set mtu 4092 on ib0"


def test_link_mtu_engine_params_do_not_change_the_plan():
    args = OPS["link_mtu"].validate({"interface": "ib0", "mtu": 4092})
    assert args["safe"] is True and args["rollback_after"] == 60
    assert plan("link_mtu", {"interface": "ib0", "mtu": 4092, "safe": False}) == \
        plan("link_mtu", {"interface": "ib0", "mtu": 4092})


def test_link_mtu_missing_interface():
    with pytest.raises(PlanError, match="no interface nope0"):
        plan("link_mtu", {"interface": "nope0", "mtu": 9000})


@pytest.mark.parametrize("args, message", [
    ({"interface": "eth0", "mtu": 10}, "mtu: expected 68..65535, got 10"),
    ({"interface": "eth0", "mtu": 70000}, "mtu: expected 68..65535"),
    ({"interface": "eth0", "mtu": True}, "mtu: expected int, got bool"),
    ({"interface": "eth0", "mtu": "jumbo"}, "mtu: expected int, got str 'jumbo'"),
    ({"interface": "eth0/x", "mtu": 9000}, "interface: expected an interface name"),
    ({"interface": "averyveryverylongname", "mtu": 9000}, "interface: expected an interface name"),
    ({"interface": "eth0", "mtu": 9000, "rollback_after": 1}, "rollback_after: expected at least 5"),
])
def test_link_mtu_validation(args, message):
    with pytest.raises(ValueError, match=message):
        OPS["link_mtu"].validate(args)


def test_apt_update_from_one_source_only():
    from clusterctl.ops.package import apt_update
    argv = apt_update("/etc/apt/sources.list.d/m.list")
    assert argv[-7:] == ["update", "-o", "Dir::Etc::SourceList=/etc/apt/sources.list.d/m.list",
                         "-o", "Dir::Etc::SourceParts=-", "-o", "APT::Get::List-Cleanup=0"]
    assert apt_update(None)[-1] == "update"


# ------------------------------------------------------------------ what is shown of a secret

def _planned_with_reveal(op_name: str, args: dict, secret: Secret):
    """Render args with `{{ s | reveal }}` the way the runner does, plan, and mask."""
    from clusterctl.engine.templating import render_value, tracking_reveals
    from clusterctl.ops.base import mask_outcome
    with tracking_reveals() as masker:
        real = plan(op_name, render_value(args, {"s": secret}))
    return real, mask_outcome(real, masker)


def test_file_shows_revealed_value_masked_but_uploads_it():
    # the "secret" is the address in the recorded /etc/hosts: the old line has it too
    secret = Secret("198.18.0.12")
    real, shown = _planned_with_reveal(
        "file", {"path": "/etc/hosts",
                 "content": "127.0.0.1\tlocalhost\n198.18.0.11\tnode1\n{{ s | reveal }}\tnode3\n"},
        secret)
    assert shown.steps == real.steps and b"198.18.0.12\tnode3" in real.steps[0].content
    assert "198.18.0.12" in real.diff                     # what the op alone would show
    assert "198.18.0.12" not in shown.diff + shown.summary
    assert "-***\tnode2" in shown.diff and "+***\tnode3" in shown.diff
    assert " 198.18.0.11\tnode1" in shown.diff            # the rest of the diff stays


def test_lineinfile_shows_revealed_value_masked():
    secret = Secret("node2")
    real, shown = _planned_with_reveal(
        "lineinfile", {"path": "/etc/hosts", "regexp": "^198\\.18\\.0\\.12",
                       "line": "198.18.0.12\t{{ s | reveal }}-new"}, secret)
    assert isinstance(real, Change)
    assert "node2" not in (shown.diff or "") + shown.summary
    assert shown.steps == real.steps


def test_noop_reason_masked_and_no_masker_no_copy():
    from clusterctl.ops.base import mask_outcome
    from clusterctl.secret import Masker
    real, shown = _planned_with_reveal(
        "lineinfile", {"path": "/etc/hosts", "regexp": "{{ s | reveal }}", "state": "absent"},
        Secret("tok-3f9a"))
    assert isinstance(real, Noop) and "tok-3f9a" in real.reason
    assert shown.reason == real.reason.replace("tok-3f9a", "***")
    assert mask_outcome(real, Masker()) is real
