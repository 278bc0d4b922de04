"""Retry and timeout options of actions, and the rules that decide a retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

from ..backoff import Backoff, exponential
from .errors import Bail, NonRetryable, Suspend

RetryOn = tuple[type[BaseException], ...] | type[BaseException] | Callable[[BaseException], bool]


def _check_attempts(instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Retry attempts must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"Retry attempts must be at least 1 (the first try counts), got {value}")


def _check_backoff(instance: Any, attribute: Any, value: object) -> None:
    if not callable(value):
        raise TypeError(f"Retry backoff must be a callable (attempt) -> seconds, got {value!r}")


def _check_retry_on(instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, type) and issubclass(value, BaseException):
        return
    if isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
        return
    if callable(value) and not isinstance(value, type):
        return
    raise TypeError(f"Retry retry_on must be exception types or a predicate (exc) -> bool, got {value!r}")


@attrs.frozen
class Retry:
    """How to retry an action that raised.

    Args:
        attempts: how many tries in all, the first included (at least 1).
        backoff: seconds to wait after a failed attempt (``asyncflow.backoff``).
        retry_on: exception types to retry, or a predicate ``(exc) -> bool``.
            :class:`~asyncflow.NonRetryable` is never retried, nor are
            cancellation, a bail or a suspension.
    """

    attempts: int = attrs.field(default=3, validator=_check_attempts)
    backoff: Backoff = attrs.field(factory=lambda: exponential(0.1), validator=_check_backoff)
    retry_on: RetryOn = attrs.field(default=(Exception,), validator=_check_retry_on)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt``, which raised ``exc``, is followed by another."""
        if (
            attempt >= self.attempts
            or isinstance(exc, (NonRetryable, Bail, Suspend))
            or not isinstance(exc, Exception)
        ):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, (type, tuple)):
            return isinstance(exc, retry_on)
        return bool(retry_on(exc))


def check_timeout(value: object, where: str) -> float | None:
    """Return ``value`` (seconds or a ``timedelta``) as seconds if it is a valid timeout (or None).

    Raises (naming ``where``):
        TypeError: not a number of seconds or a timedelta.
        ValueError: not positive, or NaN.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"timeout of {where} must be seconds (a positive number) or a timedelta, got {value!r}"
        )
    if not value > 0:
        raise ValueError(f"timeout of {where} must be positive, got {value!r}")
    return float(value)


def check_retry(value: object, where: str) -> Retry | None:
    """Return ``value`` if it is a :class:`Retry` (or None), else raise naming ``where``."""
    if value is None or isinstance(value, Retry):
        return value
    raise TypeError(f"retry of {where} must be an af.Retry, got {value!r}")
