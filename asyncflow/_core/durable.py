"""The seam between the runner and durable persistence.

A durable run carries a :class:`Durability`: the runner asks it whether a
step already completed before a restart (then the step is not run again, and
the plan changes it made are replayed), and hands it every checkpoint: a
stage that started, an action that completed (its store changes and plan
changes), a failed attempt that will be retried, a durable sleep. The engine
implements it on top of a backend; the runner knows nothing of databases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

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
