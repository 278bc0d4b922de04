"""Definitions a user builds: :class:`Workflow` (ordered stages) and :class:`Stage` (ordered actions).

Definitions are never changed by running them: each run copies what it needs
into its own :class:`~asyncflow.Plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from .actions import Action, check_id, freeze_tags
from .errors import InvalidDefinition
from .middleware import Middleware, check_middleware
from .retry import Retry, check_retry, check_timeout

if TYPE_CHECKING:
    from .definitions import Registry

#: Where a stage's actions may run: ``"process"``, a child Python process of their own.
Isolation = Literal["process"]
ISOLATIONS = frozenset({"process"})


def _check_action(value: object, where: str) -> Action:
    if not isinstance(value, Action):
        hint = ""
        if callable(value):
            hint = " (decorate the function with @af.action)"
        raise TypeError(f"{where} must be an af.Action, got {value!r}{hint}")
    check_action_name(value, where)
    return value


def check_action_name(action: Action, where: str) -> None:
    """Refuse ``action`` if its name, which may be set on the instance, is not a usable id."""
    name = action.name
    if type(name) is not str or not name.isascii():
        check_id(name, f"action name (of {where})")


class Stage:
    """An ordered list of actions, run one after another (or ``concurrency`` at once).

    Args:
        id: unique within its workflow (and within a run's plan).
        name: for display; defaults to ``id``.
        description: free text.
        tags: strings for finding and enabling/disabling the stage by tag.
        actions: the actions, in order.
        initial: merged into the run's store (overwriting) when the stage starts.
        concurrency: how many actions of this stage may run at once (default 1).
        retry: default :class:`~asyncflow.Retry` for its actions (an action's own wins).
        timeout: default limit per attempt for its actions, in seconds or a
            ``timedelta`` (an action's own wins).
        isolation: ``"process"`` runs the stage's actions (and the actions they
            insert) in a child Python process, rebuilt from their references as
            durable runs do; ``None`` (the default) runs them in this process.
            See :class:`~asyncflow.ProcessPool`.

    Raises:
        TypeError: an argument has the wrong type (a non-Action in ``actions``...).
        InvalidDefinition: an id is empty, ``concurrency`` is below 1, or
            ``isolation`` is not a known value.
        NotReferenceable: the stage is isolated and an action cannot be
            re-created in a child process (a closure, a lambda...).
    """

    __slots__ = (
        "_action_middleware",
        "_actions",
        "_middleware",
        "concurrency",
        "description",
        "id",
        "initial",
        "isolation",
        "name",
        "retry",
        "tags",
        "timeout",
    )

    def __init__(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str = "",
        tags: Iterable[str] | None = None,
        actions: Iterable[Action] | None = None,
        initial: Mapping[str, Any] | None = None,
        concurrency: int = 1,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        self.id = check_id(id, "stage id")
        self.name = check_id(name, f"name of stage {id!r}") if name is not None else id
        self.description = description
        self.tags = freeze_tags(tags, f"stage {id!r}")
        if initial is not None and not isinstance(initial, Mapping):
            raise TypeError(f"initial of stage {id!r} must be a mapping, got {initial!r}")
        self.initial: dict[str, Any] = dict(initial) if initial else {}
        for key in self.initial:
            if not isinstance(key, str):
                raise TypeError(f"initial of stage {id!r} has a non-string key {key!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency of stage {id!r} must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise InvalidDefinition(f"concurrency of stage {id!r} must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.retry = check_retry(retry, f"stage {id!r}")
        self.timeout = check_timeout(timeout, f"stage {id!r}")
        # Tuples: most stages have no middleware, and an empty tuple costs nothing
        # (a run that inserts 10,000 stages would otherwise make 20,000 lists).
        self._middleware: tuple[Middleware, ...] = ()
        self._action_middleware: tuple[Middleware, ...] = ()
        if isolation is not None and isolation not in ISOLATIONS:
            raise InvalidDefinition(
                f"isolation of stage {id!r} must be one of {sorted(ISOLATIONS)!r} or None, got {isolation!r}"
            )
        self.isolation: Isolation | None = isolation
        self._actions: list[Action] = []
        if actions is not None:
            if isinstance(actions, Action):
                raise TypeError(f"actions of stage {id!r} must be a list of actions, not one action")
            for index, act in enumerate(actions):
                where = f"actions[{index}] of stage {id!r}"
                self._actions.append(self._checked(_check_action(act, where), where))

    def _checked(self, action: Action, where: str) -> Action:
        """``action``, refused if this stage is isolated and a child process could not re-create it."""
        if self.isolation is not None:
            # The child rebuilds each action from its reference: refuse what it cannot, now.
            from .definitions import registry

            registry.reference(action, where=f"{where}, isolated in a child process")
        return action

    @property
    def actions(self) -> tuple[Action, ...]:
        """The stage's actions, in order."""
        return tuple(self._actions)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware around this stage's block of actions (``use``), outermost first."""
        return self._middleware

    @property
    def action_middleware(self) -> tuple[Middleware, ...]:
        """The middleware around each action of this stage (``use_action``), outermost first."""
        return self._action_middleware

    def add_action(self, action: Action) -> Stage:
        """Append ``action`` to the stage and return the stage (for chaining)."""
        where = f"action added to stage {self.id!r}"
        self._actions.append(self._checked(_check_action(action, where), where))
        return self

    def use(self, middleware: Middleware) -> Stage:
        """Wrap the block of this stage's actions in ``middleware``; return the stage."""
        self._middleware += (check_middleware(middleware, f"stage {self.id!r}"),)
        return self

    def use_action(self, middleware: Middleware) -> Stage:
        """Wrap each action of this stage (dynamic ones too) in ``middleware``; return the stage."""
        self._action_middleware += (check_middleware(middleware, f"actions of stage {self.id!r}"),)
        return self

    def __repr__(self) -> str:
        return f"<Stage {self.id!r} actions={[a.name for a in self._actions]}>"


class Workflow:
    """An ordered list of stages with unique ids.

    Raises:
        TypeError: something in ``stages`` is not a :class:`Stage`.
        InvalidDefinition: the id is empty, or two stages share an id.
    """

    __slots__ = ("_action_middleware", "_middleware", "_stages", "description", "id", "name", "tags")

    def __init__(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str = "",
        tags: Iterable[str] | None = None,
        stages: Iterable[Stage] | None = None,
    ) -> None:
        self.id = check_id(id, "workflow id")
        self.name = check_id(name, f"name of workflow {id!r}") if name is not None else id
        self.description = description
        self.tags = freeze_tags(tags, f"workflow {id!r}")
        self._stages: list[Stage] = []
        self._middleware: tuple[Middleware, ...] = ()
        self._action_middleware: tuple[Middleware, ...] = ()
        for stage in stages or ():
            self.add_stage(stage)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The workflow's stages, in order."""
        return tuple(self._stages)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware around each stage of this workflow (``use``), outermost first."""
        return self._middleware

    @property
    def action_middleware(self) -> tuple[Middleware, ...]:
        """The middleware around each action of this workflow (``use_action``), outermost first."""
        return self._action_middleware

    def add_stage(self, stage: Stage) -> Workflow:
        """Append ``stage`` and return the workflow (for chaining).

        Raises:
            InvalidDefinition: a stage with the same id is already in the workflow.
        """
        if not isinstance(stage, Stage):
            raise TypeError(f"workflow {self.id!r} takes af.Stage objects, got {stage!r}")
        for existing in self._stages:
            if existing.id == stage.id:
                raise InvalidDefinition(f"workflow {self.id!r} already has a stage with id {stage.id!r}")
        self._stages.append(stage)
        return self

    def use(self, middleware: Middleware) -> Workflow:
        """Wrap each stage of this workflow (dynamic ones too) in ``middleware``; return the workflow."""
        self._middleware += (check_middleware(middleware, f"stages of workflow {self.id!r}"),)
        return self

    def use_action(self, middleware: Middleware) -> Workflow:
        """Wrap each action of this workflow (dynamic ones too) in ``middleware``; return the workflow."""
        self._action_middleware += (check_middleware(middleware, f"actions of workflow {self.id!r}"),)
        return self

    def to_definition(self, *, registry: Registry | None = None) -> dict[str, Any]:
        """This workflow as a JSON-serialisable definition (actions as references).

        Raises:
            NotReferenceable: an action cannot be re-created from a reference;
                the message names it and says how to fix it.
        """
        from .definitions import registry as default_registry

        return (registry or default_registry).workflow_definition(self)

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any], *, registry: Registry | None = None) -> Workflow:
        """The workflow a :meth:`to_definition` describes, its actions resolved through ``registry``.

        Raises:
            InvalidDefinition: the definition is malformed or names an unknown action.
        """
        from .definitions import registry as default_registry

        return (registry or default_registry).workflow_from_definition(definition)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of this definition: stages in order, each a subgraph of its actions."""
        from .mermaid import workflow_to_mermaid

        return workflow_to_mermaid(self)

    def __repr__(self) -> str:
        return f"<Workflow {self.id!r} stages={[s.id for s in self._stages]}>"


def with_middleware_of(source: Workflow, workflow: Workflow) -> Workflow:
    """``workflow`` wrapped in the middleware of ``source``; return ``workflow``.

    A run that started on an older version of a workflow goes on on that
    version's stages, re-created from the database, inside the middleware of
    the workflow registered now (definitions do not hold middleware).
    """
    workflow._middleware = source._middleware
    workflow._action_middleware = source._action_middleware
    return workflow
