"""The writer thread of the SQLite backend, and group commit.

One writer thread owns the connection. Every call becomes a job on its
queue; the thread takes all the jobs that are waiting, writes them in one
transaction (group commit: concurrent runs share commits, so throughput
grows with concurrency), commits, and hands every result back to the event
loop with a single wake-up. Nothing touches SQLite on the event loop.

Calls wait for the end of the event loop's pass before they go to the
writer, so the writer, which needs the GIL to start and after every
statement, finds the loop idle. Checkpoints, one per committed action, take
a shorter road still: the rows of all the runs that moved in one pass are
made on the loop and written by one multi-row statement, its own
transaction, while SQLite's own work runs without the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from ..._core.errors import BackendError, LeaseLost
from ..base import Checkpoint, encode_changes
from .schema import atomic, connect, locked


class _Job:
    __slots__ = ("alone", "error", "fn", "future", "result", "writes")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        writes: bool,
        alone: bool = False,
    ) -> None:
        self.fn = fn
        self.future = future
        self.writes = writes
        self.alone = alone  # writes atomically by itself, outside a transaction: see Writer.submit
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()  # queued as (_STOP, future) by aclose
_Jobs = queue.SimpleQueue["_Job | _Batch | tuple[object, asyncio.Future[None]]"]


class Writer:
    """The thread that owns the connection to ``path``, and the queue of its jobs.

    ``submit`` and ``submit_checkpoint`` (on the event loop) return a future
    that the writer resolves; they never block. When the writer delivers
    nothing for :attr:`HELD_UP_AFTER` seconds while it has work (another
    process holds the database's write lock, say), it logs a warning once, and
    again when its writes go through.
    """

    #: seconds without progress, with work waiting, after which the hold-up is logged
    HELD_UP_AFTER = 1.0

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        # The queue of the writer thread now open (each thread has its own, so a thread still
        # finishing after a cancelled close cannot take the jobs of the next one).
        self._jobs: _Jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_rows = 2  # rows per statement, set from the SQLite library when it opens
        # Checkpoints and calls waiting on the loop for the end of its pass (see _hand_over).
        self._pending: list[tuple[Checkpoint, asyncio.Future[None]]] = []
        self._pending_jobs: list[_Job] = []
        self._handing_over = False
        # What the writer has done, and the pipe it wakes the loop with (see _hand_back).
        self._done: collections.deque[tuple[list[_Job], list[_Batch]]] = collections.deque()
        self._wake: tuple[int, int] | None = None
        # Whether writes are held up (see _watch): units handed over and not delivered yet, when
        # the writer last delivered (or got work while idle), and since when a hold-up was logged.
        self._in_flight = 0
        self._progress = 0.0
        self._held_up_since: float | None = None
        self._watching = False

    async def open(self) -> None:
        """Start the thread; it opens the file and creates or checks the schema."""
        if self._thread is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._open_wake(loop)
        ready: asyncio.Future[None] = loop.create_future()
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve,
            args=(ready, self._jobs),
            name=f"asyncflow-sqlite:{self.path.name}",
            daemon=True,
        )
        self._thread.start()
        try:
            # Opening takes milliseconds; shielded, so a cancellation cannot leave
            # a thread holding the file behind an object that thinks it is closed.
            with anyio.CancelScope(shield=True):
                await ready
        except BaseException:
            self._thread = None
            self._close_wake(loop, self._wake)
            raise

    def _open_wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """A pipe for the writer to wake the loop with, if the loop can watch one."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        try:
            loop.add_reader(read, self._take_done, read)
        except NotImplementedError:  # (Windows' proactor loop): call_soon_threadsafe instead
            os.close(read)
            os.close(write)
        else:
            self._wake = (read, write)

    def _close_wake(self, loop: asyncio.AbstractEventLoop, wake: tuple[int, int] | None) -> None:
        """Deliver what is left and close ``wake``, the pipe of a writer that has stopped."""
        if wake is None:  # (the writer used call_soon_threadsafe)
            return
        self._take_done(wake[0])
        if self._wake == wake:
            self._wake = None
        loop.remove_reader(wake[0])
        os.close(wake[0])
        os.close(wake[1])

    async def aclose(self) -> None:
        """Finish the queued writes, close the connection and stop the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = None
        self._send_pending()  # checkpoints still waiting for the end of a pass go first
        closed: asyncio.Future[None] = loop.create_future()
        wake = self._wake
        # Once the thread has stopped (it writes to the pipe no more), even if this call
        # was cancelled meanwhile: the last results, then the pipe.
        closed.add_done_callback(lambda _: self._close_wake(loop, wake))
        self._jobs.put((_STOP, closed))
        await asyncio.shield(closed)

    def _serve(self, ready: asyncio.Future[None], jobs: _Jobs) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = connect(self.path, self.busy_timeout)
            # Rows per statement: as many as this SQLite binds (999 parameters before 3.32).
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._max_rows = max(size for size in _MANY_SQL if size * _ROW_PARAMS <= variables)
        except BaseException as exc:
            _call_in_loop(loop, _fail_future, ready, exc)
            return
        _call_in_loop(loop, _resolve_future, ready, None)
        closed: asyncio.Future[None] | None = None
        try:
            while closed is None:
                batch: list[_Job] = []
                checkpoints: list[_Batch] = []
                job = jobs.get()
                while True:
                    if isinstance(job, tuple):  # (_STOP, future): finish this batch, then stop
                        closed = job[1]
                        break
                    if isinstance(job, _Batch):
                        checkpoints.append(job)
                    else:
                        batch.append(job)
                    if len(batch) + len(checkpoints) >= 1024 or jobs.empty():
                        break  # (this thread alone takes jobs: not empty now, not empty below)
                    job = jobs.get_nowait()
                # Jobs that write alone go last, each its own transaction, once the results of
                # the others are handed back: their runs go on meanwhile (see submit).
                alone = [job for job in batch if job.alone]
                if alone:
                    batch = [job for job in batch if not job.alone]
                if batch or checkpoints:
                    self._run(loop, conn, batch, checkpoints)
                if alone:
                    self._run(loop, conn, alone, [])
        finally:
            conn.close()
            if closed is not None:
                _call_in_loop(loop, _resolve_future, closed, None)

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: sqlite3.Connection,
        batch: list[_Job],
        checkpoints: list[_Batch],
    ) -> None:
        """Execute ``batch`` and ``checkpoints`` and give the results to the loop (on the writer thread)."""
        try:
            self._execute(conn, batch, checkpoints)
        except Exception as exc:  # (a failure SQLite's own handling let through)
            # From the checkpoints, written first, or from finding which of them
            # failed: they and the calls after them (not made yet) fail with it,
            # even a checkpoint that was written, and the writer goes on.
            _fail_all(batch, checkpoints, _wrap(exc, self.path, self.busy_timeout))
        self._hand_back(loop, batch, checkpoints)

    def _hand_back(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Job], checkpoints: list[_Batch]
    ) -> None:
        """Give the results to the loop (on the writer thread).

        A byte down a pipe the loop watches wakes it, and it takes the results in
        its own callback (_take_done): one system call on each side, where
        ``call_soon_threadsafe`` makes a handle and the loop reads its own
        socket twice (the second time to find it empty).
        """
        wake = self._wake
        if wake is None:
            _call_in_loop(loop, self._delivered, batch, checkpoints)
            return
        self._done.append((batch, checkpoints))
        with contextlib.suppress(BlockingIOError):  # full of wake-ups the loop has yet to read
            os.write(wake[1], b"\0")

    def _take_done(self, wake: int) -> None:
        """Deliver what the writer has done (on the loop); ``wake``: the pipe it woke the loop by."""
        with contextlib.suppress(BlockingIOError):
            os.read(wake, 4096)
        done = self._done
        while done:
            self._delivered(*done.popleft())

    def _delivered(self, batch: list[_Job], checkpoints: list[_Batch]) -> None:
        """Resolve the futures of what the writer did (on the loop), and note the progress."""
        _deliver(batch, checkpoints)
        self._in_flight -= len(batch) + len(checkpoints)
        self._progress = time.monotonic()
        if self._held_up_since is not None:
            logger.info(
                "writes to {!r} go through again, after {:.1f} s",
                str(self.path),
                self._progress - self._held_up_since,
            )
            self._held_up_since = None

    def _watch(self) -> None:
        """Log once when the writer has work but delivered nothing for HELD_UP_AFTER s (on the loop)."""
        loop = self._loop
        if self._in_flight <= 0 or self._thread is None or loop is None:
            self._watching = False
            return
        waited = time.monotonic() - self._progress
        if waited >= self.HELD_UP_AFTER and self._held_up_since is None:
            self._held_up_since = self._progress
            logger.warning(
                "writes to {!r} are held up: none has gone through for {:.1f} s (another process may hold "
                "the database's write lock; this one waits up to busy_timeout={:g} s)",
                str(self.path),
                waited,
                self.busy_timeout,
            )
        loop.call_later(self.HELD_UP_AFTER / 4, self._watch)

    def _handed_over(self, loop: asyncio.AbstractEventLoop, units: int) -> None:
        """Count ``units`` given to the writer thread, and watch for a hold-up while there are any."""
        if self._in_flight <= 0:
            self._progress = time.monotonic()  # (the wait starts now, not at the last delivery)
        self._in_flight += units
        if not self._watching:
            self._watching = True
            loop.call_later(self.HELD_UP_AFTER / 4, self._watch)

    def _execute(self, conn: sqlite3.Connection, batch: list[_Job], checkpoints: list[_Batch]) -> None:
        if batch:
            writes = [job for job in batch if job.writes and not job.alone]
            reads = [job for job in batch if not job.writes]
            alone = [job for job in batch if job.alone]
        else:  # the common case: only checkpoints
            writes = reads = alone = []
        if checkpoints and not writes:
            # One statement, its own transaction, so the writer wins the GIL back once
            # per batch (each SQLite call gives it up).
            _write_batches(conn, checkpoints, self.path, self.busy_timeout, self._max_rows)
        elif writes or checkpoints:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if checkpoints:
                    _write_batches(conn, checkpoints, self.path, self.busy_timeout, self._max_rows)
                for job in writes:
                    _in_savepoint(conn, job)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                _fail_all(writes, checkpoints, _wrap(error, self.path, self.busy_timeout))
        for job in alone:
            try:
                job.result = job.fn(conn)
            except Exception as exc:
                job.error = exc
        for job in reads:
            try:
                job.result = job.fn(conn)
            except Exception as exc:
                job.error = exc
        for job in batch:
            if job.error is not None:
                job.error = _wrap(job.error, self.path, self.busy_timeout)

    def submit(
        self, fn: Callable[[sqlite3.Connection], Any], *, writes: bool, alone: bool = False
    ) -> asyncio.Future[Any]:
        """Run ``fn(conn)`` on the writer (in the next transaction if it ``writes``); its future.

        ``alone``: ``fn`` writes atomically by itself (one statement, or its own
        ``atomic`` block), outside a transaction: the writer runs it after the
        other jobs and checkpoints of its batch, once their results are handed
        back. Every statement on the writer waits for the loop's GIL, and a
        transaction adds four (BEGIN, SAVEPOINT, RELEASE, COMMIT).
        """
        loop = self._loop
        if self._thread is None or loop is None:
            raise self.not_open()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending_jobs.append(_Job(fn, future, writes, alone))
        self._hand_over(loop)
        return future

    def submit_checkpoint(self, checkpoint: Checkpoint) -> asyncio.Future[None]:
        """Write ``checkpoint`` in the next group commit; its future (``LeaseLost`` if not owned)."""
        if checkpoint.status is not None or checkpoint.kind == "sleep":
            # Rare (a sleep begins, a run wakes): it changes the run's row too.
            return self.submit(CheckpointJob(checkpoint), writes=True)
        loop = self._loop
        if self._thread is None or loop is None:
            raise self.not_open()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((checkpoint, future))
        self._hand_over(loop)
        return future

    def not_open(self) -> BackendError:
        """The error of a call made while the writer is not running."""
        return BackendError(
            f"the SQLite backend for {str(self.path)!r} is not open (use 'async with engine')"
        )

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what waits to the writer when this pass of the loop ends (at once if nothing else is ready).

        Once every task that is ready now has run, the checkpoints and calls of all
        the runs that moved in this pass share one commit, and the writer, which
        needs the GIL to start and after every statement, finds the loop idle
        instead of fighting it for the GIL. (``_ready`` is asyncio's queue of ready
        callbacks; another loop waits for the end of the pass.)
        """
        if self._handing_over:
            return
        if not getattr(loop, "_ready", True):
            self._send_pending()
        else:
            self._handing_over = True
            loop.call_soon(self._send_pending)

    def _send_pending(self) -> None:
        self._handing_over = False
        jobs, self._pending_jobs = self._pending_jobs, []
        for job in jobs:
            self._jobs.put(job)
        pending, self._pending = self._pending, []
        loop = self._loop
        if loop is not None and (jobs or pending):
            self._handed_over(loop, len(jobs) + (1 if pending else 0))
        if not pending:
            return
        try:
            batch = _Batch(pending)
        except BaseException as exc:  # a row that cannot be encoded: fail each on its own
            if loop is not None and len(pending) > 1:
                self._handed_over(loop, len(pending) - 1)
            for checkpoint, future in pending:
                self._jobs.put(_Job(CheckpointJob(checkpoint), future, True))
            if not isinstance(exc, Exception):
                raise
            return
        self._jobs.put(batch)


class CheckpointJob:
    """A checkpoint waiting in the queue; written with the others of its batch.

    Called on its own (``job.fn(conn)``) it writes just this checkpoint: the
    fallback when a batch has a run that changed hands or a bad row.
    """

    __slots__ = ("checkpoint",)

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def __call__(self, conn: sqlite3.Connection) -> None:
        if _write(conn, self.checkpoint) != 1:
            raise _lease_lost(self.checkpoint)


# Every write of a checkpoint checks, in the same statement, that its engine
# still owns the run: a run cancelled or taken over elsewhere takes no more.
_STATUS_SQL = (
    "UPDATE runs SET status = COALESCE(?, status), wake_at = COALESCE(?, wake_at) "
    "WHERE run_id = ? AND owner = ?"
)
CHECKPOINT_SQL = (
    "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_ONE_SQL = (
    "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
    "SELECT run_no, ?, ?, ?, ?, ?, ?, ? FROM runs WHERE run_id = ? AND owner = ?"
)
# The row of _ONE_SQL: 7 columns, then the run's id and its owner. (Plain ``?``: Python 3.12.0-3.12.3
# warn of numbered ``?1`` placeholders bound from a sequence, and a warning made an error fails the run.)
_ROW_PARAMS = 9


def _many_sql(rows: int) -> str:
    """One statement for ``rows`` checkpoints, each of them checked for its run's owner.

    One statement, not one per row, matters: the sqlite3 module gives up the
    GIL for every step of a statement and must win it back from the event
    loop after each one. The rows are bound as parameters (no text to parse
    per row). Batches are padded to a power of two with rows of NULLs, which
    the owner check leaves out, so a handful of statements is ever prepared.
    """
    values = ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)
    return (
        "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
        "SELECT runs.run_no, column1, column2, column3, column4, column5, column6, column7 "
        f"FROM (VALUES {values}) AS v "
        "CROSS JOIN runs ON runs.run_id = v.column8 AND runs.owner = v.column9"
    )


_MANY_SQL = {size: _many_sql(size) for size in (2**k for k in range(1, 12))}  # 2 .. 2,048 rows


def _write(conn: sqlite3.Connection, cp: Checkpoint) -> int:
    """Write ``cp`` (and its status); 1 if its engine still owned the run, else 0 (nothing written)."""
    if cp.status is not None or cp.kind == "sleep":
        status = cp.status.value if cp.status is not None else None
        wake_at = cp.at if cp.kind == "sleep" else None
        conn.execute(_STATUS_SQL, (status, wake_at, cp.run_id, cp.owner))
    return conn.execute(_ONE_SQL, _row(cp)).rowcount


class _Batch:
    """The checkpoints of one pass of the event loop, with their rows made there.

    The writer thread only runs the statement: making rows is Python work,
    and Python work on the writer would wait for the event loop's GIL.
    """

    __slots__ = ("checkpoints", "errors", "futures", "params")

    def __init__(self, pending: list[tuple[Checkpoint, asyncio.Future[None]]]) -> None:
        self.checkpoints = [cp for cp, _ in pending]
        self.futures = [future for _, future in pending]
        params: list[Any] = []
        for cp in self.checkpoints:
            params += _row(cp)
        self.params = params  # the rows one after another, _ROW_PARAMS values each
        self.errors: list[BaseException | None] | None = None  # None: all written

    def fail(self, error: BaseException) -> None:
        self.errors = [error] * len(self.checkpoints)


def _row(cp: Checkpoint) -> tuple[Any, ...]:
    return (
        cp.seq,
        cp.step_key,
        cp.kind,
        encode_changes(cp.puts, cp.deletes),
        cp.ops,
        cp.attempts,
        cp.at,
        cp.run_id,
        cp.owner,
    )


def _insert_rows(conn: sqlite3.Connection, params: list[Any], max_rows: int) -> int:
    """Insert rows of ``params``; how many their engines still owned."""
    rows = len(params) // _ROW_PARAMS
    if rows == 1:
        return conn.execute(_ONE_SQL, params).rowcount
    written = 0
    for start in range(0, rows, max_rows):
        chunk = params[start * _ROW_PARAMS : (start + max_rows) * _ROW_PARAMS]
        count = len(chunk) // _ROW_PARAMS
        size = 1 << (count - 1).bit_length()  # the next power of two
        chunk += [None] * ((size - count) * _ROW_PARAMS)
        written += conn.execute(_MANY_SQL[size], chunk).rowcount
    return written


def _write_batches(
    conn: sqlite3.Connection, batches: list[_Batch], path: Path, patience: float, max_rows: int
) -> None:
    """Every checkpoint of ``batches`` in one statement; one at a time only to find which one failed."""
    params = batches[0].params if len(batches) == 1 else [p for batch in batches for p in batch.params]
    expected = len(params) // _ROW_PARAMS
    try:
        if expected > max_rows:  # several statements: all of them or none
            with atomic(conn):
                written = _insert_rows(conn, params, max_rows)
        else:
            written = _insert_rows(conn, params, max_rows)
    except Exception as exc:  # (sqlite3.Error, or a value the sqlite3 module cannot bind)
        if locked(exc):  # (each on its own would wait as long again: all fail with it)
            for batch in batches:
                batch.fail(_wrap(exc, path, patience))
            return
        written = -1  # nothing was written: the statement (or the statements) are atomic
    if written == expected:
        return
    # A run changed hands (its checkpoint was left out), or a row is bad (nothing went in).
    for batch in batches:
        errors: list[BaseException | None] = []
        for cp in batch.checkpoints:
            if written >= 0:
                # Still owned now, so owned when the statement ran: written. Not owned: it
                # may have gone in before the run changed hands, or not; either way this
                # engine stops the run, and the new owner goes on from what is recorded.
                errors.append(None if _still_owned(conn, cp) else _lease_lost(cp))
                continue
            try:
                CheckpointJob(cp)(conn)
            except Exception as exc:
                errors.append(_wrap(exc, path, patience))
            else:
                errors.append(None)
        batch.errors = errors


def _still_owned(conn: sqlite3.Connection, cp: Checkpoint) -> bool:
    row = conn.execute("SELECT 1 FROM runs WHERE run_id = ? AND owner = ?", (cp.run_id, cp.owner))
    return row.fetchone() is not None


def _lease_lost(cp: Checkpoint) -> LeaseLost:
    return LeaseLost(f"run {cp.run_id!r} is no longer owned by engine {cp.owner!r}")


def _in_savepoint(conn: sqlite3.Connection, job: _Job) -> None:
    conn.execute("SAVEPOINT job")
    try:
        job.result = job.fn(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        job.error = exc
    conn.execute("RELEASE job")


def _fail_all(jobs: list[_Job], checkpoints: list[_Batch], error: BaseException) -> None:
    for job in jobs:
        job.error = error
    for cps in checkpoints:
        cps.fail(error)


def _wrap(exc: BaseException, path: Path, patience: float) -> BaseException:
    if locked(exc):
        return BackendError(
            f"another process holds the write lock of {str(path)!r}: this one waited {patience:g} s "
            f"for it ({exc})"
        )
    if isinstance(exc, sqlite3.Error):
        return BackendError(f"SQLite error on {str(path)!r}: {exc}")
    return exc


def _deliver(batch: list[_Job], checkpoints: list[_Batch]) -> None:
    for cps in checkpoints:
        errors = cps.errors
        for i, future in enumerate(cps.futures):
            if future.done():
                continue
            error = errors[i] if errors is not None else None
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)
    for job in batch:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


def _call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Have the loop call ``callback(*args)`` (from the writer thread), unless it has closed.

    An ``aclose`` that was cancelled (or a loop closed under an engine never closed) no longer
    waits for the thread: there is nobody left to tell, and raising in this thread would only
    report an unhandled exception at some later, unrelated place.
    """
    with contextlib.suppress(RuntimeError):  # "Event loop is closed"
        loop.call_soon_threadsafe(callback, *args)


def _resolve_future(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
