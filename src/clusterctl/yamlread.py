"""Bounded reading of untrusted input files and YAML (layer 1, pure).

Every reader of user files goes through here, so every one is bounded the same way:

- ``read_text``: regular files only (a FIFO, a device or a folder is refused after an
  ``os.stat``, before anything is opened, and the file is opened non-blocking), at most
  ``MAX_FILE_BYTES``, UTF-8.
- ``compose``: YAML to a node graph without recursion, refusing a document nested deeper
  than ``MAX_DEPTH`` or expanding (aliases counted with their full expanded size) to more
  than ``MAX_NODES`` values, and refusing recursive aliases. Counting is linear: the size
  of an anchored node is computed once, when the node ends.
- ``Constructor``: plain Python values from such a graph, one stack frame per level of
  nesting; aliases share the constructed object (like PyYAML), merge keys (``<<``) work.

Every problem is an ``InputError`` naming file:line:column.
"""
from __future__ import annotations

import codecs
import gc
import io
import os
import re
import stat
from typing import Any, Callable

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import InputError

class paused_gc:
    """Pause the cyclic garbage collector while a large graph of objects is built: its
    passes over the growing heap make building n objects take time ~n^2 otherwise. The
    graphs built here hold no reference cycles, so nothing is left for it to collect."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()
        return False


__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "MAX_DEPTH", "read_text", "compose",
           "Constructor", "load", "yaml_error"]

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_NODES = 1_000_000
MAX_DEPTH = 200

STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
MERGE_TAG = "tag:yaml.org,2002:merge"

_BaseParser = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) \
    else yaml.SafeLoader
_SCALAR_TAGS: dict = {}


class _Parser(_BaseParser):  # type: ignore[misc,valid-type]
    """The safe loader, remembering the implicit tag of each plain scalar text (keys
    such as `ansible_host` repeat on every host)."""

    def resolve(self, kind, value, implicit):
        if kind is not ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = _SCALAR_TAGS.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_SCALAR_TAGS) > 100_000:
                _SCALAR_TAGS.clear()
            _SCALAR_TAGS[key] = tag
        return tag


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: str | os.PathLike, *, what: str = "file",
              max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` bytes (a BOM is dropped).

    Never blocks: the type is checked with os.stat before opening (a FIFO is never
    opened), the open is non-blocking and checked again with fstat."""
    shown = os.fspath(path)
    try:
        st = os.stat(shown)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", file=shown) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"cannot read {what}: it is {_file_kind(st.st_mode)}, not a regular "
                         "file", file=shown)
    if st.st_size > max_bytes:
        raise InputError(f"{what} is too large: {st.st_size} bytes (the limit is "
                         f"{max_bytes} bytes)", file=shown)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(shown, flags)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", file=shown) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise InputError(f"cannot read {what}: it is {_file_kind(st.st_mode)}, not a "
                             "regular file", file=shown)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise InputError(f"{what} is too large: more than {max_bytes} bytes",
                                 file=shown)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", file=shown) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return codecs.decode(data, "utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{what} is not UTF-8 text (byte {e.start}, line {line})",
                         file=shown) from None


def yaml_error(e: yaml.YAMLError, file: str, text: str | None = None) -> InputError:
    """A YAML error as one InputError at the position YAML reports."""
    if isinstance(e, yaml.reader.ReaderError):
        line = None
        if text is not None and isinstance(e.position, int):
            line = text.count("\n", 0, e.position) + 1
        ch = e.character
        code = ch if isinstance(ch, int) else ord(ch) if isinstance(ch, str) and \
            len(ch) == 1 else None
        shown = f"U+{code:04X}" if code is not None else "a character"
        return InputError(f"YAML error: {shown} is not allowed in YAML (a control "
                          "character or a byte that is not text)", file=file, line=line)
    if not isinstance(e, yaml.MarkedYAMLError):
        return InputError(f"YAML error: {e}", file=file)
    mark = e.problem_mark or e.context_mark
    problem = e.problem or "invalid YAML"
    if e.context:
        context = e.context
        if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
            context += f" at line {e.context_mark.line + 1}"
        problem = f"{context}{',' if problem.startswith('but ') else ':'} {problem}"
    if "'\\t'" in problem:
        problem += " (indent with spaces, not tabs)"
    return InputError(f"YAML syntax error: {problem}", file=file,
                      line=mark.line + 1 if mark else None,
                      column=mark.column + 1 if mark else None)


def compose(text: str, file: str, *, max_nodes: int = MAX_NODES,
            max_depth: int = MAX_DEPTH) -> Node | None:
    """The node graph of a single-document YAML text (None when it has no document).

    Marks of the nodes carry `file` as their name. Refuses, as an InputError: syntax
    errors, more than one document, nesting deeper than `max_depth` or an expansion to
    more than `max_nodes` values (both counted through aliases: an alias counts the whole
    expanded size of its anchor), undefined, duplicate and recursive anchors.

    libyaml's composer builds the graph (aliases are shared nodes, never expanded, and
    libyaml stops at 1000 levels); then one walk over the distinct nodes, without
    recursion, computes every node's expanded size and depth once."""
    stream = io.StringIO(text)
    stream.name = file
    parser = _Parser(stream)
    try:
        root = parser.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = {"file": file, "line": mark.line + 1 if mark else None,
                 "column": mark.column + 1 if mark else None}
        if "nesting depth" in str(e):  # libyaml's own limit, met while looking ahead
            raise InputError(f"YAML is nested too deeply (more than {max_depth} levels)",
                             **where) from None
        if "undefined alias" in str(e) and mark is not None:
            name = re.match(r"\*([^\s,\[\]{}]*)", text[mark.index:])
            raise InputError(f"undefined YAML alias *{name.group(1) if name else ''}",
                             **where) from None
        if "expected a single document" in str(e):
            raise InputError("expected a single YAML document, found another one (remove "
                             "the '---' line or the second document)", **where) from None
        raise yaml_error(_python_parser_error(text, e) or e, file, text) from None
    except RecursionError:  # only the pure-Python composer recurses
        raise InputError(f"YAML is nested too deeply (more than {max_depth} levels)",
                         file=file) from None
    finally:
        parser.dispose()
    if root is not None:
        _check_graph(root, file, max_nodes, max_depth)
    return root


def _check_graph(root: Node, file: str, max_nodes: int, max_depth: int) -> None:
    """Expanded size and depth of every container, each computed once (post-order,
    explicit stack); scalars count 1 and are never pushed."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    scalar = ScalarNode

    def fail(node: Node, message: str) -> InputError:
        m = node.start_mark
        return InputError(message, file=file, line=m.line + 1, column=m.column + 1)

    def kids(node: Node) -> list:
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return node.value

    if isinstance(root, scalar):
        return
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            total, levels, big = 1, 0, None
            for k in kids(node):
                if type(k) is scalar:
                    total += 1
                    continue
                kid = id(k)
                total += size[kid]
                if depth[kid] > levels:
                    levels = depth[kid]
                if big is None or size[kid] > size[id(big)]:
                    big = k
            levels += 1
            if total > max_nodes:
                detail = ""
                if big is not None:
                    detail = (f": it repeats the {size[id(big)]:,} values of the anchor at line "
                              f"{big.start_mark.line + 1}")
                raise fail(node, f"YAML value expands to more than {max_nodes:,} values "
                                 f"through aliases{detail}; refused (is this an alias bomb?)")
            if levels > max_depth:
                raise fail(node, f"YAML is nested too deeply (more than {max_depth} levels)")
            size[nid], depth[nid] = total, levels
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise fail(node, f"recursive YAML alias: the value at line "
                             f"{node.start_mark.line + 1} contains itself")
        on_path.add(nid)
        stack.append((node, True))
        for k in kids(node):
            if type(k) is not scalar and id(k) not in size:
                stack.append((k, False))


def _python_parser_error(text: str, error: yaml.YAMLError) -> yaml.YAMLError | None:
    """PyYAML's own parser's error for `text` (its messages say more than libyaml's:
    which character, tabs), if it finds one no later than libyaml's; else None. Reads
    only up to a little past libyaml's error, so its cost stays bounded."""
    if _BaseParser is yaml.SafeLoader:
        return None
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return None
    end = text.find("\n", mark.index + 1)
    head = text[:end + 1] if end >= 0 else text
    if len(head) > 1 << 20:
        return None
    parser = yaml.SafeLoader(head)
    try:
        while parser.check_event():
            parser.get_event()
    except yaml.YAMLError as e:
        own = getattr(e, "problem_mark", None)
        if own is not None and own.line <= mark.line:
            return e
    finally:
        parser.dispose()
    return None


_MISSING = object()


class NodeError(InputError):
    """A value that cannot be built; `.problem` is the message without the position."""

    def __init__(self, problem: str, **where):
        super().__init__(problem, **where)
        self.problem = problem


def node_from_value(value: Any, file: str, line: int = -1, column: int = -1) -> Node:
    """A node graph for a plain Python value (from the command line, an INI file...), so
    it can be checked like YAML. Numbers keep their text; marks point at (file, line,
    column), line -1 meaning none. Shared containers become shared nodes."""
    mark = Mark(file, 0, line, column, None, None)
    made: dict[int, Node] = {}

    def scalar(tag: str, text: str) -> ScalarNode:
        return ScalarNode(f"tag:yaml.org,2002:{tag}", text, mark, mark)

    def make(v: Any, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise InputError(f"value is nested too deeply (more than {MAX_DEPTH} levels)",
                             file=file, line=line + 1 if line >= 0 else None)
        if id(v) in made:
            return made[id(v)]
        if isinstance(v, dict):
            node: Node = MappingNode(MAP_TAG, [], mark, mark)
            made[id(v)] = node
            node.value.extend((make(k, depth + 1), make(x, depth + 1)) for k, x in v.items())
            return node
        if isinstance(v, (list, tuple, set, frozenset)):
            node = SequenceNode(SEQ_TAG, [], mark, mark)
            made[id(v)] = node
            node.value.extend(make(x, depth + 1) for x in v)
            return node
        if v is None:
            return scalar("null", "null")
        if isinstance(v, bool):
            return scalar("bool", "true" if v else "false")
        if isinstance(v, int):
            return scalar("int", str(v))
        if isinstance(v, float):
            return scalar("float", repr(v))
        if isinstance(v, NumberText):
            return scalar(v.tag, str(v))
        return scalar("str", str(v))

    return make(value, 0)


class NumberText(str):
    """A number kept as written (`2.60`, `22`) with the YAML tag it resolves to."""

    tag = "str"

    def __new__(cls, text: str, tag: str):
        obj = super().__new__(cls, text)
        obj.tag = tag
        return obj


class Constructor:
    """Plain Python values from a node graph made by `compose` (so bounded and acyclic).

    Scalars use PyYAML's safe constructors (int, float, bool, null, timestamp, binary,
    str); mappings and sequences of the standard tags become dicts and lists (override
    `mapping`/`sequence` for other types); any other tag is refused. Each node is built
    once: aliases share the object. A duplicate key is an error, or with
    ``duplicates="first"`` the first one is kept (for callers that report them
    themselves)."""

    def __init__(self, *, duplicates: str = "error"):
        self.duplicates = duplicates
        self._scalars = SafeConstructor()
        self._built: dict[int, Any] = {}

    # hooks
    def mapping(self, node: MappingNode, items: list[tuple[Any, Any, Node]]) -> Any:
        return {k: v for k, v, _ in items}

    def sequence(self, node: SequenceNode, items: list[Any]) -> Any:
        return items

    @staticmethod
    def fail(node: Node, message: str, key: str | None = None) -> "NodeError":
        m = node.start_mark
        if m.line < 0:
            return NodeError(message, file=m.name, key=key)
        return NodeError(message, file=m.name, line=m.line + 1, column=m.column + 1, key=key)

    def scalar(self, node: ScalarNode) -> Any:
        try:
            return self._scalars.construct_object(node)
        except ConstructorError as e:
            problem = e.problem or "cannot read this value"
            if "constructor for the tag" in problem:
                problem = f"unsupported YAML tag {node.tag!r}"
            raise self.fail(node, problem) from None
        except (ValueError, OverflowError, TypeError):
            raise self.fail(node, f"not a valid {node.tag.rsplit(':', 1)[-1]} value "
                                  f"(tag {node.tag!r})") from None

    def build(self, node: Node) -> Any:
        """The value of `node`; InputError for what cannot be built."""
        try:
            return self._build(node)
        except RecursionError:
            raise self.fail(node, "value is nested too deeply (through aliases)") from None

    def _build(self, node: Node) -> Any:
        done = self._built.get(id(node), _MISSING)
        if done is not _MISSING:
            return done
        if isinstance(node, ScalarNode):
            value = self.scalar(node)
        elif isinstance(node, SequenceNode):
            if node.tag != SEQ_TAG:
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            value = self.sequence(node, [self._build(child) for child in node.value])
        elif isinstance(node, MappingNode):
            if node.tag != MAP_TAG:
                raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
            value = self.mapping(node, self._items(node))
        else:  # pragma: no cover - compose makes only these three
            raise self.fail(node, "unknown YAML node")
        self._built[id(node)] = value
        return value

    def _key(self, knode: Node) -> Any:
        key = self._build(knode)
        try:
            hash(key)
        except TypeError:
            raise self.fail(knode, "a mapping key must be a plain value (text, number), "
                                   "not a list or mapping") from None
        return key

    def _items(self, node: MappingNode) -> list[tuple[Any, Any, Node]]:
        merged: dict[Any, tuple[Any, Node]] = {}
        own: dict[Any, tuple[Any, Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == MERGE_TAG:
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    if not isinstance(src, MappingNode):
                        raise self.fail(src, "'<<' merge expects a mapping or a list of "
                                             "mappings")
                    key_nodes: dict = {}
                    for kn, _ in src.value:
                        if kn.tag != MERGE_TAG:
                            built_key = self._build(kn)
                            if getattr(built_key, "__hash__", None) is not None:
                                key_nodes.setdefault(built_key, kn)
                    for k, v in self._build(src).items():
                        merged.setdefault(k, (v, key_nodes.get(k, src)))
                continue
            key = self._key(knode)
            if key in own:
                if self.duplicates == "first":
                    continue
                first = own[key][1].start_mark.line + 1
                raise self.fail(knode, f"duplicate key {key!r} (first at line {first})",
                                key=str(key))
            own[key] = (self._build(vnode), knode)
        items = [(k, v, kn) for k, (v, kn) in merged.items() if k not in own]
        items.extend((k, v, kn) for k, (v, kn) in own.items())
        return items


def load(path: str | os.PathLike, *, what: str = "file", default: Any = None,
         constructor: Callable[[], Constructor] | None = None) -> Any:
    """read_text + compose + construct: the value of a YAML file (`default` if empty)."""
    shown = os.fspath(path)
    with paused_gc():
        root = compose(read_text(shown, what=what), shown)
        if root is None:
            return default
        value = (constructor or Constructor)().build(root)
    return default if value is None else value
