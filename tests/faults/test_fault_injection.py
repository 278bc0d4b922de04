"""The fault suite: 200 durable runs per seed on each backend, with writes that fail at random.

``make test`` runs 20 seeds; ``make stress`` runs 500 (``ASYNCFLOW_FAULT_SEEDS``).
``ASYNCFLOW_FAULT_SEED_FROM`` starts the seeds further on, so a long campaign
can run in parts (``ASYNCFLOW_FAULT_SEED_FROM=100 ASYNCFLOW_FAULT_SEEDS=100``:
seeds 100 to 199), and ``-k postgres`` picks one backend.
See :mod:`.campaign` for what each seed checks.
"""

from __future__ import annotations

import os

import pytest
from backends.storages import Storage

from .campaign import campaign

FIRST = int(os.environ.get("ASYNCFLOW_FAULT_SEED_FROM", "0"))
SEEDS = int(os.environ.get("ASYNCFLOW_FAULT_SEEDS", "20"))


@pytest.mark.once
@pytest.mark.parametrize("seed", range(FIRST, FIRST + SEEDS))
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
