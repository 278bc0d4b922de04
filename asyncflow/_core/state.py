"""What one run owns while it runs: :class:`RunState`, and the run ids.

The run layer's base: the contexts, the code that executes one action and
the runner all work on a :class:`RunState`; the engine makes one per
durable execution.
"""

from __future__ import annotations

import os
import random
from time import time, time_ns
from typing import Any

import anyio

from .clock import SYSTEM_CLOCK, Clock
from .durable import Durability
from .events import Event, EventKind, Hub
from .middleware import Chain
from .plan import ActionNode, PlanState, StageNode
from .records import Timing
from .store import Store
from .workflow import Workflow

DEFAULT_MAX_INSERTIONS = 10_000


def check_max_insertions(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_insertions must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"max_insertions must be zero or more, got {value}")
    return value


class RunState:
    """Everything one run owns while it runs (internal)."""

    __slots__ = (
        "clock",
        "durable",
        "failed_node",
        "failed_stage",
        "hub",
        "interrupted",
        "log",
        "message_errors",
        "message_seq",
        "plan",
        "require_json",
        "run_id",
        "stage_chain",
        "store",
        "timings",
        "workflow",
    )

    def __init__(
        self,
        workflow: Workflow,
        run_id: str,
        store: Store,
        max_insertions: int,
        hub: Hub,
        require_json: bool,
        clock: Clock = SYSTEM_CLOCK,
        durable: Durability | None = None,
    ) -> None:
        self.workflow = workflow
        self.clock = clock
        self.durable = durable
        self.run_id = run_id
        self.store = store
        self.plan = PlanState(workflow, run_id, max_insertions)
        self.hub = hub
        self.require_json = require_json
        self.log: list[StageNode | ActionNode] = []
        self.failed_node: ActionNode | None = None
        self.failed_stage: StageNode | None = None
        # Set by an engine that stops while the run is in flight: the run is not
        # over, another engine (or a restart) takes it over.
        self.interrupted = False
        self.stage_chain: Chain | None = None
        self.message_seq = 0
        self.message_errors = 0
        self.timings: list[Timing] = []

    def event(self, kind: EventKind, node: StageNode | ActionNode | None = None, **fields: Any) -> Event:
        """An event of this run about ``node``, stamped now."""
        if node is None:
            return Event(kind, self.run_id, self.workflow.id, at=time(), **fields)
        if isinstance(node, StageNode):
            inserter = node.inserter
            return Event(
                kind,
                self.run_id,
                self.workflow.id,
                stage_id=node.id,
                at=time(),
                dynamic=node.dynamic,
                parent_key=None if inserter is None else inserter.key,
                **fields,
            )
        parent = node.parent
        return Event(
            kind,
            self.run_id,
            self.workflow.id,
            stage_id=node.stage_node.id,
            action_name=node.action.name,
            at=time(),
            dynamic=node.dynamic,
            key=node.key,
            parent_key=None if parent is None else parent.key,
            **fields,
        )


# How long listeners get to hear of a cancellation or failure while the run is
# being cancelled: long enough for a handler that does real work, bounded so
# that cancelling a run never waits on a slow handler for long.
GRACE_SECONDS = 0.5


def grace() -> anyio.CancelScope:
    """A shielded scope with a short deadline, for telling listeners how a step ended."""
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + GRACE_SECONDS)


# Ids need to be unique, not secret: a generator seeded once from the OS is
# enough, and much cheaper per run than reading the OS's randomness each time.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def new_run_id() -> str:
    """A fresh, unique run id: 32 hex digits, the first 12 the creation time in milliseconds.

    Time-ordered ids sort by creation, and the rows of runs created together
    sit together in a database index: concurrent runs then write a few pages
    per commit instead of one page each. The last 20 digits are random.
    """
    return f"{time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"
