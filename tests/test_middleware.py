"""Middleware at four levels: order, scopes, what ctx shows, skip, retry, swallow, raise, misuse."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from helpers import raiser, recorder

import asyncflow as af

# ---- helpers ---------------------------------------------------------------------


def step_of(ctx: af.MiddlewareContext) -> str:
    """The action name, else the stage id, else "run"."""
    if ctx.action is not None:
        return ctx.action.name
    if ctx.stage_id is not None:
        return ctx.stage_id
    return "run"


def tracer(label: str, log: list[str]) -> af.Middleware:
    """A middleware that logs ``label>step`` before and ``label<step`` after what it wraps."""

    async def trace(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        log.append(f"{label}>{step_of(ctx)}")
        await call_next()
        log.append(f"{label}<{step_of(ctx)}")

    return trace


def wrap(labels: list[str], step: str, inner: list[str]) -> list[str]:
    """What ``labels`` (first outermost) log around ``inner`` for ``step``."""
    return [f"{x}>{step}" for x in labels] + inner + [f"{x}<{step}" for x in reversed(labels)]


async def skipper(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Skip whatever it wraps."""


async def swallower(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Swallow any error of what it wraps."""
    with contextlib.suppress(Exception):
        await call_next()


async def twice(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Call call_next twice (only allowed at action level)."""
    await call_next()
    await call_next()


async def passthrough(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Just run what it wraps."""
    await call_next()


def step(result: af.RunResult, stage_id: str, action_name: str | None = None) -> af.StepRecord:
    """The one record of ``stage_id`` (or of its action ``action_name``)."""
    found = [s for s in result.steps if s.stage_id == stage_id and s.action_name == action_name]
    assert len(found) == 1, found
    return found[0]


# ---- order and scopes --------------------------------------------------------------


async def test_order_at_four_levels_and_all_scopes_including_dynamic_steps() -> None:
    """Run > stage (runner, then workflow) > block > action (runner, workflow, stage) nest first-outermost,
    and a dynamic stage and a dynamic action go through the same chains."""
    log: list[str] = []

    later = af.Stage("later", actions=[recorder("e", log)])
    later.use(tracer("LB", log))
    later.use_action(tracer("LA", log))

    @af.action(name="a")
    async def a(ctx: af.ActionContext) -> None:
        log.append("a")
        ctx.add_dynamic_action(recorder("d", log))
        ctx.add_dynamic_stage(later)

    first = af.Stage("first", actions=[a, recorder("b", log)])
    first.use(tracer("B1", log)).use(tracer("B2", log))
    first.use_action(tracer("SA", log))
    wf = af.Workflow("wf", stages=[first, af.Stage("last", actions=[recorder("z", log)])])
    wf.use(tracer("WS1", log)).use(tracer("WS2", log))
    wf.use_action(tracer("WA", log))
    runner = af.Runner(
        middleware=[tracer("R1", log), tracer("R2", log)],
        stage_middleware=[tracer("RS1", log), tracer("RS2", log)],
        action_middleware=[tracer("RA1", log), tracer("RA2", log)],
    )

    result = await runner.run(wf)

    stage_mws = ["RS1", "RS2", "WS1", "WS2"]
    first_actions = ["RA1", "RA2", "WA", "SA"]
    later_actions = ["RA1", "RA2", "WA", "LA"]
    last_actions = ["RA1", "RA2", "WA"]
    expected = wrap(
        ["R1", "R2"],
        "run",
        wrap(
            stage_mws,
            "first",
            wrap(
                ["B1", "B2"],
                "first",
                wrap(first_actions, "a", ["a"])
                + wrap(first_actions, "d", ["d"])
                + wrap(first_actions, "b", ["b"]),
            ),
        )
        + wrap(stage_mws, "later", wrap(["LB"], "later", wrap(later_actions, "e", ["e"])))
        + wrap(stage_mws, "last", wrap(last_actions, "z", ["z"])),
    )
    assert log == expected
    assert result.status is af.RunStatus.COMPLETED
    assert step(result, "later").dynamic
    assert step(result, "first", "d").dynamic


async def test_actions_of_a_concurrent_stage_each_pass_through_the_action_chain() -> None:
    """In a stage with concurrency=3, every action (dynamic ones too) is wrapped by the action middleware."""
    log: list[str] = []

    @af.action(name="a")
    async def a(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(recorder("d", []))

    wrapped: list[str] = []

    async def note(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        assert ctx.action is not None
        wrapped.append(ctx.action.name)
        await call_next()

    stage = af.Stage("s", concurrency=3, actions=[a, recorder("b", log), recorder("c", log)])
    stage.use_action(note)
    result = await af.run(af.Workflow("wf", stages=[stage]))
    assert sorted(wrapped) == ["a", "b", "c", "d"]
    assert result.status is af.RunStatus.COMPLETED


async def test_a_runner_chain_is_reused_across_runs_without_leaking_state() -> None:
    """Running the same workflow twice through one runner traces the same order twice."""
    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", log)])])
    runner = af.Runner(middleware=[tracer("R", log)], action_middleware=[tracer("A", log)])
    await runner.run(wf)
    once = list(log)
    log.clear()
    await runner.run(wf)
    assert log == once == wrap(["R"], "run", wrap(["A"], "a", ["a"]))


# ---- what ctx shows at each level ---------------------------------------------------------


async def test_ctx_attributes_at_each_level() -> None:
    """ctx has run_id, workflow, store, plan everywhere; stage below run level; action at action level."""
    seen: dict[str, dict[str, Any]] = {}

    def spy(level: str) -> af.Middleware:
        async def look(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
            seen[level] = {
                "level": ctx.level,
                "run_id": ctx.run_id,
                "workflow": ctx.workflow,
                "stage": ctx.stage,
                "stage_id": ctx.stage_id,
                "action": ctx.action,
                "attempt": ctx.attempt,
                "store": isinstance(ctx.store, af.Store),
                "plan": isinstance(ctx.plan, af.Plan),
                "logger": ctx.logger is not None,
            }
            await call_next()

        return look

    act = recorder("a", [])
    stage = af.Stage("s", actions=[act])
    stage.use(spy("actions"))
    wf = af.Workflow("wf", stages=[stage])
    runner = af.Runner(
        middleware=[spy("run")], stage_middleware=[spy("stage")], action_middleware=[spy("action")]
    )
    await runner.run(wf, run_id="r-1")

    common = {"run_id": "r-1", "workflow": wf, "store": True, "plan": True, "logger": True}
    assert seen["run"] == {
        **common,
        "level": "run",
        "stage": None,
        "stage_id": None,
        "action": None,
        "attempt": 1,
    }
    assert seen["stage"] == {
        **common,
        "level": "stage",
        "stage": stage,
        "stage_id": "s",
        "action": None,
        "attempt": 1,
    }
    assert seen["actions"] == {
        **common,
        "level": "actions",
        "stage": stage,
        "stage_id": "s",
        "action": None,
        "attempt": 1,
    }
    assert seen["action"] == {
        **common,
        "level": "action",
        "stage": stage,
        "stage_id": "s",
        "action": act,
        "attempt": 1,
    }


async def test_middleware_store_writes_are_visible_to_actions() -> None:
    """A value a stage middleware puts in ctx.store is there for the stage's actions."""
    seen: list[object] = []

    async def put(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        ctx.store["from.mw"] = ctx.stage_id
        await call_next()

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append(ctx.store["from.mw"])

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[read])]).use(put)
    result = await af.run(wf)
    assert seen == ["s"]
    assert result.store["from.mw"] == "s"


# ---- skip ---------------------------------------------------------------------------


async def test_skip_at_run_level_ends_the_run_skipped() -> None:
    """A run middleware that does not call call_next: no step runs and the run's status is SKIPPED."""
    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", log)])])
    result = await af.Runner(middleware=[skipper]).run(wf)
    assert result.status is af.RunStatus.SKIPPED
    assert log == []
    assert all(s.status is af.StepStatus.SKIPPED for s in result.steps)


async def test_skip_at_stage_level_records_the_stage_skipped_and_runs_the_next() -> None:
    """A stage middleware that skips one stage: it is SKIPPED "skipped by middleware", the next stage runs."""
    log: list[str] = []

    async def skip_first(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        if ctx.stage_id != "first":
            await call_next()

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[recorder("a", log)]),
            af.Stage("second", actions=[recorder("b", log)]),
        ],
    ).use(skip_first)
    result = await af.run(wf)
    record = step(result, "first")
    assert record.status is af.StepStatus.SKIPPED
    assert record.reason == "skipped by middleware"
    assert log == ["b"]
    assert result.status is af.RunStatus.COMPLETED


async def test_skip_at_actions_level_records_the_blocks_actions_skipped() -> None:
    """A stage.use middleware that skips the block: none of its actions run, each is SKIPPED by middleware."""
    log: list[str] = []
    first = af.Stage("first", actions=[recorder("a", log), recorder("b", log)]).use(skipper)
    wf = af.Workflow("wf", stages=[first, af.Stage("second", actions=[recorder("c", log)])])
    result = await af.run(wf)
    assert log == ["c"]
    for name in ("a", "b"):
        record = step(result, "first", name)
        assert record.status is af.StepStatus.SKIPPED
        assert record.reason == "skipped by middleware"


async def test_skip_at_action_level_records_the_action_skipped_and_runs_the_next() -> None:
    """An action middleware that skips one action: it is SKIPPED "skipped by middleware", the next runs."""
    log: list[str] = []

    async def skip_a(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        assert ctx.action is not None
        if ctx.action.name != "a":
            await call_next()

    stage = af.Stage("s", actions=[recorder("a", log), recorder("b", log)]).use_action(skip_a)
    result = await af.run(af.Workflow("wf", stages=[stage]))
    record = step(result, "s", "a")
    assert record.status is af.StepStatus.SKIPPED
    assert record.reason == "skipped by middleware"
    assert record.attempts == 0
    assert log == ["b"]
    assert result.status is af.RunStatus.COMPLETED


async def test_skip_of_a_dynamic_stage_by_workflow_middleware() -> None:
    """Workflow.use middleware sees dynamic stages: skipping one records it SKIPPED by middleware."""
    log: list[str] = []

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("extra", actions=[recorder("x", log)]))

    async def skip_extra(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        if ctx.stage_id != "extra":
            await call_next()

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[insert])]).use(skip_extra)
    result = await af.run(wf)
    record = step(result, "extra")
    assert record.status is af.StepStatus.SKIPPED
    assert record.reason == "skipped by middleware"
    assert record.dynamic
    assert log == []


# ---- retry by calling call_next again (action level) ------------------------------------------


async def test_an_action_retry_policy_holds_under_two_action_middlewares() -> None:
    """With two action-level middlewares, an action's own retry policy still retries inside them."""
    log: list[str] = []
    attempts: list[int] = []

    @af.action(name="flaky", retry=af.Retry(attempts=2, backoff=lambda attempt: 0.0))
    async def flaky(ctx: af.ActionContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("first attempt")

    runner = af.Runner(action_middleware=[tracer("a", log), tracer("b", log)])
    result = await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[flaky])]))
    assert result.status is af.RunStatus.COMPLETED
    assert attempts == [1, 2]
    assert step(result, "s", "flaky").attempts == 2
    assert log == wrap(["a", "b"], "flaky", [])


async def test_hand_written_retry_discards_failed_attempts_and_counts_them() -> None:
    """Calling call_next 3 times: the action sees attempt 1, 2, 3; failed writes and insertions vanish."""
    attempts_seen: list[int] = []
    mw_attempts: list[int] = []
    log: list[str] = []

    @af.action
    async def flaky(ctx: af.ActionContext) -> None:
        n = ctx.attempt
        attempts_seen.append(n)
        ctx.store[f"written.{n}"] = n
        ctx.add_dynamic_action(recorder(f"extra-{n}", log))
        ctx.add_dynamic_stage(af.Stage(f"later-{n}", actions=[recorder(f"in-later-{n}", log)]))
        if n < 3:
            raise ConnectionError(f"attempt {n} failed")

    async def three_tries(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        for _ in range(3):
            if ctx.action is flaky:
                mw_attempts.append(ctx.attempt)
            try:
                await call_next()
            except ConnectionError:
                continue
            return

    stage = af.Stage("s", actions=[flaky]).use_action(three_tries)
    result = await af.run(af.Workflow("wf", stages=[stage]))

    assert attempts_seen == [1, 2, 3]
    assert mw_attempts == [1, 2, 3]
    assert {k: v for k, v in result.store.items() if k.startswith("written.")} == {"written.3": 3}
    assert log == ["extra-3", "in-later-3"]
    assert result.stage_order() == ["s", "later-3"]
    record = step(result, "s", "flaky")
    assert record.attempts == 3
    assert record.status is af.StepStatus.COMPLETED
    assert record.recovered_error is None
    assert record.error is None


async def test_hand_written_retry_that_gives_up_fails_with_the_last_error() -> None:
    """When every call_next raises and the middleware re-raises, the action fails with the last error."""
    errors = [ValueError("one"), ValueError("two")]

    @af.action
    async def always(ctx: af.ActionContext) -> None:
        raise errors[ctx.attempt - 1]

    async def two_tries(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        try:
            await call_next()
        except ValueError:
            await call_next()

    stage = af.Stage("s", actions=[always]).use_action(two_tries)
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    assert info.value.__cause__ is errors[1]
    assert info.value.result is not None
    assert step(info.value.result, "s", "always").attempts == 2


# ---- swallowing errors ----------------------------------------------------------------


async def test_swallow_at_action_level_records_completed_with_recovered_error() -> None:
    """An action middleware that swallows: the action is COMPLETED with recovered_error, the run goes on."""
    log: list[str] = []
    error = ValueError("ignored")
    stage = af.Stage("s", actions=[raiser("bad", error), recorder("next", log)]).use_action(swallower)
    result = await af.run(af.Workflow("wf", stages=[stage]))
    record = step(result, "s", "bad")
    assert record.status is af.StepStatus.COMPLETED
    assert record.recovered_error is error
    assert record.error is None
    assert log == ["next"]
    assert result.status is af.RunStatus.COMPLETED
    assert result.error is None


async def test_swallowed_action_failure_discards_its_writes() -> None:
    """An action whose error a middleware swallowed still has its store writes discarded."""

    @af.action
    async def half(ctx: af.ActionContext) -> None:
        ctx.store["half"] = True
        raise ValueError("no")

    stage = af.Stage("s", actions=[half]).use_action(swallower)
    result = await af.run(af.Workflow("wf", stages=[stage]))
    assert "half" not in result.store


async def test_swallow_at_stage_level_records_the_stage_completed_with_recovered_error() -> None:
    """A stage middleware that swallows: the stage is COMPLETED with recovered_error, the next stage runs."""
    log: list[str] = []
    error = ValueError("stage trouble")
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[raiser("bad", error), recorder("skipped", log)]),
            af.Stage("second", actions=[recorder("b", log)]),
        ],
    ).use(swallower)
    result = await af.run(wf)
    record = step(result, "first")
    assert record.status is af.StepStatus.COMPLETED
    assert record.recovered_error is error
    assert step(result, "first", "bad").status is af.StepStatus.FAILED
    assert log == ["b"]
    assert result.status is af.RunStatus.COMPLETED


async def test_actions_left_unrun_by_a_swallowed_failure_are_skipped_naming_it() -> None:
    """After a stage middleware swallowed a failure, the stage's later actions are skipped, naming it."""
    wf = af.Workflow(
        "wf", stages=[af.Stage("first", actions=[raiser("bad", ValueError("no")), recorder("later", [])])]
    ).use(swallower)
    result = await af.run(wf)
    later = step(result, "first", "later")
    assert (later.status, later.reason) == (af.StepStatus.SKIPPED, "action 'bad' failed")


async def test_swallow_at_actions_level_records_the_stage_completed_with_recovered_error() -> None:
    """A stage.use middleware that swallows: the stage is COMPLETED with recovered_error, the run goes on."""
    log: list[str] = []
    error = ValueError("block trouble")
    first = af.Stage("first", actions=[raiser("bad", error)]).use(swallower)
    wf = af.Workflow("wf", stages=[first, af.Stage("second", actions=[recorder("b", log)])])
    result = await af.run(wf)
    assert step(result, "first").status is af.StepStatus.COMPLETED
    assert step(result, "first").recovered_error is error
    assert log == ["b"]
    assert result.status is af.RunStatus.COMPLETED


async def test_a_failure_after_a_block_recovered_is_still_an_action_failure() -> None:
    """After a stage.use middleware swallowed an error, a later failing action raises af.ActionFailed."""
    later_error = KeyError("later")
    first = af.Stage("first", actions=[raiser("bad", ValueError("early"))]).use(swallower)
    wf = af.Workflow("wf", stages=[first, af.Stage("second", actions=[raiser("worse", later_error)])])
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert info.value.action_name == "worse"
    assert info.value.stage_id == "second"
    assert info.value.__cause__ is later_error


async def test_swallow_at_run_level_keeps_the_error_on_the_result() -> None:
    """A run middleware that swallows: the run is COMPLETED and result.recovered_error is the error."""
    log: list[str] = []
    error = ValueError("run trouble")
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[raiser("bad", error)]),
            af.Stage("second", actions=[recorder("b", log)]),
        ],
    )
    result = await af.Runner(middleware=[swallower]).run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert result.recovered_error is error
    assert result.error is None
    assert log == []


async def test_run_recovered_error_is_none_when_only_a_stage_recovered() -> None:
    """A run middleware that swallows nothing leaves result.recovered_error None though a stage recovered."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[raiser("bad", ValueError("x"))])]).use(swallower)
    result = await af.Runner(middleware=[passthrough]).run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert step(result, "s").recovered_error is not None
    assert result.recovered_error is None


async def test_no_recovered_error_on_a_clean_run() -> None:
    """With middleware that swallow but nothing failing, no record carries a recovered error."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])]).use_action(swallower)])
    wf.use(swallower)
    result = await af.Runner(middleware=[swallower]).run(wf)
    assert result.recovered_error is None
    assert all(s.recovered_error is None for s in result.steps)


# ---- raising ----------------------------------------------------------------------------


async def test_raising_action_middleware_fails_the_action() -> None:
    """An action middleware that raises: af.ActionFailed names the action; the cause is its error."""
    error = RuntimeError("middleware says no")

    async def refuse(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        raise error

    log: list[str] = []
    stage = af.Stage("s", actions=[recorder("a", log)]).use_action(refuse)
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    assert info.value.__cause__ is error
    assert info.value.stage_id == "s"
    assert info.value.action_name == "a"
    assert log == []
    assert info.value.result is not None
    assert info.value.result.status is af.RunStatus.FAILED


async def test_action_middleware_raising_after_call_next_fails_the_action() -> None:
    """An action middleware that raises after the action succeeded fails that action."""
    error = RuntimeError("post-check failed")

    async def check_after(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        await call_next()
        raise error

    stage = af.Stage("s", actions=[recorder("a", [])]).use_action(check_after)
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    assert info.value.__cause__ is error
    assert info.value.result is not None
    assert step(info.value.result, "s", "a").status is af.StepStatus.FAILED


async def test_raising_stage_middleware_fails_the_stage() -> None:
    """A stage middleware that raises: af.StageFailed names the stage, the cause is the middleware's error."""
    error = RuntimeError("stage gate closed")

    async def refuse(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        raise error

    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", log)])]).use(refuse)
    with pytest.raises(af.StageFailed) as info:
        await af.run(wf)
    assert info.value.__cause__ is error
    assert info.value.stage_id == "s"
    assert log == []
    assert info.value.result is not None
    assert step(info.value.result, "s").status is af.StepStatus.FAILED


async def test_raising_run_middleware_fails_the_run() -> None:
    """A run middleware that raises: the run fails (af.RunFailed) with the middleware's error as cause."""
    error = RuntimeError("not today")

    async def refuse(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        raise error

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])])])
    with pytest.raises(af.RunFailed) as info:
        await af.Runner(middleware=[refuse]).run(wf)
    assert info.value.__cause__ is error
    assert info.value.result is not None
    assert info.value.result.status is af.RunStatus.FAILED


async def _refuse(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    raise RuntimeError("not today")


async def _broken(ctx: af.ActionContext) -> None:
    raise RuntimeError("not today")


FAILURES: list[tuple[str, Callable[[], af.Runner], Callable[[], af.Workflow], type[af.RunFailed]]] = [
    (
        "action",
        af.Runner,
        lambda: af.Workflow("wf", stages=[af.Stage("s", actions=[af.action(name="broken")(_broken)])]),
        af.ActionFailed,
    ),
    (
        "stage",
        af.Runner,
        lambda: af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])])]).use(_refuse),
        af.StageFailed,
    ),
    (
        "run",
        lambda: af.Runner(middleware=[_refuse]),
        lambda: af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])])]),
        af.RunFailed,
    ),
]


@pytest.mark.parametrize(
    ("runner", "workflow", "kind"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_a_failure_names_its_run_and_workflow_and_keeps_the_error(
    runner: Callable[[], af.Runner], workflow: Callable[[], af.Workflow], kind: type[af.RunFailed]
) -> None:
    """ActionFailed, StageFailed and RunFailed carry the run id, the workflow id and the error raised."""
    with pytest.raises(kind) as info:
        await runner().run(workflow(), run_id="r-1")
    failure = info.value
    assert type(failure) is kind
    assert (failure.run_id, failure.workflow_id) == ("r-1", "wf")
    assert isinstance(failure.error, RuntimeError)
    assert str(failure.error) == "not today"


async def test_a_run_level_failure_says_which_run_and_what_was_raised() -> None:
    """The message of a RunFailed from the run level names the run, its workflow and the error."""
    with pytest.raises(af.RunFailed) as info:
        await af.Runner(middleware=[_refuse]).run(
            af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])])]), run_id="r-1"
        )
    assert str(info.value) == "run 'r-1' (workflow 'wf') failed: RuntimeError: not today"


# ---- call_next twice outside the action level ----------------------------------------------


def cause_of(failure: BaseException) -> BaseException:
    """The MiddlewareError behind a run failure."""
    cause = failure.__cause__
    assert isinstance(cause, af.MiddlewareError), repr(failure)
    return cause


async def test_call_next_twice_at_run_level_is_a_middleware_error() -> None:
    """A run middleware calling call_next twice fails the run with af.MiddlewareError naming the run."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", [])])])
    with pytest.raises(af.RunFailed) as info:
        await af.Runner(middleware=[twice]).run(wf, run_id="r-2")
    message = str(cause_of(info.value))
    assert "call_next" in message
    assert "twice" in message
    assert "r-2" in message
    assert "run" in message


async def test_call_next_twice_at_stage_level_is_a_middleware_error() -> None:
    """A stage middleware calling call_next twice fails the stage with af.MiddlewareError naming it."""
    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("gate", actions=[recorder("a", log)])]).use(twice)
    with pytest.raises(af.StageFailed) as info:
        await af.run(wf)
    message = str(cause_of(info.value))
    assert "call_next" in message
    assert "'gate'" in message
    assert log == ["a"]


async def test_call_next_twice_at_actions_level_is_a_middleware_error() -> None:
    """A stage.use middleware calling call_next twice fails the stage with af.MiddlewareError naming it."""
    log: list[str] = []
    stage = af.Stage("block", actions=[recorder("a", log)]).use(twice)
    with pytest.raises(af.StageFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    message = str(cause_of(info.value))
    assert "call_next" in message
    assert "'block'" in message
    assert "by an actions-level middleware" in message
    assert log == ["a"]


async def test_call_next_twice_at_action_level_runs_the_action_twice() -> None:
    """At action level a second call_next is allowed: it is another attempt."""
    seen: list[int] = []

    @af.action
    async def count(ctx: af.ActionContext) -> None:
        seen.append(ctx.attempt)

    stage = af.Stage("s", actions=[count]).use_action(twice)
    result = await af.run(af.Workflow("wf", stages=[stage]))
    assert seen == [1, 2]
    assert step(result, "s", "count").attempts == 2


# ---- bad middleware at registration ------------------------------------------------------


def sync_mw(ctx: Any, call_next: Any) -> None:
    """Not async."""


async def one_arg_mw(ctx: Any) -> None:
    """Misses call_next."""


async def three_arg_mw(ctx: Any, call_next: Any, extra: Any) -> None:
    """One argument too many."""


BAD_MIDDLEWARE = [
    pytest.param(sync_mw, id="sync-function"),
    pytest.param(one_arg_mw, id="one-argument"),
    pytest.param(three_arg_mw, id="three-arguments"),
    pytest.param(42, id="not-callable"),
    pytest.param("logging", id="a-string"),
]


def register_runner_run(mw: Any) -> object:
    return af.Runner(middleware=[mw])


def register_runner_stage(mw: Any) -> object:
    return af.Runner(stage_middleware=[mw])


def register_runner_action(mw: Any) -> object:
    return af.Runner(action_middleware=[mw])


def register_wf_use(mw: Any) -> object:
    return af.Workflow("orders").use(mw)


def register_wf_use_action(mw: Any) -> object:
    return af.Workflow("orders").use_action(mw)


def register_stage_use(mw: Any) -> object:
    return af.Stage("checkout").use(mw)


def register_stage_use_action(mw: Any) -> object:
    return af.Stage("checkout").use_action(mw)


REGISTRATIONS = [
    pytest.param(register_runner_run, "run level", id="Runner(middleware)"),
    pytest.param(register_runner_stage, "stage level", id="Runner(stage_middleware)"),
    pytest.param(register_runner_action, "action level", id="Runner(action_middleware)"),
    pytest.param(register_wf_use, "'orders'", id="Workflow.use"),
    pytest.param(register_wf_use_action, "'orders'", id="Workflow.use_action"),
    pytest.param(register_stage_use, "'checkout'", id="Stage.use"),
    pytest.param(register_stage_use_action, "'checkout'", id="Stage.use_action"),
]


@pytest.mark.parametrize("bad", BAD_MIDDLEWARE)
@pytest.mark.parametrize(("register", "where"), REGISTRATIONS)
def test_bad_middleware_is_rejected_at_registration(
    register: Callable[[Any], object], where: str, bad: Any
) -> None:
    """A middleware that is not an async callable of (ctx, call_next) is a TypeError naming where."""
    with pytest.raises(TypeError) as info:
        register(bad)
    message = str(info.value)
    assert "middleware" in message
    assert where in message


def test_runner_middleware_must_be_a_list() -> None:
    """A bare middleware instead of a list is a TypeError at Runner(...)."""
    with pytest.raises(TypeError, match="list"):
        af.Runner(middleware=passthrough)  # type: ignore[arg-type]


def test_an_object_with_an_async_call_is_accepted() -> None:
    """An instance whose __call__ is async (ctx, call_next) is a valid middleware at every scope."""

    class Mw:
        async def __call__(self, ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
            await call_next()

    af.Runner(middleware=[Mw()], stage_middleware=[Mw()], action_middleware=[Mw()])
    af.Workflow("w").use(Mw()).use_action(Mw())
    af.Stage("s").use(Mw()).use_action(Mw())


def test_use_returns_its_owner_for_chaining() -> None:
    """Workflow.use/use_action return the workflow; Stage.use/use_action return the stage."""
    wf = af.Workflow("w")
    stage = af.Stage("s")
    assert wf.use(passthrough) is wf
    assert wf.use_action(passthrough) is wf
    assert stage.use(passthrough) is stage
    assert stage.use_action(passthrough) is stage
