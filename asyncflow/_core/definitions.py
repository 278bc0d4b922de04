"""Serializable definitions: references to actions, the action registry, workflow JSON.

A durable run must be able to re-create every action it runs, in another
process, after a crash. An action is referenced by

- a registered name (:class:`Registry`: a name maps to an action or to a
  factory called with JSON parameters), or
- an import path ``package.module:attr``: a module-level ``@af.action``
  function needs nothing more; an :class:`~asyncflow.Action` subclass is
  re-created from the constructor arguments it was built with (captured
  automatically; they must be JSON values).

Anything else (a closure, an action made inside a function) is rejected when
it is added to a durable run, with an error that says how to fix it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from ..backoff import Exponential, Fixed
from .actions import Action, FunctionAction, constructor_arguments
from .errors import InvalidDefinition, NotReferenceable, UnknownReference
from .jsonvalues import exact_json
from .retry import Retry
from .workflow import Stage, Workflow

DEFINITION_VERSION = 1

ActionRef = dict[str, Any]


ActionFactory = Callable[..., Action]


class Registry:
    """Names for actions and action factories, for definitions and durable runs.

    ::

        registry = af.Registry()
        registry.register(greet)                      # an action, under its name
        registry.register("resize", Resize)           # a factory: Resize(**params)

    Lookups go through this registry, its ``parent``, and last the global
    :data:`asyncflow.registry`.
    """

    def __init__(self, *, parent: Registry | None = None) -> None:
        self._factories: dict[str, ActionFactory] = {}
        self._instances: dict[str, Action] = {}
        self._names_of_instances: dict[int, str] = {}
        self._names_of_classes: dict[type[Action], str] = {}
        self._parent = parent

    def register(self, name_or_action: str | Action, target: Action | ActionFactory | None = None) -> None:
        """Register an action under a name, or a factory (an Action subclass, or a callable).

        ``register(action)`` uses the action's own name; ``register("name", action_or_factory)``
        a given one. A name already taken by something else is an error.
        """
        if isinstance(name_or_action, Action):
            if target is not None:
                raise TypeError("register(action) takes no second argument")
            name, target = name_or_action.name, name_or_action
        elif isinstance(name_or_action, str) and name_or_action:
            name = name_or_action
        else:
            raise TypeError(f"register takes a name (str) or an af.Action, got {name_or_action!r}")
        if ":" in name:
            raise InvalidDefinition(
                f"registry name {name!r} must not contain ':' (that marks an import path)"
            )
        existing = self._instances.get(name) or self._factories.get(name)
        if existing is not None and existing is not target:
            raise InvalidDefinition(f"registry name {name!r} is already registered to {existing!r}")
        if isinstance(target, Action):
            self._instances[name] = target
            self._names_of_instances[id(target)] = name
        elif isinstance(target, type) and issubclass(target, Action):
            self._factories[name] = cast(ActionFactory, target)
            self._names_of_classes[target] = name
        elif callable(target):
            self._factories[name] = cast(ActionFactory, target)
        else:
            raise TypeError(f"register needs an af.Action, an Action subclass or a factory, got {target!r}")

    def _lineage(self) -> list[Registry]:
        """This registry, its parents, and last the global one."""
        chain: list[Registry] = []
        current: Registry | None = self
        while current is not None and current not in chain:
            chain.append(current)
            current = current._parent
        if registry not in chain:
            chain.append(registry)
        return chain

    def _name_of(self, action: Action) -> tuple[str, bool] | None:
        """(name, is_factory) under which ``action`` (or its class) is registered here or above."""
        for current in self._lineage():
            name = current._names_of_instances.get(id(action))
            if name is not None:
                return name, False
            name = current._names_of_classes.get(type(action))
            if name is not None:
                return name, True
        return None

    def _lookup(self, name: str) -> Action | ActionFactory | None:
        for current in self._lineage():
            found = current._instances.get(name) or current._factories.get(name)
            if found is not None:
                return found
        return None

    # ---- references ---------------------------------------------------------

    def reference(self, action: Action, *, where: str = "") -> ActionRef:
        """A JSON reference that :meth:`resolve` turns back into an equivalent action.

        Raises:
            NotReferenceable: the action cannot be re-created; the message says how to fix it.
        """
        registered = self._name_of(action)
        if registered is not None:
            name, is_factory = registered
            return _with_params({"ref": name}, action, where) if is_factory else {"ref": name}
        if isinstance(action, FunctionAction):
            path = _import_path(action.fn)
            if path is None or _resolve_path(path) is not action:
                raise _not_referenceable(
                    action, where, "it is not a module-level @af.action function that can be imported"
                )
            return {"ref": path}
        path = _import_path(type(action))
        if path is None or _resolve_path(path) is not type(action):
            raise _not_referenceable(
                action, where, f"its class {type(action).__qualname__} cannot be imported"
            )
        return _with_params({"ref": path}, action, where)

    def resolve(self, ref: ActionRef, *, where: str = "") -> Action:
        """The action that ``ref`` (from :meth:`reference` or a definition) names.

        Raises:
            UnknownReference: nothing is registered or importable under that name.
            InvalidDefinition: the reference is malformed or its parameters do not fit.
        """
        if not isinstance(ref, Mapping) or not isinstance(ref.get("ref"), str):
            raise InvalidDefinition(f"action reference {ref!r}{_at(where)} needs a 'ref' string")
        name = ref["ref"]
        args = ref.get("args", [])
        kwargs = ref.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, Mapping):
            raise InvalidDefinition(
                f"action reference {name!r}{_at(where)}: 'args' must be a list, 'kwargs' an object"
            )
        target: Any = self._lookup(name)
        if target is None and ":" in name:
            try:
                target = _resolve_path(name, strict=True)
            except (ImportError, AttributeError) as exc:
                raise UnknownReference(
                    f"action reference {name!r}{_at(where)} cannot be imported: {exc}"
                ) from None
        if target is None:
            raise UnknownReference(
                f"no action is registered as {name!r}{_at(where)}; register it with "
                f"af.registry.register({name!r}, ...) or use an import path 'package.module:attr'"
            )
        if isinstance(target, Action):
            if args or kwargs:
                raise InvalidDefinition(f"action {name!r}{_at(where)} is an instance; it takes no parameters")
            return target
        if not callable(target):
            raise InvalidDefinition(f"{name!r}{_at(where)} is not an action, an Action subclass or a factory")
        try:
            made = target(*args, **kwargs)
        except TypeError as exc:
            raise InvalidDefinition(
                f"action {name!r}{_at(where)} cannot be made from its parameters: {exc}"
            ) from exc
        if not isinstance(made, Action):
            raise InvalidDefinition(f"factory {name!r}{_at(where)} returned {made!r}, not an af.Action")
        return made

    # ---- stages and workflows ------------------------------------------------

    def stage_definition(self, stage: Stage, *, where: str = "") -> dict[str, Any]:
        """A JSON definition of ``stage`` (its actions as references)."""
        place = where or f"stage {stage.id!r}"
        if stage.middleware or stage.action_middleware:
            raise NotReferenceable(
                f"{place} has middleware (Stage.use / use_action), which a definition cannot carry; "
                f"register middleware on the engine's runner or the workflow instead"
            )
        defn: dict[str, Any] = {
            "id": stage.id,
            "name": stage.name,
            "description": stage.description,
            "tags": sorted(stage.tags),
            "concurrency": stage.concurrency,
            "initial": _json_checked(stage.initial, f"initial data of {place}"),
            "timeout": stage.timeout,
            "retry": _retry_definition(stage.retry, place),
            "actions": [
                self.reference(action, where=f"action {index} of {place}")
                for index, action in enumerate(stage.actions)
            ],
        }
        if stage.isolation is not None:
            defn["isolation"] = stage.isolation
        return defn

    def stage_from_definition(self, defn: Mapping[str, Any], *, where: str = "") -> Stage:
        """The :class:`~asyncflow.Stage` a :meth:`stage_definition` describes."""
        if not isinstance(defn, Mapping) or not isinstance(defn.get("id"), str):
            raise InvalidDefinition(f"stage definition{_at(where)} needs an 'id' string, got {defn!r}")
        place = where or f"stage {defn['id']!r}"
        actions = defn.get("actions", [])
        if not isinstance(actions, list):
            raise InvalidDefinition(f"'actions' of {place} must be a list")
        retry = _retry_from_definition(defn.get("retry"), place)
        try:
            return Stage(
                defn["id"],
                name=defn.get("name"),
                description=defn.get("description", ""),
                tags=defn.get("tags") or (),
                actions=[self.resolve(ref, where=f"action {i} of {place}") for i, ref in enumerate(actions)],
                initial=defn.get("initial") or None,
                concurrency=defn.get("concurrency", 1),
                timeout=defn.get("timeout"),
                retry=retry,
                isolation=defn.get("isolation"),
            )
        except InvalidDefinition:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidDefinition(f"definition of {place} is malformed: {exc}") from None

    def workflow_definition(self, workflow: Workflow) -> dict[str, Any]:
        """A JSON definition of ``workflow``."""
        return {
            "asyncflow": DEFINITION_VERSION,
            "id": workflow.id,
            "name": workflow.name,
            "description": workflow.description,
            "tags": sorted(workflow.tags),
            "stages": [
                self.stage_definition(stage, where=f"stage {stage.id!r} of workflow {workflow.id!r}")
                for stage in workflow.stages
            ],
        }

    def workflow_from_definition(self, defn: Mapping[str, Any]) -> Workflow:
        """The :class:`~asyncflow.Workflow` a :meth:`workflow_definition` describes."""
        if not isinstance(defn, Mapping):
            raise InvalidDefinition(f"a workflow definition must be a JSON object, got {defn!r}")
        version = defn.get("asyncflow", DEFINITION_VERSION)
        if version != DEFINITION_VERSION:
            raise InvalidDefinition(
                f"workflow definition version {version!r} is not supported (this asyncflow reads "
                f"version {DEFINITION_VERSION})"
            )
        if not isinstance(defn.get("id"), str):
            raise InvalidDefinition(f"a workflow definition needs an 'id' string, got {defn.get('id')!r}")
        stages = defn.get("stages", [])
        if not isinstance(stages, list):
            raise InvalidDefinition(f"'stages' of workflow {defn['id']!r} must be a list")
        return Workflow(
            defn["id"],
            name=defn.get("name"),
            description=defn.get("description", ""),
            tags=defn.get("tags") or (),
            stages=[
                self.stage_from_definition(s, where=f"stage {_stage_name(s, i)} of workflow {defn['id']!r}")
                for i, s in enumerate(stages)
            ],
        )


#: The global registry: engines fall back on it.
registry = Registry()


def _stage_name(defn: Any, index: int) -> str:
    """``'id'`` of a stage definition, or its position when it has no usable id."""
    stage_id = defn.get("id") if isinstance(defn, Mapping) else None
    return repr(stage_id) if isinstance(stage_id, str) else f"#{index}"


def _at(where: str) -> str:
    return f" ({where})" if where else ""


def _import_path(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return f"{module}:{qualname}"


def _resolve_path(path: str, *, strict: bool = False) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        if strict:
            raise
        return None
    # A decorated module-level function is bound to its FunctionAction under the same name.
    return target


def _not_referenceable(action: Action, where: str, why: str) -> NotReferenceable:
    return NotReferenceable(
        f"action {action.name!r}{_at(where)} cannot be re-created for a durable run: {why}. "
        f"Define it at module level (an @af.action function, or an af.Action subclass whose "
        f"constructor arguments are JSON values), or register it with "
        f"af.registry.register({action.name!r}, ...)"
    )


def _with_params(ref: ActionRef, action: Action, where: str) -> ActionRef:
    captured = constructor_arguments(action)
    if captured is None:
        return ref
    args, kwargs = captured
    try:
        exact_json([args, kwargs])
    except (TypeError, ValueError):
        raise _argument_not_json(action, where, args, kwargs) from None
    if args:
        ref["args"] = list(args)
    if kwargs:
        ref["kwargs"] = dict(kwargs)
    return ref


def _argument_not_json(action: Action, where: str, args: Any, kwargs: Any) -> NotReferenceable:
    """The error for an action made with a constructor argument that is not JSON: it names the argument.

    (Not "define it at module level": the class may well be there; the argument is what a
    durable run cannot write down.)
    """
    named = [(f"argument #{i + 1} ({value!r})", value) for i, value in enumerate(args)]
    named += [(f"argument {name}={value!r}", value) for name, value in kwargs.items()]
    culprit = "one of them"
    for label, value in named:
        try:
            exact_json(value)
        except (TypeError, ValueError) as exc:
            culprit = f"{label} is not ({exc})"
            break
    return NotReferenceable(
        f"action {action.name!r}{_at(where)} cannot be re-created for a durable run: the constructor "
        f"arguments of {type(action).__qualname__}(...) must be JSON values, and {culprit}. A durable "
        f"run writes its actions down as their class and JSON arguments: pass a JSON value (a str for "
        f"a Decimal, say) and convert it in the constructor"
    )


def _json_checked(value: Any, what: str) -> Any:
    try:
        exact_json(value)
    except (TypeError, ValueError) as exc:
        raise NotReferenceable(f"{what} is not JSON-serialisable ({exc})") from None
    return value


def _retry_definition(retry: Retry | None, place: str) -> dict[str, Any] | None:
    if retry is None:
        return None
    backoff = retry.backoff
    if isinstance(backoff, Fixed):
        back: dict[str, Any] = {"fixed": backoff.delay}
    elif isinstance(backoff, Exponential):
        back = {
            "exponential": backoff.base,
            "maximum": backoff.maximum,
            "factor": backoff.factor,
            "jitter": backoff.jitter,
        }
    else:
        raise NotReferenceable(f"the retry back-off of {place} is not backoff.fixed or backoff.exponential")
    retry_on = retry.retry_on
    kinds = (retry_on,) if isinstance(retry_on, type) else retry_on
    if not isinstance(kinds, tuple):
        raise NotReferenceable(f"the retry_on predicate of {place} cannot be written into a definition")
    paths = [_import_path(kind) for kind in kinds]
    if any(path is None for path in paths):
        raise NotReferenceable(f"a retry_on exception type of {place} cannot be imported")
    return {"attempts": retry.attempts, "backoff": back, "retry_on": paths}


def _retry_from_definition(defn: Any, place: str) -> Retry | None:
    if defn is None:
        return None
    if not isinstance(defn, Mapping):
        raise InvalidDefinition(f"'retry' of {place} must be an object, got {defn!r}")
    back = defn.get("backoff") or {"exponential": 0.1}
    try:
        backoff: Fixed | Exponential
        if not isinstance(back, Mapping):
            raise TypeError(f"it must be an object, got {back!r}")
        if "fixed" in back:
            backoff = Fixed(back["fixed"])
        elif "exponential" in back:
            backoff = Exponential(
                back["exponential"],
                maximum=back.get("maximum", 30.0),
                factor=back.get("factor", 2.0),
                jitter=back.get("jitter", False),
            )
        else:
            raise TypeError(f"it needs a 'fixed' or an 'exponential' delay, got {dict(back)!r}")
    except (TypeError, ValueError) as exc:
        raise InvalidDefinition(f"the retry back-off of {place} is malformed: {exc}") from None
    kinds = []
    for path in defn.get("retry_on", []):
        try:
            kind = _resolve_path(path, strict=True)
        except (ImportError, AttributeError, TypeError) as exc:
            raise InvalidDefinition(f"retry_on type {path!r} of {place} cannot be imported: {exc}") from None
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise InvalidDefinition(f"retry_on type {path!r} of {place} is not an exception class")
        kinds.append(kind)
    try:
        return Retry(attempts=defn.get("attempts", 3), backoff=backoff, retry_on=tuple(kinds) or (Exception,))
    except (TypeError, ValueError) as exc:
        raise InvalidDefinition(f"the retry of {place} is malformed: {exc}") from None
