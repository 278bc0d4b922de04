"""Every script in ``examples/`` runs to completion and prints what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import EXAMPLES, run_example


def test_there_are_examples() -> None:
    """The examples directory holds the example scripts (so the run test is not vacuous)."""
    names = {path.name for path in EXAMPLES}
    assert {
        "dynamic_stages.py",
        "fanout.py",
        "runtime_control.py",
        "failures.py",
        "durable.py",
        "deploy.py",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(path: Path) -> None:
    """``python examples/NAME.py`` exits 0 and prints something to stdout."""
    assert run_example(path.name).strip()


def test_durable_example_runs_the_committed_action_once_and_the_one_in_flight_again() -> None:
    """examples/durable.py: charge-card once (before the kill), reserve-stock twice, then the rest."""
    ledger = run_example("durable.py").split("ledger:\n")[1].splitlines()
    assert [line.split()[0] for line in ledger] == [
        "charge-card",
        "reserve-stock",
        "reserve-stock",
        "approve",
        "approve",
        "ship",
    ]
    assert ledger[1].split("pid")[1].split()[0] != ledger[2].split("pid")[1].split()[0]


def test_deploy_example_resumes_the_old_run_on_its_version() -> None:
    """examples/deploy.py: the resumed run does not draft again, nor check credit it never had."""
    out = run_example("deploy.py")
    assert "3. resumed with version 2 registered: ran ['approve (resumed)', 'send'], completed" in out
    assert "4. a new run ran ['check-credit', 'draft', 'approve (suspends)']" in out
