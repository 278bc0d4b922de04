"""JSON helpers: the exact JSON text of a value, and the check every durable store value passes.

A leaf of the core: what must reach a database or cross a process is JSON,
and these say so early, naming the value that is not.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from .errors import NotSerializable

_CONTAINERS = (dict, list, tuple)
#: ints within this bound are written directly; longer ones go through json.dumps, which checks
#: Python's limit on the digits of an int written as text
_INT_FAST = 10**18
#: how deep containers may nest in a durable value: Python 3.11's encoder and decoder stop near
#: here (its recursion limit), and so do other JSON readers, whatever this Python could write
MAX_DEPTH = 1000
_TOO_DEEP = (
    f"it is nested too deep to be written as JSON (more than {MAX_DEPTH} levels, where Python's "
    f"own JSON encoder and other readers stop)"
)


def exact_json(value: Any) -> str:
    """``json.dumps(value)``, refusing a dict key that is not a string, at any depth.

    JSON objects have string keys: ``json.dumps`` writes the keys ``1``,
    ``1.5``, ``True`` and ``None`` as ``"1"``, ``"1.5"``, ``"true"`` and
    ``"null"``, so such a dict would come back changed after a restart.
    NaN and infinity are refused too (``json.dumps`` would write the
    non-standard tokens ``NaN`` and ``Infinity``, which PostgreSQL's ``jsonb``
    and most JSON readers refuse), and so are ints too long to write and
    containers nested too deep to write or read back.
    Raises ``TypeError`` or ``ValueError`` (never ``RecursionError``).
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValueError("it holds NaN or infinity, which standard JSON cannot carry") from None
        raise
    # Python 3.13's encoder writes what 3.11's refused: the same bound on every version. (Fewer
    # brackets in the text than the bound, even counting those inside strings: not that deep.)
    if (
        isinstance(value, _CONTAINERS)
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _deeper_than(value, MAX_DEPTH)
    ):
        raise ValueError(_TOO_DEEP)
    if isinstance(value, _CONTAINERS) and "{" in text:  # (no "{" in the text: no dict, no key)
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        read_back = next(iter(json.loads(json.dumps({key: None}))))
                        raise TypeError(
                            f"dict key {key!r} is not a string ({type(key).__name__}): JSON would "
                            f"give it back as the string {read_back!r}"
                        )
                    if isinstance(inner, _CONTAINERS):
                        stack.append(inner)
            else:
                stack.extend(inner for inner in item if isinstance(inner, _CONTAINERS))
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest in ``value`` more than ``limit`` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for inner in item.values() if isinstance(item, dict) else item:
            if isinstance(inner, _CONTAINERS):
                stack.append((inner, depth + 1))
    return False


def json_value_check(key: str, value: Any) -> str:
    """The JSON text of a store value; refuse one that cannot be written, naming the key."""
    # The common scalars first: a checkpoint per action encodes every value it wrote.
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int and -_INT_FAST < value < _INT_FAST:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    try:
        return exact_json(value)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(
            f"store value for key {key!r} is not JSON-serialisable ({exc}); durable runs keep "
            f"their store in a database, so values must be JSON: dicts with string keys, lists, "
            f"strings, numbers, booleans or None"
        ) from None
