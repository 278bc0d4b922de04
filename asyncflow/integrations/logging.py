"""asyncflow's log records in the standard library's :mod:`logging` (for apps that log that way, uvicorn's).

asyncflow logs through loguru and is silent until asked. One call sends its
records, and those actions write through ``ctx.logger``, to :mod:`logging`
instead, each to the logger of the module that logged it
(``asyncflow._core.runner``, an action's module...), with its level, its exception and
its bound fields (``run_id``, ``workflow_id``, ``stage_id``, ``action``) as
attributes of the :class:`logging.LogRecord`::

    from asyncflow.integrations.logging import to_stdlib

    to_stdlib()                                   # also: lifespan(engine, log_to_stdlib=True)
    logging.basicConfig(format="%(levelname)s %(name)s %(run_id)s %(message)s")

A record's fields are also under ``record.asyncflow`` (a dict), for a
formatter that wants them all. No extra is needed.

Each record is written once, by :mod:`logging`: loguru's default sink (its
handler 0, to stderr, there until an app removes it) would print the same
records again, so it is put back as the same sink without them (the app's own
loguru records still reach stderr there, as before). Sinks the app added
itself are left as they are.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["to_stdlib"]

# The attributes a LogRecord has of its own: a bound field of one of these names is only in
# record.asyncflow, never over the record's own.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "asyncflow"}

_handler_id: int | None = None


def _forward(message: Message) -> None:
    record = message.record
    target = logging.getLogger(record["name"] or "asyncflow")
    level = record["level"].no
    if not target.isEnabledFor(level):
        return
    exception = record["exception"]
    exc_info = (exception.type, exception.value, exception.traceback) if exception is not None else None
    fields: dict[str, Any] = dict(record["extra"])
    extra = {key: value for key, value in fields.items() if key not in _RESERVED}
    extra["asyncflow"] = fields
    out = target.makeRecord(
        target.name,
        level,
        record["file"].path,
        record["line"],
        record["message"],
        (),
        exc_info,  # type: ignore[arg-type]
        func=record["function"],
        extra=extra,
    )
    target.handle(out)


def _ours(record: Record) -> bool:
    """asyncflow's own records, and those of actions through ``ctx.logger`` (bound with a run id)."""
    return (record["name"] or "").startswith("asyncflow") or "run_id" in record["extra"]


def _not_ours(record: Record) -> bool:
    return not _ours(record)


def _leave_ours_out_of_loguru_default_sink() -> None:
    """Put loguru's default stderr sink back as the same sink without asyncflow's records.

    Only handler 0 writing to stderr is loguru's default (with ``LOGURU_AUTOINIT``
    off, handler 0 is the app's own): the logger's repr shows each handler's sink.
    """
    if not re.search(r"\(id=0, level=\d+, sink=<stderr>\)", repr(logger)):
        return
    try:
        logger.remove(0)
    except ValueError:  # (removed meanwhile, by another thread)
        return
    # (logger.add's defaults are loguru's default sink's: LOGURU_LEVEL, LOGURU_FORMAT...)
    logger.add(sys.stderr, filter=_not_ours)


def to_stdlib(level: str | int = "DEBUG") -> int:
    """Send asyncflow's log records, from ``level`` up, to :mod:`logging`; return loguru's handler id.

    Turns asyncflow's logging on (``logger.enable("asyncflow")``). Each record
    is then written by :mod:`logging` only: loguru's default stderr sink, if
    the app still has it, is put back without asyncflow's records (and those
    of ``ctx.logger``), so they do not show twice. Calling it again changes
    nothing but the level; ``logger.remove(id)`` stops the forwarding. Which
    records show is then up to :mod:`logging`'s own levels and handlers.
    """
    global _handler_id
    _leave_ours_out_of_loguru_default_sink()
    if _handler_id is not None:
        with contextlib.suppress(ValueError):  # (removed by the app meanwhile: logger.remove())
            logger.remove(_handler_id)
    _handler_id = logger.add(
        _forward,
        level=level,
        format="{message}",
        filter=_ours,
        catch=True,
    )
    logger.enable("asyncflow")
    return _handler_id
