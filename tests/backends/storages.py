"""The databases of the contract suite: every backend passes the same tests, unchanged.

A test gets a :class:`Storage`: one database, and a way to make backends on
it (``storage.new()``), as separate processes would (two engines on one
storage see the same runs). A backend joins the suite with one entry in
:data:`STORAGES` (a factory: given the test's temporary directory, an async
context manager that makes a fresh, empty database, yields its
:class:`Storage` and drops the database after) and its name in
:data:`BACKENDS` (a ``pytest.param``, skipped with a reason when its server
is absent). A backend reached by URL needs only :func:`url_storage`::

    @contextlib.asynccontextmanager
    async def postgres(tmp: Path) -> AsyncIterator[Storage]:
        url = ...  # a new schema on the test server
        yield url_storage("postgres", url, set_schema_version=...)
        ...  # drop the schema

    STORAGES["postgres"] = postgres
    BACKENDS.append(pytest.param("postgres", marks=...))
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import asyncflow as af
from asyncflow.backends import Backend, MemoryBackend, open_backend


@attrs.frozen
class Storage:
    """One database that the backends made by :meth:`new` share.

    Attributes:
        name: the backend's name (the test id).
        new: a new backend on this database, not opened yet.
        set_schema_version: writes a schema version into the database (to
            forge one from a newer asyncflow); ``None`` for a backend without
            a schema.
    """

    name: str
    new: Callable[[], Backend]
    set_schema_version: Callable[[int], Awaitable[None]] | None = None

    def engine(self, *workflows: af.Workflow, **options: Any) -> af.Engine:
        """An engine on a new backend of this storage, with a short lease and poll interval."""
        options.setdefault("lease", 1.0)
        options.setdefault("poll_interval", 0.05)
        engine = af.Engine(self.new(), **options)
        for workflow in workflows:
            engine.register(workflow)
        return engine


def url_storage(
    name: str, url: str, *, set_schema_version: Callable[[int], Awaitable[None]] | None = None
) -> Storage:
    """The storage of a backend that ``af.Engine(url)`` opens (each ``new()`` a separate connection)."""
    return Storage(name, lambda: open_backend(url), set_schema_version)


@contextlib.asynccontextmanager
async def memory_storage(tmp: Path) -> AsyncIterator[Storage]:
    """One :class:`MemoryBackend`, shared by every engine of the test (it is its own database)."""
    shared = MemoryBackend()
    yield Storage("memory", lambda: shared)


@contextlib.asynccontextmanager
async def sqlite_storage(tmp: Path) -> AsyncIterator[Storage]:
    """An SQLite file in the test's directory; each backend opens it on its own connection."""
    path = tmp / "contract.db"

    async def set_schema_version(version: int) -> None:
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute(
                    "UPDATE asyncflow_meta SET value = ? WHERE key = 'schema_version'", (str(version),)
                )
        finally:
            conn.close()

    yield url_storage("sqlite", f"sqlite:///{path}", set_schema_version=set_schema_version)


@contextlib.asynccontextmanager
async def postgres_storage(tmp: Path) -> AsyncIterator[Storage]:
    """A schema of its own on the test server (skipped without one), dropped after the test."""
    import asyncpg
    import postgres_server as pg

    server = await pg.server_or_skip()
    schema = pg.new_schema()

    async def set_schema_version(version: int) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(
                f"UPDATE \"{schema}\".meta SET value = $1 WHERE key = 'schema_version'", str(version)
            )
        finally:
            await conn.close()

    try:
        yield url_storage("postgres", pg.with_schema(server, schema), set_schema_version=set_schema_version)
    finally:
        await pg.drop_schema(server, schema)


#: name -> a factory of a fresh, empty database for one test (see the module's docstring)
STORAGES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Storage]]] = {
    "memory": memory_storage,
    "sqlite": sqlite_storage,
    "postgres": postgres_storage,
}

#: the parameters of the ``backend`` fixture
BACKENDS: list[Any] = [pytest.param("memory"), pytest.param("sqlite"), pytest.param("postgres")]
