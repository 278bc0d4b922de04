"""The parent's side of an isolated stage: its actions run in a child, the run stays here.

The runner drives an isolated stage as any other: its plan, middleware,
retries, time limits, events and (in a durable run) checkpoints all stay in
the parent. Only the call of each action goes to the child: the stage's
action nodes are called through :meth:`StageSession.call`, which sends the
child the action's reference and waits for how it ended. While it runs, the
child's messages and log lines are relayed here as they come, in order; when
it completes, its store writes and plan changes (insertions as references,
as in a durable run) are applied through the action's own context, so they
are committed, journaled, checkpointed and undone exactly as in process.

A child gets the run's store as it stands when the child starts the stage
(a snapshot), and keeps it up to date with what its own actions write. If it
dies, the next attempt gets a new child and a new snapshot.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from loguru import logger

from ..context import ActionContext, context_node, context_run
from ..definitions import registry
from ..errors import Bail, ChildProcessFailed, NotSerializable, RecordedError, Suspend
from ..events import Message
from ..jsonvalues import exact_json
from ..plan import ActionNode, StageNode
from .frames import FrameError
from .process import DEFAULT_KILL_GRACE, ChildProcess, ProcessPool

if TYPE_CHECKING:
    from ..state import RunState

StageBody = Callable[["RunState", StageNode], Awaitable[None]]


class _Call:
    """One request to the child: starting a stage (``begin``) or running an action."""

    __slots__ = ("child", "context", "ctx", "event", "failure", "node", "reply")

    def __init__(self, child: ChildProcess, node: ActionNode, ctx: ActionContext | None) -> None:
        self.child = child
        self.node = node
        self.ctx = ctx
        # The action's own context (made in its task): the log lines the child sends for it are
        # written in it, so they carry what its code would see (its trace span, say).
        self.context = contextvars.copy_context() if ctx is not None else None
        self.event = anyio.Event()
        self.reply: dict[str, Any] | None = None
        self.failure: BaseException | None = None


async def run_isolated(run: RunState, node: StageNode, pool: ProcessPool | None, body: StageBody) -> None:
    """Run ``body`` (the stage's actions) with every action of ``node`` called in a child process."""
    session = StageSession(run, node, pool)
    outcome: BaseException | None = None
    node.remote = session.call
    for action in node.walk_actions():
        action.call = session.call
    try:
        async with anyio.create_task_group() as group:
            session.group = group
            try:
                await body(run, node)
            except BaseException as exc:
                # Kept and raised outside the group: the runner sees the stage's own
                # exception (a bail, a failure), not a group wrapping it.
                outcome = exc
            group.cancel_scope.cancel()  # the readers: the stage needs the child no more
    finally:
        node.remote = None
        with anyio.CancelScope(shield=True):
            await session.finish()
    if outcome is not None:
        raise outcome


class StageSession:
    """One isolated stage while it runs: its child, the requests in flight, the relays (internal)."""

    def __init__(self, run: RunState, node: StageNode, pool: ProcessPool | None) -> None:
        self.run = run
        self.node = node
        self.pool = pool
        self.grace = pool.kill_grace if pool is not None else DEFAULT_KILL_GRACE
        self.group: TaskGroup | None = None
        self.child: ChildProcess | None = None
        self.lock = anyio.Lock()
        self.calls: dict[int, _Call] = {}
        self.next_id = 0
        self.refs: dict[ActionNode, dict[str, Any]] = {}

    # ---- children -----------------------------------------------------------------

    async def _acquire(self) -> ChildProcess:
        if self.pool is not None:
            return await self.pool.acquire()
        return await ChildProcess.spawn()

    async def _release(self, child: ChildProcess, healthy: bool) -> None:
        if self.pool is not None:
            await self.pool.release(child, healthy=healthy)
        elif child.dead:
            await child.reap(self.grace)
        else:
            await child.close(self.grace)

    async def finish(self) -> None:
        """The stage is over: its child goes back to the pool (or ends); a broken one is reaped."""
        child, self.child = self.child, None
        if child is None:
            return
        healthy = not child.dead and not self.calls
        if not healthy and not child.dead:
            await child.kill(self.grace, "its stage ended while it was still working")
        await self._release(child, healthy)

    async def _child_for(self, node: ActionNode, ctx: ActionContext) -> ChildProcess:
        """The stage's child, started (with a store snapshot) if it has none or its child died."""
        async with self.lock:
            child = self.child
            if child is not None and not child.dead:
                return child
            if child is not None:
                self.child = None
                await self._release(child, False)
            failure: BaseException | None = None
            for _ in range(3):
                child = await self._acquire()
                try:
                    call = self._start(child, node, None)
                    await _send(child, self._begin_frame())
                    await call.event.wait()
                except BaseException:
                    if not child.dead:
                        await child.kill(self.grace, "its stage was cancelled while it started")
                    with anyio.CancelScope(shield=True):
                        await self._release(child, False)
                    raise
                if call.failure is None:
                    child.tasks += 1
                    if call.reply is not None and call.reply.get("t") == "fail":
                        # The child could not set the stage up (an import failed...).
                        await self._release(child, False)
                        raise _rebuild_error(call.reply, child.pid)
                    self.child = child
                    return child
                await self._release(child, False)
                failure = call.failure
                if self.pool is None or not isinstance(failure, ChildProcessFailed):
                    raise failure
                # A warm child that died while idle: take another.
            assert failure is not None
            raise failure

    def _start(self, child: ChildProcess, node: ActionNode, ctx: ActionContext | None) -> _Call:
        """Register a request to ``child``; start its readers if it has none yet."""
        assert self.group is not None
        call = _Call(child, node, ctx)
        self.next_id += 1
        self.calls[self.next_id] = call
        if child.reader is not self:
            child.reader = self
            self.group.start_soon(self._read, child)
            if not child.stderr_reader:
                child.stderr_reader = True
                self.group.start_soon(child.drain_stderr)
        if child.dead:
            self._fail_calls(child)
        return call

    def _begin_frame(self) -> dict[str, Any]:
        run = self.run
        node = self.node
        stage = node.stage
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        return {
            "t": "begin",
            "id": self.next_id,
            "path": [path for path in sys.path if isinstance(path, str)],
            "main": {"name": spec.name} if spec is not None else {"file": getattr(main, "__file__", None)},
            "run_id": run.run_id,
            "workflow": {"id": run.workflow.id, "name": run.workflow.name},
            "stage": {
                "id": stage.id,
                "name": stage.name,
                "description": stage.description,
                "tags": sorted(stage.tags),
                "actions": [self._ref(action) for action in node.actions],
            },
            "plan": [
                {
                    "id": other.id,
                    "stage_id": other.stage.id,
                    "name": other.stage.name,
                    "tags": sorted(other.stage.tags),
                    "status": other.status.value,
                    "enabled": other.enabled,
                    "removed": other.removed,
                    "dynamic": other.dynamic,
                    "depth": other.depth,
                    "current": other is node,
                }
                for other in run.plan.walk_stages()
            ],
            "insertions": run.plan.insertions,
            "max_insertions": run.plan.max_insertions,
            "store": _store_rows(run),
        }

    def _ref(self, node: ActionNode) -> dict[str, Any]:
        ref = self.refs.get(node)
        if ref is None:
            ref = self.refs[node] = registry.reference(
                node.action,
                where=f"action {node.action.name!r} of isolated stage {node.stage_node.id!r}",
            )
        return ref

    # ---- reading -------------------------------------------------------------------

    async def _read(self, child: ChildProcess) -> None:
        """Relay what ``child`` sends, in order, until its stdout closes."""
        try:
            while True:
                try:
                    frame = await child.receive()
                except FrameError as exc:
                    await child.kill(self.grace, f"it wrote something that is not a frame: {exc}")
                    frame = None
                if frame is None:
                    break
                try:
                    await self._dispatch(child, frame)
                except Exception as exc:
                    # A frame this side cannot use: the child is not trusted to go on.
                    logger.opt(exception=exc).error("child {} sent a frame that cannot be used", child.pid)
                    await child.kill(self.grace, f"it sent a frame that cannot be used ({exc!r})")
                    break
        finally:
            # Cancelled at the end of the stage: the child lives on. Else it is gone.
            if child.dead:
                with anyio.CancelScope(shield=True):
                    await child.reap(self.grace)
                    self._fail_calls(child)

    async def _dispatch(self, child: ChildProcess, frame: dict[str, Any]) -> None:
        """Relay a message or a log line, or hand a reply to the request waiting for it."""
        kind = frame.get("t")
        if kind == "msg":
            call = self.calls.get(frame.get("id", -1))
            if call is not None and call.ctx is not None:
                await _relay_message(call.ctx, frame, child.pid)
        elif kind == "log":
            call = self.calls.get(frame.get("id", -1))
            if call is not None and call.context is not None:
                call.context.run(_relay_log, frame, child.pid)
            else:
                _relay_log(frame, child.pid)
        else:
            call = self.calls.pop(frame.get("id", -1), None)
            if call is not None:
                call.reply = frame
                call.event.set()

    def _fail_calls(self, child: ChildProcess) -> None:
        """Fail every request ``child`` can no longer answer with a ChildProcessFailed."""
        run = self.run
        for call_id, call in list(self.calls.items()):
            if call.child is not child:
                continue
            del self.calls[call_id]
            call.failure = ChildProcessFailed(
                run_id=run.run_id,
                workflow_id=run.workflow.id,
                stage_id=call.node.stage_node.id,
                action_name=call.node.action.name,
                pid=child.pid,
                exit_code=child.returncode,
                stderr_tail=tuple(child.stderr_tail),
                why=child.why,
            )
            call.event.set()

    # ---- an action -----------------------------------------------------------------

    async def call(self, ctx: ActionContext) -> None:
        """Run the action of ``ctx`` in the stage's child and apply what it did through ``ctx``."""
        node = context_node(ctx)
        child = await self._child_for(node, ctx)
        call = self._start(child, node, ctx)
        call_id = self.next_id
        resuming = ctx.is_resuming
        frame: dict[str, Any] = {
            "t": "run",
            "id": call_id,
            "key": node.key,
            "ref": self._ref(node),
            "parent": node.parent.key if node.parent is not None else None,
            "pos": node.pos,
            "depth": node.depth,
            "attempt": ctx.attempt,
            "index": node.index,
        }
        if resuming:
            frame["resuming"] = True
            frame["resume_data"] = ctx.resume_data
        tracing = self.run.hub.tracing
        if tracing is not None:
            # The action's trace context (W3C headers): what user code makes in the child joins it.
            trace = tracing.current()
            if trace is not None:
                frame["trace"] = trace
        try:
            await _send(child, frame)
            await call.event.wait()
        except BaseException:
            # Cancelled (the run, or the action's time limit): the child cannot be
            # stopped half-way through an action, only killed.
            if self.calls.pop(call_id, None) is not None and not child.dead:
                await child.kill(self.grace, f"action {node.action.name!r} was cancelled or timed out")
            raise
        self._raise_reply(ctx, call)

    def _raise_reply(self, ctx: ActionContext, call: _Call) -> None:
        """Apply what the child reports to ``ctx``; raise as the action ended (if it did not complete)."""
        if call.failure is not None:
            raise call.failure
        reply = call.reply
        assert reply is not None
        kind = reply.get("t")
        if kind == "ready":
            return
        if kind == "fail":
            raise _rebuild_error(reply, call.child.pid)
        if kind == "suspend":
            raise Suspend(reply["reason"], reply.get("data"))
        _apply(self, ctx, reply)
        if kind == "bail":
            raise Bail(reply["reason"])


async def _send(child: ChildProcess, frame: dict[str, Any]) -> None:
    """Send ``frame``; a child that is gone is not an error here: its reader fails its calls."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await child.send(frame)


def _store_rows(run: RunState) -> list[list[Any]]:
    """The run's store as rows ``[key, value]`` or ``[key, value, expires, tags, properties]``."""
    rows: list[list[Any]] = []
    for key, value, meta in run.store.live_items():
        try:
            exact_json(value)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"store value for key {key!r} is not JSON-serialisable ({exc}); an isolated stage "
                f"gets a copy of the run's store in its child process, so values must be JSON"
            ) from None
        if meta is None:
            rows.append([key, value])
        else:
            rows.append([key, value, meta.expires, sorted(meta.tags), meta.properties])
    return rows


def _apply(session: StageSession, ctx: ActionContext, reply: dict[str, Any]) -> None:
    """The store writes and plan changes of a completed action, made through its context."""
    store = ctx.store
    for key in reply.get("deletes", ()):
        store.delete(key)
    if reply.get("puts"):
        clock = store.now
        for row in reply["puts"]:
            if len(row) == 2:
                store.put(row[0], row[1])
                continue
            key, value, expires, tags, properties = row
            ttl = None if expires is None else max(expires - clock(), 1e-9)
            store.put(key, value, ttl=ttl, tags=tags, properties=properties or None)
    ops = reply.get("ops")
    if not ops:
        return
    durable = context_run(ctx).durable
    node = context_node(ctx)
    where = f"inserted in the child by action {node.action.name!r} of stage {node.stage_node.id!r}"
    for op in ops:
        kind = op["op"]
        if kind == "action":
            ref = op["ref"]
            action = (
                durable.resolve(ref, where) if durable is not None else registry.resolve(ref, where=where)
            )
            ctx.add_dynamic_action(action)
            children = node.children
            assert children is not None
            session.refs[children[-1]] = ref
        elif kind == "stage":
            defn = op["stage"]
            stage = (
                durable.stage_from_definition(defn, where)
                if durable is not None
                else registry.stage_from_definition(defn, where=where)
            )
            ctx.add_dynamic_stage(stage, allow_duplicate=op["id"] != defn["id"])
        elif kind in ("disable_stage", "enable_stage", "remove_stage"):
            getattr(ctx.plan, kind)(op["id"])
        elif kind in ("disable_action", "enable_action", "remove_action"):
            getattr(ctx.plan, kind)(op["name"], op["stage_id"])
        else:
            getattr(ctx.plan, kind)(op["tag"])


async def _relay_message(ctx: ActionContext, frame: dict[str, Any], pid: int) -> None:
    """``ctx.send`` on behalf of the child: the same handlers, marked as from the child."""
    run = context_run(ctx)
    run.message_seq += 1
    hub = run.hub
    if not hub.routes:
        return
    node = context_node(ctx)
    stage = node.stage_node
    message = Message(
        kind=frame["kind"],
        payload=frame.get("payload"),
        run_id=run.run_id,
        workflow_id=run.workflow.id,
        stage_id=stage.id,
        action_name=node.action.name,
        action_index=node.index,
        is_last_action=not stage.pending and not node.children,
        seq=run.message_seq,
        pid=pid,
        from_child=True,
    )
    run.message_errors += await hub.deliver(message)


_emitters: dict[str, Callable[..., None]] = {}


def _emitter(name: str) -> Callable[..., None]:
    """A function that logs as if from module ``name``: loguru enables and disables by that name."""
    emit = _emitters.get(name)
    if emit is None:
        code = compile("def emit(log, level, message):\n    log.log(level, message)\n", "<child>", "exec")
        namespace: dict[str, Any] = {"__name__": name}
        exec(code, namespace)
        emit = _emitters[name] = types.FunctionType(namespace["emit"].__code__, namespace, "emit")
    return emit


def _relay_log(frame: dict[str, Any], pid: int) -> None:
    """A child's loguru line, logged here with its level, module, function, line and bound context."""
    name = frame.get("name") or "__child__"
    level: str | int = frame.get("level", "INFO")
    if isinstance(level, str):
        try:
            logger.level(level)
        except ValueError:  # a level the child added and this process does not know
            level = int(frame.get("no", 20))
    function = frame.get("function")
    line = frame.get("line")
    module = frame.get("module")

    def patch(record: Any) -> None:
        if function is not None:
            record["function"] = function
        if line is not None:
            record["line"] = line
        if module is not None:
            record["module"] = module

    bound = logger.patch(patch).bind(**{**(frame.get("extra") or {}), "child_pid": pid})
    _emitter(name)(bound, level, frame.get("message", ""))


def _rebuild_error(reply: dict[str, Any], pid: int) -> BaseException:
    """The exception an action raised in the child, as near to the original as JSON allows.

    Its class is taken from its import path if the parent has that module
    loaded and the class can be made from the (JSON) arguments it had; else it
    is a :class:`~asyncflow.RecordedError` naming the class. The child's
    traceback is attached as a note.
    """
    path = reply.get("type") or "builtins:Exception"
    module_name, _, qualname = path.partition(":")
    args = reply.get("args")
    message = reply.get("message", "")
    error: BaseException | None = None
    module = sys.modules.get(module_name)
    if module is None and module_name == "__mp_main__":
        module = sys.modules.get("__main__")
    if module is not None and isinstance(args, list):
        target: Any = module
        try:
            for part in qualname.split("."):
                target = getattr(target, part)
            if isinstance(target, type) and issubclass(target, Exception):
                error = target(*args)
        except Exception:
            error = None
        if error is not None and str(error) != message:
            error = None  # made, but not the same error: say what it was instead
    if error is None:
        error = RecordedError(qualname or path, message)
    trace = reply.get("traceback")
    if trace:
        error.add_note(f"raised in child process {pid}:\n{trace.rstrip()}")
    return error
