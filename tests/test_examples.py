"""Every script in ``examples/`` runs to completion and prints what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    """The examples directory holds the example scripts (so the run test is not vacuous)."""
    names = {path.name for path in EXAMPLES}
    assert {"dynamic_stages.py", "fanout.py", "runtime_control.py", "failures.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(path: Path) -> None:
    """``python examples/NAME.py`` exits 0 and prints something to stdout."""
    done = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
