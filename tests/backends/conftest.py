"""The ``backend`` fixture: each test of the contract suite runs on every backend of :mod:`.storages`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .storages import BACKENDS, STORAGES, Storage


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh database of each backend in turn (see :class:`Storage`)."""
    async with STORAGES[request.param](tmp_path) as storage:
        yield storage
