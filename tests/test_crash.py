"""Crash recovery with real processes and real ``kill -9``: 30 kills, every run completes, nothing runs twice.

Each test lands kills of one kind on child processes running durable
workflows on an SQLite file (``tests/crash_child.py``), restarts them until
they finish, and checks the database and the actions' ledger with the rules
of ``tests/crash_harness.py``: every run completes once, each action ran
exactly once except the ones in flight at a kill (at most once more per
kill), and the file passes ``PRAGMA integrity_check``. ``make stress`` runs
the same harness for 500 kills.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from crash_harness import Figures, run_campaign

#: (kind of kill, how many): 30 kills in all
PLAN = [("before_start", 4), ("before_commit", 8), ("after_commit", 8), ("random", 10)]


def _check(figures: Figures, kills: int) -> None:
    report = figures.report()
    assert not figures.violations, report
    assert figures.total_kills == kills, report
    assert figures.runs > 0
    assert figures.re_executions <= figures.actions


@pytest.mark.parametrize(("kind", "kills"), PLAN, ids=[kind for kind, _ in PLAN])
def test_runs_survive_kills(tmp_path: Path, kind: str, kills: int) -> None:
    """Killed at a persistence boundary or at a random moment, then restarted, every run completes once."""
    figures = run_campaign(tmp_path, kills=kills, kinds=[kind], seed=len(kind) * 1000 + kills)
    _check(figures, kills)


def test_plan_totals_thirty_kills() -> None:
    """The default test run lands 30 kills, of every kind the harness knows."""
    assert sum(kills for _, kills in PLAN) == 30
    assert {kind for kind, _ in PLAN} == {"before_start", "before_commit", "after_commit", "random"}
