"""Versions of a workflow: what a run's checkpoints refer to, and how two versions compare.

A checkpoint names a step by its place in the plan (``stage/2``). A run
records the version of its workflow it started on, so that an engine whose
workflow of that id changed since can tell whether each place still holds
the same action. The shape of a version lists, for each stage, the actions
in their places, each as its name, with the constructor arguments it was
made with (``[name, args, kwargs]``) when it has any: what tells two actions
of one class apart, the same whatever registry names them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
from loguru import logger

from ..backends.base import Backend, RunInfo, SavedRun, WorkflowVersion, shape_key
from .actions import Action, FunctionAction, constructor_arguments
from .clock import Clock
from .definitions import Registry
from .jsonvalues import exact_json
from .serial import JSON_CODEC, Codec
from .workflow import Workflow, with_middleware_of

Shape = list[Any]  # [[stage_id, [entry, ...]], ...]; an entry is a name or [name, args, kwargs]


def workflow_shape(workflow: Workflow) -> Shape:
    """The actions of ``workflow`` in their places: ``[[stage_id, [entry, ...]], ...]``."""
    shape = [[stage.id, [_entry(action) for action in stage.actions]] for stage in workflow.stages]
    loaded: Shape = json.loads(json.dumps(shape))  # as it reads back from a database (tuples as lists)
    return loaded


def workflow_version(workflow_id: str, shape: Shape, definition: Mapping[str, Any]) -> str:
    """The version a run records: ``<shape>.<definition>``, two short hashes.

    Versions with the same first hash (:func:`~asyncflow.backends.shape_key`)
    have the same actions in the same places; the second tells apart the
    definitions that registries write for them.
    """
    return f"{_digest([workflow_id, shape])}.{_digest([workflow_id, definition])}"


def names(shape: Shape) -> list[Any]:
    """``shape`` with each action by its name alone."""
    return [[stage_id, [_name(entry) for entry in entries]] for stage_id, entries in shape]


def moved(old: Shape, new: Shape) -> bool:
    """Whether an action of ``old`` (name and arguments) is in ``new``, but not in its old place."""
    places: dict[str, set[tuple[str, int]]] = {}
    for stage_id, entries in new:
        for index, entry in enumerate(entries):
            places.setdefault(_text(entry), set()).add((stage_id, index))
    for stage_id, entries in old:
        for index, entry in enumerate(entries):
            found = places.get(_text(entry))
            if found and (stage_id, index) not in found:
                return True
    return False


def renamed_in_place(old: Shape, new: Shape) -> set[str] | None:
    """The names of ``old`` replaced in their places by names new to ``new``; None if not only that.

    The same stages with as many actions each, no action of ``old`` in another
    place of ``new``, and wherever the names differ, the old name is nowhere in
    ``new`` and the new one nowhere in ``old`` (an action renamed, or replaced
    by another, in its place; not moved).
    """
    if [(stage_id, len(entries)) for stage_id, entries in old] != [
        (stage_id, len(entries)) for stage_id, entries in new
    ] or moved(old, new):
        return None
    old_names = {_name(entry) for _, entries in old for entry in entries}
    new_names = {_name(entry) for _, entries in new for entry in entries}
    renamed: set[str] = set()
    for (_, old_entries), (_, new_entries) in zip(old, new, strict=True):
        for before, after in zip(map(_name, old_entries), map(_name, new_entries), strict=True):
            if before == after:
                continue
            if before in new_names or after in old_names:
                return None
            renamed.add(before)
    return renamed


def describe(shape: Shape) -> str:
    """``shape`` in words: ``stages 'a' (x, y), 'b' (z)``."""
    stages = ", ".join(f"{stage_id!r} ({', '.join(map(_name, entries))})" for stage_id, entries in shape)
    return f"stages {stages}" if shape else "no stages"


def importable_main(definition: dict[str, Any]) -> dict[str, Any] | None:
    """``definition`` with ``__main__:`` references under the name other processes import the script by.

    A workflow defined in a script run as ``python app.py`` (or ``python -m
    app``) names its actions ``__main__:attr``, which only such a run of the
    script resolves; a worker or the CLI imports them as ``app:attr``. None
    if no reference needs it or the name cannot be told.
    """
    stages = definition.get("stages") or []
    if not any(ref.get("ref", "").startswith("__main__:") for stage in stages for ref in stage["actions"]):
        return None
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec is not None and spec.name != "__main__" else None
    path = getattr(main, "__file__", None)
    if module is None and isinstance(path, str) and sys.path:
        script = Path(path).resolve()
        if Path(sys.path[0] or ".").resolve() == script.parent:  # (python app.py puts its folder first)
            module = script.stem
    if not module:
        return None
    return {
        **definition,
        "stages": [
            {**stage, "actions": [_importable(ref, module) for ref in stage["actions"]]} for stage in stages
        ],
    }


def _importable(ref: dict[str, Any], module: str) -> dict[str, Any]:
    name = ref.get("ref", "")
    return {**ref, "ref": module + name[len("__main__") :]} if name.startswith("__main__:") else ref


def _entry(action: Action) -> Any:
    # A function action is its function (its arguments tell nothing more). Arguments that
    # are not JSON (a registered instance's) cannot be compared across processes: such an
    # action is given by its name alone.
    if isinstance(action, FunctionAction):
        return action.name
    captured = constructor_arguments(action)
    if captured is None:
        return action.name
    args, kwargs = captured
    try:
        exact_json([args, kwargs])
    except (TypeError, ValueError):
        return action.name
    return [action.name, list(args), dict(kwargs)]


def _name(entry: Any) -> str:
    return str(entry[0]) if isinstance(entry, list) and entry else str(entry)


def _text(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Versions:
    """An engine's side of versions (backends that keep them): saving them, and choosing a run's workflow.

    Args:
        backend: where versions are kept.
        registry: what re-creates a version's actions.
        clock: for how long a version that cannot be re-created is skipped.
        lease: the engine's lease; such a version is skipped for ten of them,
            then looked at again (another engine may have saved a definition
            that works here meanwhile).
    """

    def __init__(
        self, backend: Backend, registry: Registry, clock: Clock, lease: float, codec: Codec = JSON_CODEC
    ) -> None:
        self.backend = backend
        self.codec = codec  # (how the plan changes of a run's checkpoints read back)
        self.registry = registry
        self.clock = clock
        self.lease = lease
        self.mine: dict[str, WorkflowVersion] = {}  # of each registered workflow, by its id
        self._saved: set[str] = set()  # ids whose version was saved since the engine opened
        self._saving: dict[str, anyio.Event] = {}
        # Versions that runs started on, other than the registered ones: what was decided.
        self._decided: dict[str, _Decision] = {}
        # Versions left, and until when claims skip them (or, on a backend that cannot skip,
        # until when runs of them are held as they are claimed); and runs left for what they
        # recorded, held until then.
        self._skipped: dict[str, float] = {}
        self._held: dict[str, float] = {}
        self._warned: set[str] = set()  # runs whose version trouble was logged as a warning
        self._skips = "skip_versions" in inspect.signature(backend.claim).parameters

    def register(self, workflow: Workflow, definition: dict[str, Any]) -> None:
        shape = workflow_shape(workflow)
        version = workflow_version(workflow.id, shape, definition)
        self.mine[workflow.id] = WorkflowVersion(version, workflow.id, shape, definition)

    async def opened(self) -> None:
        """Forget what was decided before, and save the versions of the workflows registered so far."""
        self._saved.clear()
        self._decided.clear()
        self._skipped.clear()
        self._held.clear()
        self._warned.clear()
        for version in list(self.mine.values()):
            await self.save(version.workflow_id)

    async def save(self, workflow_id: str) -> str | None:
        """Save the version of registered workflow ``workflow_id`` once while open; the version."""
        version = self.mine.get(workflow_id)
        if version is None:
            return None
        while workflow_id not in self._saved:
            saving = self._saving.get(workflow_id)
            if saving is not None:  # another start saves it: wait (and try, if that one failed)
                await saving.wait()
                continue
            saving = self._saving[workflow_id] = anyio.Event()
            try:
                await self.backend.save_version(version)
                alias = importable_main(version.definition)
                if alias is not None:  # (a script's workflow, as a worker importing it names it)
                    shape = version.shape
                    await self.backend.save_version(
                        WorkflowVersion(
                            workflow_version(workflow_id, shape, alias), workflow_id, shape, alias
                        )
                    )
                self._saved.add(workflow_id)
            finally:
                del self._saving[workflow_id]
                saving.set()
        return version.version

    # ---- which workflow a run goes on with ----------------------------------------------

    def differs(self, info: RunInfo) -> bool:
        """Whether ``info``'s run started on another version than the registered one."""
        mine = self.mine.get(info.workflow_id)
        return mine is not None and info.workflow_version != mine.version

    async def workflow_for(
        self, info: RunInfo, registered: Workflow, saved: SavedRun | None = None
    ) -> tuple[Workflow | None, str]:
        """The workflow ``info``'s run goes on with, or ``None`` and why there is none here.

        - The registered workflow, if it has the same actions (names and
          arguments) in the same places, or the same names in the same places
          with only arguments changed in place (new configuration, say).
        - Otherwise the version the run started on, re-created from any
          definition of it that was saved, with the registered workflow's
          middleware.
        - Failing that, the registered workflow again if only names changed,
          each in its place, to names new to the workflow (actions renamed or
          replaced in place), and no plan change the run recorded names them.
        - Else nothing: the run waits for an engine that can re-create its
          version.
        """
        mine = self.mine.get(registered.id)
        theirs = info.workflow_version
        if mine is None or theirs == mine.version:
            return registered, ""
        if theirs is None or theirs.count(".") != 1:
            self._warn_once(
                info.run_id,
                "run {} was started before asyncflow recorded the version of a run's workflow; it goes "
                "on with workflow {!r} as registered now (if its stages or actions changed since, "
                "completed steps may run again and new ones be skipped)",
                registered.id,
            )
            return registered, ""
        if shape_key(theirs) == shape_key(mine.version):
            return registered, ""  # the same actions in the same places, named otherwise by a registry
        decision = self._decided.get(theirs)
        if decision is None:
            decision = self._decided[theirs] = await self._decide(theirs, registered, mine)
        if decision.workflow is not None or decision.renamed is None:
            return decision.workflow, decision.why
        if saved is None:
            saved = await self.backend.load(info.run_id)
        named, by_tag = _plan_changes(saved, self.codec)
        named &= decision.renamed
        if named or by_tag:
            what = f"name {sorted(named)}" if named else "choose actions by tag"
            return None, (
                f"{decision.why}; actions of it were renamed or replaced since, and plan changes the run "
                f"recorded {what}"
            )
        self._warn_once(
            info.run_id,
            "run {} of workflow {!r} started on a version with actions {} in places where the "
            "registered version has others of new names; {}. It goes on with the registered version, "
            "taking them as renamed or replaced in their places",
            registered.id,
            sorted(decision.renamed),
            decision.why,
        )
        return registered, ""

    async def _decide(self, version: str, registered: Workflow, mine: WorkflowVersion) -> _Decision:
        found = await self.backend.load_versions(version)
        if not found:
            return _Decision(None, f"the database keeps no definition of its version {version}")
        old = found[0].shape
        if names(old) == names(mine.shape) and not moved(old, mine.shape):
            return _Decision(registered)  # arguments changed in place: the same steps, made anew
        failures = []
        for stored in found:  # the run's own definition first, then others of the same shape
            try:
                workflow = self.registry.workflow_from_definition(stored.definition)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            shape = workflow_shape(workflow)
            if shape != stored.shape:
                failures.append(f"re-created here, it has {describe(shape)}")
                continue
            workflow = with_middleware_of(registered, workflow)
            logger.info(
                "workflow {!r} is registered with {}; version {} ({}), which runs started on, is "
                "re-created from the database for them",
                registered.id,
                describe(mine.shape),
                version,
                describe(old),
            )
            return _Decision(workflow)
        why = f"its version ({describe(old)}) cannot be re-created here: {'; '.join(dict.fromkeys(failures))}"
        return _Decision(None, why, renamed_in_place(old, mine.shape))

    # ---- runs left alone ------------------------------------------------------------------

    def leave(self, info: RunInfo, why: str) -> None:
        """Note that ``info``'s run is left for an engine that can re-create its version.

        Its version is skipped by this engine's claims for ten leases; on a
        backend whose claim cannot skip, and for a run left for what it
        recorded (other runs of its version may go on here), :meth:`held`
        tells the engine to give the run back each time it claims it meanwhile.
        """
        version = info.workflow_version
        assert version is not None  # (runs without one go on with the registered workflow)
        until = self.clock.now() + 10 * self.lease
        decision = self._decided.get(version)
        if decision is not None and decision.renamed is not None:
            self._held[info.run_id] = until  # (what this run recorded stands in the way)
        else:
            self._skipped[version] = until
        self._warn_once(
            info.run_id,
            "run {} of workflow {!r} started on another version of it than the one registered here, "
            "and {}. This engine leaves the run as it is, so that no completed step runs again and "
            "no new step is skipped; an engine that can re-create that version (its actions "
            "registered or importable) takes it over at its next look for runs, and "
            "engine.cancel(run_id) gives it up. This engine looks at it again in {:g} s",
            info.workflow_id,
            why,
            10 * self.lease,
        )

    async def claim(self, owner: str, *, now: float, lease_until: float, limit: int) -> list[RunInfo]:
        """``backend.claim``, skipping the versions left less than ten leases ago."""
        for version, until in list(self._skipped.items()):
            if until <= now:  # look at it again: another engine may have saved what works here
                del self._skipped[version]
                self._decided.pop(version, None)
        for run_id, until in list(self._held.items()):
            if until <= now:
                del self._held[run_id]
        if not self._skips or not self._skipped:  # (a backend without skip_versions: as always)
            return await self.backend.claim(owner, now=now, lease_until=lease_until, limit=limit)
        return await self.backend.claim(
            owner, now=now, lease_until=lease_until, limit=limit, skip_versions=list(self._skipped)
        )

    def held(self, info: RunInfo) -> bool:
        """Whether ``info``'s run, just claimed, was left here already (to be given back at once)."""
        if info.run_id in self._held:
            return True
        return not self._skips and info.workflow_version in self._skipped

    def _warn_once(self, run_id: str, message: str, *args: Any) -> None:
        """Log ``message`` about run ``run_id`` as a warning the first time, then at debug level."""
        log = logger.debug if run_id in self._warned else logger.warning
        self._warned.add(run_id)
        log(message, run_id, *args)


@attrs.frozen
class _Decision:
    """What a version that runs started on becomes here: a workflow, or why none."""

    workflow: Workflow | None
    why: str = ""
    renamed: set[str] | None = None  # (no workflow) names renamed or replaced in place, if only that


def _plan_changes(saved: SavedRun | None, codec: Codec) -> tuple[set[str], bool]:
    """The action names the run's recorded plan changes refer to; whether one chose actions by tag."""
    named: set[str] = set()
    by_tag = False
    for checkpoint in saved.checkpoints if saved is not None else ():
        if checkpoint.kind != "action" or not checkpoint.ops:
            continue
        ops = codec.decode_ops(checkpoint.ops)
        for op in ops:
            if isinstance(op.get("name"), str):
                named.add(op["name"])
            by_tag = by_tag or "tag" in op
    return named, by_tag
