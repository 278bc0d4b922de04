"""Definitions (actions, stages, workflows), their defaults, and clear errors on bad input."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest

import asyncflow as af

# ---- @af.action ------------------------------------------------------------------


async def test_bare_decorator_names_the_action_after_the_function() -> None:
    """@af.action without options names the action after the function, underscores as dashes."""

    @af.action
    async def load_user(ctx: af.ActionContext) -> None:
        """Load the user."""

    assert isinstance(load_user, af.Action)
    assert load_user.name == "load-user"


async def test_bare_decorator_defaults() -> None:
    """A bare @af.action has no tags and takes its description from the docstring (or "")."""

    @af.action
    async def quiet(ctx: af.ActionContext) -> None:
        pass

    assert quiet.tags == frozenset()
    assert quiet.description == ""


async def test_decorator_with_options() -> None:
    """@af.action(name=, description=, tags=) sets each option."""

    @af.action(name="load", description="Load things", tags={"io", "db"})
    async def load_user(ctx: af.ActionContext) -> None:
        pass

    assert isinstance(load_user, af.Action)
    assert load_user.name == "load"
    assert load_user.description == "Load things"
    assert load_user.tags == frozenset({"io", "db"})


async def test_action_called_on_a_function_and_as_factory_both_work() -> None:
    """af.action(fn) and af.action(name="x")(fn) both return actions."""

    async def fetch_page(ctx: af.ActionContext) -> None:
        pass

    direct = af.action(fetch_page)
    named = af.action(name="x")(fetch_page)
    assert isinstance(direct, af.Action)
    assert isinstance(named, af.Action)
    assert direct.name == "fetch-page"
    assert named.name == "x"


async def test_decorated_action_runs_in_a_workflow() -> None:
    """A decorated function runs as an action and sees its ctx."""

    @af.action
    async def put_it(ctx: af.ActionContext) -> None:
        ctx.store["seen"] = ctx.action.name

    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[put_it])]))
    assert result.store["seen"] == "put-it"


# ---- Action subclasses ---------------------------------------------------------------


async def test_action_subclass_name_defaults_to_kebab_case_class_name() -> None:
    """An Action subclass without a name is called by its class name in kebab-case."""

    class ProcessResource(af.Action):
        async def execute(self, ctx: af.ActionContext) -> None:
            pass

    action = ProcessResource()
    assert action.name == "process-resource"
    assert action.description == ""
    assert action.tags == frozenset()


async def test_action_subclass_attributes_override_defaults() -> None:
    """Class attributes name, description and tags of an Action subclass are used as given."""

    class Resize(af.Action):
        name = "resize"
        description = "Resize one image"
        tags = frozenset({"images"})

        def __init__(self, size: int) -> None:
            self.size = size

        async def execute(self, ctx: af.ActionContext) -> None:
            ctx.store["size"] = self.size

    action = Resize(3)
    assert (action.name, action.description, action.tags) == ("resize", "Resize one image", {"images"})
    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[action])]))
    assert result.store["size"] == 3


# ---- stages and workflows -------------------------------------------------------------


@af.action
async def nothing(ctx: af.ActionContext) -> None:
    """Do nothing."""


async def test_stage_and_workflow_names_default_to_their_ids() -> None:
    """Stage and Workflow names default to their ids."""
    stage = af.Stage("validate")
    wf = af.Workflow("orders", stages=[stage])
    assert stage.name == "validate"
    assert wf.name == "orders"


async def test_stage_and_workflow_keep_given_names() -> None:
    """An explicit name is kept on a Stage and a Workflow."""
    assert af.Stage("validate", name="Validate").name == "Validate"
    assert af.Workflow("orders", name="Orders").name == "Orders"


async def test_add_action_returns_the_stage_for_chaining() -> None:
    """Stage.add_action returns the stage, so calls chain, and the actions keep their order."""

    @af.action
    async def second(ctx: af.ActionContext) -> None:
        pass

    stage = af.Stage("s")
    assert stage.add_action(nothing).add_action(second) is stage
    assert [a.name for a in stage.actions] == ["nothing", "second"]


async def test_add_stage_returns_the_workflow_for_chaining() -> None:
    """Workflow.add_stage returns the workflow, so calls chain, and the stages keep their order."""
    wf = af.Workflow("wf")
    assert wf.add_stage(af.Stage("a")).add_stage(af.Stage("b")) is wf
    assert [s.id for s in wf.stages] == ["a", "b"]


# ---- bad input: actions ------------------------------------------------------------------


def test_sync_function_given_to_action_is_a_type_error_naming_it() -> None:
    """A plain (non-async) function given to @af.action is a TypeError naming the function."""

    def not_async(ctx: af.ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match="not_async"):
        af.action(not_async)  # type: ignore[arg-type]


def test_sync_function_given_to_action_with_options_is_a_type_error() -> None:
    """A plain function given to @af.action(name=...) is a TypeError naming the function."""

    def still_not_async(ctx: af.ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match="still_not_async"):
        af.action(name="x")(still_not_async)  # type: ignore[arg-type]


def test_action_subclass_with_sync_execute_is_a_type_error() -> None:
    """An Action subclass whose execute is not async is a TypeError naming the class."""
    with pytest.raises(TypeError, match="SyncExecute"):

        class SyncExecute(af.Action):
            def execute(self, ctx: af.ActionContext) -> None:  # type: ignore[override]
                pass


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_action_name_is_invalid(bad: str) -> None:
    """An empty or blank action name is af.InvalidDefinition."""
    with pytest.raises(af.InvalidDefinition):
        af.action(name=bad)(plain_coroutine_function)


# ---- bad input: ids ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "  "])
@pytest.mark.parametrize("kind", [af.Stage, af.Workflow])
def test_empty_id_is_invalid_definition(kind: type[Any], bad: str) -> None:
    """An empty or blank stage/workflow id is af.InvalidDefinition, a ValueError."""
    with pytest.raises(af.InvalidDefinition) as info:
        kind(bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, af.WorkflowError)
    assert "id" in str(info.value)


@pytest.mark.parametrize("kind", [af.Stage, af.Workflow])
def test_id_with_a_lone_surrogate_is_invalid_definition(kind: type[Any]) -> None:
    """An id from bytes that are not UTF-8 (os.fsdecode's lone surrogates) is refused, saying why."""
    name = os.fsdecode(b"report-\xff.csv")  # 'report-\udcff.csv'
    with pytest.raises(af.InvalidDefinition, match="not valid Unicode text") as info:
        kind(name)
    assert repr(name) in str(info.value)
    assert "position 7" in str(info.value)
    assert "os.fsencode(name).decode('utf-8', 'backslashreplace')" in str(info.value)


def test_action_name_with_a_lone_surrogate_is_invalid_definition() -> None:
    """An action name with a lone surrogate is af.InvalidDefinition naming it."""
    with pytest.raises(af.InvalidDefinition, match=r"action name 'x-\\udcff'"):
        af.action(name="x-\udcff")(plain_coroutine_function)


class Resize(af.Action):
    """An action named on the instance, after the file it resizes (as examples/fanout.py does)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name = f"resize-{image}"

    async def execute(self, ctx: af.ActionContext) -> None:
        """Nothing to resize here."""


def test_action_named_on_the_instance_after_an_undecodable_file_is_refused() -> None:
    """An action whose instance name holds a lone surrogate is refused where it joins a stage."""
    action = Resize(os.fsdecode(b"cat-\xff.png"))
    with pytest.raises(af.InvalidDefinition, match=r"action name \(of actions\[0\] of stage 's'\)"):
        af.Stage("s", actions=[action])
    with pytest.raises(af.InvalidDefinition, match="not valid Unicode text"):
        af.Stage("t").add_action(action)


async def test_dynamic_action_named_after_an_undecodable_file_fails_the_inserting_action() -> None:
    """ctx.add_dynamic_action of such an action fails the action that inserts it, naming the name."""

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(Resize(os.fsdecode(b"cat-\xff.png")))

    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("w", stages=[af.Stage("s", actions=[insert])]))
    assert isinstance(info.value.__cause__, af.InvalidDefinition)
    assert "'resize-cat-\\udcff.png' is not valid Unicode text" in str(info.value.__cause__)


def test_ids_in_any_script_are_accepted() -> None:
    """Ids that are Unicode text, in any script, are accepted as they are."""
    assert af.Stage("café-über-日本").id == "café-über-日本"
    assert af.Workflow("поток").id == "поток"


@pytest.mark.parametrize("bad", [3, None])
@pytest.mark.parametrize("kind", [af.Stage, af.Workflow])
def test_non_string_id_is_a_type_error(kind: type[Any], bad: object) -> None:
    """A non-string stage/workflow id is a TypeError showing the bad value."""
    with pytest.raises(TypeError, match=repr(bad)):
        kind(bad)


def test_duplicate_stage_ids_in_stages_list_is_a_value_error_naming_the_id() -> None:
    """Two stages with one id passed in stages=[...] is a ValueError naming the id."""
    with pytest.raises(ValueError, match="'twice'"):
        af.Workflow("wf", stages=[af.Stage("twice"), af.Stage("twice")])


def test_duplicate_stage_id_via_add_stage_is_a_value_error_naming_the_id() -> None:
    """add_stage with a stage id already in the workflow is a ValueError naming the id."""
    wf = af.Workflow("wf", stages=[af.Stage("twice")])
    with pytest.raises(ValueError, match="'twice'"):
        wf.add_stage(af.Stage("twice"))
    assert [s.id for s in wf.stages] == ["twice"]


# ---- bad input: structure -----------------------------------------------------------


async def plain_coroutine_function(ctx: af.ActionContext) -> None:
    """An undecorated coroutine function."""


@pytest.mark.parametrize(
    "bad", [plain_coroutine_function, "nothing", lambda ctx: None], ids=["async-fn", "string", "lambda"]
)
def test_non_action_in_actions_is_a_type_error_naming_stage_and_position(bad: object) -> None:
    """Something that is not an af.Action in actions= is a TypeError naming the stage and its position."""
    with pytest.raises(TypeError) as info:
        af.Stage("checkout", actions=[nothing, bad])  # type: ignore[list-item]
    message = str(info.value)
    assert "'checkout'" in message
    assert "[1]" in message


def test_non_action_given_to_add_action_is_a_type_error_naming_the_stage() -> None:
    """Stage.add_action with something that is not an af.Action is a TypeError naming the stage."""
    with pytest.raises(TypeError, match="'checkout'"):
        af.Stage("checkout").add_action(plain_coroutine_function)  # type: ignore[arg-type]


def test_non_stage_given_to_workflow_is_a_type_error() -> None:
    """Something that is not an af.Stage in stages= is a TypeError naming the workflow."""
    with pytest.raises(TypeError, match="'orders'"):
        af.Workflow("orders", stages=["validate"])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [0, -1])
def test_concurrency_below_one_is_rejected(bad: int) -> None:
    """Stage(concurrency=0 or less) is af.InvalidDefinition naming the stage."""
    with pytest.raises(af.InvalidDefinition, match="'fan'"):
        af.Stage("fan", concurrency=bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: af.action(tags="io")(plain_coroutine_function),  # type: ignore[arg-type]
        lambda: af.Stage("s", tags="input"),  # type: ignore[arg-type]
        lambda: af.Workflow("w", tags="prod"),  # type: ignore[arg-type]
    ],
    ids=["action", "stage", "workflow"],
)
def test_tags_as_a_bare_string_are_rejected(make: Any) -> None:
    """tags given as one bare string (not a collection) is a TypeError."""
    with pytest.raises(TypeError, match="tags"):
        make()


def test_action_subclass_tags_as_a_bare_string_are_rejected() -> None:
    """An Action subclass declaring tags as one bare string is a TypeError."""
    with pytest.raises(TypeError, match="tags"):

        class Tagged(af.Action):
            tags = "images"  # type: ignore[assignment]

            async def execute(self, ctx: af.ActionContext) -> None:
                pass


# ---- bad input: running ----------------------------------------------------------------


async def test_add_dynamic_stage_with_a_non_stage_fails_the_run() -> None:
    """ctx.add_dynamic_stage with something that is not a Stage fails the run with a TypeError cause."""

    @af.action
    async def insert_junk(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage("not a stage")  # type: ignore[arg-type]

    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[insert_junk])]))
    assert info.value.action_name == "insert-junk"
    assert isinstance(info.value.__cause__, TypeError)
    assert "add_dynamic_stage" in str(info.value.__cause__)


async def test_add_dynamic_action_with_a_non_action_fails_the_run() -> None:
    """ctx.add_dynamic_action with something that is not an Action fails the run with a TypeError cause."""

    @af.action
    async def insert_junk(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(plain_coroutine_function)  # type: ignore[arg-type]

    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[insert_junk])]))
    assert info.value.action_name == "insert-junk"
    assert isinstance(info.value.__cause__, TypeError)
    assert "add_dynamic_action" in str(info.value.__cause__)


async def test_run_with_a_non_workflow_is_a_type_error() -> None:
    """af.run given something that is not an af.Workflow is a TypeError."""
    with pytest.raises(TypeError, match="Workflow"):
        await af.run(af.Stage("s"))  # type: ignore[arg-type]


# ---- the public API --------------------------------------------------------------------


def test_every_exported_name_is_importable_and_documented() -> None:
    """Every name in af.__all__ exists, and every exported class and function has its own docstring."""
    for name in af.__all__:
        obj = getattr(af, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert (doc or "").strip(), f"af.{name} has no docstring"


def test_all_is_sorted() -> None:
    """af.__all__ is sorted as Python's sorted() sorts it."""
    assert af.__all__ == sorted(af.__all__)


def test_every_public_attribute_is_exported() -> None:
    """Every public (non-underscore, non-module) attribute of asyncflow is listed in __all__."""
    public = {
        name for name, value in vars(af).items() if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(af.__all__)
