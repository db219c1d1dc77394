"""YAML loading that keeps line numbers, for roles and playbooks.

Mappings load as `YDict` (a dict) whose `.line` is the mapping's first line and
`.key_lines[key]` the line of each key; sequences as `YList` with `.lines`.
Duplicate keys are an error naming both lines.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import InputError


class YDict(dict):
    line: int = 0
    key_lines: dict
    file: str = ""


class YList(list):
    line: int = 0
    lines: list
    file: str = ""


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> YDict:
    loader.flatten_mapping(node)
    result = YDict()
    result.line = node.start_mark.line + 1
    result.file = loader.name
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise InputError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]})",
                file=loader.name, line=key_node.start_mark.line + 1,
                column=key_node.start_mark.column + 1, key=str(key))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> YList:
    result = YList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    result.file = loader.name
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path, *, default=None):
    """Load a YAML file with line info. Missing file -> InputError; empty -> default."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=str(path)) from None
    loader = _Loader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InputError(f"YAML syntax error: {exc.problem or exc.context}", file=str(path),
                         line=mark.line + 1 if mark else None,
                         column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", file=str(path)) from None
    finally:
        loader.dispose()
    return default if data is None else data


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
