"""A PostgreSQL outage is logged once as it begins and once as it ends, however calls see it.

An engine's calls run at once on several connections, so under load they see
an outage begin and end in any order: an attempt made while the server was
down may fail after another call got through, and a query sent before the
outage may be answered after another call failed. Neither is a new outage,
nor its end. A TCP proxy on 127.0.0.1 (tests/pg_proxy.py) in front of the
real server puts the calls in those orders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from helpers import eventually
from pg_proxy import Proxy, proxy, through

import asyncflow as af
from asyncflow.backends import RunInfo
from asyncflow.backends.postgres import PostgresBackend

LOST = "lost the connection to PostgreSQL"
BACK = "reconnected to PostgreSQL"


def _said(log: list[dict[str, Any]], text: str) -> int:
    return sum(text in record["message"] for record in log)


@asynccontextmanager
async def rig(url: str) -> AsyncIterator[tuple[Proxy, PostgresBackend]]:
    """A backend connected through a proxy (no session: only the pool's connections), with one run."""
    async with (
        proxy(url) as net,
        PostgresBackend(through(url, net.port) + "&pooler=transaction") as backend,
    ):
        info = RunInfo("r1", "wf", af.RunStatus.PENDING, created_at=1.0, updated_at=1.0)
        await backend.create_run(info, [])
        yield net, backend


async def _outage_with_a_query_in_flight(
    net: Proxy,
    backend: PostgresBackend,
    group: anyio.abc.TaskGroup,
    answers: list[RunInfo | None],
    log: list[dict[str, Any]],
) -> None:
    """One call's query held in the proxy, then the server gone and a second call seeing it (logged)."""

    async def call() -> None:
        answers.append(await backend.get_run("r1"))

    net.freeze()
    group.start_soon(call)  # its query waits in the proxy
    await eventually(lambda: net.answers_waiting == 1, within=10)
    net.cut()  # (the server goes down, and every other connection with it)
    group.start_soon(call)
    await eventually(lambda: _said(log, LOST) == 1, within=10)


async def test_a_query_failing_after_the_server_came_back_is_not_a_new_outage(
    postgres_url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A query in flight as the server went down, failing after another call got through, logs nothing."""
    answers: list[RunInfo | None] = []
    async with rig(postgres_url) as (net, backend), anyio.create_task_group() as group:
        await _outage_with_a_query_in_flight(net, backend, group, answers, asyncflow_log)
        net.restore()
        await eventually(lambda: len(answers) == 1, within=10)  # the second call got through
        assert _said(asyncflow_log, BACK) == 1
        net.drop_waiting()  # the first call's query fails only now; it tries again, and gets through
    assert len(answers) == 2
    assert None not in answers
    assert _said(asyncflow_log, LOST) == 1
    assert _said(asyncflow_log, BACK) == 1


async def test_an_answer_sent_before_the_outage_does_not_end_it(
    postgres_url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A query answered late, after another call saw the server gone, does not end the outage."""
    answers: list[RunInfo | None] = []
    async with rig(postgres_url) as (net, backend), anyio.create_task_group() as group:
        await _outage_with_a_query_in_flight(net, backend, group, answers, asyncflow_log)
        net.thaw()  # the first query is answered after the second call failed
        await eventually(lambda: len(answers) == 1, within=10)
        # Still down: the second call tries again (so does the pool, at most every second).
        refused = net.refused_count
        await eventually(lambda: net.refused_count >= refused + 3, within=20)
        net.restore()
    assert len(answers) == 2
    assert None not in answers
    assert _said(asyncflow_log, LOST) == 1
    assert _said(asyncflow_log, BACK) == 1
