"""Retry and timeout options on actions, stages and runners, their precedence, back-off, cancellation."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from time import perf_counter
from typing import Any

import anyio
import pytest
from helpers import eventually

import asyncflow as af
from asyncflow import backoff
from asyncflow import middleware as mw
from asyncflow.testing import FakeClock

NO_WAIT = backoff.fixed(0)

# ---- helpers ---------------------------------------------------------------------


def one_stage(*actions: af.Action, **stage_options: Any) -> af.Workflow:
    """A workflow "wf" of one stage "s" holding ``actions``."""
    return af.Workflow("wf", stages=[af.Stage("s", actions=list(actions), **stage_options)])


def step(result: af.RunResult, stage_id: str, action_name: str | None = None) -> af.StepRecord:
    """The one record of ``stage_id`` (or of its action ``action_name``)."""
    found = [s for s in result.steps if s.stage_id == stage_id and s.action_name == action_name]
    assert len(found) == 1, found
    return found[0]


def always_failing(name: str, calls: list[int], **options: Any) -> af.Action:
    """An action that records ``ctx.attempt`` in ``calls`` and always raises ConnectionError."""

    async def body(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise ConnectionError(f"{name} attempt {ctx.attempt}")

    return af.action(name=name, **options)(body)


def slow(name: str, seconds: float, **options: Any) -> af.Action:
    """An action that sleeps ``seconds``."""

    async def body(ctx: af.ActionContext) -> None:
        await anyio.sleep(seconds)

    return af.action(name=name, **options)(body)


async def attempts_of(wf: af.Workflow, runner: af.Runner | None = None) -> int:
    """How many attempts the failing action of ``wf`` made before the run failed."""
    with pytest.raises(af.ActionFailed) as info:
        await (runner or af.Runner()).run(wf)
    assert info.value.result is not None
    return step(info.value.result, info.value.stage_id, info.value.action_name).attempts


async def timeout_of(wf: af.Workflow, runner: af.Runner | None = None) -> float | None:
    """The limit an action of ``wf`` timed out at, or None if the run completed."""
    try:
        await (runner or af.Runner()).run(wf)
    except af.ActionFailed as failure:
        cause = failure.__cause__
        assert isinstance(cause, af.ActionTimeout), repr(cause)
        return cause.seconds
    return None


# ---- retry options --------------------------------------------------------------------


async def test_action_retry_option_retries_until_success() -> None:
    """@af.action(retry=af.Retry(...)) tries again; the action sees ctx.attempt 1, 2, 3."""
    seen: list[int] = []

    @af.action(retry=af.Retry(attempts=3, backoff=NO_WAIT))
    async def flaky(ctx: af.ActionContext) -> None:
        seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("down")

    result = await af.run(one_stage(flaky))
    assert seen == [1, 2, 3]
    record = step(result, "s", "flaky")
    assert record.attempts == 3
    assert record.status is af.StepStatus.COMPLETED


async def test_action_retry_option_gives_up_with_the_last_error() -> None:
    """After Retry.attempts tries the run fails with the last attempt's error as cause."""
    calls: list[int] = []
    wf = one_stage(always_failing("down", calls, retry=af.Retry(attempts=3, backoff=NO_WAIT)))
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert calls == [1, 2, 3]
    assert str(info.value.__cause__) == "down attempt 3"


async def test_action_subclass_retry_attribute() -> None:
    """An Action subclass's `retry` class attribute is used."""
    calls: list[int] = []

    class CallApi(af.Action):
        retry = af.Retry(attempts=2, backoff=NO_WAIT)

        async def execute(self, ctx: af.ActionContext) -> None:
            calls.append(ctx.attempt)
            raise ConnectionError("down")

    assert await attempts_of(one_stage(CallApi())) == 2
    assert calls == [1, 2]


async def test_stage_retry_is_the_default_for_its_actions() -> None:
    """Stage(retry=...) applies to each of its actions that has none of its own."""
    calls: list[int] = []
    wf = one_stage(always_failing("down", calls), retry=af.Retry(attempts=3, backoff=NO_WAIT))
    assert await attempts_of(wf) == 3


async def test_stage_retry_applies_to_dynamic_actions_in_it() -> None:
    """An action inserted into a stage with retry= gets the stage's retry too."""
    calls: list[int] = []

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(always_failing("dyn", calls))

    assert await attempts_of(one_stage(insert, retry=af.Retry(attempts=2, backoff=NO_WAIT))) == 2


async def test_runner_retry_is_the_default_for_every_action() -> None:
    """Runner(retry=...) applies to actions without their own or their stage's retry."""
    calls: list[int] = []
    runner = af.Runner(retry=af.Retry(attempts=4, backoff=NO_WAIT))
    assert await attempts_of(one_stage(always_failing("down", calls)), runner) == 4


async def test_action_retry_beats_stage_retry() -> None:
    """An action's own retry wins over its stage's."""
    calls: list[int] = []
    action = always_failing("down", calls, retry=af.Retry(attempts=2, backoff=NO_WAIT))
    assert await attempts_of(one_stage(action, retry=af.Retry(attempts=5, backoff=NO_WAIT))) == 2


async def test_stage_retry_beats_runner_retry() -> None:
    """A stage's retry wins over the runner's."""
    calls: list[int] = []
    wf = one_stage(always_failing("down", calls), retry=af.Retry(attempts=2, backoff=NO_WAIT))
    runner = af.Runner(retry=af.Retry(attempts=5, backoff=NO_WAIT))
    assert await attempts_of(wf, runner) == 2


async def test_action_retry_beats_runner_retry() -> None:
    """An action's own retry wins over the runner's."""
    calls: list[int] = []
    wf = one_stage(always_failing("down", calls, retry=af.Retry(attempts=1)))
    runner = af.Runner(retry=af.Retry(attempts=5, backoff=NO_WAIT))
    assert await attempts_of(wf, runner) == 1


async def test_no_retry_by_default() -> None:
    """Without any retry option an action is tried once."""
    calls: list[int] = []
    assert await attempts_of(one_stage(always_failing("down", calls))) == 1


async def test_retry_option_never_retries_non_retryable() -> None:
    """af.NonRetryable raised under a Retry option fails at once."""
    calls: list[int] = []

    @af.action(retry=af.Retry(attempts=5, backoff=NO_WAIT))
    async def fatal(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise af.NonRetryable("no point")

    assert await attempts_of(one_stage(fatal)) == 1
    assert calls == [1]


async def test_retry_option_retry_on_types() -> None:
    """Retry(retry_on=(ConnectionError,)) does not retry a ValueError."""
    calls: list[int] = []

    @af.action(retry=af.Retry(attempts=5, backoff=NO_WAIT, retry_on=(ConnectionError,)))
    async def wrong(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("bad input")

    assert await attempts_of(one_stage(wrong)) == 1


async def test_retry_option_retry_on_predicate() -> None:
    """Retry(retry_on=predicate) retries while the predicate holds."""
    calls: list[int] = []

    @af.action(retry=af.Retry(attempts=5, backoff=NO_WAIT, retry_on=lambda exc: "again" in str(exc)))
    async def picky(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError("again" if ctx.attempt < 3 else "stop")

    assert await attempts_of(one_stage(picky)) == 3


async def test_retry_never_retries_a_bail() -> None:
    """ctx.bail in an action with a Retry ends the run BAILED after one attempt."""
    calls: list[int] = []

    @af.action(retry=af.Retry(attempts=5, backoff=NO_WAIT))
    async def stop(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        ctx.bail("enough")

    result = await af.run(one_stage(stop))
    assert result.status is af.RunStatus.BAILED
    assert result.bail_reason == "enough"
    assert calls == [1]
    assert step(result, "s", "stop").attempts == 1


async def test_mw_retry_never_retries_a_bail() -> None:
    """ctx.bail under mw.retry ends the run BAILED after one attempt."""
    calls: list[int] = []

    @af.action
    async def stop(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        ctx.bail("enough")

    result = await af.Runner(action_middleware=[mw.retry(attempts=5, backoff=NO_WAIT)]).run(one_stage(stop))
    assert result.status is af.RunStatus.BAILED
    assert calls == [1]


async def test_retried_attempts_get_fresh_contexts_and_discard_writes() -> None:
    """Each attempt gets a new ctx; a failed attempt's writes and insertions are discarded."""
    contexts: list[af.ActionContext] = []
    seen_before: list[bool] = []
    ran: list[str] = []

    @af.action
    async def extra(ctx: af.ActionContext) -> None:
        ran.append("extra")

    @af.action(retry=af.Retry(attempts=2, backoff=NO_WAIT))
    async def write(ctx: af.ActionContext) -> None:
        contexts.append(ctx)
        seen_before.append("partial" in ctx.store)
        ctx.store["partial"] = ctx.attempt
        if ctx.attempt == 1:
            ctx.add_dynamic_action(extra)
            raise ConnectionError("first")

    result = await af.run(one_stage(write))
    assert len(contexts) == 2
    assert contexts[0] is not contexts[1]
    assert seen_before == [False, False]
    assert result.store["partial"] == 2
    assert ran == []


async def test_failed_attempts_stage_insertions_are_undone() -> None:
    """Each attempt may insert the same stage id: a failed attempt's insertion is undone, so no duplicate."""
    ran: list[int] = []

    @af.action
    async def mark(ctx: af.ActionContext) -> None:
        ran.append(1)

    @af.action(retry=af.Retry(attempts=3, backoff=NO_WAIT))
    async def plan_ahead(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("follow-up", actions=[mark]))
        if ctx.attempt < 3:
            raise ConnectionError("not yet")

    result = await af.run(one_stage(plan_ahead))
    assert result.stage_order() == ["s", "follow-up"]
    assert ran == [1]


async def test_backoff_is_asked_with_each_failed_attempt_number() -> None:
    """A Retry's backoff is called with 1, 2, ... for each failed attempt followed by another."""
    asked: list[int] = []

    def record(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    calls: list[int] = []
    await attempts_of(one_stage(always_failing("down", calls, retry=af.Retry(attempts=4, backoff=record))))
    assert asked == [1, 2, 3]


async def test_backoff_delay_is_waited_between_attempts() -> None:
    """With backoff.fixed(0.05) two retries take at least about 0.1 s in all."""
    calls: list[int] = []
    started = perf_counter()
    await attempts_of(
        one_stage(always_failing("down", calls, retry=af.Retry(attempts=3, backoff=backoff.fixed(0.05))))
    )
    assert 0.09 <= perf_counter() - started < 2


# ---- timeout options ----------------------------------------------------------------------


async def test_action_timeout_option_fails_with_action_timeout() -> None:
    """@af.action(timeout=...) fails a slow action with af.ActionTimeout naming run, stage, action, limit."""
    started = perf_counter()
    wf = af.Workflow("wf", stages=[af.Stage("fetch", actions=[slow("download", 10, timeout=0.05)])])
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf, run_id="r-opt")
    assert perf_counter() - started < 2
    cause = info.value.__cause__
    assert isinstance(cause, af.ActionTimeout)
    assert isinstance(cause, TimeoutError)
    assert (cause.run_id, cause.stage_id, cause.action_name, cause.seconds) == (
        "r-opt",
        "fetch",
        "download",
        0.05,
    )
    for part in ("r-opt", "'fetch'", "'download'", "0.05"):
        assert part in str(cause)


async def test_action_subclass_timeout_attribute() -> None:
    """An Action subclass's `timeout` class attribute limits each attempt."""

    class Download(af.Action):
        timeout = 0.05

        async def execute(self, ctx: af.ActionContext) -> None:
            await anyio.sleep(10)

    assert await timeout_of(one_stage(Download())) == 0.05


async def test_stage_timeout_is_the_default_for_its_actions() -> None:
    """Stage(timeout=...) limits each of its actions that has none of its own."""
    assert await timeout_of(one_stage(slow("a", 10), timeout=0.05)) == 0.05


async def test_runner_timeout_is_the_default_for_every_action() -> None:
    """Runner(timeout=...) limits actions without their own or their stage's timeout."""
    assert await timeout_of(one_stage(slow("a", 10)), af.Runner(timeout=0.05)) == 0.05


async def test_action_timeout_beats_stage_timeout() -> None:
    """An action's own timeout wins over its stage's, whether longer or shorter."""
    assert await timeout_of(one_stage(slow("a", 0.05, timeout=5), timeout=0.01)) is None
    assert await timeout_of(one_stage(slow("a", 10, timeout=0.02), timeout=5)) == 0.02


async def test_stage_timeout_beats_runner_timeout() -> None:
    """A stage's timeout wins over the runner's, whether longer or shorter."""
    assert await timeout_of(one_stage(slow("a", 0.05), timeout=5), af.Runner(timeout=0.01)) is None
    assert await timeout_of(one_stage(slow("a", 10), timeout=0.02), af.Runner(timeout=5)) == 0.02


async def test_action_timeout_beats_runner_timeout() -> None:
    """An action's own timeout wins over the runner's."""
    assert await timeout_of(one_stage(slow("a", 0.05, timeout=5)), af.Runner(timeout=0.01)) is None


async def test_timeout_is_per_attempt_and_a_timeout_is_retried() -> None:
    """With timeout and retry, a timed-out attempt is retried and a fast later attempt completes."""

    @af.action(timeout=0.05, retry=af.Retry(attempts=2, backoff=NO_WAIT))
    async def first_slow(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            await anyio.sleep(10)

    started = perf_counter()
    result = await af.run(one_stage(first_slow))
    assert perf_counter() - started < 2
    assert step(result, "s", "first-slow").attempts == 2
    assert result.status is af.RunStatus.COMPLETED


async def test_timed_out_attempt_discards_its_writes() -> None:
    """Writes made before an attempt timed out are discarded."""

    @af.action(timeout=0.02)
    async def partial(ctx: af.ActionContext) -> None:
        ctx.store["partial"] = True
        await anyio.sleep(10)

    with pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(partial))
    assert info.value.result is not None
    assert "partial" not in info.value.result.store


# ---- cancellation during a back-off sleep ------------------------------------------------------


def option_retry(action: Callable[[af.ActionContext], Any]) -> tuple[af.Action, af.Runner]:
    """The action with a Retry(backoff=fixed(10)) option, and a plain runner on a FakeClock."""
    return af.action(name="flaky", retry=af.Retry(attempts=3, backoff=backoff.fixed(10)))(action), af.Runner(
        clock=FakeClock()
    )


def middleware_retry(action: Callable[[af.ActionContext], Any]) -> tuple[af.Action, af.Runner]:
    """The plain action, and a runner on a FakeClock with mw.retry(backoff=fixed(10))."""
    return af.action(name="flaky")(action), af.Runner(
        action_middleware=[mw.retry(attempts=3, backoff=backoff.fixed(10))], clock=FakeClock()
    )


@pytest.mark.parametrize("setup", [option_retry, middleware_retry], ids=["Retry-option", "mw.retry"])
async def test_cancellation_during_backoff_sleep_stops_the_run_promptly(
    setup: Callable[[Callable[[af.ActionContext], Any]], tuple[af.Action, af.Runner]],
) -> None:
    """Cancelling while a retry sleeps ends the run CANCELLED at once; no further attempt runs."""
    failed = anyio.Event()
    calls: list[int] = []
    finished: list[str] = []
    outcome: dict[str, bool] = {}

    async def body(ctx: af.ActionContext) -> None:
        calls.append(ctx.attempt)
        failed.set()
        raise ConnectionError("down")

    action, runner = setup(body)
    runner.on_event(
        lambda ev: finished.append(ev.status or "") if ev.kind is af.EventKind.RUN_FINISHED else None
    )
    scope = anyio.CancelScope()

    async def drive() -> None:
        with scope:
            await runner.run(one_stage(action))
            outcome["returned"] = True
        outcome["cancelled"] = scope.cancelled_caught

    started = perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(drive)
        with anyio.fail_after(2):
            await failed.wait()
        clock = runner.clock
        assert isinstance(clock, FakeClock)
        await eventually(lambda: clock.sleepers == 1)  # the run is in its 10 s back-off sleep
        scope.cancel()
    assert perf_counter() - started < 2
    assert outcome == {"cancelled": True}
    assert calls == [1]
    assert finished == ["cancelled"]


# ---- bad input -----------------------------------------------------------------------------


def test_retry_needs_at_least_one_attempt() -> None:
    """af.Retry(attempts=0) is a ValueError."""
    with pytest.raises(ValueError, match="attempts"):
        af.Retry(attempts=0)


@pytest.mark.parametrize("attempts", ["3", 2.0, True, None])
def test_retry_attempts_must_be_an_int(attempts: Any) -> None:
    """af.Retry(attempts=<not an int>) is a TypeError."""
    with pytest.raises(TypeError, match="attempts"):
        af.Retry(attempts=attempts)


def test_retry_rejects_a_non_callable_backoff_and_bad_retry_on() -> None:
    """af.Retry needs a callable backoff and exception types or a predicate for retry_on."""
    with pytest.raises(TypeError, match="backoff"):
        af.Retry(backoff=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on"):
        af.Retry(retry_on=("ValueError",))  # type: ignore[arg-type]


def test_retry_option_must_be_a_retry() -> None:
    """retry= on an action, a stage or a runner must be an af.Retry, naming where."""
    not_a_retry: Any = 3

    async def fetch(ctx: af.ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match="'fetch'"):
        af.action(name="fetch", retry=not_a_retry)(fetch)
    with pytest.raises(TypeError, match="'s'"):
        af.Stage("s", retry=not_a_retry)
    with pytest.raises(TypeError, match=r"^retry of the runner must be an af\.Retry, got 3$"):
        af.Runner(retry=not_a_retry)


def make_action(timeout: Any) -> object:
    async def call_api(ctx: af.ActionContext) -> None:
        pass

    return af.action(name="call-api", timeout=timeout)(call_api)


def make_stage(timeout: Any) -> object:
    return af.Stage("checkout", timeout=timeout)


def make_runner(timeout: Any) -> object:
    return af.Runner(timeout=timeout)


def make_subclass(timeout: Any) -> object:
    async def execute(self: af.Action, ctx: af.ActionContext) -> None:
        pass

    # The same as `timeout = ...` in a class body: the check runs when the class is created.
    return type("CallApi", (af.Action,), {"timeout": timeout, "execute": execute})


TIMEOUT_OWNERS = [
    pytest.param(make_action, "'call-api'", id="@af.action"),
    pytest.param(make_stage, "'checkout'", id="Stage"),
    pytest.param(make_runner, "timeout of the runner must", id="Runner"),
    pytest.param(make_subclass, "CallApi", id="Action-subclass"),
]


@pytest.mark.parametrize("value", [0, -1, -0.5, 0.0, timedelta(0), timedelta(seconds=-1)])
@pytest.mark.parametrize(("make", "where"), TIMEOUT_OWNERS)
def test_non_positive_timeout_is_a_value_error_naming_where(
    make: Callable[[Any], object], where: str, value: float
) -> None:
    """timeout=0 or negative is a ValueError whose message names the action, stage, runner or class."""
    with pytest.raises(ValueError) as info:
        make(value)
    assert where in str(info.value)
    assert "timeout" in str(info.value)


@pytest.mark.parametrize("value", ["5", [5], True])
@pytest.mark.parametrize(("make", "where"), TIMEOUT_OWNERS)
def test_non_number_timeout_is_a_type_error_naming_where(
    make: Callable[[Any], object], where: str, value: Any
) -> None:
    """timeout="5" (not a number) is a TypeError whose message names where."""
    with pytest.raises(TypeError) as info:
        make(value)
    assert where in str(info.value)
    assert "timeout" in str(info.value)


@pytest.mark.parametrize(("make", "where"), TIMEOUT_OWNERS)
def test_timedelta_timeout_is_taken_as_its_seconds(make: Callable[[Any], Any], where: str) -> None:
    """timeout=timedelta(milliseconds=50) is the same as timeout=0.05, wherever a timeout is given."""
    assert make(timedelta(milliseconds=50)).timeout == 0.05


async def test_action_timeout_given_as_a_timedelta_fails_the_action_at_that_limit() -> None:
    """@af.action(timeout=timedelta(...)) fails a slow action with af.ActionTimeout, its limit in seconds."""
    wf = af.Workflow(
        "wf", stages=[af.Stage("fetch", actions=[slow("download", 10, timeout=timedelta(milliseconds=50))])]
    )
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert isinstance(info.value.__cause__, af.ActionTimeout)
    assert info.value.__cause__.seconds == 0.05


def test_subclass_class_body_timeout_is_checked() -> None:
    """A bad `timeout` written in an Action subclass body is rejected when the class is defined."""
    with pytest.raises(ValueError, match="Slow"):

        class Slow(af.Action):
            timeout = 0

            async def execute(self, ctx: af.ActionContext) -> None:
                pass


def test_subclass_class_body_retry_is_checked() -> None:
    """A `retry` class attribute that is not an af.Retry is rejected when the class is defined."""
    with pytest.raises(TypeError, match="Flaky"):

        class Flaky(af.Action):
            retry = 3  # type: ignore[assignment]

            async def execute(self, ctx: af.ActionContext) -> None:
                pass


# ---- backoff values ---------------------------------------------------------------------


def test_fixed_backoff_is_constant() -> None:
    """backoff.fixed(d) waits d after every failed attempt."""
    wait = backoff.fixed(0.5)
    assert [wait(n) for n in range(1, 6)] == [0.5] * 5


def test_exponential_backoff_grows_by_factor_and_is_capped() -> None:
    """backoff.exponential(base, factor, maximum): base, base*factor, ... up to maximum."""
    wait = backoff.exponential(0.1, factor=2.0, maximum=1.0)
    assert [wait(n) for n in range(1, 8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_exponential_backoff_with_another_factor() -> None:
    """backoff.exponential(1, factor=3, maximum=20): 1, 3, 9, 20, 20."""
    wait = backoff.exponential(1, factor=3, maximum=20)
    assert [wait(n) for n in range(1, 6)] == pytest.approx([1, 3, 9, 20, 20])


def test_exponential_backoff_default_factor_is_two() -> None:
    """backoff.exponential(base) doubles by default."""
    wait = backoff.exponential(0.25)
    assert [wait(n) for n in range(1, 4)] == pytest.approx([0.25, 0.5, 1.0])


def test_exponential_backoff_does_not_overflow_for_huge_attempts() -> None:
    """A very large attempt number gives the maximum, not an overflow."""
    wait = backoff.exponential(0.1, maximum=30.0)
    assert wait(100_000) == 30.0


def test_jitter_stays_within_zero_and_the_cap() -> None:
    """Full jitter draws uniformly in [0, capped delay]: many draws stay in bounds and vary."""
    wait = backoff.exponential(0.1, factor=2.0, maximum=1.0, jitter=True)
    for attempt, cap in [(1, 0.1), (3, 0.4), (10, 1.0)]:
        draws = [wait(attempt) for _ in range(2_000)]
        assert all(0.0 <= d <= cap for d in draws)
        assert len(set(draws)) > 100
        assert max(draws) > cap * 0.8
        assert min(draws) < cap * 0.2


def test_exponential_maximum_below_base_is_a_value_error() -> None:
    """backoff.exponential(1.0, maximum=0.5) is a ValueError."""
    with pytest.raises(ValueError, match="maximum"):
        backoff.exponential(1.0, maximum=0.5)


def test_negative_fixed_backoff_is_a_value_error() -> None:
    """backoff.fixed(-1) is a ValueError."""
    with pytest.raises(ValueError, match="negative"):
        backoff.fixed(-1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"base": -0.1}, ValueError, id="negative-base"),
        pytest.param({"base": 0.1, "factor": 0.5}, ValueError, id="shrinking-factor"),
        pytest.param({"base": "0.1"}, TypeError, id="string-base"),
    ],
)
def test_exponential_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """backoff.exponential rejects a negative or non-number base and a factor below 1."""
    rest = dict(kwargs)  # (the parameter's dict is shared by every run of the test in this process)
    base = rest.pop("base")
    with pytest.raises(error):
        backoff.exponential(base, **rest)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda v: backoff.fixed(v), id="fixed"),
        pytest.param(lambda v: backoff.exponential(v), id="exponential-base"),
        pytest.param(lambda v: backoff.exponential(0.1, maximum=v), id="exponential-maximum"),
        pytest.param(lambda v: backoff.exponential(0.1, factor=v), id="exponential-factor"),
    ],
)
def test_backoffs_refuse_numbers_that_are_not_finite(make: Callable[[float], object], bad: float) -> None:
    """A NaN or infinite delay, base, maximum or factor is a ValueError saying it must be finite."""
    with pytest.raises(ValueError, match="finite"):
        make(bad)


def test_default_retry_has_three_attempts_and_retries_exceptions() -> None:
    """af.Retry() means 3 attempts in all, retrying any Exception."""
    retry = af.Retry()
    assert retry.attempts == 3
    assert retry.retry_on == (Exception,)
