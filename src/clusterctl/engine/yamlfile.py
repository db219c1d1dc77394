"""YAML loading that keeps line numbers, for roles and playbooks.

Mappings load as `YDict` (a dict) whose `.line` is the mapping's first line and
`.key_lines[key]` the line of each key; sequences as `YList` with `.lines`.
Duplicate keys are an error naming both lines. Reading is bounded (clusterctl.yamlread).
"""
from __future__ import annotations

from pathlib import Path

from .. import yamlread
from ..yamlread import Constructor


class YDict(dict):
    line: int = 0
    key_lines: dict
    file: str = ""


class YList(list):
    line: int = 0
    lines: list
    file: str = ""


class _Constructor(Constructor):
    """YDict / YList with the lines of their keys and items."""

    def mapping(self, node, items):
        result = YDict()
        result.line = node.start_mark.line + 1
        result.file = node.start_mark.name
        result.key_lines = {}
        for key, value, knode in items:
            result[key] = value
            result.key_lines[key] = knode.start_mark.line + 1
        return result

    def sequence(self, node, items):
        result = YList(items)
        result.line = node.start_mark.line + 1
        result.lines = [child.start_mark.line + 1 for child in node.value]
        result.file = node.start_mark.name
        return result


def load_yaml(path: Path, *, default=None):
    """Load a YAML file with line info, bounded (see clusterctl.yamlread: regular files
    only, size, nesting depth and alias expansion limits). Missing file -> InputError;
    empty -> default."""
    return yamlread.load(path, what="YAML file", default=default, constructor=_Constructor)


def line_of(container, key=None) -> int | None:
    """Best-effort line number of a key in a YDict or an index in a YList."""
    if isinstance(container, YDict):
        if key is not None and key in container.key_lines:
            return container.key_lines[key]
        return container.line
    if isinstance(container, YList):
        if isinstance(key, int) and key < len(container.lines):
            return container.lines[key]
        return container.line
    return None
