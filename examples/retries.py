"""Retries and timeouts: per action, per stage, and the errors that are never retried.

1. ``fetch-quote`` fails twice with a ``ConnectionError`` and succeeds on its
   third attempt. Its own ``af.Retry`` allows four, with exponential back-off
   (10 ms doubling, capped at 50 ms, with full jitter); ``ctx.attempt`` tells
   the action which attempt it is.
2. The ``pricing`` stage sets ``retry=`` for the actions that have none of
   their own: ``apply-discount`` fails once and succeeds on its second try.
3. ``validate-order`` raises ``af.NonRetryable``: it fails at once, whatever
   the stage's retry policy allows.
4. ``call-slow-api`` takes longer than its ``timeout``: each attempt is
   cancelled and the action fails with ``af.ActionTimeout`` (a ``TimeoutError``).

Every step's record says how many attempts it took (``StepRecord.attempts``).

Run it with ``python examples/retries.py``.
"""

from __future__ import annotations

import anyio

import asyncflow as af
from asyncflow import backoff

QUICK_RETRY = af.Retry(attempts=3, backoff=backoff.fixed(0.005))


@af.action(
    name="fetch-quote",
    retry=af.Retry(attempts=4, backoff=backoff.exponential(0.01, maximum=0.05, jitter=True)),
    timeout=0.5,
)
async def fetch_quote(ctx: af.ActionContext) -> None:
    """A flaky upstream: refuses the first two attempts, answers the third."""
    if ctx.attempt < 3:
        raise ConnectionError(f"upstream refused attempt {ctx.attempt}")
    ctx.store["quote"] = 41.5


@af.action(name="apply-discount")
async def apply_discount(ctx: af.ActionContext) -> None:
    """Fails on its first attempt; the stage's retry policy gives it another."""
    if ctx.attempt == 1:
        raise RuntimeError("discount service warming up")
    ctx.store["price"] = ctx.store.get("quote", float) * 0.9


@af.action(name="validate-order")
async def validate_order(ctx: af.ActionContext) -> None:
    """Bad input will not get better by trying again."""
    raise af.NonRetryable(f"order {ctx.store.get('order.id', str)!r} has no line items")


@af.action(name="call-slow-api", timeout=0.02, retry=af.Retry(attempts=2, backoff=backoff.fixed(0.005)))
async def call_slow_api(ctx: af.ActionContext) -> None:
    """Takes far longer than its 20 ms limit, on every attempt."""
    await anyio.sleep(1)


def show_attempts(result: af.RunResult) -> None:
    """Print each action of the run with its status and number of attempts."""
    for rec in result.steps:
        if rec.kind == "action":
            print(f"     {rec.action_name:<15} {rec.status.value:<9} attempts={rec.attempts}")


async def run_expecting_failure(workflow: af.Workflow) -> af.RunResult:
    """Run ``workflow``, which fails; print the failure and return its result."""
    try:
        await af.run(workflow, store={"order.id": "A-1001"}, run_id=f"{workflow.id}-run")
    except af.ActionFailed as failure:
        cause = failure.__cause__
        print(f"   failed: {failure.action_name!r} raised {type(cause).__name__}: {cause}")
        result = failure.result
    else:
        raise AssertionError(f"workflow {workflow.id!r} was expected to fail")
    assert result is not None
    return result


async def main() -> None:
    """Run the four cases and print how many attempts each action took."""
    print("1-2. an action's own retry, and a stage's default")
    pricing = af.Workflow(
        "pricing",
        stages=[
            af.Stage("quote", actions=[fetch_quote]),
            af.Stage("pricing", actions=[apply_discount], retry=QUICK_RETRY),
        ],
    )
    result = await af.run(pricing)
    print(f"   status: {result.status.value}; price {result.store['price']:.2f}")
    show_attempts(result)

    print("3. af.NonRetryable is never retried")
    checkout = af.Workflow(
        "checkout", stages=[af.Stage("validate", actions=[validate_order], retry=QUICK_RETRY)]
    )
    show_attempts(await run_expecting_failure(checkout))

    print("4. a timeout on every attempt ends in af.ActionTimeout")
    with_deadline = af.Workflow("deadline", stages=[af.Stage("call", actions=[call_slow_api])])
    failed = await run_expecting_failure(with_deadline)
    show_attempts(failed)
    step = next(rec for rec in failed.steps if rec.action_name == "call-slow-api")
    assert isinstance(step.error, af.ActionTimeout)
    print(f"   the step's error is a TimeoutError too: {isinstance(step.error, TimeoutError)}")


if __name__ == "__main__":
    anyio.run(main)
