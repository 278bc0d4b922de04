"""The program a child process runs: ``python -m asyncflow._core.isolation.child PARENT_PID``.

It reads frames from its stdin and answers on its stdout (both moved to
private descriptors first, so a ``print`` or an ``input`` in user code
cannot corrupt them: fd 1 then writes to stderr, fd 0 reads nothing).

``begin`` sets up a stage: the actions are rebuilt from their references,
the store from the parent's snapshot, the plan from the parent's stages as
they stand. ``run`` runs one action with a real :class:`ActionContext` over
that state; its messages and log lines are sent as they happen, then how it
ended: its store writes and its plan changes (as references, the ops of a
durable run) when it completed. The child's own state follows, so the next
action sees what this one wrote. The parent applies the same changes to the
run. Stdin closing (or ``exit``) ends the child.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import faulthandler
import json
import os
import runpy
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from loguru import logger

from ..actions import Action
from ..context import ActionContext, context_changes, finish_context
from ..definitions import registry
from ..durable import Durability, Op
from ..errors import Bail, InsertionLimitExceeded, NotSerializable, Suspend
from ..events import Hub
from ..jsonvalues import exact_json, json_value_check
from ..plan import ActionNode, StageNode
from ..records import STEP_COMPLETED, STEP_FAILED, STEP_RUNNING, StepStatus
from ..state import RunState
from ..store import Meta, Store
from ..workflow import Stage, Workflow
from .frames import FrameBuffer, encode

#: The request being served by the current task: messages and log lines say which.
_CURRENT: contextvars.ContextVar[int | None] = contextvars.ContextVar("asyncflow_child_call", default=None)

_dumps = json.JSONEncoder(ensure_ascii=False).encode

_MAIN = "__main__:"
_MP_MAIN = "__mp_main__:"


class _Out:
    """Frames to the parent, written whole (a lock: user threads may log too)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def write(self, frame: dict[str, Any]) -> None:
        self.write_bytes(encode(frame))

    def write_text(self, body: str) -> None:
        """Write a frame whose JSON text is ``body``."""
        data = body.encode("utf-8", "surrogatepass")
        self.write_bytes(len(data).to_bytes(4, "big") + data)

    def write_bytes(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]


def _to_parent(ref: Any) -> Any:
    """A reference as the parent names it: this process's ``__mp_main__`` is its ``__main__``."""
    if isinstance(ref, dict):
        return {key: _to_parent(value) for key, value in ref.items()}
    if isinstance(ref, list):
        return [_to_parent(value) for value in ref]
    if isinstance(ref, str) and ref.startswith(_MP_MAIN):
        return _MAIN + ref[len(_MP_MAIN) :]
    return ref


#: Where frames go: the parent's pipe (set by ``main``).
_OUT: _Out


class _ChildDurability(Durability):
    """Makes a child's plan changes references and ops, as in a durable run; checkpoints are the parent's."""

    def completed(self, node: ActionNode) -> list[Op] | None:
        return None

    def stage_started(self, node: StageNode) -> bool:
        return True

    async def commit_stage(self, node: StageNode, initial: dict[str, Any]) -> None:  # pragma: no cover
        raise AssertionError("the parent commits")

    async def commit_action(self, node: ActionNode, overlay: Store | None, ops: list[Op] | None) -> None:
        raise AssertionError("the parent commits")  # pragma: no cover

    async def commit_attempt(self, node: ActionNode, attempts: int, retry_at: float) -> None:
        raise AssertionError("the parent retries")  # pragma: no cover

    def retry_state(self, node: ActionNode) -> tuple[int, float] | None:
        return None

    async def begin_sleep(self, node: ActionNode, seconds: float) -> float:
        # A sleep in a child is a plain sleep: the parent keeps no wake-up time for it.
        return time.time() + seconds

    def reference(self, action: Action, where: str) -> dict[str, Any]:
        ref: dict[str, Any] = _to_parent(registry.reference(action, where=where))
        return ref

    def stage_definition(self, stage: Stage, where: str) -> dict[str, Any]:
        defn: dict[str, Any] = _to_parent(registry.stage_definition(stage, where=where))
        return defn

    def resolve(self, ref: dict[str, Any], where: str) -> Action:
        return registry.resolve(ref, where=where)

    def stage_from_definition(self, definition: dict[str, Any], where: str) -> Stage:
        return registry.stage_from_definition(definition, where=where)


class _ChildContext(ActionContext):
    """The context of an action in a child: ``send`` writes the message to the parent at once."""

    __slots__ = ()

    async def send(self, kind: str, payload: Any = None) -> None:
        """Send a message to the parent's handlers (it must be JSON; the parent delivers it in order)."""
        self._check_open("send")
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"message kind must be a non-empty string, got {kind!r}")
        try:
            text = exact_json(payload)
        except (TypeError, ValueError) as exc:
            node = self._node
            raise NotSerializable(
                f"payload of message {kind!r} from action {node.action.name!r} of stage "
                f"{node.stage_node.id!r} is not JSON-serialisable ({exc}); durable runs and child "
                f"processes can only carry JSON values"
            ) from exc
        # The payload's JSON is written as it is: encoded once, not again inside a frame.
        _OUT.write_text(f'{{"t":"msg","id":{_CURRENT.get()},"kind":{_dumps(kind)},"payload":{text}}}')


class _Session:
    """One stage set up by ``begin``: the run's state as this child sees it."""

    def __init__(self, frame: dict[str, Any], out: _Out) -> None:
        self.out = out
        stage_frame = frame["stage"]
        where = f"isolated stage {stage_frame['id']!r}"
        stage = Stage(
            stage_frame["id"],
            name=stage_frame["name"],
            description=stage_frame.get("description", ""),
            tags=stage_frame.get("tags") or (),
            actions=[
                registry.resolve(ref, where=f"action {index} of {where}")
                for index, ref in enumerate(stage_frame["actions"])
            ],
        )
        info = frame["workflow"]
        workflow = Workflow(info["id"], name=info["name"], stages=[stage])
        store = Store(clock=time.time)
        store.check_values(json_value_check)
        for row in frame["store"]:
            meta = Meta(row[2], frozenset(row[3]), dict(row[4] or {})) if len(row) > 2 else None
            store.load(row[0], row[1], meta)
        hub = Hub()  # nobody listens here: messages go to the parent (see _ChildContext.send)
        self.durable = _ChildDurability()
        self.run = run = RunState(
            workflow,
            frame["run_id"],
            store,
            frame["max_insertions"],
            hub,
            True,
            durable=self.durable,
        )
        state = run.plan
        roots: list[StageNode] = []
        current: StageNode | None = None
        for row in frame["plan"]:
            if row["current"]:
                node = current = StageNode(stage, row["id"], dynamic=row["dynamic"], depth=row["depth"])
            else:
                shadow = Stage(row["stage_id"], name=row["name"], tags=row["tags"])
                node = StageNode(shadow, row["id"], dynamic=row["dynamic"], depth=row["depth"])
            node.status = StepStatus(row["status"])
            node.enabled = row["enabled"]
            node.removed = row["removed"]
            roots.append(node)
        assert current is not None
        current.status = STEP_RUNNING
        state.roots = roots
        state.by_id = {node.id: node for node in roots}
        state.insertions = frame["insertions"]
        self.stage_node = current
        self.nodes: dict[str, ActionNode] = {node.key: node for node in current.actions}

    def _node(self, frame: dict[str, Any]) -> ActionNode:
        key = frame["key"]
        node = self.nodes.get(key)
        if node is not None:
            return node
        # Inserted before this child took the stage over (an earlier child, a replay).
        parent = self.nodes.get(frame["parent"]) if frame.get("parent") else None
        action = registry.resolve(frame["ref"], where=f"action {key}")
        node = ActionNode(
            action,
            self.stage_node,
            dynamic=True,
            depth=frame.get("depth", 1),
            parent=parent,
            pos=frame["pos"],
            key=key,
        )
        if parent is not None:
            if parent.children is None:
                parent.children = []
            parent.children.append(node)
        self.nodes[key] = node
        return node

    async def run_action(self, frame: dict[str, Any]) -> None:
        call_id = frame["id"]
        token = _CURRENT.set(call_id)
        try:
            reply = await self._run(frame)
        except Exception as exc:  # the request itself was bad (an unknown reference...)
            reply = _failure(exc)
        finally:
            _CURRENT.reset(token)
        reply["id"] = call_id
        try:
            self.out.write(reply)
        except (TypeError, ValueError) as exc:
            failure = _failure(NotSerializable(f"what the action left cannot cross to the parent: {exc}"))
            failure["id"] = call_id
            self.out.write(failure)

    async def _run(self, frame: dict[str, Any]) -> dict[str, Any]:
        trace = frame.get("trace")
        if trace is None:
            return await self._run_action(frame)
        detach = _enter_trace(trace)
        try:
            return await self._run_action(frame)
        finally:
            detach()

    async def _run_action(self, frame: dict[str, Any]) -> dict[str, Any]:
        node = self._node(frame)
        run = self.run
        durable = self.durable
        if frame.get("resuming"):
            durable.resume_step = node.key
            durable.resume_data = frame.get("resume_data")
        node.status = STEP_RUNNING
        node.attempts = attempt = frame.get("attempt", 1)
        node.index = frame.get("index", 0)
        ctx = _ChildContext(run, node, attempt)
        try:
            await node.call(ctx)
            if run.plan.over_limit:
                raise InsertionLimitExceeded(run.plan.max_insertions, run_id=run.run_id)
        except Bail as bail:
            reply = _changes(ctx, {"t": "bail", "reason": bail.reason})
            self._commit(ctx, node)
            return reply
        except Suspend as suspend:
            finish_context(ctx, False)
            node.status = StepStatus.SUSPENDED
            try:
                exact_json(suspend.data)
            except (TypeError, ValueError) as exc:
                return _failure(
                    NotSerializable(
                        f"suspend data of action {node.action.name!r} is not JSON-serialisable ({exc})"
                    )
                )
            return {"t": "suspend", "reason": suspend.reason, "data": suspend.data}
        except Exception as exc:
            finish_context(ctx, False)
            node.status = STEP_FAILED
            return _failure(exc)
        finally:
            durable.resume_step = None
            durable.resume_data = None
        reply = _changes(ctx, {"t": "done"})
        self._commit(ctx, node)
        return reply

    def _commit(self, ctx: ActionContext, node: ActionNode) -> None:
        finish_context(ctx, True)
        node.status = STEP_COMPLETED
        nodes = self.nodes
        for inserted in node.walk():
            nodes.setdefault(inserted.key, inserted)


def _enter_trace(carrier: dict[str, str]) -> Callable[[], None]:
    """Make the parent's trace context (W3C headers) current here; return what undoes it.

    Only OpenTelemetry's API is needed (the parent sends a context only when
    it traces); without it, user code here has no tracing to join anyway.
    """
    try:
        from opentelemetry import context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return lambda: None
    token = context.attach(TraceContextTextMapPropagator().extract(carrier))
    return lambda: context.detach(token)


def _changes(ctx: ActionContext, reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` with the store writes and plan changes of the action of ``ctx``."""
    overlay, ops = context_changes(ctx)
    if overlay is not None:
        deleted, values, meta = overlay.changes()
        if deleted:
            reply["deletes"] = list(deleted)
        if values:
            rows: list[list[Any]] = []
            for key, value in values.items():
                entry = meta.get(key)
                if entry is None:
                    rows.append([key, value])
                else:
                    rows.append([key, value, entry.expires, sorted(entry.tags), entry.properties])
            reply["puts"] = rows
    if ops:
        reply["ops"] = ops
    return reply


def _failure(exc: BaseException) -> dict[str, Any]:
    """An exception as a frame: its class's import path, its arguments if they are JSON, its text."""
    kind = type(exc)
    args: list[Any] | None = list(exc.args)
    try:
        exact_json(args)
    except (TypeError, ValueError):
        args = None
    module = kind.__module__
    return {
        "t": "fail",
        "type": f"{'__main__' if module == '__mp_main__' else module}:{kind.__qualname__}",
        "args": args,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _log_sink(out: _Out) -> Any:
    def sink(message: Any) -> None:
        record = message.record
        text = record["message"]
        if record["exception"] is not None:
            kind, value, trace = record["exception"]
            text += "\n" + "".join(traceback.format_exception(kind, value, trace)).rstrip()
        extra = {}
        for key, value in record["extra"].items():
            extra[key] = value if value is None or isinstance(value, (str, int, float, bool)) else repr(value)
        out.write(
            {
                "t": "log",
                "id": _CURRENT.get(),
                "name": record["name"],
                "level": record["level"].name,
                "no": record["level"].no,
                "message": text,
                "extra": extra,
                "function": record["function"],
                "line": record["line"],
                "module": record["module"],
            }
        )

    return sink


class _Child:
    def __init__(self, in_fd: int, out: _Out) -> None:
        self.in_fd = in_fd
        self.out = out
        self.session: _Session | None = None
        self.main_loaded = False

    def _paths(self, frame: dict[str, Any]) -> None:
        for path in frame.get("path", ()):
            if path not in sys.path:
                sys.path.append(path)
        if not self.main_loaded and _MAIN in _text(frame):
            self.main_loaded = True
            _load_main(frame.get("main") or {})

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        pipe = os.fdopen(self.in_fd, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        frames = FrameBuffer()
        tasks: set[asyncio.Task[None]] = set()
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return
            for frame in frames.feed(data):
                kind = frame.get("t")
                if kind == "begin":
                    self._paths(frame)
                    try:
                        self.session = _Session(frame, self.out)
                    except Exception as exc:
                        reply = _failure(exc)
                    else:
                        reply = {"t": "ready"}
                    reply["id"] = frame["id"]
                    self.out.write(reply)
                elif kind == "run":
                    session = self.session
                    assert session is not None, "run before begin"
                    if not self.main_loaded and _MAIN in _text(frame):
                        self._paths(frame)
                    task = loop.create_task(session.run_action(frame))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "exit":
                    return


def _text(frame: dict[str, Any]) -> str:
    return repr(frame.get("stage") or frame.get("ref"))


def _load_main(main: dict[str, Any]) -> None:
    """Load the parent's ``__main__`` as ``__mp_main__``, as multiprocessing does.

    Its ``if __name__ == "__main__":`` block does not run again here.
    """
    name = main.get("name")
    path = main.get("file")
    if name and name != "__main__":
        namespace = runpy.run_module(name, run_name="__mp_main__", alter_sys=False)
    elif path:
        namespace = runpy.run_path(path, run_name="__mp_main__")
    else:
        return
    module = type(sys)("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__mp_main__"] = module
    sys.modules["__main__"] = module


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit if it has already."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    """Serve the parent until it closes our stdin."""
    _die_with_parent(int(sys.argv[1]))
    faulthandler.enable()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # print() in an action goes to stderr, which the parent reads
    global _OUT
    out = _OUT = _Out(out_fd)
    logger.remove()
    logger.enable("asyncflow")  # the parent filters the lines by their module, as it would its own
    logger.add(_log_sink(out), level=0, format="{message}", catch=True)
    try:
        asyncio.run(_Child(in_fd, out).serve())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
