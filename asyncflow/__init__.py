"""asyncflow: asyncio-native workflows of stages of async actions that reshape their own run.

>>> import asyncflow as af
>>> @af.action
... async def hello(ctx: af.ActionContext) -> None:
...     ctx.store["greeting"] = "hello"
>>> wf = af.Workflow("hi", stages=[af.Stage("only", actions=[hello])])

Then ``result = await af.run(wf)`` inside async code.
"""

from loguru import logger as _logger

from . import backoff as backoff
from . import middleware as middleware
from . import testing as testing
from ._core.actions import Action as Action
from ._core.actions import FunctionAction as FunctionAction
from ._core.actions import action as action
from ._core.clock import Clock as Clock
from ._core.clock import SystemClock as SystemClock
from ._core.context import ActionContext as ActionContext
from ._core.context import MiddlewareContext as MiddlewareContext
from ._core.definitions import Registry as Registry
from ._core.definitions import registry as registry
from ._core.engine import Engine as Engine
from ._core.errors import ActionFailed as ActionFailed
from ._core.errors import ActionTimeout as ActionTimeout
from ._core.errors import BackendError as BackendError
from ._core.errors import Bail as Bail
from ._core.errors import ChildProcessFailed as ChildProcessFailed
from ._core.errors import ContextClosed as ContextClosed
from ._core.errors import DuplicateRunId as DuplicateRunId
from ._core.errors import DuplicateStageId as DuplicateStageId
from ._core.errors import EngineNotOpen as EngineNotOpen
from ._core.errors import IdempotencyConflict as IdempotencyConflict
from ._core.errors import InsertionLimitExceeded as InsertionLimitExceeded
from ._core.errors import InvalidDefinition as InvalidDefinition
from ._core.errors import LeaseLost as LeaseLost
from ._core.errors import MiddlewareError as MiddlewareError
from ._core.errors import MissingKey as MissingKey
from ._core.errors import NonRetryable as NonRetryable
from ._core.errors import NotReferenceable as NotReferenceable
from ._core.errors import NotSerializable as NotSerializable
from ._core.errors import RecordedError as RecordedError
from ._core.errors import RunFailed as RunFailed
from ._core.errors import RunStateError as RunStateError
from ._core.errors import StageFailed as StageFailed
from ._core.errors import StepTimeout as StepTimeout
from ._core.errors import StoreConflict as StoreConflict
from ._core.errors import Suspend as Suspend
from ._core.errors import TypeMismatch as TypeMismatch
from ._core.errors import UnknownCursor as UnknownCursor
from ._core.errors import UnknownReference as UnknownReference
from ._core.errors import UnknownRun as UnknownRun
from ._core.errors import UnknownStep as UnknownStep
from ._core.errors import UnknownWorkflow as UnknownWorkflow
from ._core.errors import WorkflowError as WorkflowError
from ._core.events import Event as Event
from ._core.events import EventKind as EventKind
from ._core.events import EventStream as EventStream
from ._core.events import Message as Message
from ._core.events import RunEvent as RunEvent
from ._core.handles import RunHandle as RunHandle
from ._core.isolation.process import ProcessPool as ProcessPool
from ._core.middleware import CallNext as CallNext
from ._core.middleware import Middleware as Middleware
from ._core.plan import Plan as Plan
from ._core.records import RunResult as RunResult
from ._core.records import RunStatus as RunStatus
from ._core.records import StepKind as StepKind
from ._core.records import StepRecord as StepRecord
from ._core.records import StepStatus as StepStatus
from ._core.records import Timing as Timing
from ._core.retry import Retry as Retry
from ._core.runner import Runner as Runner
from ._core.runner import run as run
from ._core.sleep import Sleep as Sleep
from ._core.sleep import sleep as sleep
from ._core.store import Key as Key
from ._core.store import Store as Store
from ._core.workflow import Stage as Stage
from ._core.workflow import Workflow as Workflow
from .backends import RunInfo as RunInfo
from .backends import RunPage as RunPage

__version__ = "0.1.0"

# A library stays quiet until its user opts in (loguru's advice for libraries):
# logger.enable("asyncflow") turns asyncflow's log lines on.
_logger.disable("asyncflow")

__all__ = [
    "Action",
    "ActionContext",
    "ActionFailed",
    "ActionTimeout",
    "BackendError",
    "Bail",
    "CallNext",
    "ChildProcessFailed",
    "Clock",
    "ContextClosed",
    "DuplicateRunId",
    "DuplicateStageId",
    "Engine",
    "EngineNotOpen",
    "Event",
    "EventKind",
    "EventStream",
    "FunctionAction",
    "IdempotencyConflict",
    "InsertionLimitExceeded",
    "InvalidDefinition",
    "Key",
    "LeaseLost",
    "Message",
    "Middleware",
    "MiddlewareContext",
    "MiddlewareError",
    "MissingKey",
    "NonRetryable",
    "NotReferenceable",
    "NotSerializable",
    "Plan",
    "ProcessPool",
    "RecordedError",
    "Registry",
    "Retry",
    "RunEvent",
    "RunFailed",
    "RunHandle",
    "RunInfo",
    "RunPage",
    "RunResult",
    "RunStateError",
    "RunStatus",
    "Runner",
    "Sleep",
    "Stage",
    "StageFailed",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "StepTimeout",
    "Store",
    "StoreConflict",
    "Suspend",
    "SystemClock",
    "Timing",
    "TypeMismatch",
    "UnknownCursor",
    "UnknownReference",
    "UnknownRun",
    "UnknownStep",
    "UnknownWorkflow",
    "Workflow",
    "WorkflowError",
    "__version__",
    "_logger",
    "action",
    "backoff",
    "middleware",
    "registry",
    "run",
    "sleep",
    "testing",
]
