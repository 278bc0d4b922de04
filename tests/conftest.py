"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record emitted while the test runs (DEBUG and up); the sink is removed after."""
    captured: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        captured.append(message.record)

    sink_id = logger.add(sink, level="DEBUG", format="{message}")
    try:
        yield captured
    finally:
        logger.remove(sink_id)


@pytest.fixture
def asyncflow_log(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Log records while asyncflow's own logging is enabled (disabled again after)."""
    logger.enable("asyncflow")
    try:
        yield records
    finally:
        logger.disable("asyncflow")
