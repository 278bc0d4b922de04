"""Child processes that run isolated stages, and :class:`ProcessPool`, which keeps some warm.

A child is ``python -m asyncflow._core.isolation.child``, started with
``anyio.open_process`` in a session of its own (so a kill reaches whatever it
started too), its stdin and stdout carrying frames and its stderr read by the
parent (forwarded to the parent's stderr, the last lines kept for the error
of a child that dies). It dies with its parent: it asks the kernel for
SIGKILL when the parent goes (Linux), and exits when its stdin closes.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from collections import deque
from types import TracebackType
from typing import Any, Self, TextIO

import anyio
from anyio.abc import Process
from loguru import logger

from .frames import FrameBuffer, encode

#: How long a child gets to exit after SIGTERM (or after its stdin closes) before SIGKILL.
DEFAULT_KILL_GRACE = 2.0
#: How many of a child's last stderr lines a ChildProcessFailed carries.
STDERR_LINES = 20

_CHILD_MODULE = "asyncflow._core.isolation.child"


class ChildProcess:
    """One child Python process speaking frames on its stdin and stdout (internal)."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.pid = process.pid
        self.buffer = FrameBuffer()
        self.inbox: deque[dict[str, Any]] = deque()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.stderr_closed = anyio.Event()
        self.stderr_reader = False  # whether a task is draining its stderr
        self.tasks = 0  # isolated stages it has run
        self.dead = False  # its stdout closed: it exited, or is about to
        self.why = ""  # why the parent killed it, if it did
        self.reader: object = None  # the session whose task reads its frames now
        self.generation = 0  # of the pool that handed it out

    @classmethod
    async def spawn(cls) -> ChildProcess:
        """Start a fresh child."""
        env = dict(os.environ)
        # The child must import asyncflow and the user's modules as this process does.
        env["PYTHONPATH"] = os.pathsep.join(path or os.getcwd() for path in sys.path)
        env.setdefault("PYTHONUNBUFFERED", "1")
        process = await anyio.open_process(
            [sys.executable, "-m", _CHILD_MODULE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        return cls(process)

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has been reaped (negative: killed by that signal)."""
        return self.process.returncode

    async def send(self, frame: dict[str, Any]) -> None:
        """Write ``frame`` to the child (raises ``anyio.BrokenResourceError`` if it is gone)."""
        stdin = self.process.stdin
        assert stdin is not None
        await stdin.send(encode(frame))

    async def receive(self) -> dict[str, Any] | None:
        """The next frame from the child, or ``None`` once its stdout has closed."""
        inbox = self.inbox
        stdout = self.process.stdout
        assert stdout is not None
        while not inbox:
            try:
                data = await stdout.receive(1 << 16)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.dead = True
                return None
            inbox.extend(self.buffer.feed(data))
        return inbox.popleft()

    async def drain_stderr(self) -> None:
        """Forward the child's stderr to ours, keeping its last lines, until it closes."""
        stderr = self.process.stderr
        assert stderr is not None
        partial = b""
        out = sys.stderr
        try:
            while True:
                try:
                    data = await stderr.receive(1 << 16)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    self._stderr_line(out, line)
            if partial:
                self._stderr_line(out, partial)
        finally:
            self.stderr_closed.set()

    def _stderr_line(self, out: TextIO | None, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.stderr_tail.append(text)
        if out is not None:
            # (A closed or absent stderr here must not stop the reading: the child would block.)
            with contextlib.suppress(OSError, ValueError):
                out.write(f"[child {self.pid}] {text}\n")

    def _signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is not None:
            return  # reaped: its pid may belong to someone else by now
        try:
            os.killpg(self.pid, signum)  # its own session: whatever it started goes too
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def _end_group(self) -> None:
        """SIGKILL what the child started and left behind: its session's process group.

        Called once the child has exited. Its pid cannot have gone to another
        process group leader while members of its own group live on, and if
        none do, there is nothing to signal.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def kill(self, grace: float, why: str = "") -> None:
        """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds; reap it, close its pipes."""
        if why and not self.why:
            self.why = why
        self.dead = True
        with anyio.CancelScope(shield=True):
            self._signal(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                self._signal(signal.SIGKILL)
                await self.process.wait()
            self._end_group()
            await self._close_pipes()

    async def close(self, grace: float) -> None:
        """Let the child exit on its own (its stdin closes); kill it if it lingers. Reaps it."""
        self.dead = True
        with anyio.CancelScope(shield=True):
            stdin = self.process.stdin
            if stdin is not None:
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stdin.aclose()
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                await self.kill(grace)
                return
            self._end_group()
            await self._close_pipes()

    async def reap(self, grace: float) -> int | None:
        """Wait for a child whose stdout closed to exit (killing it if it lingers); its exit status."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                await self.kill(grace)
            self._end_group()  # (a process it started could hold its stderr open)
            if self.stderr_reader:
                with anyio.move_on_after(grace):
                    await self.stderr_closed.wait()
            await self._close_pipes()
        return self.process.returncode

    async def _close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.aclose()


def _check_grace(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"kill_grace of af.ProcessPool must be seconds (a number), got {value!r}")
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"kill_grace of af.ProcessPool must be zero or more seconds, got {value!r}")
    return float(value)


class ProcessPool:
    """Warm child processes for isolated stages (``Stage(isolation="process")``).

    ::

        async with af.ProcessPool(size=2, max_tasks_per_child=100) as pool:
            runner = af.Runner(process_pool=pool)
            await runner.run(workflow)

    Without a pool, each isolated stage starts a fresh Python process (tens of
    milliseconds) and ends it when the stage ends. A pool starts ``size``
    children when it opens and hands them out one stage at a time; at most
    ``size`` isolated stages run at once, others wait for a child. A child
    that crashed or was killed is replaced by a fresh one; a child that has
    run ``max_tasks_per_child`` stages is retired (``None``: never), which
    bounds what a leaking library can hold; a started pool starts the
    replacement at once. Children that die while idle are noticed when next
    handed out and replaced.

    ``aclose()`` (or leaving the ``async with``) ends the idle children and
    every busy one as its stage ends; a pool used again afterwards starts new
    ones. An :class:`~asyncflow.Engine` given a pool closes it when the
    engine closes.

    Args:
        size: how many children at most (1 or more).
        max_tasks_per_child: isolated stages a child runs before it is replaced.
        kill_grace: seconds a child gets to exit after SIGTERM before SIGKILL.

    Raises:
        ValueError: ``size`` or ``max_tasks_per_child`` is below 1.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        max_tasks_per_child: int | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size of af.ProcessPool must be an int, got {size!r}")
        if size < 1:
            raise ValueError(f"size of af.ProcessPool must be at least 1, got {size}")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError(
                    "max_tasks_per_child of af.ProcessPool must be an int or None, "
                    f"got {max_tasks_per_child!r}"
                )
            if max_tasks_per_child < 1:
                raise ValueError(
                    f"max_tasks_per_child of af.ProcessPool must be at least 1, got {max_tasks_per_child}"
                )
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = _check_grace(kill_grace)
        self._idle: list[ChildProcess] = []
        self._busy: set[ChildProcess] = set()
        self._slots: anyio.Semaphore | None = None
        self._generation = 0  # children from before the last aclose() are ended when released
        self._warm = False  # started: a child that dies or retires is replaced at once

    def __repr__(self) -> str:
        return f"<ProcessPool size={self.size} idle={len(self._idle)} busy={len(self._busy)}>"

    @property
    def pids(self) -> list[int]:
        """The process ids of the pool's live children (idle and busy)."""
        return [child.pid for child in (*self._idle, *self._busy)]

    async def start(self) -> None:
        """Start the children now (else they start as stages need them) and keep them up to ``size``."""
        self._warm = True
        missing = self.size - len(self._idle) - len(self._busy)
        if missing <= 0:
            return
        started: list[ChildProcess] = []

        async def one() -> None:
            started.append(await ChildProcess.spawn())

        async with anyio.create_task_group() as group:
            for _ in range(missing):
                group.start_soon(one)
        self._idle.extend(started)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the idle children now and the busy ones when their stages end; reap them all."""
        self._generation += 1
        self._warm = False
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for child in idle:
                    group.start_soon(child.close, self.kill_grace)

    async def acquire(self) -> ChildProcess:
        """A child for one isolated stage: an idle one, or a fresh one (waits while ``size`` are busy)."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.size)
        await self._slots.acquire()
        try:
            while self._idle:
                child = self._idle.pop()
                if child.returncode is None and not child.dead:
                    break
                await child.reap(self.kill_grace)  # died while idle: replaced below
            else:
                child = await ChildProcess.spawn()
            child.generation = self._generation
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(child)
        return child

    async def release(self, child: ChildProcess, *, healthy: bool) -> None:
        """Take ``child`` back after a stage: kept warm if it is healthy and not worn out, else ended."""
        self._busy.discard(child)
        try:
            limit = self.max_tasks_per_child
            current = child.generation == self._generation
            if healthy and not child.dead and current and (limit is None or child.tasks < limit):
                self._idle.append(child)
                return
            if child.dead:
                await child.reap(self.kill_grace)
            else:
                await child.close(self.kill_grace)
            if self._warm and current:
                # A started pool stays warm: the replacement boots while the runs go on.
                try:
                    self._idle.append(await ChildProcess.spawn())
                except OSError as exc:
                    logger.warning("af.ProcessPool could not start a replacement child: {!r}", exc)
        finally:
            if self._slots is not None:
                self._slots.release()
