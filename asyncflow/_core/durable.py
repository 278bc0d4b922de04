"""The seam between the runner and durable persistence.

A durable run carries a :class:`Durability`: the runner asks it whether a
step already completed before a restart (then the step is not run again, and
the plan changes it made are replayed), and hands it every checkpoint: a
stage that started, an action that completed (its store changes and plan
changes), a failed attempt that will be retried, a durable sleep. The engine
implements it on top of a backend; the runner knows nothing of databases.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from .errors import NotSerializable

if TYPE_CHECKING:
    from .actions import Action
    from .plan import ActionNode, StageNode
    from .store import Store
    from .workflow import Stage

Op = dict[str, Any]


class Durability(ABC):
    """What a durable run asks of its engine (internal)."""

    #: the data given to ``engine.resume``, for the step that suspended
    resume_data: Any = None
    #: the key of the step that suspended the run, when it is being resumed
    resume_step: str | None = None
    #: the key of the step that suspended the run in this execution (set by the runner)
    suspended_key: str | None = None

    @abstractmethod
    def completed(self, node: ActionNode) -> list[Op] | None:
        """The plan changes of ``node`` if it completed before a restart, else ``None``."""

    @abstractmethod
    def stage_started(self, node: StageNode) -> bool:
        """Whether ``node`` started (its initial data merged) before a restart."""

    @abstractmethod
    async def commit_stage(self, node: StageNode, initial: dict[str, Any]) -> None:
        """Record that ``node`` started, with the initial data merged into the store."""

    @abstractmethod
    async def commit_action(self, node: ActionNode, overlay: Store | None, ops: list[Op] | None) -> None:
        """Record that ``node`` completed, with its store changes and plan changes, in one transaction."""

    @abstractmethod
    async def commit_attempt(self, node: ActionNode, attempts: int, retry_at: float) -> None:
        """Record that attempt ``attempts`` of ``node`` failed and the next is due at ``retry_at``."""

    @abstractmethod
    def retry_state(self, node: ActionNode) -> tuple[int, float] | None:
        """``(attempts made, next attempt due at)`` of ``node`` from before a restart."""

    @abstractmethod
    async def begin_sleep(self, node: ActionNode, seconds: float) -> float:
        """Record a durable sleep of ``node`` (once) and return when it wakes."""

    @abstractmethod
    def reference(self, action: Action, where: str) -> dict[str, Any]:
        """A reference that re-creates ``action`` (raises NotReferenceable)."""

    @abstractmethod
    def stage_definition(self, stage: Stage, where: str) -> dict[str, Any]:
        """A definition that re-creates ``stage`` (raises NotReferenceable)."""

    @abstractmethod
    def resolve(self, ref: dict[str, Any], where: str) -> Action:
        """The action a reference names."""

    @abstractmethod
    def stage_from_definition(self, definition: dict[str, Any], where: str) -> Stage:
        """The stage a definition describes."""


_CONTAINERS = (dict, list, tuple)
#: ints within this bound are written directly; longer ones go through json.dumps, which checks
#: Python's limit on the digits of an int written as text
_INT_FAST = 10**18


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
        raise ValueError(
            "it is nested too deep to be written as JSON (Python's recursion limit is "
            f"{sys.getrecursionlimit()})"
        ) from None
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValueError("it holds NaN or infinity, which standard JSON cannot carry") from None
        raise
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
