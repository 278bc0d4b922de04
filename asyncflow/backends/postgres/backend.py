"""The PostgreSQL backend: any number of engines on any number of machines share runs.

Runs are divided among engines by claims: ``FOR UPDATE SKIP LOCKED``, oldest
first, each with a lease that the engine renews and a fencing token
(``runs.fence``) that every claim by a new holder increments (an engine that
claims again a run it still holds, its lease having run out, keeps its token,
so that its writes in flight stay valid). Every write an engine makes
for a run checks, in the same statement, that the run's owner and token are
still its own: an engine whose run was taken over has its checkpoint
refused (:class:`~asyncflow.LeaseLost`) and stops the run.

An engine's liveness is tied to its database session: it holds a session
advisory lock while it lives, so the runs of an engine killed with
``kill -9`` are claimable as soon as the server sees its connection close,
without waiting out the lease. (Behind a pooler in transaction mode,
``?pooler=transaction``, sessions mean nothing: leases alone decide.)

Checkpoints of concurrent runs share round trips: those made in one pass of
the event loop are written by one statement (group commit), and a few such
batches are in flight at once on the pool's connections.

The same session LISTENs for notices: a run released by another engine,
resumed, or cancelled from any process reaches the engines at once; the
engine's polling stays as the fallback for notices lost across reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import asyncpg
import attrs
from loguru import logger

from ..._core.errors import BackendError, LeaseLost
from ..._core.records import STEP_COLUMNS, RunStatus, StepRows, step_dicts
from ..base import (
    CHECKPOINT_ROW,
    Backend,
    Checkpoint,
    RunInfo,
    RunPage,
    SavedRun,
    StoreEntry,
    WorkflowVersion,
    check_updatable,
    decode_cursor,
    encode_changes,
    encode_cursor,
    replay,
    run_id_taken,
    shape_key,
)
from .connection import connect_error, connect_kwargs, is_disconnect, parse_url, redact
from .schema import lock_space, migrate

T = TypeVar("T")

_RUN_COLUMNS = tuple(field.name for field in attrs.fields(RunInfo))
_JSON_COLUMNS = frozenset({"suspend_data", "resume_data", "steps"})
_SELECT_RUN = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
_CLAIMABLE = ("pending", "running", "sleeping")
_FINISHED = tuple(s.value for s in RunStatus if s.finished)
_LEFT_OPEN = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SLEEPING})
# A difference between this machine's clock and the server's under this many seconds is left
# alone (one machine, or clocks kept by NTP: leases last far longer); a larger one is corrected.
_SKEW_IGNORED = 0.5
# Seconds an engine whose session came back holds back from the runs of engines that look dead.
_SETTLE = 3.0

#: A notice handler: ``(kind, run_id)``, kind ``"work"`` (a run may be claimed) or ``"cancel"``.
Notice = Callable[[str, "str | None"], None]

# Deadlocks: every statement that locks several runs' rows and may wait for them takes them in
# one order, by run_no (ORDER BY ... FOR ... in a CTE: the rows are locked as the sort gives them),
# and takes every row lock it needs at once, so that a transaction never holds one run's row while
# it waits for a lower one's. A heartbeat and a group commit of the same runs (from two of an
# engine's connections) then never wait for each other in a circle: whichever locks the lowest run
# of the two first goes through. (A claim waits for no row: SKIP LOCKED. Other writes lock one run.)

# The checkpoints of one batch, as arrays (one element per checkpoint). Each row goes in only
# if its run's owner and fencing token are still those of the engine that wrote it; the runs'
# rows are share-locked (in run_no order, see above), so a claim cannot slip in between the
# check and the insert. A batch in which some runs change status (or sleep) locks its rows for
# update instead, and sets them in the same statement: one lock per row, taken in order.
_INSERT_SQL = """
WITH v AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::int[], $8::float8[], $9::text[], $10::bigint[])
        AS v(run_id, seq, step_key, kind, changes, ops, attempts, at, owner, fence)
), owned AS (
    SELECT runs.run_no, runs.run_id FROM runs
    WHERE runs.run_id = ANY($1::text[]) AND EXISTS (
        SELECT 1 FROM v WHERE v.run_id = runs.run_id AND v.owner = runs.owner AND v.fence = runs.fence)
    ORDER BY runs.run_no
    FOR {lock} OF runs
){status}, ins AS (
    INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at)
    SELECT owned.run_no, v.seq, v.step_key, v.kind, v.changes, v.ops, v.attempts, v.at
    FROM v JOIN owned ON owned.run_id = v.run_id
    ON CONFLICT (run_no, seq) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""
# (Rows of runs that are not owned are not updated: only owned's, which it has locked already.)
_STATUS_CTE = """, moved AS (
    UPDATE runs SET status = COALESCE(s.status, runs.status), wake_at = COALESCE(s.wake_at, runs.wake_at)
    FROM owned, unnest($11::text[], $12::text[], $13::float8[], $14::text[], $15::bigint[])
        AS s(run_id, status, wake_at, owner, fence)
    WHERE runs.run_no = owned.run_no AND owned.run_id = s.run_id AND runs.run_id = s.run_id
      AND runs.owner = s.owner AND runs.fence = s.fence
)"""
_CHECKPOINTS_SQL = _INSERT_SQL.format(lock="SHARE", status="")
_CHECKPOINTS_AND_STATUS_SQL = _INSERT_SQL.format(lock="NO KEY UPDATE", status=_STATUS_CTE)
_WRITTEN_SQL = """
SELECT 1 FROM runs JOIN checkpoints ON checkpoints.run_no = runs.run_no AND checkpoints.seq = $2
WHERE runs.run_id = $1 AND runs.owner = $3 AND runs.fence = $4
"""
# Whether the liveness lock of a worker row ``w`` is held (by its engine's session).
_HELD = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = {space}::oid AND l.objid = w.lock_key::oid)"""
# The owners whose engines' sessions have all gone: each registered a lock key, and nobody
# holds any of them (two live engines may share an owner name: each has its own key).
_DEAD_OWNERS = f"""
SELECT w.owner FROM workers w GROUP BY w.owner HAVING NOT bool_or({_HELD})
"""


def _json(value: Any) -> str | None:
    if isinstance(value, StepRows):
        return json.dumps({"columns": STEP_COLUMNS, "rows": value.rows})
    return None if value is None else json.dumps(value)


def _row_to_info(row: Any, offset: float = 0.0) -> RunInfo:
    """The run of ``row``, its lease on this machine's clock (``offset``: the server's clock minus it)."""
    fields = {name: row[name] for name in _RUN_COLUMNS}
    if offset and fields["lease_until"] is not None:
        fields["lease_until"] -= offset
    for name in _JSON_COLUMNS:
        if fields[name] is not None:
            fields[name] = json.loads(fields[name])
    steps = fields["steps"]
    if isinstance(steps, dict):
        fields["steps"] = step_dicts(steps["columns"], steps["rows"])
    fields["status"] = RunStatus(fields["status"])
    return RunInfo(**fields)


def _value(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return _json(value)
    if isinstance(value, RunStatus):
        return value.value
    return value


async def _keep_session(conn: Any) -> None:
    """A pool connection goes back as it is: asyncflow leaves no session state on one.

    (asyncpg's default reset, a round trip on every release, would double the
    cost of a checkpoint.)
    """


def _lease_lost(cp: Checkpoint) -> LeaseLost:
    return LeaseLost(f"run {cp.run_id!r} is no longer owned by engine {cp.owner!r}")


# How many runs' notice counts a backend keeps for events_mark: far more than can be
# appended to between one watcher's read and its wait.
_EVENT_NOTICES_KEPT = 10_000


class PostgresBackend(Backend):
    """Runs in a PostgreSQL database, shared by any number of engines (see the module's docstring).

    Args:
        url: ``postgresql://user:password@host:port/database`` (or ``postgres://``),
            with optional ``?schema=`` (default ``asyncflow``), ``?pooler=transaction``
            (behind PgBouncer in transaction mode: liveness by leases alone) and
            ``?pool_size=`` (connections per engine, default 10).
        reconnect_timeout: seconds a call waits for a lost server to come back
            (retrying with back-off) before it fails.
        max_batches: group-commit batches in flight at once (one by default: the
            checkpoints that wait for it meanwhile make the next batch larger, and
            fewer, larger commits win where a commit waits for the disk; see
            benchmarks/README.md).
        clock: this machine's clock (default ``time.time``), whose difference from the
            server's is measured at open: leases go to the database on the server's clock,
            so engines on machines whose clocks disagree never take each other's runs early.
    """

    keeps_events = True

    def __init__(
        self,
        url: str,
        *,
        reconnect_timeout: float = 60.0,
        max_batches: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = parse_url(url)
        self.url = redact(url)
        self.schema = self._url.schema
        self._reconnect_timeout = reconnect_timeout
        self._max_batches = max_batches
        self._pool: Any = None
        self._session: Any = None  # liveness (the advisory lock) and LISTEN
        self._session_task: asyncio.Task[None] | None = None
        self._lock_key: int | None = None
        self._registered: set[str] = set()
        self._register_lock: asyncio.Lock | None = None
        # The fencing token of each run this backend holds, by (owner, run id): engines that
        # share a backend keep apart (one losing a run never forgets another's token).
        self._fences: dict[tuple[str, str], int] = {}
        # Checkpoints waiting for the next group commit, each with the fencing token its run had
        # here when it was made (a claim that comes meanwhile must not lend it a newer one).
        self._pending: list[tuple[Checkpoint, int, asyncio.Future[None]]] = []
        self._writers = 0
        self._scheduled = False
        self._writer_tasks: set[asyncio.Task[None]] = set()
        self._notice: Notice | None = None
        # engine.watch calls waiting for a run's events, woken by the notice its appender sends,
        # and how many such notices came for each run lately (events_mark), the oldest forgotten.
        self._event_waiters: dict[str, set[anyio.Event]] = {}
        self._event_notices: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._space = lock_space(self.schema)
        self._channel = f"asyncflow_{self.schema}"
        self._dead_owners = _DEAD_OWNERS.format(space=self._space)
        self._held = _HELD.format(space=self._space)
        # Outages, logged once as each begins and once as it ends: every attempt of a call is
        # numbered as it begins, and only an attempt begun after the outage was seen can say it is
        # over (a query sent before may be answered late), and only one begun after the server
        # came back can say a new one began (an attempt made while it was down may fail late).
        self._attempts = 0
        self._outage_from: int | None = None  # (the first attempt that may end the outage)
        self._back_from = 0  # (the first attempt that may begin a new one)
        self._closing = False
        self.session_liveness = self._url.pooler == "session"
        self._settled_at = 0.0  # (monotonic) runs of engines whose session died are claimed from then on
        #: group commits written so far (each one statement, or two with a run's status)
        self.batches = 0
        self._clock = clock
        #: seconds to add to this machine's clock to read the server's (0 when under half a second)
        self.clock_offset = 0.0

    # ---- opening and closing ---------------------------------------------------------

    async def open(self) -> None:
        """Connect (once: no retry), create or migrate the schema, and open the session."""
        if self._pool is not None:
            return
        self._closing = False
        self._register_lock = asyncio.Lock()
        kwargs = connect_kwargs(self._url)
        try:
            conn = await asyncpg.connect(**kwargs)
        except Exception as exc:
            raise connect_error(exc, self._url) from exc
        try:
            await migrate(conn, self.schema, self._url.where)
            await self._measure_clock(conn)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                min_size=2, max_size=self._url.pool_size, reset=_keep_session, **kwargs
            )
            await self._open_session()
        except BackendError:
            await self.aclose()
            raise
        except Exception as exc:
            await self.aclose()
            raise connect_error(exc, self._url) from exc

    async def _measure_clock(self, conn: Any) -> None:
        """Measure how far the server's clock is from this machine's (see ``clock_offset``)."""
        before = self._clock()
        server: float = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        offset = server - (before + self._clock()) / 2
        if abs(offset) < _SKEW_IGNORED:
            offset = 0.0
        elif offset != self.clock_offset:
            logger.warning(
                "the clock here is {:.1f} s {} the clock of PostgreSQL at {}; leases are reckoned on "
                "the server's clock",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
                self._url.where,
            )
        self.clock_offset = offset

    async def _open_session(self) -> None:
        """The engine's own connection: it holds the liveness lock and listens for notices."""
        if self._url.pooler == "transaction":
            return
        session = await asyncpg.connect(**connect_kwargs(self._url))
        try:
            if self._lock_key is None:
                self._lock_key = await session.fetchval("SELECT nextval('worker_keys')")
            await session.execute("SELECT pg_advisory_lock($1, $2)", self._space, self._lock_key)
            await session.add_listener(self._channel, self._on_notify)
        except BaseException:
            await session.close()
            raise
        session.add_termination_listener(self._on_session_lost)
        self._session = session

    def _on_session_lost(self, conn: Any) -> None:
        if self._closing or conn is not self._session:
            return
        self._session = None
        logger.warning(
            "lost the session to PostgreSQL at {}; reconnecting (runs here may be taken over meanwhile)",
            self._url.where,
        )
        self._session_task = asyncio.get_running_loop().create_task(self._reopen_session())

    async def _reopen_session(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._open_session()
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            with contextlib.suppress(Exception):
                if self._session is not None:
                    await self._measure_clock(self._session)
            # After a server restart every engine's session is new: each holds back from the runs
            # of engines that look dead for a while, so that they have their sessions back too and
            # no run changes hands for nothing (leases still expire as ever).
            self._settled_at = time.monotonic() + _SETTLE
            logger.info("the session to PostgreSQL at {} is back", self._url.where)
            if self._notice is not None:
                self._notice("work", None)  # (notices may have been lost meanwhile)
            return

    async def aclose(self) -> None:
        """Finish pending checkpoints, unregister this engine, and close the connections."""
        self._closing = True
        while self._pending or self._writer_tasks:
            if not self._writer_tasks:
                self._start_writer()
            await asyncio.gather(*self._writer_tasks, return_exceptions=True)
        task, self._session_task = self._session_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        session, self._session = self._session, None
        pool, self._pool = self._pool, None
        if pool is not None and self._registered:
            with contextlib.suppress(Exception):
                async with pool.acquire() as conn:
                    await conn.execute(
                        "DELETE FROM workers WHERE owner = ANY($1::text[]) AND lock_key = $2",
                        list(self._registered),
                        self._lock_key,
                    )
        self._registered.clear()
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()

    def on_notice(self, callback: Notice | None) -> None:
        """Have ``callback(kind, run_id)`` called on notices from other engines (see :class:`Backend`)."""
        self._notice = callback

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        kind, _, run_id = payload.partition(" ")
        if kind == "events":  # for this backend's watchers, not for the engine
            notices = self._event_notices
            notices[run_id] = notices.pop(run_id, 0) + 1
            if len(notices) > _EVENT_NOTICES_KEPT:
                notices.popitem(last=False)
            for waiter in self._event_waiters.get(run_id, ()):
                waiter.set()
            return
        callback = self._notice
        if callback is not None:
            callback(kind, run_id or None)

    # ---- calls ------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(conn)`` on a pool connection; a lost server is waited for (with back-off), up to a limit."""
        pool = self._pool
        if pool is None:
            raise BackendError(
                f"the PostgreSQL backend for {self.url!r} is not open (use 'async with engine')"
            )
        delay = 0.05
        deadline = time.monotonic() + self._reconnect_timeout
        while True:
            attempt = self._attempts
            self._attempts += 1
            try:
                async with pool.acquire() as conn:
                    result = await fn(conn)
            except Exception as exc:
                if not is_disconnect(exc) or self._closing:
                    raise self._wrap(exc) from exc
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"PostgreSQL at {self._url.where} did not come back within "
                        f"{self._reconnect_timeout:g} s: {type(exc).__name__}: {exc}"
                    ) from exc
                if self._outage_from is None and attempt >= self._back_from:
                    self._outage_from = self._attempts
                    logger.warning(
                        "lost the connection to PostgreSQL at {} ({}: {}); retrying with back-off",
                        self._url.where,
                        type(exc).__name__,
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if self._outage_from is not None and attempt >= self._outage_from:
                self._outage_from = None
                self._back_from = self._attempts
                logger.info("reconnected to PostgreSQL at {}", self._url.where)
            return result

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (BackendError, LeaseLost)):
            return exc
        if isinstance(exc, asyncpg.exceptions.QueryCanceledError):
            return BackendError(f"PostgreSQL at {self._url.where} cancelled a statement (timeout?): {exc}")
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            return BackendError(f"PostgreSQL error at {self._url.where}: {type(exc).__name__}: {exc}")
        return exc

    async def _register(self, owner: str) -> None:
        """Record that ``owner``'s liveness is this session's lock (once per owner)."""
        if owner in self._registered or self._lock_key is None or self._register_lock is None:
            return
        async with self._register_lock:
            if owner in self._registered:
                return
            key = self._lock_key

            async def register(conn: Any) -> None:
                async with conn.transaction():
                    # (rows of earlier engines of this name whose sessions have gone: forgotten)
                    await conn.execute(
                        f"DELETE FROM workers w WHERE owner = $1 AND lock_key <> $2 AND NOT {self._held}",
                        owner,
                        key,
                    )
                    await conn.execute(
                        "INSERT INTO workers (owner, lock_key, host, pid, started_at) "
                        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, lock_key) DO NOTHING",
                        owner,
                        key,
                        socket.gethostname(),
                        os.getpid(),
                        time.time(),
                    )

            await self._call(register)
            self._registered.add(owner)

    # ---- the API ----------------------------------------------------------------------

    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        """Insert the run and its initial store, unless its idempotency key is taken."""
        if info.owner is not None:
            await self._register(info.owner)
        values = [_value(name, getattr(info, name)) for name in _RUN_COLUMNS]
        if info.lease_until is not None and self.clock_offset:  # (on the server's clock)
            values[_RUN_COLUMNS.index("lease_until")] = info.lease_until + self.clock_offset
        fence = 1 if info.owner is not None else 0
        changes = encode_changes(store, ())
        marks = ", ".join(f"${i}" for i in range(1, len(_RUN_COLUMNS) + 2))
        insert = (
            f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}, fence) VALUES ({marks}) "
            "ON CONFLICT DO NOTHING RETURNING run_no"
        )

        async def create(conn: Any) -> tuple[RunInfo, bool]:
            async with conn.transaction():
                run_no = await conn.fetchval(insert, *values, fence)
                if run_no is None:
                    if info.idempotency_key is not None:
                        row = await conn.fetchrow(
                            f"{_SELECT_RUN} WHERE idempotency_key = $1", info.idempotency_key
                        )
                        if row is not None:
                            return _row_to_info(row, self.clock_offset), False
                    raise run_id_taken(info.run_id)
                if changes is not None:
                    await conn.execute(
                        "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, attempts) "
                        "VALUES ($1, 0, '', 'start', $2, 0)",
                        run_no,
                        changes,
                    )
                if info.owner is None:
                    await conn.execute("SELECT pg_notify($1, 'work')", self._channel)
            return info, True

        result = await self._call(create)
        if result[1] and info.owner is not None:
            self._fences[(info.owner, info.run_id)] = fence
        return result

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None``."""

        async def get(conn: Any) -> RunInfo | None:
            row = await conn.fetchrow(f"{_SELECT_RUN} WHERE run_id = $1", run_id)
            return _row_to_info(row, self.clock_offset) if row is not None else None

        return await self._call(get)

    async def list_runs(
        self, *, status: RunStatus | None, workflow_id: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        """Newest first, filtered, with keyset pagination."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            params.append(status.value)
            where.append(f"status = ${len(params)}")
        if workflow_id is not None:
            params.append(workflow_id)
            where.append(f"workflow_id = ${len(params)}")
        if cursor is not None:
            created_at, after = decode_cursor(cursor)
            params.extend([created_at, after])
            n = len(params)
            where.append(f"(created_at, run_id) < (${n - 1}, ${n})")
        params.append(limit + 1)
        sql = f"{_SELECT_RUN} {'WHERE ' + ' AND '.join(where) if where else ''} "
        sql += f"ORDER BY created_at DESC, run_id DESC LIMIT ${len(params)}"

        async def page(conn: Any) -> RunPage:
            infos = [_row_to_info(row, self.clock_offset) for row in await conn.fetch(sql, *params)]
            more = len(infos) > limit
            infos = infos[:limit]
            nxt = encode_cursor(infos[-1].created_at, infos[-1].run_id) if more and infos else None
            return RunPage(infos, nxt)

        return await self._call(page)

    async def workers(self) -> dict[str, dict[str, Any]]:
        """The engines registered here: owner -> ``{"host", "pid", "started_at", "alive"}``."""

        async def read(conn: Any) -> dict[str, dict[str, Any]]:
            # (engines sharing an owner name: a live one is named, the others only if none lives)
            rows = await conn.fetch(
                f"SELECT owner, host, pid, started_at, {self._held} AS alive FROM workers w "
                "ORDER BY alive, started_at"
            )
            return {
                row["owner"]: {
                    "host": row["host"],
                    "pid": row["pid"],
                    "started_at": row["started_at"],
                    "alive": row["alive"],
                }
                for row in rows
            }

        return await self._call(read)

    # ---- checkpoints: group commit ------------------------------------------------------

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint in the next group commit (refused with LeaseLost if the run changed hands)."""
        if self._pool is None:
            raise BackendError(
                f"the PostgreSQL backend for {self.url!r} is not open (use 'async with engine')"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        fence = self._fences.get((checkpoint.owner, checkpoint.run_id), -1)
        self._pending.append((checkpoint, fence, future))
        if not self._scheduled and self._writers < self._max_batches:
            # At the end of this pass of the loop: every run that moved in it shares the batch.
            self._scheduled = True
            loop.call_soon(self._start_writer)
        await future

    def _start_writer(self) -> None:
        self._scheduled = False
        if not self._pending or self._writers >= self._max_batches:
            return
        self._writers += 1
        task = asyncio.get_running_loop().create_task(self._write_pending())
        self._writer_tasks.add(task)
        task.add_done_callback(self._writer_tasks.discard)

    async def _write_pending(self) -> None:
        """Write what is pending, batch after batch, until nothing is."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:2048], self._pending[2048:]
                if self._pending and self._writers < self._max_batches:
                    self._start_writer()  # (another batch in flight meanwhile)
                try:
                    errors = await self._write_batch([(cp, fence) for cp, fence, _ in batch])
                except BaseException as exc:
                    failure = (
                        exc
                        if isinstance(exc, Exception)
                        else BackendError(f"checkpoint write stopped: {exc!r}")
                    )
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, future), error in zip(batch, errors, strict=True):
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        finally:
            self._writers -= 1

    async def _write_batch(self, cps: list[tuple[Checkpoint, int]]) -> list[BaseException | None]:
        """Write ``cps`` (all or none); an error (LeaseLost or other) per checkpoint, or None."""
        columns: list[list[Any]] = [[] for _ in range(10)]
        status_rows: list[tuple[str, str | None, float | None, str, int]] = []
        for cp, fence in cps:
            for column, value in zip(
                columns,
                (
                    cp.run_id,
                    cp.seq,
                    cp.step_key,
                    cp.kind,
                    encode_changes(cp.puts, cp.deletes),
                    cp.ops,
                    cp.attempts,
                    cp.at,
                    cp.owner,
                    fence,
                ),
                strict=True,
            ):
                column.append(value)
            if cp.status is not None or cp.kind == "sleep":
                status_rows.append(
                    (
                        cp.run_id,
                        cp.status.value if cp.status is not None else None,
                        cp.at if cp.kind == "sleep" else None,
                        cp.owner,
                        fence,
                    )
                )

        async def write(conn: Any) -> int:
            self.batches += 1
            if status_rows:
                statuses = map(list, zip(*status_rows, strict=True))
                count: int = await conn.fetchval(_CHECKPOINTS_AND_STATUS_SQL, *columns, *statuses)
                return count
            count = await conn.fetchval(_CHECKPOINTS_SQL, *columns)
            return count

        try:
            written = await self._call(write)
        except BackendError:
            if len(cps) == 1:
                raise
            written = -1  # a bad row (nothing went in): each on its own, to fail only that one
        if written == len(cps):
            return [None] * len(cps)
        errors: list[BaseException | None] = []
        for cp, fence in cps:
            try:
                if written < 0:
                    alone = await self._write_batch([(cp, fence)])
                    errors.append(None if alone == [None] else _lease_lost(cp))
                    continue
                ok = await self._call(self._written_check(cp, fence))
                errors.append(None if ok else _lease_lost(cp))
            except Exception as exc:
                errors.append(exc)
        return errors

    def _written_check(self, cp: Checkpoint, fence: int) -> Callable[[Any], Awaitable[Any]]:
        """A call: whether ``cp`` is in the database and its engine still owns the run (with ``fence``)."""

        async def check(conn: Any) -> Any:
            return await conn.fetchval(_WRITTEN_SQL, cp.run_id, cp.seq, cp.owner, fence)

        return check

    # ---- the rest of the API --------------------------------------------------------------

    async def load(self, run_id: str) -> SavedRun | None:
        """The run, its store in insertion order and its checkpoints in order (one snapshot)."""

        async def load(conn: Any) -> tuple[Any, list[Any]] | None:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    f"SELECT run_no, {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = $1", run_id
                )
                if row is None:
                    return None
                rows = await conn.fetch(
                    f"SELECT {CHECKPOINT_ROW} FROM checkpoints WHERE run_no = $1 ORDER BY seq",
                    row["run_no"],
                )
            return row, rows

        found = await self._call(load)
        if found is None:
            return None
        row, rows = found
        store, checkpoints = replay(run_id, rows)
        return SavedRun(_row_to_info(row, self.clock_offset), store, checkpoints)

    async def update_run(
        self,
        run_id: str,
        *,
        holder: str | None = None,
        expect: frozenset[RunStatus] | None = None,
        now: float,
        **fields: Any,
    ) -> bool:
        """Set fields when the conditions hold (the holder's fencing token too); whether it was updated."""
        check_updatable(fields)
        params: list[Any] = [now]
        sets = ["updated_at = $1"]
        for name, value in fields.items():
            params.append(_value(name, value))
            sets.append(f"{name} = ${len(params)}")
        params.append(run_id)
        where = [f"run_id = ${len(params)}"]
        if holder is not None:
            params.append(holder)
            where.append(f"owner = ${len(params)}")
            fence = self._fences.get((holder, run_id))
            if fence is not None:
                params.append(fence)
                where.append(f"fence = ${len(params)}")
        if expect is not None:
            params.append([s.value for s in expect])
            where.append(f"status = ANY(${len(params)}::text[])")
        sql = f"UPDATE runs SET {', '.join(sets)} WHERE {' AND '.join(where)} RETURNING status"
        released = "owner" in fields and fields["owner"] is None
        status = fields.get("status")

        async def update(conn: Any) -> bool:
            async with conn.transaction():
                after = await conn.fetchval(sql, *params)
                if after is None:
                    return False
                if status is RunStatus.CANCELLED and holder is None:
                    # Cancelled from anywhere: the engine running it stops it at once.
                    await conn.execute("SELECT pg_notify($1, $2)", self._channel, f"cancel {run_id}")
                elif released and RunStatus(after) in _LEFT_OPEN:
                    await conn.execute("SELECT pg_notify($1, 'work')", self._channel)
                return True

        updated = await self._call(update)
        if updated and "owner" in fields and fields["owner"] != holder and holder is not None:
            self._fences.pop((holder, run_id), None)
        return updated

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int,
        run_id: str | None = None,
        skip_versions: Collection[str] = (),
    ) -> list[RunInfo]:
        """Take free runs, oldest first: pending, expired, or held by an engine whose session died.

        ``FOR UPDATE SKIP LOCKED``: engines claiming at once take different runs
        without waiting for each other. Each claim increments the run's fencing token,
        unless ``owner`` holds the run already with the token this backend has for it.
        """
        await self._register(owner)
        held = [(run, fence) for (holder, run), fence in self._fences.items() if holder == owner]
        # Leases are compared and written on the server's clock (see clock_offset).
        skew = self.clock_offset
        params: list[Any] = [
            owner,
            lease_until + skew,
            now,
            limit,
            [r for r, _ in held],
            [f for _, f in held],
            now + skew,
        ]
        only = ""
        if run_id is not None:
            params.append(run_id)
            only += f" AND r.run_id = ${len(params)}"
        skips = list(skip_versions)
        if skips:
            params.append(skips)
            only += (
                f" AND (r.workflow_version IS NULL OR NOT r.workflow_version = ANY(${len(params)}::text[]))"
            )
        settled = self._session is not None and time.monotonic() >= self._settled_at
        dead = "OR r.owner IN (SELECT owner FROM dead)" if settled else ""
        sql = f"""
            WITH dead AS MATERIALIZED ({self._dead_owners}),
            free AS (
                SELECT r.run_no FROM runs r
                WHERE r.status IN ('pending', 'running', 'sleeping')
                  AND (r.owner IS NULL OR r.lease_until IS NULL OR r.lease_until < $7
                       {dead}) {only}
                ORDER BY r.created_at, r.run_no
                LIMIT $4
                FOR UPDATE SKIP LOCKED
            )
            UPDATE runs SET owner = $1, lease_until = $2, updated_at = $3,
                fence = CASE WHEN runs.owner = $1 AND (runs.run_id, runs.fence) IN (
                    SELECT * FROM unnest($5::text[], $6::bigint[])) THEN runs.fence ELSE runs.fence + 1 END,
                status = CASE runs.status WHEN 'sleeping' THEN 'sleeping' ELSE 'running' END
            FROM free WHERE runs.run_no = free.run_no
            RETURNING runs.fence, {", ".join(f"runs.{c}" for c in _RUN_COLUMNS)}
        """

        async def claim(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(sql, *params)
            return rows

        rows = await self._call(claim)
        rows.sort(key=lambda row: (row["created_at"], row["run_id"]))
        infos = []
        for row in rows:
            self._fences[(owner, row["run_id"])] = row["fence"]
            infos.append(_row_to_info(row, self.clock_offset))
        return infos

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        """Extend leases still held by ``owner`` (with this engine's fencing tokens); the ids it lost."""
        ids = list(run_ids)
        if not ids:
            return set()
        fences = [self._fences.get((owner, run_id), -1) for run_id in ids]

        async def beat(conn: Any) -> set[str]:
            rows = await conn.fetch(
                # (the rows locked in run_no order: see _INSERT_SQL)
                "WITH mine AS (SELECT runs.run_no FROM runs "
                "JOIN unnest($3::text[], $4::bigint[]) AS v(run_id, fence) "
                "ON runs.run_id = v.run_id AND runs.fence = v.fence WHERE runs.owner = $2 "
                "ORDER BY runs.run_no FOR NO KEY UPDATE OF runs) "
                "UPDATE runs SET lease_until = $1 FROM mine WHERE runs.run_no = mine.run_no "
                "RETURNING runs.run_id",
                lease_until + self.clock_offset,
                owner,
                ids,
                fences,
            )
            return {row[0] for row in rows}

        kept = await self._call(beat)
        lost = set()
        for run_id, fence in zip(ids, fences, strict=True):
            if run_id in kept:
                continue
            # Lost, unless this backend claimed the run again for ``owner`` meanwhile (a new token):
            # then the run is held, and the token the beat was sent with was only out of date.
            if self._fences.get((owner, run_id), -1) == fence:
                self._fences.pop((owner, run_id), None)
                lost.add(run_id)
        return lost

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run and its checkpoints."""

        async def delete(conn: Any) -> bool:
            async with conn.transaction():
                run_no = await conn.fetchval("DELETE FROM runs WHERE run_id = $1 RETURNING run_no", run_id)
                if run_no is None:
                    return False
                await conn.execute("DELETE FROM checkpoints WHERE run_no = $1", run_no)
                await conn.execute("DELETE FROM run_events WHERE run_no = $1", run_no)
                return True

        return await self._call(delete)

    async def purge(self, *, finished_before: float) -> int:
        """Delete finished runs last updated before the time."""

        async def purge(conn: Any) -> int:
            async with conn.transaction():
                numbers = [
                    row[0]
                    for row in await conn.fetch(
                        # (the rows locked in run_no order: see _INSERT_SQL)
                        "WITH doomed AS (SELECT run_no FROM runs WHERE status = ANY($1::text[]) "
                        "AND updated_at < $2 ORDER BY run_no FOR UPDATE) "
                        "DELETE FROM runs USING doomed WHERE runs.run_no = doomed.run_no "
                        "RETURNING runs.run_no",
                        list(_FINISHED),
                        finished_before,
                    )
                ]
                if numbers:
                    await conn.execute("DELETE FROM checkpoints WHERE run_no = ANY($1::bigint[])", numbers)
                    await conn.execute("DELETE FROM run_events WHERE run_no = ANY($1::bigint[])", numbers)
                return len(numbers)

        return await self._call(purge)

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Add the events to the end of the run's log, numbered on from its last, in one transaction."""
        await self.append_events_of_runs({run_id: events})

    async def append_events_of_runs(self, events: Mapping[str, Sequence[dict[str, Any]]]) -> None:
        """The events of several runs, each at the end of its run's log, in one transaction (one commit)."""
        run_ids: list[str] = []
        numbers: list[int] = []
        texts: list[str] = []
        for run_id, run_events in events.items():
            for n, data in enumerate(run_events, 1):
                run_ids.append(run_id)
                numbers.append(n)
                texts.append(json.dumps(data))
        if not texts:
            return
        runs = sorted(set(run_ids))

        async def append(conn: Any) -> None:
            async with conn.transaction():
                # Appenders of one run (the engine running it, another resuming it) take turns;
                # the locks are taken in one order, so two batches never wait for each other.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM "
                    "(SELECT DISTINCT hashtextextended(x, $2) AS k FROM unnest($1::text[]) AS x "
                    "ORDER BY k) AS l",
                    runs,
                    self._space,
                )
                await conn.execute(
                    "INSERT INTO run_events (run_no, seq, data) "
                    "SELECT r.run_no, v.n + COALESCE("
                    "(SELECT max(e.seq) FROM run_events e WHERE e.run_no = r.run_no), 0), v.data "
                    "FROM unnest($1::text[], $2::int[], $3::text[]) AS v(run_id, n, data) "
                    "JOIN runs r ON r.run_id = v.run_id",
                    run_ids,
                    numbers,
                    texts,
                )
                # Watchers in every process wake on the commit (NOTIFY is sent only then),
                # one notice a run a batch, not one an event.
                await conn.execute(
                    "SELECT pg_notify($1, 'events ' || x) FROM unnest($2::text[]) AS x", self._channel, runs
                )

        await self._call(append)

    def events_mark(self, run_id: str) -> object:
        """How many notices of new events this backend has had for the run (see :meth:`wait_events`)."""
        return self._event_notices.get(run_id, 0)

    async def wait_events(self, run_id: str, *, within: float, mark: object = None) -> None:
        """Return when events are appended to the run (by any engine), or after ``within`` seconds.

        Woken by the NOTIFY each append sends on its commit, and at once if
        one came since ``mark`` was taken (before the caller's last read).
        Without a session that listens (behind a pooler in transaction mode,
        or while it reconnects) this polls, as the default does.
        """
        if self._session is None:
            await anyio.sleep(within)
            return
        if mark is not None and self._event_notices.get(run_id, 0) != mark:
            return
        waiter = anyio.Event()
        waiters = self._event_waiters.setdefault(run_id, set())
        waiters.add(waiter)
        try:
            with anyio.move_on_after(within):
                await waiter.wait()
        finally:
            waiters.discard(waiter)
            if not waiters:
                del self._event_waiters[run_id]

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """The run's events numbered after ``after``, in order."""

        async def read(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(
                "SELECT e.seq, e.data FROM run_events e JOIN runs r ON r.run_no = e.run_no "
                "WHERE r.run_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
                run_id,
                after,
                limit,
            )
            return rows

        rows = await self._call(read)
        return [(row[0], json.loads(row[1])) for row in rows]

    async def save_version(self, version: WorkflowVersion) -> None:
        """Keep ``version`` unless one with its key is kept."""

        async def save(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO workflow_versions VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                version.version,
                shape_key(version.version),
                version.workflow_id,
                json.dumps(version.shape),
                json.dumps(version.definition),
            )

        await self._call(save)

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        """The versions kept with the shape key of ``version``, ``version`` itself first."""

        async def load(conn: Any) -> list[WorkflowVersion]:
            rows = await conn.fetch(
                "SELECT version, workflow_id, shape, definition FROM workflow_versions "
                "WHERE shape_key = $1 ORDER BY version <> $2, version",
                shape_key(version),
                version,
            )
            return [WorkflowVersion(r[0], r[1], json.loads(r[2]), json.loads(r[3])) for r in rows]

        return await self._call(load)
