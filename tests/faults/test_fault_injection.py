"""The fault suite: 200 durable runs per seed on each backend, with writes that fail at random.

``make test`` runs 20 seeds; ``make stress`` runs 500 (``ASYNCFLOW_FAULT_SEEDS``).
See :mod:`.campaign` for what each seed checks.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from backends.storages import BACKENDS, STORAGES, Storage

from . import workload
from .campaign import campaign

SEEDS = int(os.environ.get("ASYNCFLOW_FAULT_SEEDS", "20"))


@pytest.fixture(autouse=True)
def _fresh_ledger() -> Iterator[None]:
    workload.reset()
    yield
    workload.reset()


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh database of each backend in turn."""
    async with STORAGES[request.param](tmp_path) as made:
        yield made


@pytest.mark.once
@pytest.mark.parametrize("seed", range(SEEDS))
async def test_every_run_completes_whatever_writes_fail(storage: Storage, seed: int) -> None:
    """200 runs with 5% of writes failing: all complete, nothing completed runs again, counts exact.

    One seed in five also has every write fail for longer than a lease, so
    runs are given back and taken over.
    """
    outage = seed % 5 == 4
    outcome = await campaign(storage.new, seed=seed, outage=outage)
    assert outcome.failed_writes > 0
    if outage:
        assert outcome.hand_overs > 0
