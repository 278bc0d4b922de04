"""Real ``asyncflow worker`` processes for the PostgreSQL tests, and the ledger their actions write."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pg_flows

import asyncflow as af

TESTS = Path(__file__).resolve().parent


class Worker:
    """One ``asyncflow worker`` process; its log goes to a file (read by :meth:`log`)."""

    def __init__(
        self,
        url: str,
        tmp: Path,
        name: str,
        *,
        app: str = "pg_flows:WORKFLOWS",
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.url, self.tmp, self.name, self.app, self.args = url, tmp, name, app, args
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), self.env.get("PYTHONPATH")]))
        self.log_path = tmp / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start (or start again) the process."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "asyncflow",
                    "worker",
                    self.app,
                    "--db",
                    self.url,
                    "--log-level",
                    "DEBUG",
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=self.tmp,
            )

    def log(self) -> str:
        """Everything the worker logged so far (all its starts)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def ready(self, within: float = 30.0) -> None:
        """Wait until the current process says it is ready."""
        with anyio.fail_after(within):
            while self.log().count(" ready on ") < self.starts:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"worker {self.name} exited {self.process.returncode}:\n{self.log()}"
                    )
                await anyio.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def wait(self, within: float) -> int:
        """The exit code, once the process has exited (fails after ``within`` seconds)."""
        assert self.process is not None
        with anyio.fail_after(within):
            while True:
                code = self.process.poll()
                if code is not None:
                    return code
                await anyio.sleep(0.02)

    def stop(self) -> None:
        """SIGCONT (if paused), then SIGKILL: nothing left behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.kill()


class Ledger:
    """The lines the actions of pg_flows wrote: ``run_id key start|done pid``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, str, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            run_id, key, what, pid = line.split(" ")
            out.append((run_id, key, what, int(pid)))
        return out

    def done(self) -> collections.Counter[tuple[str, str]]:
        """How many times each (run, step) completed."""
        return collections.Counter((r, k) for r, k, what, _ in self.lines() if what == "done")

    def started(self) -> collections.Counter[tuple[str, str]]:
        """How many times each (run, step) started."""
        return collections.Counter((r, k) for r, k, what, _ in self.lines() if what == "start")


async def wait_until(predicate: object, within: float, step: float = 0.05) -> None:
    """Wait until ``predicate()`` (sync or async) is true; fail after ``within`` seconds."""
    timeout = within
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate!r}")
        await anyio.sleep(step)


def client(url: str, poll_interval: float = 0.2) -> af.Engine:
    """An engine that only starts runs, for the workers to take (``concurrency=0``)."""
    engine = af.Engine(url, concurrency=0, poll_interval=poll_interval, lease=5.0)
    for workflow in pg_flows.WORKFLOWS:
        engine.register(workflow)
    return engine
