"""pip: requirements in a venv, installing only those missing or at a wrong version.

Compares with the `pip:VENV` fact (dist-info names and versions); names are
compared PEP 503-canonicalised. With `fan_out`, find_links/index_url/no_index say where
the *controller* gets the wheels: the engine stages them once for the nodes' Python and
platform and sends them through the relay chain to WHEELHOUSE/SET on the nodes, which
install from that local folder only (engine/wheels.py). Specifiers supported: ==, !=, <=, >=, <, >, ~=,
=== and `==X.*`; "name @ url" is checked for presence only.
"""
from __future__ import annotations

import re

from clusterctl.facts import FactRequest, Facts, canonical_name
from clusterctl.ops.base import Change, Command, Noop, Op, Param, as_list, check_abs_path, plural

_REQ_RE = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[A-Za-z0-9._,\s-]*\])?\s*(.*?)\s*$")
_CLAUSE_RE = re.compile(r"^(===|==|!=|~=|<=|>=|<|>)\s*([A-Za-z0-9.*+!_-]+)$")
_VER_RE = re.compile(
    r"^v?(?:(\d+)!)?(\d+(?:\.\d+)*)"
    r"(?:[-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?(\d*))?"
    r"(?:-(\d+)|[-_.]?(?:post|rev|r)[-_.]?(\d*))?"
    r"(?:[-_.]?dev[-_.]?(\d*))?"
    r"(?:\+([a-z0-9]+(?:[-_.][a-z0-9]+)*))?$", re.I)
_PRE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_INF = float("inf")


def version_key(text: str) -> tuple | None:
    """A sort key following PEP 440 ordering (local labels ignored); None if unparseable."""
    m = _VER_RE.match(text.strip())
    if not m:
        return None
    epoch, release, pre_l, pre_n, post_a, post_b, dev, _local = m.groups()
    rel = [int(x) for x in release.split(".")]
    while len(rel) > 1 and rel[-1] == 0:
        rel.pop()
    # a group that matched an empty number ("1.0.post", "1.0.dev") is "", not None
    has_post = post_a is not None or post_b is not None
    post = post_a if post_a is not None else post_b
    has_dev = dev is not None
    if pre_l is None and not has_post and has_dev:
        pre_key: tuple = (-_INF,)
    elif pre_l is None:
        pre_key = (_INF,)
    else:
        pre_key = (_PRE[pre_l.lower()], int(pre_n or 0))
    post_key = (int(post or 0),) if has_post else (-_INF,)
    dev_key = (int(dev or 0),) if has_dev else (_INF,)
    return (int(epoch or 0), tuple(rel), pre_key, post_key, dev_key)


def _local(text: str) -> str | None:
    return text.split("+", 1)[1].lower() if "+" in text else None


def _release(text: str) -> list[int]:
    m = _VER_RE.match(text.strip())
    return [int(x) for x in m.group(2).split(".")] if m else []


def clause_ok(have: str, op: str, want: str) -> bool:
    """Does installed version `have` satisfy `op want`?"""
    if op == "===":
        return have.strip() == want.strip()
    if want.endswith(".*"):
        prefix = [int(x) for x in want[:-2].split(".")]
        rel = _release(have)
        rel += [0] * max(0, len(prefix) - len(rel))
        match = version_key(have) is not None and rel[:len(prefix)] == prefix
        return match if op == "==" else not match
    hk, wk = version_key(have), version_key(want)
    if hk is None:
        return False
    if op in ("==", "!="):
        same = hk == wk and (_local(want) is None or _local(want) == _local(have))
        return same if op == "==" else not same
    if op == "~=":
        rel = want.split("+")[0].split(".")
        prefix = ".".join(rel[:-1]) + ".*"
        return hk >= wk and clause_ok(have, "==", prefix)
    return {"<": hk < wk, "<=": hk <= wk, ">": hk > wk, ">=": hk >= wk}[op]


def parse_requirement(spec: str) -> tuple[str, list[tuple[str, str]], bool]:
    """"name[extra]>=1,<2" -> (canonical name, [(op, version)], is_url)."""
    m = _REQ_RE.match(spec)
    if not m or ";" in spec:
        raise ValueError(f"packages: expected requirements like 'name', 'name==1.2', 'name>=1', got {spec!r}")
    name, _extras, rest = m.groups()
    if rest.startswith("@"):
        if not rest[1:].strip():
            raise ValueError(f"packages: '{spec}' has an empty URL")
        return canonical_name(name), [], True
    clauses = []
    for part in filter(None, (p.strip() for p in rest.split(","))) if rest else []:
        cm = _CLAUSE_RE.match(part)
        if not cm:
            raise ValueError(f"packages: bad version specifier {part!r} in {spec!r}")
        op, ver = cm.groups()
        if op != "===" and version_key(ver[:-2] if ver.endswith(".*") else ver) is None:
            raise ValueError(f"packages: bad version {ver!r} in {spec!r}")
        if ver.endswith(".*") and op not in ("==", "!="):
            raise ValueError(f"packages: '.*' only goes with == or != in {spec!r}")
        clauses.append((op, ver))
    return canonical_name(name), clauses, False


class PipOp(Op):
    name = "pip"
    deadline = 3600.0
    params = {
        "venv": Param(str, required=True, help="absolute path of the venv"),
        "packages": Param((list, str), required=True, help="requirements: name, name==1.2, name>=1"),
        "find_links": Param(str, help="wheelhouse path or URL"),
        "index_url": Param(str),
        "no_index": Param(bool, default=False),
        "trusted_host": Param(str, help="needed for a plain-http find_links/index"),
        "extra_args": Param(list, default=list, help="more pip install arguments"),
        "fan_out": Param(bool, default=False,
                         help="stage the wheels once on the controller and fan them out to "
                              "the nodes (install from a local copy)"),
        "wheelhouse": Param(str, default="/var/cache/clusterctl/wheels",
                            help="with fan_out: folder on the nodes for the wheel sets"),
    }

    def normalize(self, args: dict) -> dict:
        args["venv"] = check_abs_path("venv", args["venv"])
        pkgs = [p.strip() if isinstance(p, str) else p for p in as_list("packages", args["packages"])]
        if not pkgs:
            raise ValueError("packages: expected at least one requirement, got an empty list")
        for p in pkgs:
            if not isinstance(p, str):
                raise ValueError(f"packages: expected requirement strings, got {type(p).__name__} {p!r}")
            parse_requirement(p)
        args["packages"] = list(dict.fromkeys(pkgs))
        for key in ("find_links", "index_url", "trusted_host"):
            if args[key] is not None and (not args[key].strip() or any(c.isspace() for c in args[key])):
                raise ValueError(f"{key}: expected a value without whitespace, got {args[key]!r}")
        for a in args["extra_args"]:
            if not isinstance(a, str):
                raise ValueError(f"extra_args: expected strings, got {type(a).__name__} {a!r}")
        args["extra_args"] = list(args["extra_args"])
        args["wheelhouse"] = check_abs_path("wheelhouse", args["wheelhouse"])
        return args

    def requests(self, args: dict) -> list[FactRequest]:
        args = self.validate(args)
        reqs = [FactRequest("pip", args["venv"])]
        if args["fan_out"]:
            reqs += [FactRequest("python"), FactRequest("arch"), FactRequest("libc")]
        return reqs

    @staticmethod
    def local_args(args: dict, folder: str) -> dict:
        """The args of the node-side install from a fanned-out wheel set at `folder`."""
        return {**args, "find_links": folder, "no_index": True, "index_url": None,
                "trusted_host": None}

    def install_command(self, args: dict, specs: list[str]) -> Command:
        argv = [f"{args['venv']}/bin/pip", "install", "--disable-pip-version-check", "--no-input"]
        if args["no_index"]:
            argv.append("--no-index")
        if args["index_url"]:
            argv += ["--index-url", args["index_url"]]
        if args["find_links"]:
            argv += ["--find-links", args["find_links"]]
        if args["trusted_host"]:
            argv += ["--trusted-host", args["trusted_host"]]
        return argv + args["extra_args"] + specs

    def plan(self, facts: Facts, args: dict) -> Change | Noop:
        args = self.validate(args)
        venv = args["venv"]
        fact = facts.get(FactRequest("pip", venv))
        installed = fact["packages"] if fact["exists"] else {}
        todo, diff = self.missing(facts, args), []
        for spec in todo:
            name, clauses, _url = parse_requirement(spec)
            if len(clauses) == 1 and clauses[0][0] == "==" and not clauses[0][1].endswith(".*"):
                want = clauses[0][1]
            else:
                want = ",".join(op + ver for op, ver in clauses) or "any"
            diff.append(f"{name}: {installed.get(name) or 'absent'} -> {want}")
        n = len(args["packages"])
        if not todo:
            return Noop(self.name, venv, f"all {plural(n, 'requirement')} satisfied in {venv}"
                        if n > 1 else f"{args['packages'][0]} satisfied in {venv} ({installed.get(parse_requirement(args['packages'][0])[0])})")
        note = "" if fact["exists"] else " (venv not created yet)"
        if args["fan_out"]:
            if not facts.python:
                raise ValueError("python3 not found on the host: the wheels to fan out are "
                                 "staged for its Python version")
            note += " from wheels staged on the controller and fanned out"
            # the set's folder is named by its content, known once staged
            install_args = self.local_args(args, f"{args['wheelhouse'].rstrip('/')}/<set>")
        else:
            install_args = args
        return Change(self.name, venv, [self.install_command(install_args, todo)],
                      "\n".join(diff),
                      f"install {len(todo)} of {plural(n, 'requirement')} into {venv}{note}: {' '.join(todo)}")

    def missing(self, facts: Facts, args: dict) -> list[str]:
        """The requirements not satisfied in the venv (what plan() installs)."""
        args = self.validate(args)
        fact = facts.get(FactRequest("pip", args["venv"]))
        installed = fact["packages"] if fact["exists"] else {}
        out = []
        for spec in args["packages"]:
            name, clauses, _url = parse_requirement(spec)
            have = installed.get(name)
            if have is None or not all(clause_ok(have, op, ver) for op, ver in clauses):
                out.append(spec)
        return out


OP = PipOp()
