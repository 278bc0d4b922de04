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


def find_server() -> str | None:
    """``ASYNCFLOW_TEST_POSTGRES``, else a local server that answers, else ``None``."""
    url = os.environ.get("ASYNCFLOW_TEST_POSTGRES")
    if url:
        return url
    for candidate in _CANDIDATES:
        if asyncio.run(_answers(candidate)):
            return candidate
    return None


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
    """Drop ``schema`` and everything in it."""
    conn = await asyncpg.connect(url.split("?schema=")[0] if "?schema=" in url else url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
