"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

#: ``ASYNCFLOW_TEST_LOOP=uvloop`` runs every test on uvloop's event loop instead of asyncio's own
#: (services behind uvicorn run on it); ``make test-pythons`` does so on the newest Python it finds.
TEST_LOOP = os.environ.get("ASYNCFLOW_TEST_LOOP", "asyncio")
if TEST_LOOP not in ("asyncio", "uvloop"):
    raise pytest.UsageError(f"ASYNCFLOW_TEST_LOOP must be 'asyncio' or 'uvloop', got {TEST_LOOP!r}")

if TEST_LOOP == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], Any]]:
        """Every async test on uvloop's loop."""
        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """An SQLite file for an engine (not created yet)."""
    return tmp_path / "runs.db"


@pytest.fixture
def url(db_path: Path) -> str:
    """The engine URL of :func:`db_path`."""
    return f"sqlite:///{db_path}"


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record emitted while the test runs (DEBUG and up); the sink is removed after."""
    captured: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        captured.append(message.record)

    sink_id = logger.add(sink, level="DEBUG", format="{message}")
    try:
        yield captured
    finally:
        logger.remove(sink_id)


@pytest.fixture
def asyncflow_log(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Log records while asyncflow's own logging is enabled (disabled again after)."""
    logger.enable("asyncflow")
    try:
        yield records
    finally:
        logger.disable("asyncflow")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the PostgreSQL server for the tests (see tests/postgres_server.py); skips without one."""
    import postgres_server as pg

    url = pg.find_server()
    if url is None:
        if pg.required():
            pytest.fail("ASYNCFLOW_REQUIRE_POSTGRES is set but " + pg.HOW)
        pytest.skip(pg.HOW)
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """An engine URL on the test server in a schema of its own, dropped after the test."""
    import asyncio

    import postgres_server as pg

    schema = pg.new_schema()
    yield pg.with_schema(postgres_server, schema)
    asyncio.run(pg.drop_schema(postgres_server, schema))
