"""Fixtures of the fault suite: a fresh ledger for every test, and each backend in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from backends.storages import BACKENDS, STORAGES, Storage

from . import workload


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
