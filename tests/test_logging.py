"""Logging with loguru: asyncflow is quiet until enabled, and ctx.logger carries the run's ids."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

import asyncflow as af


def from_library(captured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records asyncflow itself emitted (not lines logged by user code through ctx.logger)."""
    return [r for r in captured if (r["name"] or "").split(".")[0] == "asyncflow"]


@af.action
async def quiet(ctx: af.ActionContext) -> None:
    """Touch nothing, log nothing."""


@af.action
async def boom(ctx: af.ActionContext) -> None:
    """Fail, so the library logs the failure."""
    raise ValueError("boom")


async def run_some(stages: list[af.Stage]) -> None:
    """Run a completing workflow and a failing one."""
    await af.run(af.Workflow("wf", stages=stages))
    with pytest.raises(af.ActionFailed):
        await af.run(af.Workflow("bad", stages=[af.Stage("s", actions=[boom])]))


async def test_library_logging_is_disabled_by_default(records: list[dict[str, Any]]) -> None:
    """A sink receives none of asyncflow's own log lines unless asyncflow is enabled."""
    await run_some([af.Stage("s", actions=[quiet])])
    assert from_library(records) == []


async def test_enabling_asyncflow_turns_its_log_lines_on(records: list[dict[str, Any]]) -> None:
    """After logger.enable("asyncflow") a sink receives the library's own log lines."""
    logger.enable("asyncflow")
    try:
        await run_some([af.Stage("s", actions=[quiet])])
    finally:
        logger.disable("asyncflow")
    assert from_library(records) != []
    assert any(r["level"].name == "ERROR" for r in from_library(records))


async def test_ctx_logger_is_bound_with_the_run_ids(records: list[dict[str, Any]]) -> None:
    """ctx.logger's records carry run_id, workflow_id, stage_id and action in extra."""

    @af.action(name="talker")
    async def talker(ctx: af.ActionContext) -> None:
        ctx.logger.info("hello from the action")

    result = await af.run(af.Workflow("orders", stages=[af.Stage("greet", actions=[talker])]))
    [record] = [r for r in records if r["message"] == "hello from the action"]
    extra = record["extra"]
    assert extra["run_id"] == result.run_id
    assert extra["workflow_id"] == "orders"
    assert extra["stage_id"] == "greet"
    assert extra["action"] == "talker"


async def test_ctx_logger_binds_the_inserted_stage_id(records: list[dict[str, Any]]) -> None:
    """An action of a dynamic stage logs under the stage's id in this run."""

    @af.action(name="talker")
    async def talker(ctx: af.ActionContext) -> None:
        ctx.logger.info("from the inserted stage")

    @af.action(name="inserter")
    async def inserter(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("extra", actions=[talker]))

    await af.run(af.Workflow("orders", stages=[af.Stage("first", actions=[inserter])]))
    [record] = [r for r in records if r["message"] == "from the inserted stage"]
    assert (record["extra"]["stage_id"], record["extra"]["action"]) == ("extra", "talker")


async def test_action_that_never_uses_the_logger_runs() -> None:
    """An action that never touches ctx.logger runs and the run completes."""
    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[quiet])]))
    assert result.status is af.RunStatus.COMPLETED


ENABLE_TOO_LATE: list[tuple[str, Any, list[str]]] = [
    ("enable_stage", lambda plan: plan.enable_stage("off"), ["stage 'off'"]),
    ("enable_action", lambda plan: plan.enable_action("skipped"), ["action 'skipped' of stage 's'"]),
    ("enable_by_tag", lambda plan: plan.enable_by_tag("t"), ["stage 'off'", "action 'skipped' of stage 's'"]),
]


@pytest.mark.parametrize(
    ("change", "named"),
    [(change, named) for _, change, named in ENABLE_TOO_LATE],
    ids=[name for name, _, _ in ENABLE_TOO_LATE],
)
async def test_enabling_a_skipped_step_says_so_in_the_log(
    records: list[dict[str, Any]], change: Any, named: list[str]
) -> None:
    """Enabling a step that was already skipped is logged as having no effect, naming the step."""

    @af.action(name="first")
    async def first(ctx: af.ActionContext) -> None:
        ctx.plan.disable_by_tag("t")

    @af.action(name="skipped", tags={"t"})
    async def skipped(ctx: af.ActionContext) -> None:
        """Never runs."""

    @af.action(name="late")
    async def late(ctx: af.ActionContext) -> None:
        change(ctx.plan)

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("s", actions=[first, skipped]),
            af.Stage("off", tags={"t"}, actions=[quiet]),
            af.Stage("last", actions=[late]),
        ],
    )
    logger.enable("asyncflow")
    try:
        result = await af.run(wf)
    finally:
        logger.disable("asyncflow")
    assert result.status is af.RunStatus.COMPLETED
    notes = [r["message"] for r in from_library(records)]
    for step in named:
        assert f"{step} is already skipped; enabling it has no effect on this execution" in notes, notes


async def test_a_retried_attempt_is_logged_with_its_error_and_delay(records: list[dict[str, Any]]) -> None:
    """A failed attempt that will be retried is logged: action, stage, run, attempt, error and delay."""

    @af.action(name="flaky", retry=af.Retry(attempts=2, backoff=lambda attempt: 0.0))
    async def flaky(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("first attempt")

    logger.enable("asyncflow")
    try:
        result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[flaky])]))
    finally:
        logger.disable("asyncflow")
    expected = (
        f"action 'flaky' of stage 's' in run {result.run_id} failed on attempt 1 "
        "(ConnectionError: first attempt); retrying in 0.000s"
    )
    assert expected in [r["message"] for r in from_library(records)]


async def test_a_failed_run_is_logged_as_an_error_with_its_exception(records: list[dict[str, Any]]) -> None:
    """A failed run logs one ERROR line: the failure's text, with the exception attached."""
    logger.enable("asyncflow")
    try:
        with pytest.raises(af.ActionFailed) as info:
            await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[boom])]))
    finally:
        logger.disable("asyncflow")
    errors = [r for r in from_library(records) if r["level"].name == "ERROR"]
    assert [r["message"] for r in errors] == [str(info.value)]
    assert errors[0]["exception"] is not None
    assert isinstance(errors[0]["exception"].value, ValueError)


async def test_disabling_an_action_that_ran_says_so_in_the_log(records: list[dict[str, Any]]) -> None:
    """Disabling an action that already completed is logged as having no effect, naming it and its stage."""

    @af.action(name="late")
    async def late(ctx: af.ActionContext) -> None:
        ctx.plan.disable_action("quiet")

    logger.enable("asyncflow")
    try:
        await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[quiet, late])]))
    finally:
        logger.disable("asyncflow")
    notes = [r["message"] for r in from_library(records)]
    expected = (
        "action 'quiet' of stage 's' is already completed; disabling it has no effect on this execution"
    )
    assert expected in notes, notes


async def test_disabling_the_running_stage_says_so_in_the_log(records: list[dict[str, Any]]) -> None:
    """Disabling the running stage is logged by asyncflow as having no effect, naming the stage."""

    @af.action(name="self-off")
    async def self_off(ctx: af.ActionContext) -> None:
        ctx.plan.disable_stage("busy")

    logger.enable("asyncflow")
    try:
        await af.run(af.Workflow("wf", stages=[af.Stage("busy", actions=[self_off])]))
    finally:
        logger.disable("asyncflow")
    notes = [r["message"] for r in from_library(records) if "'busy'" in r["message"]]
    assert any("running" in note for note in notes), notes
