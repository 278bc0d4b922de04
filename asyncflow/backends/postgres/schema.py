"""The PostgreSQL schema: its tables, and the migrations that bring a database to them.

Every table lives in one schema of its own (``asyncflow`` unless the URL's
``?schema=`` names another). Migrations are numbered; opening applies the
missing ones in one transaction that holds an advisory lock on the schema's
name, so two workers opening at once migrate once. A schema that a newer
asyncflow migrated further is refused.
"""

from __future__ import annotations

import zlib
from typing import Any

from ..._core.errors import BackendError

# Each migration's statements, in order; the schema's version is how many have run.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            run_no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL UNIQUE,
            workflow_id text NOT NULL,
            status text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            idempotency_key text UNIQUE,
            owner text,
            lease_until double precision,
            wake_at double precision,
            suspend_reason text,
            suspend_data text,
            suspended_step text,
            resume_data text,
            error text,
            failed_stage text,
            failed_action text,
            bail_reason text,
            steps text,
            workflow_version text,
            fence bigint NOT NULL DEFAULT 0
        )""",
        # list_runs pages (newest first, optionally by status or workflow); claims walk only
        # the unfinished runs, oldest first; purge finds finished runs by age.
        "CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC)",
        "CREATE INDEX runs_by_status ON runs (status, created_at DESC, run_id DESC)",
        "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at DESC, run_id DESC)",
        "CREATE INDEX runs_unfinished ON runs (created_at, run_no) "
        "WHERE status IN ('pending', 'running', 'sleeping')",
        "CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL",
        """CREATE TABLE checkpoints (
            run_no bigint NOT NULL,
            seq integer NOT NULL,
            step_key text NOT NULL,
            kind text NOT NULL,
            changes text,
            ops text,
            attempts integer NOT NULL,
            at double precision,
            PRIMARY KEY (run_no, seq)
        )""",
        """CREATE TABLE workflow_versions (
            version text PRIMARY KEY,
            shape_key text NOT NULL,
            workflow_id text NOT NULL,
            shape text NOT NULL,
            definition text NOT NULL
        )""",
        "CREATE INDEX workflow_versions_by_shape ON workflow_versions (shape_key)",
        # One row per engine that ties its liveness to its database session: it holds the
        # session advisory lock (lock_space(schema), lock_key) while its session lives.
        """CREATE TABLE workers (
            owner text PRIMARY KEY,
            lock_key integer NOT NULL,
            host text,
            pid integer,
            started_at double precision NOT NULL
        )""",
        "CREATE SEQUENCE worker_keys AS integer CYCLE",
    ],
    # 2: each run's log of events (engine.watch), numbered from 1 per run.
    [
        """CREATE TABLE run_events (
            run_no bigint NOT NULL,
            seq integer NOT NULL,
            data text NOT NULL,
            PRIMARY KEY (run_no, seq)
        )""",
    ],
    # 3: one row per engine, not per owner name: two live engines with the same name each keep
    # their own liveness lock (one no longer overwrites the other's key).
    [
        "ALTER TABLE workers DROP CONSTRAINT workers_pkey",
        "ALTER TABLE workers ADD PRIMARY KEY (owner, lock_key)",
    ],
    # 4: the key a run was last resumed with, written with the resume's status change, so that a
    # retried resume finds it even when the resume's event never reached the log.
    ["ALTER TABLE runs ADD COLUMN resume_key text"],
]

#: The version of the schema this asyncflow writes (how many migrations it has).
PG_SCHEMA_VERSION = len(MIGRATIONS)


def lock_space(schema: str) -> int:
    """The first key of every advisory lock asyncflow takes for ``schema`` (a positive int4)."""
    return zlib.crc32(f"asyncflow:{schema}".encode()) & 0x3FFFFFFF


async def migrate(conn: Any, schema: str, where: str) -> None:
    """Create or upgrade ``schema`` on ``conn`` (an asyncpg connection), once however many open at once.

    Raises:
        BackendError: the schema was written by a newer asyncflow.
    """
    quoted = quote_ident(schema)
    async with conn.transaction():
        # Transaction-level: released at commit, and by a session that dies mid-way.
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", lock_space(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.meta (key text PRIMARY KEY, value text NOT NULL)"
        )
        found = await conn.fetchval(f"SELECT value FROM {quoted}.meta WHERE key = 'schema_version'")
        version = int(found) if found is not None else 0
        if version > PG_SCHEMA_VERSION:
            raise BackendError(
                f"schema {schema!r} in {where} was written by a newer asyncflow (schema version {version}; "
                f"this version reads up to {PG_SCHEMA_VERSION}); upgrade asyncflow. Nothing was changed"
            )
        if version == PG_SCHEMA_VERSION:
            return
        await conn.execute(f"SET LOCAL search_path TO {quoted}")
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            str(PG_SCHEMA_VERSION),
        )


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
