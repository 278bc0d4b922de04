"""Crash injection for recovery tests: kill this process at a chosen persistence boundary.

Set ``ASYNCFLOW_CRASH_AT="point:N"`` in a process's environment and it sends
itself SIGKILL the N-th time it reaches ``point``:

- ``before_start``: an engine is about to write a new run's first record;
- ``before_commit``: an action completed and its checkpoint is about to be written;
- ``after_commit``: a checkpoint was just committed, before the run moves on.

Read once at import; when the variable is unset this costs one ``None`` check.
"""

from __future__ import annotations

import os
import signal

POINTS = ("before_start", "before_commit", "after_commit")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"ASYNCFLOW_CRASH_AT must be 'point:N' with point in {POINTS}, got {spec!r}")
    return point, int(count)


#: (point, N) from ``ASYNCFLOW_CRASH_AT``, or ``None``: callers check it before calling :func:`hit`
CRASH_PLAN = _parse(os.environ.get("ASYNCFLOW_CRASH_AT"))
_hits = 0


def hit(point: str) -> None:
    """Count a pass through ``point``; die there if the plan says so."""
    global _hits
    if CRASH_PLAN is None or CRASH_PLAN[0] != point:
        return
    _hits += 1
    if _hits >= CRASH_PLAN[1]:
        os.kill(os.getpid(), signal.SIGKILL)
