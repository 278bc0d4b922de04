"""Serializable definitions and the action registry: JSON round trips, names, factories, clear refusals."""

from __future__ import annotations

import json
from typing import Any

import durable_flows as flows
import pytest

import asyncflow as af
from asyncflow import backoff


def through_json(definition: dict[str, Any]) -> Any:
    """``definition`` after a trip through JSON text, as it would come back from a database."""
    return json.loads(json.dumps(definition))


def round_trip(workflow: af.Workflow, registry: af.Registry | None = None) -> af.Workflow:
    """``workflow`` written to a definition, through JSON, and read back."""
    return af.Workflow.from_definition(
        through_json(workflow.to_definition(registry=registry)), registry=registry
    )


# ---- workflow definitions -----------------------------------------------------------------------


def test_module_level_action_round_trips_to_the_same_action() -> None:
    """A module-level @af.action is referenced by import path and resolves back to the same object."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[flows.step_one])])
    definition = wf.to_definition()
    assert definition["stages"][0]["actions"] == [{"ref": "durable_flows:step_one"}]
    assert round_trip(wf).stages[0].actions == (flows.step_one,)


def test_action_subclass_is_recreated_from_its_constructor_arguments() -> None:
    """An Action subclass is re-created from the positional and keyword arguments it was built with."""
    original = flows.Record("label", value={"nested": [1, 2.5, None]})
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[original])])
    [ref] = wf.to_definition()["stages"][0]["actions"]
    assert ref == {
        "ref": "durable_flows:Record",
        "args": ["label"],
        "kwargs": {"value": {"nested": [1, 2.5, None]}},
    }
    [copy] = round_trip(wf).stages[0].actions
    assert isinstance(copy, flows.Record)
    assert copy is not original
    assert (copy.label, copy.value) == ("label", {"nested": [1, 2.5, None]})


def test_action_subclass_without_constructor_is_referenced_by_path_alone() -> None:
    """An Action subclass without its own __init__ is referenced by its import path, with no parameters."""
    assert af.registry.reference(flows.Noop()) == {"ref": "durable_flows:Noop"}
    assert isinstance(af.registry.resolve({"ref": "durable_flows:Noop"}), flows.Noop)


def test_durable_sleep_step_round_trips() -> None:
    """af.sleep(5) is referenced with its seconds and re-created as an equal af.Sleep."""
    sleep = af.sleep(5)
    assert af.registry.reference(sleep) == {"ref": "asyncflow._core.sleep:Sleep", "args": [5]}
    copy = af.registry.resolve(through_json(af.registry.reference(sleep)))
    assert isinstance(copy, af.Sleep)
    assert copy.seconds == 5.0


def test_workflow_fields_round_trip() -> None:
    """A workflow's id, name, description and tags come back from its definition."""
    wf = af.Workflow(
        "orders", name="Orders", description="Take orders", tags={"prod", "eu"}, stages=[af.Stage("s")]
    )
    copy = round_trip(wf)
    assert (copy.id, copy.name, copy.description, copy.tags) == (
        "orders",
        "Orders",
        "Take orders",
        {"prod", "eu"},
    )


def test_stage_options_round_trip() -> None:
    """Stage name, description, tags, concurrency, initial data, timeout and a fixed-backoff retry survive."""
    stage = af.Stage(
        "fan-out",
        name="Fan out",
        description="many at once",
        tags={"io", "batch"},
        actions=[flows.step_one, flows.Record("r")],
        initial={"api.timeout": 30, "hosts": ["a", "b"], "flags": {"x": True}},
        concurrency=4,
        timeout=2.5,
        retry=af.Retry(attempts=5, backoff=backoff.fixed(0.5)),
    )
    [copy] = round_trip(af.Workflow("wf", stages=[stage])).stages
    assert (copy.id, copy.name, copy.description, copy.tags) == (
        "fan-out",
        "Fan out",
        "many at once",
        {"io", "batch"},
    )
    assert copy.initial == {"api.timeout": 30, "hosts": ["a", "b"], "flags": {"x": True}}
    assert (copy.concurrency, copy.timeout) == (4, 2.5)
    assert copy.retry == af.Retry(attempts=5, backoff=backoff.fixed(0.5))
    assert [a.name for a in copy.actions] == ["step-one", "record"]


def test_exponential_backoff_round_trips() -> None:
    """A stage retry with exponential backoff keeps base, maximum, factor and jitter."""
    retry = af.Retry(attempts=7, backoff=backoff.exponential(0.2, maximum=9.0, factor=3.0, jitter=True))
    [copy] = round_trip(af.Workflow("wf", stages=[af.Stage("s", retry=retry)])).stages
    assert copy.retry == retry


def test_retry_on_exception_types_round_trip() -> None:
    """A stage retry limited to exception types keeps those types."""
    retry = af.Retry(attempts=2, backoff=backoff.fixed(1), retry_on=(ConnectionError, TimeoutError))
    [copy] = round_trip(af.Workflow("wf", stages=[af.Stage("s", retry=retry)])).stages
    assert copy.retry is not None
    assert copy.retry.retry_on == (ConnectionError, TimeoutError)


def test_stage_without_options_keeps_the_defaults() -> None:
    """A plain stage comes back with concurrency 1, no timeout, no retry, no initial data."""
    [copy] = round_trip(af.Workflow("wf", stages=[af.Stage("s", actions=[flows.step_one])])).stages
    assert (copy.concurrency, copy.timeout, copy.retry, copy.tags) == (1, None, None, frozenset())
    assert not copy.initial


def test_definition_is_plain_json() -> None:
    """to_definition returns data equal to itself after json.dumps/json.loads."""
    wf = af.Workflow(
        "wf",
        tags={"t"},
        stages=[
            af.Stage("a", actions=[flows.step_one, flows.Record("x", value=[1, {"k": None}])], tags={"u"}),
            af.Stage("b", retry=af.Retry(attempts=2, backoff=backoff.exponential(0.1))),
        ],
    )
    definition = wf.to_definition()
    assert through_json(definition) == definition


async def test_round_tripped_workflow_runs_like_the_original() -> None:
    """A workflow read back from its JSON definition runs to the same store as the original."""
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[flows.step_one, flows.Record("x", value=[1, "two"])], initial={"i": 0}),
            af.Stage("b", actions=[flows.Record("y", value={"z": None})]),
        ],
    )
    flows.reset()
    original = await af.run(wf)
    copy = await af.run(round_trip(wf))
    assert copy.store == original.store
    assert copy.action_order() == original.action_order()


def test_stage_middleware_cannot_be_written_into_a_definition() -> None:
    """to_definition refuses a stage with its own middleware: af.NotReferenceable naming the stage."""

    async def mw(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        await call_next()

    stage = af.Stage("guarded", actions=[flows.step_one]).use(mw)
    with pytest.raises(af.NotReferenceable, match="'guarded'"):
        af.Workflow("wf", stages=[stage]).to_definition()


def test_definition_of_an_unsupported_version_is_refused() -> None:
    """A definition with another "asyncflow" version number raises af.InvalidDefinition naming it."""
    definition = af.Workflow("wf", stages=[af.Stage("s")]).to_definition()
    definition["asyncflow"] = 99
    with pytest.raises(af.InvalidDefinition, match="99"):
        af.Workflow.from_definition(definition)


# ---- the registry -------------------------------------------------------------------------------


def test_register_an_instance_under_its_name() -> None:
    """registry.register(action) makes it referenceable by its name and resolvable to the same instance."""
    registry = af.Registry()
    registry.register(flows.LAMBDA_MADE)
    ref = registry.reference(flows.LAMBDA_MADE)
    assert ref == {"ref": "lambda-made"}
    assert registry.resolve(through_json(ref)) is flows.LAMBDA_MADE


def test_register_an_instance_under_a_given_name() -> None:
    """registry.register("name", action) references the action by that name."""
    registry = af.Registry()
    registry.register("custom-name", flows.LAMBDA_MADE)
    assert registry.reference(flows.LAMBDA_MADE) == {"ref": "custom-name"}
    assert registry.resolve({"ref": "custom-name"}) is flows.LAMBDA_MADE


def test_register_a_class_as_factory_under_a_name() -> None:
    """registry.register("name", ActionSubclass) references instances by that name plus their arguments."""
    registry = af.Registry()
    registry.register("rec", flows.Record)
    action = flows.Record("x", value=2)
    ref = registry.reference(action)
    assert ref == {"ref": "rec", "args": ["x"], "kwargs": {"value": 2}}
    made = registry.resolve(through_json(ref))
    assert isinstance(made, flows.Record)
    assert (made.label, made.value) == ("x", 2)


def test_register_a_callable_factory_under_a_name() -> None:
    """registry.register("name", callable) resolves that name by calling it with the parameters."""
    registry = af.Registry()
    registry.register("make-record", lambda label, **kw: flows.Record(f"made-{label}", **kw))
    made = registry.resolve({"ref": "make-record", "args": ["z"], "kwargs": {"value": 7}})
    assert isinstance(made, flows.Record)
    assert (made.label, made.value) == ("made-z", 7)


def test_workflow_definition_through_a_registry_uses_registered_names() -> None:
    """A workflow written and read through a registry references a registered action by name."""
    registry = af.Registry()
    registry.register(flows.LAMBDA_MADE)
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[flows.LAMBDA_MADE])])
    assert wf.to_definition(registry=registry)["stages"][0]["actions"] == [{"ref": "lambda-made"}]
    assert round_trip(wf, registry).stages[0].actions == (flows.LAMBDA_MADE,)


def test_registry_falls_back_to_the_global_registry() -> None:
    """A new af.Registry finds names registered in af.registry, both ways."""
    registry = af.Registry()
    assert registry.reference(flows.GLOBAL_ONLY) == {"ref": "durable-flows.global-only"}
    assert registry.resolve({"ref": "durable-flows.global-only"}) is flows.GLOBAL_ONLY


def test_registry_looks_in_its_parent() -> None:
    """A registry made with parent= finds the parent's names."""
    parent = af.Registry()
    parent.register("from-parent", flows.LAMBDA_MADE)
    child = af.Registry(parent=parent)
    assert child.resolve({"ref": "from-parent"}) is flows.LAMBDA_MADE


def test_per_engine_registry_is_not_visible_globally() -> None:
    """A name registered in a per-engine registry is unknown to af.registry (isolation)."""
    engine_registry = af.Registry()
    engine_registry.register("engine-only", flows.LAMBDA_MADE)
    engine = af.Engine(registry=engine_registry)
    assert engine.registry is engine_registry
    with pytest.raises(af.UnknownReference):
        af.registry.resolve({"ref": "engine-only"})


def test_engine_uses_the_global_registry_by_default() -> None:
    """af.Engine() without registry= uses af.registry."""
    assert af.Engine().registry is af.registry


def test_a_taken_name_cannot_be_registered_again_for_something_else() -> None:
    """Registering a second, different target under a taken name raises af.InvalidDefinition naming it."""
    registry = af.Registry()
    registry.register("taken", flows.LAMBDA_MADE)
    registry.register("taken", flows.LAMBDA_MADE)  # the same target again is fine
    with pytest.raises(af.InvalidDefinition, match="'taken'"):
        registry.register("taken", flows.step_one)


def test_registry_name_with_a_colon_is_refused() -> None:
    """A registry name containing ':' (the import path marker) raises af.InvalidDefinition."""
    with pytest.raises(af.InvalidDefinition, match=":"):
        af.Registry().register("pkg:thing", flows.LAMBDA_MADE)


def test_register_refuses_something_that_is_not_an_action_or_factory() -> None:
    """registry.register("name", 42) raises TypeError."""
    with pytest.raises(TypeError):
        af.Registry().register("n", 42)  # type: ignore[arg-type]


# ---- refusals -----------------------------------------------------------------------------------


def test_closure_action_is_not_referenceable() -> None:
    """An @af.action defined inside a function raises af.NotReferenceable naming it and the fixes."""

    @af.action
    async def local_step(ctx: af.ActionContext) -> None:
        pass

    with pytest.raises(af.NotReferenceable, match="'local-step'") as info:
        af.registry.reference(local_step)
    assert "module level" in str(info.value)
    assert "register" in str(info.value)


def test_lambda_made_action_is_not_referenceable() -> None:
    """An action made by a lambda raises af.NotReferenceable naming it and the fixes."""
    with pytest.raises(af.NotReferenceable, match="'lambda-made'") as info:
        af.registry.reference(flows.LAMBDA_MADE)
    assert "module level" in str(info.value)
    assert "register" in str(info.value)


def test_local_action_class_is_not_referenceable() -> None:
    """An instance of an Action subclass defined inside a function raises af.NotReferenceable."""

    class Local(af.Action):
        async def execute(self, ctx: af.ActionContext) -> None:
            pass

    with pytest.raises(af.NotReferenceable, match="'local'"):
        af.registry.reference(Local())


def test_to_definition_refuses_a_workflow_with_a_closure() -> None:
    """Workflow.to_definition raises af.NotReferenceable saying where the closure action is."""

    @af.action
    async def local_step(ctx: af.ActionContext) -> None:
        pass

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[flows.step_one, local_step])])
    with pytest.raises(af.NotReferenceable, match="action 1 of stage 's'"):
        wf.to_definition()


def test_non_json_constructor_arguments_are_refused() -> None:
    """An Action subclass built with a non-JSON argument raises af.NotReferenceable naming the arguments."""
    action = flows.Record("x", value={1, 2})
    with pytest.raises(af.NotReferenceable, match="constructor arguments") as info:
        af.registry.reference(action)
    assert "'record'" in str(info.value)


def test_constructor_arguments_with_non_string_dict_keys_are_refused() -> None:
    """An argument holding a dict keyed by ints (re-created as string keys) raises af.NotReferenceable."""
    action = flows.Record("x", value={"by_id": {1: "a"}})
    with pytest.raises(af.NotReferenceable, match="dict key 1 is not a string"):
        af.registry.reference(action)


def test_non_json_initial_stage_data_is_refused() -> None:
    """A stage whose initial data is not JSON raises af.NotReferenceable naming the stage."""
    stage = af.Stage("s", actions=[flows.step_one], initial={"when": object()})
    with pytest.raises(af.NotReferenceable, match="'s'"):
        af.Workflow("wf", stages=[stage]).to_definition()


def test_unknown_name_raises_unknown_reference() -> None:
    """Resolving a name nobody registered raises af.UnknownReference naming it and how to register it."""
    with pytest.raises(af.UnknownReference, match="'no-such-action'") as info:
        af.registry.resolve({"ref": "no-such-action"})
    assert "register" in str(info.value)
    assert isinstance(info.value, af.InvalidDefinition)


def test_unknown_import_path_raises_unknown_reference() -> None:
    """Resolving an import path that does not exist raises af.UnknownReference naming it."""
    with pytest.raises(af.UnknownReference, match="durable_flows:no_such_thing"):
        af.registry.resolve({"ref": "durable_flows:no_such_thing"})
    with pytest.raises(af.UnknownReference, match="no_such_module"):
        af.registry.resolve({"ref": "no_such_module:thing"})


def test_from_definition_with_an_unknown_action_raises_unknown_reference() -> None:
    """Workflow.from_definition naming an unknown action raises af.UnknownReference saying where."""
    definition = af.Workflow("wf", stages=[af.Stage("s", actions=[flows.step_one])]).to_definition()
    definition["stages"][0]["actions"][0]["ref"] = "missing-action"
    with pytest.raises(af.UnknownReference, match="'missing-action'") as info:
        af.Workflow.from_definition(definition)
    assert "stage 's'" in str(info.value)


def test_malformed_reference_raises_invalid_definition() -> None:
    """A reference without a "ref" string raises af.InvalidDefinition."""
    with pytest.raises(af.InvalidDefinition, match="'ref'"):
        af.registry.resolve({"name": "step-one"})


def test_parameters_that_do_not_fit_raise_invalid_definition() -> None:
    """A reference whose parameters the factory does not accept raises af.InvalidDefinition naming it."""
    with pytest.raises(af.InvalidDefinition, match="durable_flows:Record"):
        af.registry.resolve({"ref": "durable_flows:Record", "kwargs": {"nope": 1}})


def test_parameters_for_a_registered_instance_are_refused() -> None:
    """A reference to a registered instance that carries parameters raises af.InvalidDefinition."""
    with pytest.raises(af.InvalidDefinition, match="instance"):
        af.registry.resolve({"ref": "durable-flows.global-only", "args": [1]})
