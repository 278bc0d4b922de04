"""Finding the PostgreSQL server the tests use, and giving each test a schema of its own."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg

#: How to enable the PostgreSQL tests when no server answers.
HOW = (
    "no PostgreSQL server answers (set ASYNCFLOW_TEST_POSTGRES=postgresql://user:pw@127.0.0.1/db, or "
    "run one on the default socket or 127.0.0.1:5432) - the PostgreSQL tests are skipped"
)
_CANDIDATES = ("postgresql:///postgres?host=/var/run/postgresql", "postgresql://127.0.0.1:5432/postgres")


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


_FOUND: list[str | None] = []  # (the answer, once looked for)


async def locate() -> str | None:
    """``ASYNCFLOW_TEST_POSTGRES``, else a local server that answers, else ``None`` (looked for once)."""
    if not _FOUND:
        url = os.environ.get("ASYNCFLOW_TEST_POSTGRES") or None
        if url is None:
            for candidate in _CANDIDATES:
                if await _answers(candidate):
                    url = candidate
                    break
        _FOUND.append(url)
    return _FOUND[0]


def find_server() -> str | None:
    """:func:`locate`, from code that is not async."""
    if _FOUND:
        return _FOUND[0]
    return asyncio.run(locate())


async def server_or_skip() -> str:
    """The server's URL; the test is skipped without one (failed when one is required)."""
    import pytest

    url = await locate()
    if url is None:
        if required():
            pytest.fail("ASYNCFLOW_REQUIRE_POSTGRES is set but " + HOW)
        pytest.skip(HOW)
    return url


def required() -> bool:
    """Whether a missing server fails the tests instead of skipping them (CI)."""
    return os.environ.get("ASYNCFLOW_REQUIRE_POSTGRES", "") not in ("", "0")


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``?schema=`` set."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def new_schema() -> str:
    """A fresh schema name for one test."""
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (``url``: the server's, without a schema)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def drop_role(conn: asyncpg.Connection, role: str) -> None:
    """Drop a login role a test made, with what it owns here (the schema its engine created).

    The test's own role may be no superuser (CI's has CREATEROLE only): it joins ``role``
    first, so that it may drop what ``role`` owns.
    """
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role) is None:
        return
    await conn.execute(f"GRANT {role} TO CURRENT_USER")
    await conn.execute(f"DROP OWNED BY {role} CASCADE")
    await conn.execute(f"DROP ROLE {role}")
