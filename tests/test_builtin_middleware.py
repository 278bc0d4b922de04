"""Built-in middleware: logging, timing, timeout, retry, inject_store, skip_stages, recover."""

from __future__ import annotations

from datetime import timedelta
from time import perf_counter
from typing import Any

import anyio
import pytest
from helpers import raiser, recorder, sleeper
from loguru import logger

import asyncflow as af
from asyncflow import backoff
from asyncflow import middleware as mw

# ---- helpers ---------------------------------------------------------------------


def failing_until(name: str, good_attempt: int, error_type: type[Exception] = ConnectionError) -> af.Action:
    """An action that raises ``error_type`` on every attempt before ``good_attempt``."""

    async def body(ctx: af.ActionContext) -> None:
        if ctx.attempt < good_attempt:
            raise error_type(f"attempt {ctx.attempt} of {name}")
        ctx.store[f"{name}.done"] = ctx.attempt

    return af.action(name=name)(body)


def one_stage(*actions: af.Action, stage_id: str = "s") -> af.Workflow:
    """A workflow "wf" of one stage holding ``actions``."""
    return af.Workflow("wf", stages=[af.Stage(stage_id, actions=list(actions))])


def step(result: af.RunResult, stage_id: str, action_name: str | None = None) -> af.StepRecord:
    """The one record of ``stage_id`` (or of its action ``action_name``)."""
    found = [s for s in result.steps if s.stage_id == stage_id and s.action_name == action_name]
    assert len(found) == 1, found
    return found[0]


# ---- logging -----------------------------------------------------------------------


async def test_logging_logs_start_and_end_of_each_step(asyncflow_log: list[dict[str, Any]]) -> None:
    """mw.logging at every level logs "started" and "finished" asyncflow_log for the run, stage and action."""
    stage = af.Stage("s", actions=[recorder("a", [])])
    runner = af.Runner(
        middleware=[mw.logging()], stage_middleware=[mw.logging()], action_middleware=[mw.logging()]
    )
    await runner.run(af.Workflow("wf", stages=[stage]), run_id="r-log")
    messages = [r["message"] for r in asyncflow_log if r["name"] == "asyncflow.middleware.logging"]
    assert "run 'r-log' of workflow 'wf' started" in messages
    assert "stage 's' in run 'r-log' started" in messages
    assert "action 'a' of stage 's' in run 'r-log' started" in messages
    assert any(m.startswith("action 'a' of stage 's' in run 'r-log' finished in") for m in messages)
    assert any(m.startswith("stage 's' in run 'r-log' finished in") for m in messages)
    assert any(m.startswith("run 'r-log' of workflow 'wf' finished in") for m in messages)


async def test_logging_lines_carry_the_run_and_step_ids(asyncflow_log: list[dict[str, Any]]) -> None:
    """mw.logging asyncflow_log are bound with run_id, workflow_id, stage_id and action."""
    await af.Runner(action_middleware=[mw.logging()]).run(one_stage(recorder("a", [])), run_id="r-ids")
    ours = [r for r in asyncflow_log if r["name"] == "asyncflow.middleware.logging"]
    assert ours
    for record in ours:
        assert record["extra"]["run_id"] == "r-ids"
        assert record["extra"]["workflow_id"] == "wf"
        assert record["extra"]["stage_id"] == "s"
        assert record["extra"]["action"] == "a"


async def test_logging_logs_failures_at_error_level(asyncflow_log: list[dict[str, Any]]) -> None:
    """mw.logging logs a failed step at ERROR, naming the error."""
    wf = one_stage(raiser("bad", ValueError("broken")))
    with pytest.raises(af.ActionFailed):
        await af.Runner(action_middleware=[mw.logging()]).run(wf)
    errors = [
        r for r in asyncflow_log if r["name"] == "asyncflow.middleware.logging" and r["level"].name == "ERROR"
    ]
    assert len(errors) == 1
    assert "ValueError: broken" in errors[0]["message"]
    assert "action 'bad'" in errors[0]["message"]


async def test_logging_uses_the_given_level(asyncflow_log: list[dict[str, Any]]) -> None:
    """mw.logging(level="DEBUG") logs start and end at DEBUG."""
    await af.Runner(action_middleware=[mw.logging(level="DEBUG")]).run(one_stage(recorder("a", [])))
    ours = [r for r in asyncflow_log if r["name"] == "asyncflow.middleware.logging"]
    assert ours
    assert {r["level"].name for r in ours} == {"DEBUG"}


async def test_logging_is_silent_until_asyncflow_is_enabled() -> None:
    """Without logger.enable("asyncflow") mw.logging emits nothing."""
    captured: list[str] = []
    sink_id = logger.add(lambda m: captured.append(m.record["name"] or ""), level="DEBUG")
    try:
        await af.Runner(action_middleware=[mw.logging()]).run(one_stage(recorder("a", [])))
    finally:
        logger.remove(sink_id)
    assert "asyncflow.middleware.logging" not in captured


def test_logging_rejects_a_bad_level() -> None:
    """mw.logging(level=...) needs a level name."""
    with pytest.raises(TypeError, match="level"):
        mw.logging(level=10)  # type: ignore[arg-type]


# ---- timing ----------------------------------------------------------------------------


async def test_timing_records_durations_per_level_in_the_result() -> None:
    """mw.timing at the four levels puts one af.Timing per step in result.timings, in the order they ended."""
    stage = af.Stage("s", actions=[sleeper("a", 0.01)]).use(mw.timing())
    runner = af.Runner(
        middleware=[mw.timing()], stage_middleware=[mw.timing()], action_middleware=[mw.timing()]
    )
    result = await runner.run(af.Workflow("wf", stages=[stage]))
    assert [(t.level, t.stage_id, t.action_name) for t in result.timings] == [
        ("action", "s", "a"),
        ("actions", "s", None),
        ("stage", "s", None),
        ("run", None, None),
    ]
    assert all(isinstance(t, af.Timing) for t in result.timings)
    assert all(0.005 <= t.seconds < 5 for t in result.timings)
    seconds = [t.seconds for t in result.timings]
    assert seconds == sorted(seconds)


async def test_timing_sends_timing_events() -> None:
    """mw.timing sends a TIMING event per measured step, with the step's ids and the duration."""
    events: list[af.Event] = []
    runner = af.Runner(action_middleware=[mw.timing()])
    runner.on_event(events.append)
    result = await runner.run(one_stage(recorder("a", []), recorder("b", [])), run_id="r-t")
    timings = [e for e in events if e.kind is af.EventKind.TIMING]
    assert [(e.run_id, e.stage_id, e.action_name) for e in timings] == [("r-t", "s", "a"), ("r-t", "s", "b")]
    assert [e.duration for e in timings] == [t.seconds for t in result.timings]


async def test_timing_of_a_stage_sends_an_event_without_an_action() -> None:
    """mw.timing around a stage sends a TIMING event naming the stage and no action."""
    events: list[af.Event] = []
    runner = af.Runner(stage_middleware=[mw.timing()])
    runner.on_event(events.append)
    await runner.run(one_stage(recorder("a", [])), run_id="r-s")
    timings = [e for e in events if e.kind is af.EventKind.TIMING]
    assert [(e.run_id, e.stage_id, e.action_name) for e in timings] == [("r-s", "s", None)]


async def test_timing_records_failed_steps_too() -> None:
    """A failed action's duration is recorded as well."""
    with pytest.raises(af.ActionFailed) as info:
        await af.Runner(action_middleware=[mw.timing()]).run(one_stage(raiser("bad", ValueError("x"))))
    assert info.value.result is not None
    assert [(t.level, t.action_name) for t in info.value.result.timings] == [("action", "bad")]


async def test_no_timings_without_the_timing_middleware() -> None:
    """result.timings is empty when nothing measures."""
    result = await af.run(one_stage(recorder("a", [])))
    assert result.timings == []


# ---- timeout ---------------------------------------------------------------------------


async def test_timeout_at_action_level_fails_with_action_timeout() -> None:
    """mw.timeout on actions: a slow one fails with af.ActionTimeout naming run, stage, action, limit."""
    started = perf_counter()
    wf = one_stage(sleeper("slow", 10), stage_id="fetch")
    with pytest.raises(af.ActionFailed) as info:
        await af.Runner(action_middleware=[mw.timeout(0.05)]).run(wf, run_id="r-to")
    assert perf_counter() - started < 2
    timeout = info.value.__cause__
    assert isinstance(timeout, af.ActionTimeout)
    assert isinstance(timeout, TimeoutError)
    assert isinstance(timeout, af.StepTimeout)
    assert (timeout.run_id, timeout.stage_id, timeout.action_name, timeout.seconds) == (
        "r-to",
        "fetch",
        "slow",
        0.05,
    )
    message = str(timeout)
    for part in ("r-to", "'fetch'", "'slow'", "0.05"):
        assert part in message
    assert info.value.action_name == "slow"


async def test_timeout_takes_a_timedelta() -> None:
    """mw.timeout(timedelta(...)) limits a step as the same number of seconds would."""
    with pytest.raises(af.ActionFailed) as info:
        await af.Runner(action_middleware=[mw.timeout(timedelta(milliseconds=50))]).run(
            one_stage(sleeper("slow", 10))
        )
    assert isinstance(info.value.__cause__, af.ActionTimeout)
    assert info.value.__cause__.seconds == 0.05


async def test_timeout_cancels_the_action_through_a_cancel_scope() -> None:
    """A timed-out action receives cancellation (its cleanup runs) rather than being abandoned."""
    cleaned: list[bool] = []

    @af.action
    async def slow(ctx: af.ActionContext) -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cleaned.append(True)
            raise

    with pytest.raises(af.ActionFailed):
        await af.Runner(action_middleware=[mw.timeout(0.02)]).run(one_stage(slow))
    assert cleaned == [True]


async def test_retry_outside_timeout_retries_timed_out_attempts() -> None:
    """mw.retry registered before mw.timeout retries an attempt that timed out."""

    @af.action
    async def first_slow(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            await anyio.sleep(10)

    runner = af.Runner(action_middleware=[mw.retry(attempts=2, backoff=backoff.fixed(0)), mw.timeout(0.02)])
    result = await runner.run(one_stage(first_slow))
    assert result.status is af.RunStatus.COMPLETED
    assert step(result, "s", "first-slow").attempts == 2


async def test_timeout_lets_a_fast_action_complete() -> None:
    """mw.timeout does not disturb an action that ends in time."""
    result = await af.Runner(action_middleware=[mw.timeout(5)]).run(one_stage(sleeper("quick", 0)))
    assert result.status is af.RunStatus.COMPLETED


async def test_timed_out_action_is_recorded_failed_with_the_timeout() -> None:
    """The timed-out action's record is FAILED with the af.ActionTimeout as its error."""
    with pytest.raises(af.ActionFailed) as info:
        await af.Runner(action_middleware=[mw.timeout(0.02)]).run(one_stage(sleeper("slow", 10)))
    assert info.value.result is not None
    record = step(info.value.result, "s", "slow")
    assert record.status is af.StepStatus.FAILED
    assert isinstance(record.error, af.ActionTimeout)


async def test_timeout_at_stage_level_fails_with_step_timeout() -> None:
    """mw.timeout on stages: a slow one fails with af.StepTimeout (not ActionTimeout) naming it, the limit."""
    started = perf_counter()
    wf = af.Workflow("wf", stages=[af.Stage("fetch", actions=[sleeper("slow", 10)])]).use(mw.timeout(0.05))
    with pytest.raises(af.StageFailed) as info:
        await af.run(wf, run_id="r-st")
    assert perf_counter() - started < 2
    timeout = info.value.__cause__
    assert isinstance(timeout, af.StepTimeout)
    assert not isinstance(timeout, af.ActionTimeout)
    assert isinstance(timeout, TimeoutError)
    assert timeout.seconds == 0.05
    for part in ("'fetch'", "r-st", "0.05"):
        assert part in str(timeout)
    assert info.value.stage_id == "fetch"


async def test_timeout_at_run_level_fails_the_run_with_step_timeout() -> None:
    """mw.timeout at run level fails the run with an af.StepTimeout naming the run."""
    wf = one_stage(sleeper("slow", 10))
    with pytest.raises(af.RunFailed) as info:
        await af.Runner(middleware=[mw.timeout(0.05)]).run(wf, run_id="r-rt")
    timeout = info.value.__cause__
    assert isinstance(timeout, af.StepTimeout)
    assert "r-rt" in str(timeout)


@pytest.mark.parametrize("seconds", [0, -1, -0.5])
def test_timeout_rejects_non_positive_seconds(seconds: float) -> None:
    """mw.timeout(0) or a negative limit is a ValueError naming mw.timeout."""
    with pytest.raises(ValueError, match=r"mw\.timeout"):
        mw.timeout(seconds)


@pytest.mark.parametrize("seconds", ["5", None])
def test_timeout_rejects_non_numbers(seconds: Any) -> None:
    """mw.timeout needs a number of seconds."""
    with pytest.raises(TypeError, match=r"mw\.timeout"):
        mw.timeout(seconds)


# ---- retry -------------------------------------------------------------------------------


async def test_retry_retries_then_succeeds() -> None:
    """mw.retry runs a failing action again until it succeeds, counting attempts."""
    runner = af.Runner(action_middleware=[mw.retry(attempts=3, backoff=backoff.fixed(0))])
    result = await runner.run(one_stage(failing_until("flaky", 3)))
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["flaky.done"] == 3
    record = step(result, "s", "flaky")
    assert record.attempts == 3
    assert record.status is af.StepStatus.COMPLETED


async def test_retry_gives_up_after_attempts_with_the_last_error() -> None:
    """mw.retry stops after `attempts` tries and the action fails with the last attempt's error."""
    errors: list[Exception] = []

    @af.action
    async def always(ctx: af.ActionContext) -> None:
        errors.append(ConnectionError(f"try {ctx.attempt}"))
        raise errors[-1]

    runner = af.Runner(action_middleware=[mw.retry(attempts=4, backoff=backoff.fixed(0))])
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(one_stage(always))
    assert len(errors) == 4
    assert info.value.__cause__ is errors[-1]
    assert info.value.result is not None
    assert step(info.value.result, "s", "always").attempts == 4


async def test_retry_never_retries_non_retryable() -> None:
    """An af.NonRetryable (or subclass) raised by the action is not retried."""

    class Fatal(af.NonRetryable):
        pass

    calls: list[int] = []

    @af.action
    async def fatal(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise Fatal("give up")

    runner = af.Runner(action_middleware=[mw.retry(attempts=5, backoff=backoff.fixed(0))])
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(one_stage(fatal))
    assert calls == [1]
    assert isinstance(info.value.__cause__, Fatal)


async def test_retry_on_types_retries_only_those() -> None:
    """mw.retry(retry_on=(ConnectionError,)) does not retry a ValueError."""
    calls: list[int] = []

    @af.action
    async def wrong(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("not transient")

    runner = af.Runner(
        action_middleware=[mw.retry(attempts=3, backoff=backoff.fixed(0), retry_on=(ConnectionError,))]
    )
    with pytest.raises(af.ActionFailed):
        await runner.run(one_stage(wrong))
    assert calls == [1]


async def test_retry_on_types_retries_matching_errors() -> None:
    """mw.retry(retry_on=OSError) retries a ConnectionError (a subclass)."""
    runner = af.Runner(action_middleware=[mw.retry(attempts=2, backoff=backoff.fixed(0), retry_on=OSError)])
    result = await runner.run(one_stage(failing_until("flaky", 2)))
    assert step(result, "s", "flaky").attempts == 2


async def test_retry_on_predicate_decides() -> None:
    """mw.retry(retry_on=predicate) retries when the predicate holds and stops when it does not."""
    calls: list[int] = []

    @af.action
    async def sometimes(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("transient" if ctx.attempt == 1 else "permanent")

    retry = mw.retry(attempts=5, backoff=backoff.fixed(0), retry_on=lambda exc: "transient" in str(exc))
    with pytest.raises(af.ActionFailed) as info:
        await af.Runner(action_middleware=[retry]).run(one_stage(sometimes))
    assert calls == [1, 2]
    assert str(info.value.__cause__) == "permanent"


async def test_retry_discards_failed_attempts_writes() -> None:
    """With mw.retry, a failed attempt's store writes are gone; the successful one's remain."""

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store[f"w{ctx.attempt}"] = True
        if ctx.attempt == 1:
            raise ConnectionError("first")

    runner = af.Runner(action_middleware=[mw.retry(attempts=2, backoff=backoff.fixed(0))])
    result = await runner.run(one_stage(write))
    assert "w1" not in result.store
    assert result.store["w2"] is True


async def test_retry_passes_the_failed_attempt_number_to_backoff() -> None:
    """mw.retry asks its backoff for the delay after attempt 1, 2, ... that failed."""
    asked: list[int] = []

    def record(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    runner = af.Runner(action_middleware=[mw.retry(attempts=3, backoff=record)])
    with pytest.raises(af.ActionFailed):
        await runner.run(one_stage(raiser("bad", ConnectionError("down"))))
    assert asked == [1, 2]


async def test_retry_at_stage_level_is_a_middleware_error() -> None:
    """mw.retry registered at stage level fails the stage with af.MiddlewareError saying it wraps actions."""
    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", log)])]).use(mw.retry())
    with pytest.raises(af.StageFailed) as info:
        await af.run(wf)
    cause = info.value.__cause__
    assert isinstance(cause, af.MiddlewareError)
    assert "stage" in str(cause)
    assert "action" in str(cause)
    assert log == []


async def test_retry_at_run_level_is_a_middleware_error() -> None:
    """mw.retry registered at run level fails the run with af.MiddlewareError."""
    with pytest.raises(af.RunFailed) as info:
        await af.Runner(middleware=[mw.retry()]).run(one_stage(recorder("a", [])))
    assert isinstance(info.value.__cause__, af.MiddlewareError)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"attempts": 0}, ValueError, id="zero-attempts"),
        pytest.param({"attempts": "3"}, TypeError, id="string-attempts"),
        pytest.param({"backoff": 1.0}, TypeError, id="backoff-not-callable"),
        pytest.param({"retry_on": "ValueError"}, TypeError, id="retry-on-string"),
    ],
)
def test_retry_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """mw.retry validates its arguments when it is built."""
    with pytest.raises(error):
        mw.retry(**kwargs)


# ---- inject_store -------------------------------------------------------------------------


async def test_inject_store_at_run_level_puts_values_before_the_first_stage() -> None:
    """mw.inject_store at run level: its values are in the store (overwriting) when the first action runs."""
    seen: list[object] = []

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append((ctx.store["api.url"], ctx.store["kept"]))

    runner = af.Runner(middleware=[mw.inject_store({"api.url": "http://x"})])
    result = await runner.run(one_stage(read), store={"api.url": "old", "kept": 1})
    assert seen == [("http://x", 1)]
    assert result.store["api.url"] == "http://x"


async def test_inject_store_at_action_level_reinjects_before_each_action() -> None:
    """mw.inject_store at action level sets its values again before every action."""
    seen: list[object] = []

    @af.action
    async def bump(ctx: af.ActionContext) -> None:
        seen.append(ctx.store["n"])
        ctx.store["n"] = ctx.store["n"] + 1

    stage = af.Stage("s", actions=[bump, bump]).use_action(mw.inject_store({"n": 0}))
    await af.run(af.Workflow("wf", stages=[stage]))
    assert seen == [0, 0]


def test_inject_store_rejects_a_non_mapping() -> None:
    """mw.inject_store takes a mapping with string keys."""
    with pytest.raises(TypeError):
        mw.inject_store([("k", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mw.inject_store({1: "v"})  # type: ignore[dict-item]


# ---- skip_stages ----------------------------------------------------------------------------


async def test_skip_stages_skips_where_the_predicate_holds() -> None:
    """mw.skip_stages gets each stage and the store; a stage it skips is recorded SKIPPED by middleware."""
    log: list[str] = []
    calls: list[tuple[str, bool]] = []

    def slow_or_flagged(stage: af.Stage, store: af.Store) -> bool:
        calls.append((stage.id, isinstance(store, af.Store)))
        return "slow" in stage.tags or bool(store.get_or(f"skip.{stage.id}", False))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[recorder("in-a", log)]),
            af.Stage("b", tags={"slow"}, actions=[recorder("in-b", log)]),
            af.Stage("c", actions=[recorder("in-c", log)]),
            af.Stage("d", actions=[recorder("in-d", log)]),
        ],
    ).use(mw.skip_stages(slow_or_flagged))
    result = await af.run(wf, store={"skip.c": True})
    assert calls == [("a", True), ("b", True), ("c", True), ("d", True)]
    assert log == ["in-a", "in-d"]
    for stage_id in ("b", "c"):
        record = step(result, stage_id)
        assert record.status is af.StepStatus.SKIPPED
        assert record.reason == "skipped by middleware"
    assert result.status is af.RunStatus.COMPLETED


async def test_skip_stages_sees_dynamic_stages() -> None:
    """mw.skip_stages also filters stages inserted at run time."""
    log: list[str] = []

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("extra", tags={"slow"}, actions=[recorder("x", log)]))

    runner = af.Runner(stage_middleware=[mw.skip_stages(lambda stage, store: "slow" in stage.tags)])
    result = await runner.run(one_stage(insert))
    assert log == []
    assert step(result, "extra").status is af.StepStatus.SKIPPED


async def test_skip_stages_at_action_level_is_a_middleware_error() -> None:
    """mw.skip_stages registered at action level fails with af.MiddlewareError."""
    runner = af.Runner(action_middleware=[mw.skip_stages(lambda stage, store: False)])
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(one_stage(recorder("a", [])))
    assert isinstance(info.value.__cause__, af.MiddlewareError)


def test_skip_stages_rejects_a_non_callable() -> None:
    """mw.skip_stages needs a predicate."""
    with pytest.raises(TypeError):
        mw.skip_stages("slow")  # type: ignore[arg-type]


# ---- recover ---------------------------------------------------------------------------------


async def test_recover_swallows_errors_the_predicate_accepts() -> None:
    """mw.recover(predicate true): the action is COMPLETED with recovered_error and the run goes on."""
    log: list[str] = []
    error = LookupError("optional data missing")
    stage = af.Stage("s", actions=[raiser("opt", error), recorder("next", log)])
    stage.use_action(mw.recover(lambda exc: isinstance(exc, LookupError)))
    result = await af.run(af.Workflow("wf", stages=[stage]))
    record = step(result, "s", "opt")
    assert record.status is af.StepStatus.COMPLETED
    assert record.recovered_error is error
    assert log == ["next"]
    assert result.status is af.RunStatus.COMPLETED


async def test_recover_reraises_errors_the_predicate_rejects() -> None:
    """mw.recover(predicate false): the error propagates and the run fails."""
    error = ValueError("real problem")
    stage = af.Stage("s", actions=[raiser("bad", error)])
    stage.use_action(mw.recover(lambda exc: isinstance(exc, LookupError)))
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    assert info.value.__cause__ is error


async def test_recover_without_predicate_swallows_any_error() -> None:
    """mw.recover() swallows every error of what it wraps."""
    runner = af.Runner(action_middleware=[mw.recover()])
    result = await runner.run(one_stage(raiser("bad", RuntimeError("x"))))
    assert result.status is af.RunStatus.COMPLETED
    assert isinstance(step(result, "s", "bad").recovered_error, RuntimeError)


async def test_recover_never_swallows_a_bail() -> None:
    """mw.recover() lets ctx.bail through: the run ends BAILED with the reason."""
    log: list[str] = []

    @af.action
    async def stop(ctx: af.ActionContext) -> None:
        ctx.bail("nothing to do")

    runner = af.Runner(
        middleware=[mw.recover()], stage_middleware=[mw.recover()], action_middleware=[mw.recover()]
    )
    result = await runner.run(one_stage(stop, recorder("after", log)))
    assert result.status is af.RunStatus.BAILED
    assert result.bail_reason == "nothing to do"
    assert log == []


async def test_recover_at_stage_level_records_the_stage_recovered() -> None:
    """mw.recover at stage level: the stage is COMPLETED with recovered_error and the next stage runs."""
    log: list[str] = []
    error = ValueError("stage problem")
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[raiser("bad", error)]),
            af.Stage("second", actions=[recorder("b", log)]),
        ],
    ).use(mw.recover())
    result = await af.run(wf)
    record = step(result, "first")
    assert record.status is af.StepStatus.COMPLETED
    assert record.recovered_error is error
    assert log == ["b"]


def test_recover_rejects_a_non_callable() -> None:
    """mw.recover needs a predicate."""
    with pytest.raises(TypeError):
        mw.recover(ValueError("x"))  # type: ignore[arg-type]


def test_every_builtin_is_a_valid_middleware_at_registration() -> None:
    """Each built-in factory returns something every registration point accepts."""
    built = [
        mw.logging(),
        mw.timing(),
        mw.timeout(1),
        mw.retry(),
        mw.inject_store({}),
        mw.skip_stages(lambda stage, store: False),
        mw.recover(),
    ]
    af.Runner(middleware=built, stage_middleware=built, action_middleware=built)
    wf = af.Workflow("wf")
    stage = af.Stage("s")
    for one in built:
        wf.use(one).use_action(one)
        stage.use(one).use_action(one)


async def test_recover_never_swallows_cancellation() -> None:
    """mw.recover() lets cancellation through: the action is not recorded recovered, nothing runs after it."""
    log: list[str] = []
    entered = anyio.Event()

    @af.action
    async def hang(ctx: af.ActionContext) -> None:
        entered.set()
        await anyio.sleep_forever()

    runner = af.Runner(
        middleware=[mw.recover()], stage_middleware=[mw.recover()], action_middleware=[mw.recover()]
    )
    results: list[af.RunResult] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:

            async def run() -> None:
                results.append(await runner.run(one_stage(hang, recorder("after", log))))

            group.start_soon(run)
            await entered.wait()
            group.cancel_scope.cancel()
    assert log == []
    assert results == []
