"""A masked string type for tokens and passwords: prints as *** everywhere."""
from __future__ import annotations

import re

MASK = "***"


class Secret:
    """Holds a secret value. str(), repr(), format() and JSON all show ***.

    Use `.reveal()` only at the point the value is handed to a process
    (environment of a remote command, never its argv or any log line).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = str(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def mask_text(text: str, secrets: list[Secret] | tuple[Secret, ...]) -> str:
    """Replace every revealed secret value occurring in `text` with ***."""
    return _replace_values(text, {s.reveal() for s in secrets})


def _replace_values(text: str, values) -> str:
    # longest first: a value that contains another is not left half-masked
    for v in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(v, MASK)
    return text


def to_jsonable(obj):
    """Recursively convert for json.dumps, masking Secret values."""
    if isinstance(obj, Secret):
        return MASK
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    return obj


class Masker:
    """Hides secret values that were revealed while a text was made (a rendered template).

    It knows (a) the revealed values themselves, each line of a multi-line value too, and
    (b) for each rendered line that holds a revealed value, the same line rendered with the
    value as ***. `mask` replaces (b)'s real lines by their masked form, lines that match
    their shape (the same text around the secret: an older value of the same setting in a
    diff's removed lines), and then any remaining occurrence of (a). A Masker that could
    not build a masked rendering is `opaque`: its texts are hidden whole.
    """

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lines: dict[str, str] = {}
        self._shapes: dict[str, re.Pattern[str]] = {}
        self.opaque = False
        self.count = 0          # values revealed so far (repeats included)

    def __bool__(self) -> bool:
        return bool(self._values) or self.opaque

    def add_secret(self, secret: Secret) -> None:
        self.count += 1
        value = secret.reveal()
        if not value:
            return
        self._values.add(value)
        if "\n" in value or "\r" in value:
            self._values.update(ln.strip() for ln in value.splitlines() if ln.strip())

    def add_rendering(self, real: str, masked: str) -> None:
        """Pair a text rendered with revealed values and the same text rendered with ***."""
        if real == masked:
            return
        real_lines, masked_lines = real.splitlines(), masked.splitlines()
        if len(real_lines) != len(masked_lines):
            # a value with line breaks: pair nothing; its lines are masked as values
            return
        for r, m in zip(real_lines, masked_lines):
            if r != m and MASK in m and r != m.replace(MASK, ""):  # (not an empty value)
                self._lines[r] = m
                if m not in self._shapes:
                    pattern = ".*".join(re.escape(part) for part in m.split(MASK))
                    self._shapes[m] = re.compile(pattern, re.S)

    def mask(self, text: str | None) -> str | None:
        """`text` with every revealed value (and every line shaped like one) as ***."""
        if text is None or not self:
            return text
        if self.opaque:
            return "(hidden: made with a revealed secret)"
        out = []
        for line in text.split("\n"):
            out.append(self._mask_line(line))
        return _replace_values("\n".join(out), self._values)

    def _mask_line(self, line: str) -> str:
        prefix = ""
        if line[:1] in ("+", "-", " ") and not line.startswith(("+++ ", "--- ")):
            prefix, line = line[:1], line[1:]
        if line in self._lines:
            return prefix + self._lines[line]
        for masked, shape in self._shapes.items():
            if masked.strip(MASK + " \t") == "" and prefix != "-":
                # a line that is nothing but a secret: its shape matches any line, so it
                # is applied only to a diff's removed lines (an older value)
                continue
            if shape.fullmatch(line):
                return prefix + masked
        return prefix + line
