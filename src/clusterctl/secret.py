"""A masked string type for tokens and passwords: prints as *** everywhere."""
from __future__ import annotations

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
    for s in secrets:
        v = s.reveal()
        if v:
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
