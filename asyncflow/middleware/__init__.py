"""Built-in middleware: logging, timing, timeout, retry, store injection, stage filter, recovery.

Each factory returns an async callable ``(ctx, call_next)`` that can be
registered at the levels it names::

    from asyncflow import middleware as mw

    runner = af.Runner(
        middleware=[mw.logging()],                       # run level
        stage_middleware=[mw.timing(), mw.skip_stages(lambda stage, store: "slow" in stage.tags)],
        action_middleware=[mw.retry(attempts=3), mw.timeout(5.0)],
    )
"""

from .inject import inject_store as inject_store
from .logging import logging as logging
from .recover import recover as recover
from .retry import retry as retry
from .skip import skip_stages as skip_stages
from .timeout import timeout as timeout
from .timing import timing as timing

__all__ = ["inject_store", "logging", "recover", "retry", "skip_stages", "timeout", "timing"]
