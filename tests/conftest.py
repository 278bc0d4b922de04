"""Fixtures shared by the test modules."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
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


#: The tests of the in-memory runner and its middleware: each of their async tests runs on trio too
#: (through anyio, as ``test_..._on_trio``) besides the loop of :data:`TEST_LOOP`, so the runner stays free of
#: asyncio. The durable engine is asyncio's only (``af.Engine`` refuses to open on trio).
TRIO_MODULES = frozenset(
    {
        "test_builtin_middleware.py",
        "test_concurrency.py",
        "test_control.py",
        "test_endings.py",
        "test_logging.py",
        "test_definitions.py",
        "test_mermaid.py",
        "test_messages.py",
        "test_middleware.py",
        "test_ordering.py",
        "test_retry_timeout.py",
        "test_store.py",
        "test_testing.py",
    }
)
HAS_TRIO = importlib.util.find_spec("trio") is not None


def _on_trio(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A synchronous test that runs the async ``test`` on trio's event loop."""

    @functools.wraps(test)
    def run_on_trio(**kwargs: Any) -> None:
        anyio.run(functools.partial(test, **kwargs), backend="trio")

    return run_on_trio


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """After each async test of :data:`TRIO_MODULES`, the same test on trio (pytest-asyncio runs the rest).

    Under mutmut (``make mutate``), instead: the fastest tests first.
    """
    if "MUTANT_UNDER_TEST" in os.environ:
        # mutmut names each test it runs by its node id, and a twin made here cannot be named so:
        # the twins are left out (they run the same bodies again). The tests run fastest first,
        # by the times mutmut measured, so a mutant a quick test kills costs little.
        _fastest_first(items, Path("mutmut-stats.json"))
        return
    if not HAS_TRIO:
        return
    with_trio: list[pytest.Item] = []
    for item in items:
        with_trio.append(item)
        if (
            isinstance(item, pytest.Function)
            and item.path.name in TRIO_MODULES
            and inspect.iscoroutinefunction(item.function)
            and item.get_closest_marker("asyncio_only") is None
        ):
            name = item.name.replace(item.originalname, f"{item.originalname}_on_trio", 1)
            # Made from the test's function (its marks come along), not from the item, which
            # pytest-asyncio has marked as its own.
            twin = pytest.Function.from_parent(
                item.parent,
                name=name,
                callspec=getattr(item, "callspec", None),
                callobj=_on_trio(item.function),
                fixtureinfo=item._fixtureinfo,
                originalname=f"{item.originalname}_on_trio",
            )
            with_trio.append(twin)
    items[:] = with_trio


def _fastest_first(items: list[pytest.Item], stats: Path) -> None:
    """Order ``items`` by the duration mutmut's stats give each (unknown ones first)."""
    try:
        durations: dict[str, float] = json.loads(stats.read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return  # (mutmut is collecting them)
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


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


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ledger the actions of tests/pg_flows.py write, in the test's directory (worker tests)."""
    from pg_workers import Ledger

    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("ASYNCFLOW_TEST_LEDGER", str(path))
    return Ledger(path)


@pytest.fixture
def workers() -> Iterator[list[Any]]:
    """The ``asyncflow worker`` processes a test starts (tests/pg_workers.py), stopped after it."""
    started: list[Any] = []
    yield started
    for worker in started:
        worker.stop()
