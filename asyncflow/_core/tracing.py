"""The seam between runs and a tracing integration: trace contexts as W3C headers, never spans.

asyncflow does not depend on OpenTelemetry. An integration
(:mod:`asyncflow.integrations.opentelemetry`) sets a :class:`Tracing` on a
runner's hub; the engine and process isolation then ask it for trace
contexts as plain ``{"traceparent": ..., "tracestate": ...}`` dicts (a
*carrier*, JSON), which they store with a run or send to a child process.
Nobody asks when no integration is set.
"""

from __future__ import annotations

from typing import Protocol

#: A trace context as W3C Trace Context headers (``traceparent``, and ``tracestate`` if any).
Carrier = dict[str, str]


class Tracing(Protocol):
    """What a tracing integration tells the engine and the child processes of a runner's runs."""

    def current(self) -> Carrier | None:
        """The trace context current here (the running action's span), for a child process."""

    def run_created(self, run_id: str, workflow_id: str, executes_here: bool) -> Carrier | None:
        """``engine.start`` writes a run down (in the caller's context); the context to keep with it.

        ``executes_here``: this engine runs it (else workers take it).
        """

    def run_dropped(self, run_id: str) -> None:
        """The run of :meth:`run_created` was not written down (its idempotency key found another)."""

    def run_continues(self, run_id: str, origin: Carrier | None) -> None:
        """An execution of a run begins that is not the first one of a run started here.

        (Resumed, woken or recovered, or taken by a worker.) ``origin`` is the
        context kept when the run was created, if any.
        """

    def run_left(self, run_id: str, status: str | None) -> None:
        """This engine's execution of the run is over, or never began (cancelled first, given back).

        What was kept for it goes: a run span begun by :meth:`run_created`
        that never began executing is ended (its context is kept with the run,
        so it is exported for later executions to link to). ``status``: how the
        run ended here, or ``None`` if it was given back.
        """
