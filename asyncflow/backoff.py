"""Back-off strategies for retries: how long to wait after a failed attempt.

A strategy is a callable ``(attempt) -> seconds``, where ``attempt`` is the
number of the attempt that just failed (1-based)::

    backoff.fixed(0.5)                                   # 0.5, 0.5, 0.5, ...
    backoff.exponential(0.1, factor=2.0, maximum=30.0)   # 0.1, 0.2, 0.4, ... capped at 30
    backoff.exponential(0.1, maximum=30.0, jitter=True)  # full jitter: uniform in [0, that]
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import attrs

__all__ = ["Backoff", "Exponential", "Fixed", "exponential", "fixed"]


class Backoff(Protocol):
    """Anything that maps the number of a failed attempt to seconds to wait."""

    def __call__(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
        ...


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return float(value)


@attrs.frozen
class Fixed:
    """The same delay after every failed attempt."""

    delay: float

    def __attrs_post_init__(self) -> None:
        _seconds(self.delay, "backoff.fixed delay")

    def __call__(self, attempt: int) -> float:
        """``delay``, whatever the attempt."""
        return self.delay


@attrs.frozen
class Exponential:
    """``base * factor ** (attempt - 1)``, capped at ``maximum``; with ``jitter``, uniform in [0, that]."""

    base: float
    maximum: float = 30.0
    factor: float = 2.0
    jitter: bool = False

    def __attrs_post_init__(self) -> None:
        _seconds(self.base, "backoff.exponential base")
        _seconds(self.maximum, "backoff.exponential maximum")
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor < math.inf:
            raise ValueError(f"backoff.exponential factor must be a finite number >= 1, got {factor!r}")
        if self.maximum < self.base:
            raise ValueError(
                f"backoff.exponential maximum ({self.maximum!r}) is below its base ({self.base!r})"
            )

    def __call__(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt``."""
        exponent = max(attempt - 1, 0)
        # Past ~1000 doublings a float overflows; the cap applies long before.
        delay = self.maximum if exponent > 1000 else min(self.maximum, self.base * self.factor**exponent)
        return random.uniform(0.0, delay) if self.jitter else delay


def fixed(delay: float) -> Fixed:
    """Wait ``delay`` seconds after every failed attempt."""
    return Fixed(delay)


def exponential(
    base: float, *, maximum: float = 30.0, factor: float = 2.0, jitter: bool = False
) -> Exponential:
    """Wait ``base``, then ``base * factor``, ... up to ``maximum``; ``jitter`` draws uniformly below that."""
    return Exponential(base, maximum=maximum, factor=factor, jitter=jitter)
