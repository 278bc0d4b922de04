"""Failures and bailing out: what a failed run tells you, and how to stop a run on purpose.

1. An action raises. ``af.run`` raises ``af.ActionFailed``, which names the
   run, the stage and the action, keeps the original exception as
   ``__cause__``, and carries the run's result (status ``FAILED``): which
   steps completed, which one failed, and which never ran.
2. An action calls ``ctx.bail(reason)``: a deliberate early stop, not an
   error. ``af.run`` returns normally with status ``BAILED`` and the reason.

Run it with ``python examples/failures.py``.
"""

from __future__ import annotations

import anyio

import asyncflow as af


class PaymentDeclined(Exception):
    """The (pretend) payment provider said no."""


@af.action
async def reserve_stock(ctx: af.ActionContext) -> None:
    """Reserve the items of the order."""
    ctx.store["stock.reserved"] = True


@af.action
async def charge_card(ctx: af.ActionContext) -> None:
    """Charge the customer, or fail as the provider does for a bad card."""
    if ctx.store.get("card", str) == "4000-0000-0000-0002":
        raise PaymentDeclined("card declined: insufficient funds")
    ctx.store["charged"] = True


@af.action
async def ship(ctx: af.ActionContext) -> None:
    """Hand the order to the carrier, unless there is nothing to ship."""
    items: list[str] = ctx.store.get_or("items", [], list)
    if not items:
        ctx.bail("nothing to ship: the order is empty")
    ctx.store["shipped"] = items


checkout = af.Workflow(
    "checkout",
    stages=[
        af.Stage("payment", actions=[reserve_stock, charge_card]),
        af.Stage("delivery", actions=[ship]),
    ],
)


async def main() -> None:
    """Run the checkout with a declined card, then with an empty order."""
    print("1. a declined card")
    try:
        await af.run(checkout, store={"card": "4000-0000-0000-0002", "items": ["book"]})
    except af.ActionFailed as failure:
        print(f"   error:  {failure}")
        print(
            f"   where:  run {failure.run_id[:8]}, stage {failure.stage_id!r}, action {failure.action_name!r}"
        )
        print(f"   cause:  {type(failure.__cause__).__name__}: {failure.__cause__}")
        result = failure.result
        assert result is not None
        print(f"   status: {result.status.value}; steps that ran:")
        for rec in result.steps:
            print(f"     {rec.stage_id:<9} {rec.action_name or '':<14} {rec.status.value}")
        # A completed action's writes stay; a failed action's writes are discarded.
        print(
            f"   in the store: stock.reserved={'stock.reserved' in result.store}, "
            f"charged={'charged' in result.store}"
        )

    print("2. an empty order")
    result = await af.run(checkout, store={"card": "4242-4242-4242-4242", "items": []})
    print(f"   status: {result.status.value}; reason: {result.bail_reason!r}")
    print(f"   error: {result.error}; shipped in store: {'shipped' in result.store}")


if __name__ == "__main__":
    anyio.run(main)
