"""Ansible's INI inventory format, converted to the YAML inventory structure (pure).

::

    node0 ansible_host=10.0.0.9          # before any section: group 'ungrouped'
    [head]
    head1 ansible_host=10.0.0.10 role=head
    [gpu]
    gpu[01:16] ansible_user=ubuntu       # a range: gpu01 .. gpu16 (zero-padded)
    rack-[a:c].example.com:2222          # letters too; host:port sets ansible_port
    [gpu:vars]
    gpus=8
    cluster={'mtu': 9000}                # Python literals: numbers, lists, dicts, True...
    [cluster:children]
    head
    gpu

Values typed as Ansible types them: a Python literal (``8``, ``True``, ``[1, 2]``,
``{'a': 1}``, ``'quoted'``) is that value, anything else is text. Numbers keep their
written text (``version=2.60`` stays "2.60" where a version is expected). The result is
a node graph like the YAML loader's, with marks at the INI lines and columns, so the
inventory checks and their file:line messages are the same for both formats.
"""
from __future__ import annotations

import ast
import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode

from .errors import InputError
from .yamlread import MAP_TAG, NULL_TAG, STR_TAG, NumberText, node_from_value

__all__ = ["ini_to_nodes", "expand_host_pattern", "ini_value", "MAX_INI_HOSTS"]

#: at most this many hosts from one file's ranges together
MAX_INI_HOSTS = 100_000

_SECTION_RE = re.compile(r"^\[([^\]\s]+)\]\s*(?:[#;].*)?$")
_RANGE_RE = re.compile(r"^([^:\]]*):([^:\]]*)(?::([^:\]]*))?$")


def ini_value(text: str) -> Any:
    """A value as Ansible's INI reader types it: a Python literal, else the text."""
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except Exception:  # noqa: BLE001 - any literal it cannot read is plain text
        return text
    if isinstance(value, bool) or value is None or isinstance(value, (str, list, dict)):
        return value
    if isinstance(value, int):
        return NumberText(text, "int")
    if isinstance(value, float):
        return NumberText(text, "float")
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return text  # complex, bytes, Ellipsis: keep the text


def _expand_range(inner: str, pattern: str) -> list[str]:
    m = _RANGE_RE.match(inner)
    if not m:
        raise ValueError(f"[{inner}] is not a range such as [01:16] or [a:f]")
    beg, end, step_text = m.group(1), m.group(2), m.group(3)
    step = 1
    if step_text not in (None, ""):
        if not step_text.isdigit() or int(step_text) < 1:
            raise ValueError(f"[{inner}]: the step must be a positive integer")
        step = int(step_text)
    if beg == "" and end.isdigit():
        beg = "0"
    if beg.isdigit() and end.isdigit():
        width = len(beg) if beg.startswith("0") and len(beg) > 1 else 0
        if width and len(end) != width:
            raise ValueError(f"[{inner}]: a zero-padded range has start and end of the same "
                             "width")
        lo, hi = int(beg), int(end)
        if lo > hi:
            raise ValueError(f"[{inner}]: the start is after the end")
        if (hi - lo) // step + 1 > MAX_INI_HOSTS:
            raise ValueError(f"[{inner}] makes more than {MAX_INI_HOSTS:,} hosts")
        return [str(i).zfill(width) for i in range(lo, hi + 1, step)]
    if len(beg) == 1 and len(end) == 1 and beg.isalpha() and end.isalpha() and beg.isascii() \
            and end.isascii() and beg.islower() == end.islower():
        if beg > end:
            raise ValueError(f"[{inner}]: the start is after the end")
        return [chr(c) for c in range(ord(beg), ord(end) + 1, step)]
    raise ValueError(f"[{inner}] is not a range such as [01:16] or [a:f]")


def expand_host_pattern(pattern: str) -> tuple[list[str], str | None]:
    """(host names, port text or None) of an INI host pattern: `name`, `name:port`,
    `[v6addr]:port`, ranges `node[01:16]`, `rack[a:c]-n[1:4]`. ValueError says what is
    wrong."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::([0-9]+))?$", pattern)
    if m and ":" in m.group(1):
        try:
            ipaddress.IPv6Address(m.group(1))
            return [m.group(1)], m.group(2)
        except ValueError:
            pass
    port = None
    outside = re.sub(r"\[[^\]]*\]", "", pattern)
    if outside.count(":") == 1:
        head, _, tail = pattern.rpartition(":")
        if not tail.isdigit():
            raise ValueError(f"{pattern!r}: the port after ':' must be a number")
        pattern, port = head, tail
    elif outside.count(":") > 1:
        try:
            ipaddress.IPv6Address(pattern)
        except ValueError:
            raise ValueError(f"{pattern!r}: too many ':' (write an IPv6 address with a port "
                             "as [addr]:port)") from None
        return [pattern], None
    parts = re.split(r"(\[[^\]]*\])", pattern)
    if "[" in outside or "]" in outside:
        raise ValueError(f"{pattern!r}: unbalanced '[' or ']'")
    choices: list[list[str]] = []
    total = 1
    for part in parts:
        if part.startswith("[") and part.endswith("]"):
            options = _expand_range(part[1:-1], pattern)
        else:
            options = [part]
        total *= len(options)
        if total > MAX_INI_HOSTS:
            raise ValueError(f"{pattern!r} makes more than {MAX_INI_HOSTS:,} hosts")
        choices.append(options)
    return ["".join(p) for p in product(*choices)], port


@dataclass
class _Group:
    line: int
    col: int
    hosts: dict[str, list] = field(default_factory=dict)   # name -> [(k, v, line, col)]
    host_marks: dict[str, tuple[int, int]] = field(default_factory=dict)
    vars: dict[str, tuple] = field(default_factory=dict)   # key -> (value, line, col)
    children: dict[str, tuple[int, int]] = field(default_factory=dict)


def ini_to_nodes(text: str, file: str) -> Node | None:
    """The INI inventory `text` as a YAML-structure node graph (None when empty)."""

    def mark(line: int, col: int) -> Mark:
        return Mark(file, 0, line, col, None, None)

    def fail(line: int, col: int, message: str) -> InputError:
        return InputError(message, file=file, line=line + 1, column=col + 1)

    groups: dict[str, _Group] = {}

    def group(name: str, line: int, col: int) -> _Group:
        g = groups.get(name)
        if g is None:
            g = groups[name] = _Group(line, col)
        return g

    current, state = "ungrouped", "hosts"
    host_count = 0
    anything = False
    for n, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        anything = True
        indent = len(raw) - len(raw.lstrip())
        if line.startswith("[") and not (state == "hosts" and
                                         re.match(r"^\[[^\]]*\]:[0-9]+(\s|$)", line)):
            m = _SECTION_RE.match(line)
            if not m:
                raise fail(n, indent, f"bad section header {line!r} (expected [group], "
                                      "[group:vars] or [group:children])")
            name, _, kind = m.group(1).partition(":")
            if kind not in ("", "vars", "children"):
                raise fail(n, indent, f"section [{m.group(1)}]: ':{kind}' is not a section "
                                      "type (expected :vars or :children)")
            if not name:
                raise fail(n, indent, f"section [{m.group(1)}] has no group name")
            current, state = name, kind or "hosts"
            group(current, n, indent + 1)
            continue
        g = group(current, n, indent)
        if state == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                raise fail(n, indent, f"[{current}:vars]: expected key=value, got {line!r}")
            key = key.strip()
            col = indent + raw.lstrip().find("=") + 1
            g.vars[key] = (ini_value(value), n, col + (len(value) - len(value.lstrip())))
            continue
        if state == "children":
            child = line.split("#", 1)[0].split(";", 1)[0].strip()
            if not child or len(child.split()) != 1:
                raise fail(n, indent, f"[{current}:children]: expected one group name per "
                                      f"line, got {line!r}")
            g.children.setdefault(child, (n, indent))
            group(child, n, indent)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise fail(n, indent, f"cannot split the host line: {e}") from None
        if not tokens:
            continue
        try:
            names, port = expand_host_pattern(tokens[0])
        except ValueError as e:
            raise fail(n, indent, f"host {tokens[0]!r}: {e}") from None
        host_count += len(names)
        if host_count > MAX_INI_HOSTS:
            raise fail(n, indent, f"more than {MAX_INI_HOSTS:,} hosts in the inventory")
        pairs: list = []
        if port is not None:
            pairs.append(("ansible_port", NumberText(port, "int"), n,
                          indent + len(tokens[0]) - len(port)))
        search = indent + len(tokens[0])
        for token in tokens[1:]:
            key, eq, value = token.partition("=")
            col = raw.find(key, search)
            col = col if col >= 0 else indent
            search = max(search, col + len(key))
            if not eq or not key:
                raise fail(n, col, f"host {tokens[0]!r}: expected key=value, got {token!r}")
            pairs.append((key, ini_value(value), n, col + len(key) + 1))
        for name in names:
            g.host_marks.setdefault(name, (n, indent))
            g.hosts.setdefault(name, []).extend(pairs)

    if not anything:
        return None

    def key_node(text: str, line: int, col: int) -> ScalarNode:
        m = mark(line, col)
        return ScalarNode(STR_TAG, text, m, m)

    def null_node(line: int, col: int) -> ScalarNode:
        m = mark(line, col)
        return ScalarNode(NULL_TAG, "", m, m)

    def vars_node(items: list, line: int, col: int) -> MappingNode:
        last: dict[str, tuple] = {}
        for key, value, vline, vcol in items:
            last[key] = (value, vline, vcol)   # a later key=value wins, as in Ansible
        return MappingNode(MAP_TAG, [
            (key_node(k, vl, vc), node_from_value(v, file, vl, vc))
            for k, (v, vl, vc) in last.items()], mark(line, col), mark(line, col))

    def group_node(name: str, g: _Group) -> Node:
        pairs = []
        if g.hosts:
            hosts = []
            for host, items in g.hosts.items():
                hl, hc = g.host_marks[host]
                value = vars_node(items, hl, hc) if items else null_node(hl, hc)
                hosts.append((key_node(host, hl, hc), value))
            pairs.append((key_node("hosts", g.line, g.col),
                          MappingNode(MAP_TAG, hosts, mark(g.line, g.col), mark(g.line, g.col))))
        if g.vars:
            items = [(k, v, vl, vc) for k, (v, vl, vc) in g.vars.items()]
            pairs.append((key_node("vars", g.line, g.col), vars_node(items, g.line, g.col)))
        if g.children and name != "all":
            children = [(key_node(c, cl, cc), null_node(cl, cc))
                        for c, (cl, cc) in g.children.items()]
            pairs.append((key_node("children", g.line, g.col),
                          MappingNode(MAP_TAG, children, mark(g.line, g.col),
                                      mark(g.line, g.col))))
        if not pairs:
            return null_node(g.line, g.col)
        return MappingNode(MAP_TAG, pairs, mark(g.line, g.col), mark(g.line, g.col))

    all_g = groups.pop("all", None) or _Group(0, 0)
    if not groups.get("ungrouped", _Group(0, 0)).hosts and "ungrouped" in groups \
            and not groups["ungrouped"].vars and not groups["ungrouped"].children:
        del groups["ungrouped"]
    all_pairs = []
    if all_g.hosts or all_g.vars:
        node = group_node("all", all_g)
        if isinstance(node, MappingNode):
            all_pairs.extend(node.value)
    if groups:
        all_pairs.append((key_node("children", all_g.line, all_g.col), MappingNode(
            MAP_TAG, [(key_node(name, g.line, g.col), group_node(name, g))
                      for name, g in groups.items()], mark(0, 0), mark(0, 0))))
    all_node: Node = MappingNode(MAP_TAG, all_pairs, mark(all_g.line, all_g.col),
                                 mark(all_g.line, all_g.col)) if all_pairs \
        else null_node(all_g.line, all_g.col)
    return MappingNode(MAP_TAG, [(key_node("all", all_g.line, all_g.col), all_node)],
                       mark(0, 0), mark(0, 0))
