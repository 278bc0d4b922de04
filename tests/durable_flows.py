"""Module-level actions and workflows for the durable engine tests (re-creatable from definitions).

Durable runs re-create actions by import path (``durable_flows:attr``), so
everything here lives at module level. Actions write what they did into
:data:`LEDGER` (one list per label), which survives an engine being closed
and another being opened in the same process; tests call :func:`reset` first.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import Any

import anyio
from helpers import eventually as eventually  # (the tests' one wait, re-exported)

import asyncflow as af
from asyncflow import backoff
from asyncflow.backends import SQLiteBackend

#: label -> what each execution recorded, in order
LEDGER: dict[str, list[Any]] = {}
#: label -> set when an action with that label has started and hangs
GATES: dict[str, anyio.Event] = {}


def reset() -> None:
    """Forget every record and gate (call at the start of each test)."""
    LEDGER.clear()
    GATES.clear()


def record(label: str, value: Any = None) -> None:
    """Append ``value`` to the records of ``label``."""
    LEDGER.setdefault(label, []).append(value)


def runs_of(label: str) -> int:
    """How many times something recorded under ``label``."""
    return len(LEDGER.get(label, []))


def gate(label: str) -> anyio.Event:
    """The event of ``label`` (made on first use, inside the running loop)."""
    event = GATES.get(label)
    if event is None:
        event = GATES[label] = anyio.Event()
    return event


# ---- engines on a file, for the tests ---------------------------------------------


def make_engine(url: str, *workflows: af.Workflow, **options: Any) -> af.Engine:
    """An engine on ``url`` with a short lease and poll interval, ``workflows`` registered."""
    options.setdefault("lease", 1.0)
    options.setdefault("poll_interval", 0.05)
    engine = af.Engine(url, **options)
    for workflow in workflows:
        engine.register(workflow)
    return engine


async def interrupt(url: str, workflow: af.Workflow, label: str = "hang", **options: Any) -> str:
    """Start ``workflow``, wait until its action ``label`` hangs, close the engine; the run id."""
    async with make_engine(url, workflow, **options) as engine:
        handle = await engine.start(workflow)
        with anyio.fail_after(5):
            await gate(label).wait()
    return handle.run_id


async def finish(url: str, run_id: str, *workflows: af.Workflow, **options: Any) -> af.RunResult:
    """Open a new engine with ``workflows`` registered and wait for ``run_id`` to end."""
    async with make_engine(url, *workflows, **options) as engine:
        with anyio.fail_after(5):
            return await engine.wait(run_id)


async def run_here(url: str, workflow: af.Workflow, *, within: float = 5) -> tuple[str, af.RunResult]:
    """Start ``workflow`` on a new engine, wait (at most ``within`` s) for it to end; its id and result."""
    async with make_engine(url, workflow) as engine:
        handle = await engine.start(workflow)
        with anyio.fail_after(within):
            return handle.run_id, await handle.result()


async def info_of(url: str, run_id: str) -> af.RunInfo:
    """What the database says of the run, read by an engine that recovers nothing."""
    async with make_engine(url, recover=False) as engine:
        return await engine.get_run(run_id)


class CountingSQLite(SQLiteBackend):
    """An SQLite backend that counts its engine's heartbeats and looks for runs (claims).

    A test that checks that something does *not* happen waits for a number
    of the engine's passes instead of a fixed time: on a slow machine it
    waits longer, and it never passes without the engine having looked.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.claims = 0
        self.heartbeats = 0

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int,
        run_id: str | None = None,
        skip_versions: Collection[str] = (),
    ) -> list[af.RunInfo]:
        self.claims += 1
        return await super().claim(
            owner, now=now, lease_until=lease_until, limit=limit, run_id=run_id, skip_versions=skip_versions
        )

    async def heartbeat(self, owner: str, run_ids: Any, *, now: float, lease_until: float) -> set[str]:
        self.heartbeats += 1
        return await super().heartbeat(owner, run_ids, now=now, lease_until=lease_until)

    async def passes(self, more: int) -> None:
        """Wait until the engine has made ``more`` further heartbeats and looks for runs."""
        claims, heartbeats = self.claims, self.heartbeats
        await eventually(lambda: self.claims >= claims + more and self.heartbeats >= heartbeats + more)


class StallingSQLite(CountingSQLite):
    """A counting SQLite backend that can stall as a starved engine does, once each, when armed.

    ``stall_after_heartbeat``: the next heartbeat is followed by a stall past
    the lease (``clock`` moved on by ``stall`` seconds), so the engine's next
    look for runs finds its own runs' leases run out. ``hold_load``: the next
    load reads the run, then holds its answer until :attr:`let_load_go` is set
    (a slow answer: what it gives may be out of date by then).
    """

    def __init__(self, path: Path, clock: Any, stall: float) -> None:
        super().__init__(path)
        self.clock, self.stall = clock, stall
        self.stall_after_heartbeat = False
        self.hold_load = False
        self.load_held = anyio.Event()
        self.let_load_go = anyio.Event()
        self.stalled_at: int | None = None  # (the count of heartbeats when it stalled)

    async def heartbeat(self, owner: str, run_ids: Any, *, now: float, lease_until: float) -> set[str]:
        lost = await super().heartbeat(owner, run_ids, now=now, lease_until=lease_until)
        if self.stall_after_heartbeat:
            self.stall_after_heartbeat = False
            await self.clock.advance(self.stall)
            self.stalled_at = self.heartbeats
        return lost

    async def looked_after_stall(self) -> None:
        """Wait until the engine's look for runs after the stall is over, or holds a load."""
        await eventually(
            lambda: (
                self.load_held.is_set() or (self.stalled_at is not None and self.heartbeats > self.stalled_at)
            )
        )

    async def load(self, run_id: str) -> Any:
        saved = await super().load(run_id)
        if self.hold_load:
            self.hold_load = False
            self.load_held.set()
            await self.let_load_go.wait()
        return saved


def query(db_path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``statement`` read from the database file with a plain sqlite3 connection."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


# ---- actions -----------------------------------------------------------------------


class Record(af.Action):
    """Record its execution (idempotency key) under ``label`` and put ``value`` at ``label`` in the store."""

    def __init__(self, label: str, *, value: Any = True) -> None:
        self.label = label
        self.value = value

    async def execute(self, ctx: af.ActionContext) -> None:
        """Record, then write the store."""
        record(self.label, ctx.idempotency_key)
        ctx.store[self.label] = self.value


class Noop(af.Action):
    """Do nothing (an Action subclass without a constructor)."""

    async def execute(self, ctx: af.ActionContext) -> None:
        """Nothing."""


class HangOnce(af.Action):
    """On its first execution, open the gate ``label`` and wait forever; afterwards, complete."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, ctx: af.ActionContext) -> None:
        """Hang the first time, complete the next."""
        record(self.label, ctx.idempotency_key)
        if runs_of(self.label) == 1:
            ctx.store[f"{self.label}.partial"] = "discarded"  # never committed: the action does not finish
            gate(self.label).set()
            await anyio.sleep_forever()
        ctx.store[self.label] = "done"


class Blocker(af.Action):
    """Open the gate ``label``, wait for the gate ``f"{label}.release"``, record a cancellation."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, ctx: af.ActionContext) -> None:
        """Wait to be released (or cancelled)."""
        record(self.label, ctx.idempotency_key)
        gate(self.label).set()
        try:
            await gate(f"{self.label}.release").wait()
        except anyio.get_cancelled_exc_class():
            record(f"{self.label}.cancelled", True)
            raise
        ctx.store[self.label] = "released"


class SuspendWhenReleased(af.Action):
    """Record, open the gate ``label``, wait for the gate ``f"{label}.release"``, then suspend the run."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, ctx: af.ActionContext) -> None:
        """Wait to be released, then suspend (no checkpoint comes between)."""
        record(self.label, ctx.idempotency_key)
        gate(self.label).set()
        await gate(f"{self.label}.release").wait()
        ctx.suspend("released")


@af.action
async def step_one(ctx: af.ActionContext) -> None:
    """Record and write ``one = 1``."""
    record("step-one", ctx.idempotency_key)
    ctx.store["one"] = 1


@af.action
async def reshape(ctx: af.ActionContext) -> None:
    """Change the plan: disable stage "skipme", insert an action and a stage."""
    record("reshape", ctx.idempotency_key)
    ctx.plan.disable_stage("skipme")
    ctx.add_dynamic_action(Record("dyn-child"))
    ctx.add_dynamic_stage(af.Stage("extra", actions=[Record("extra-action", value="x")]))


#: One value of each JSON type, and a few edge cases of each.
JSON_VALUES: dict[str, Any] = {
    "int": 42,
    "int.big": 2**70,
    "int.negative": -7,
    "int.zero": 0,
    "float": 0.1,
    "float.whole": 1.0,
    "float.tiny": 1e-300,
    "float.negative": -2.5,
    "str": 'héllo ✓ "quoted"\n\ttab',
    "str.empty": "",
    "bool.true": True,
    "bool.false": False,
    "none": None,
    "list": [1, "two", 3.0, None, [True, False], {"k": "v"}],
    "list.empty": [],
    "dict": {"a": {"b": [1, 2.5]}, "c": None, "d": False, "ü": "x"},
    "dict.empty": {},
}


@af.action
async def write_json_values(ctx: af.ActionContext) -> None:
    """Write every value of :data:`JSON_VALUES` into the store."""
    record("write-json", ctx.idempotency_key)
    for key, value in JSON_VALUES.items():
        ctx.store[key] = value


@af.action
async def read_json_values(ctx: af.ActionContext) -> None:
    """Record what the store holds for every key of :data:`JSON_VALUES`."""
    record("read-json", {key: ctx.store[key] for key in JSON_VALUES})


@af.action
async def write_int_keyed_dict(ctx: af.ActionContext) -> None:
    """Write a dict with int keys (nested), recording as :func:`write_and_record` does."""
    write_and_record(ctx, "counts", {"by_day": {1: 3, 2: 5}})


@af.action
async def suspend_with_int_keys(ctx: af.ActionContext) -> None:
    """Suspend with data whose dict has an int key."""
    ctx.suspend("check", {7: "seven"})


@af.action
async def raise_suspend_with_int_keys(ctx: af.ActionContext) -> None:
    """Raise af.Suspend directly (not through ctx.suspend), with data whose dict has an int key."""
    raise af.Suspend("check", {7: "seven"})


@af.action
async def raise_suspend_with_an_object(ctx: af.ActionContext) -> None:
    """Raise af.Suspend directly, with data that is not JSON at all."""
    raise af.Suspend("check", {"when": object()})


@af.action(timeout=30)
async def raise_suspend_with_int_keys_timed(ctx: af.ActionContext) -> None:
    """raise_suspend_with_int_keys with a time limit (its attempt takes the slower path)."""
    raise af.Suspend("check", {7: "seven"})


@af.action(name="put-tagged")
async def put_tagged(ctx: af.ActionContext) -> None:
    """Put an entry with tags and properties."""
    ctx.store.put("tagged", 1, tags={"t"}, properties={"p": "v"})


@af.action(name="read-tagged")
async def read_tagged(ctx: af.ActionContext) -> None:
    """Record what find(tag="t") and properties_of("tagged") give."""
    record("read-tagged", (ctx.store.find(tag="t"), ctx.store.properties_of("tagged")))


@af.action(name="merge-not-json")
async def merge_not_json(ctx: af.ActionContext) -> None:
    """ctx.store.merge a value that is not JSON; record the message of the refusal."""
    try:
        ctx.store.merge({"fine": 1, "when": {1, 2}})
    except af.NotSerializable as exc:
        record("merge-refused", str(exc))


@af.action
async def send_int_keys(ctx: af.ActionContext) -> None:
    """Send a message whose payload has an int key."""
    await ctx.send("progress", {1: "one"})


@af.action
async def write_tuple(ctx: af.ActionContext) -> None:
    """Write a tuple into the store."""
    ctx.store["pair"] = (1, "a")


@af.action
async def read_tuple(ctx: af.ActionContext) -> None:
    """Record what the store holds for "pair"."""
    record("read-tuple", ctx.store["pair"])


@af.action
async def write_object(ctx: af.ActionContext) -> None:
    """Write a non-JSON value, recording as :func:`write_and_record` does."""
    write_and_record(ctx, "bad.key", object())


def write_and_record(ctx: af.ActionContext, key: str, value: Any) -> None:
    """Write ``value`` at ``key``; record the error raised at the write, and whether the next line ran."""
    try:
        ctx.store[key] = value
    except af.NotSerializable as exc:
        record("not-serializable", str(exc))
        raise
    record("after-write", True)


@af.action
async def approve(ctx: af.ActionContext) -> None:
    """Suspend for approval; on resume, store what was given."""
    record("approve", (ctx.is_resuming, ctx.resume_data, ctx.idempotency_key))
    if not ctx.is_resuming:
        ctx.suspend("needs approval", {"amount": 5})
    ctx.store["approved"] = ctx.resume_data


@af.action(retry=af.Retry(attempts=3, backoff=backoff.fixed(100)))
async def flaky(ctx: af.ActionContext) -> None:
    """Fail on attempts 1 and 2, succeed on 3."""
    record("flaky", (ctx.attempt, ctx.idempotency_key))
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    ctx.store["flaky"] = ctx.attempt


@af.action(retry=af.Retry(attempts=3, backoff=backoff.fixed(100)))
async def always_fails(ctx: af.ActionContext) -> None:
    """Fail on every attempt."""
    record("always-fails", ctx.attempt)
    raise ConnectionError(f"attempt {ctx.attempt} failed")


@af.action
async def insert_registered(ctx: af.ActionContext) -> None:
    """Insert the action registered (in a per-engine registry) as "only-in-first-registry"."""
    record("insert-registered", ctx.idempotency_key)
    ctx.add_dynamic_action(ONLY_IN_FIRST_REGISTRY)


async def _only_in_first(ctx: af.ActionContext) -> None:
    record("only-in-first", ctx.idempotency_key)
    gate("only-in-first").set()
    await anyio.sleep_forever()


#: Not importable as an action by path (the module attribute is a plain function): it has to be
#: registered under its name to be referenced.
ONLY_IN_FIRST_REGISTRY = af.action(name="only-in-first-registry")(_only_in_first)


async def _undecorated(ctx: af.ActionContext) -> None:
    record("lambda-made", True)


#: An action made by a lambda: nothing importable leads back to this instance.
LAMBDA_MADE = (lambda: af.action(name="lambda-made")(_undecorated))()


@af.action
async def insert_closure(ctx: af.ActionContext) -> None:
    """Insert an action defined inside this function (not re-creatable)."""

    @af.action
    async def inner_closure(ctx: af.ActionContext) -> None:
        record("inner-closure", True)

    ctx.add_dynamic_action(inner_closure)
    record("after-insert", True)


@af.action
async def insert_stage_with_lambda_made(ctx: af.ActionContext) -> None:
    """Insert a stage holding :data:`LAMBDA_MADE` (not re-creatable)."""
    ctx.add_dynamic_stage(af.Stage("bad-stage", actions=[LAMBDA_MADE]))
    record("after-insert", True)


@af.action
async def boom(ctx: af.ActionContext) -> None:
    """Raise ValueError("boom")."""
    raise ValueError("boom")


@af.action
async def fail_with_a_colon(ctx: af.ActionContext) -> None:
    """Raise ValueError("row 7: no id"): a message with a colon of its own."""
    raise ValueError("row 7: no id")


@af.action
async def announce(ctx: af.ActionContext) -> None:
    """Send a "progress" message."""
    await ctx.send("progress", {"pct": 50})


async def _global_only(ctx: af.ActionContext) -> None:
    record("global-only", ctx.idempotency_key)


#: Registered in the global registry only (not importable as an action by path).
GLOBAL_ONLY = af.action(name="durable-flows.global-only")(_global_only)
af.registry.register(GLOBAL_ONLY)


@af.action
async def insert_global(ctx: af.ActionContext) -> None:
    """Insert :data:`GLOBAL_ONLY`."""
    ctx.add_dynamic_action(GLOBAL_ONLY)


#: a file name that is not UTF-8, as os.listdir gives it: 'report-\udcff.csv'
UNDECODABLE = os.fsdecode(b"report-\xff.csv")


@af.action
async def fail_quoting_a_file(ctx: af.ActionContext) -> None:
    """Fail with a message that quotes :data:`UNDECODABLE` as it is (not its repr)."""
    raise ValueError(f"cannot parse {UNDECODABLE}")


@af.action
async def suspend_quoting_a_file(ctx: af.ActionContext) -> None:
    """Suspend with a reason that quotes :data:`UNDECODABLE`; on resume, store what was given."""
    if not ctx.is_resuming:
        ctx.suspend(f"check {UNDECODABLE} by hand", {"file": "report.csv"})
    ctx.store["checked"] = ctx.resume_data


@af.action
async def insert_stage_per_file(ctx: af.ActionContext) -> None:
    """Insert a stage named after :data:`UNDECODABLE`."""
    ctx.add_dynamic_stage(af.Stage(f"process-{UNDECODABLE}", actions=[step_one]))


# ---- workflows --------------------------------------------------------------------

BASIC = af.Workflow(
    "recover-basic",
    stages=[
        af.Stage("s1", actions=[step_one, HangOnce("hang"), Record("after")]),
        af.Stage("s2", actions=[Record("s2")]),
    ],
)


@af.action(name="switch-off")
async def switch_off(ctx: af.ActionContext) -> None:
    """Disable stage "later-on", every "late-on", b's "skip-me" and what is tagged "opt" or "never"."""
    record("switch-off", ctx.idempotency_key)
    ctx.plan.disable_stage("later-on")
    ctx.plan.disable_action("late-on")
    ctx.plan.disable_by_tag("opt")
    ctx.plan.disable_action("skip-me", stage_id="b")
    ctx.plan.disable_by_tag("never")


@af.action(name="switch-on")
async def switch_on(ctx: af.ActionContext) -> None:
    """Enable "later-on", "late-on" of stage "b" and the tag "opt" again; remove "gone" and b's "dropped"."""
    record("switch-on", ctx.idempotency_key)
    ctx.plan.enable_stage("later-on")
    ctx.plan.enable_action("late-on", stage_id="b")
    ctx.plan.enable_by_tag("opt")
    ctx.plan.remove_stage("gone")
    ctx.plan.remove_action("dropped", stage_id="b")


class LateOn(Record):
    """A Record named "late-on" (one in each of two stages)."""

    name = "late-on"


class Dropped(Record):
    """A Record named "dropped" (one in each of two stages)."""

    name = "dropped"


class SkipMe(Record):
    """A Record named "skip-me" (one in each of two stages)."""

    name = "skip-me"


class Optional(Record):
    """A Record tagged "opt"."""

    name = "optional"
    tags = frozenset({"opt"})


#: Each plan change but the insertions, made by completed actions before the run is interrupted.
REPLAN = af.Workflow(
    "recover-replan",
    stages=[
        af.Stage("a", actions=[switch_off, switch_on, HangOnce("hang")]),
        af.Stage("later-on", actions=[Record("later-on")]),
        af.Stage("b", actions=[LateOn("late-on@b"), Dropped("dropped@b"), SkipMe("skip-me@b")]),
        af.Stage("gone", actions=[Record("gone")]),
        af.Stage("opt", tags={"opt"}, actions=[Record("opt-stage")]),
        af.Stage("never", tags={"never"}, actions=[Record("never")]),
        af.Stage(
            "c",
            actions=[LateOn("late-on@c"), Dropped("dropped@c"), SkipMe("skip-me@c"), Optional("optional@c")],
        ),
    ],
)

RESHAPE = af.Workflow(
    "recover-reshape",
    stages=[
        af.Stage("a", actions=[reshape, HangOnce("hang")]),
        af.Stage("skipme", actions=[Record("skipped")]),
        af.Stage("b", actions=[Record("b")]),
    ],
)


@af.action
async def insert_hanging_stage(ctx: af.ActionContext) -> None:
    """Insert a stage whose first action completes and whose second hangs once."""
    record("insert-hanging-stage", ctx.idempotency_key)
    ctx.add_dynamic_stage(af.Stage("extra", actions=[Record("extra-first"), HangOnce("hang")]))


#: An inserted stage interrupted after its first action: its steps are replayed and re-run after a restart.
INSERTED_STAGE = af.Workflow("recover-inserted-stage", stages=[af.Stage("a", actions=[insert_hanging_stage])])

OTHER = af.Workflow("recover-other", stages=[af.Stage("s", actions=[HangOnce("other")])])

JSON_ROUND_TRIP = af.Workflow(
    "json-round-trip",
    stages=[
        af.Stage(
            "s", actions=[write_json_values, write_tuple, HangOnce("hang"), read_json_values, read_tuple]
        )
    ],
)

NOT_JSON = af.Workflow("not-json", stages=[af.Stage("s", actions=[write_object])])

APPROVAL = af.Workflow("approval", stages=[af.Stage("s", actions=[step_one, approve, Record("after")])])

SLEEPY = af.Workflow(
    "sleepy", stages=[af.Stage("s", actions=[Record("before"), af.sleep(100), Record("woke")])]
)
STAGE_WITH_INITIAL = af.Workflow(
    "stage-with-initial", stages=[af.Stage("s", actions=[Record("a")], initial={"region": "eu"})]
)
SLEEPS_TWICE = af.Workflow(
    "sleeps-twice",
    stages=[af.Stage("s", actions=[af.sleep(100), Record("between"), af.sleep(50), Record("woke")])],
)
#: a 0.6 s sleep under a 0.2 s time limit per attempt and ten attempts: only a retry that keeps
#: the first attempt's wake time (by then at most 0.4 s away) ever wakes
SLEEP_OUTLASTS_ITS_LIMIT = af.Workflow(
    "sleep-outlasts-its-limit",
    stages=[
        af.Stage(
            "s",
            actions=[af.sleep(0.6), Record("woke")],
            timeout=0.2,
            retry=af.Retry(attempts=10, backoff=af.backoff.fixed(0)),
        )
    ],
)
SLEEPY_THEN_HANG = af.Workflow(
    "sleepy-then-hang", stages=[af.Stage("s", actions=[af.sleep(100), HangOnce("hang")])]
)

FLAKY = af.Workflow("flaky", stages=[af.Stage("s", actions=[flaky])])

ALWAYS_FAILS = af.Workflow("always-fails", stages=[af.Stage("s", actions=[always_fails])])

BLOCKING = af.Workflow("blocking", stages=[af.Stage("s", actions=[Blocker("block")])])
#: a blocking step, then another: a drain gives the run back between the two
BLOCK_THEN_RECORD = af.Workflow(
    "block-then-record", stages=[af.Stage("s", actions=[Blocker("block"), Record("after")])]
)

SUSPENDS_WHEN_RELEASED = af.Workflow(
    "suspends-when-released", stages=[af.Stage("s", actions=[SuspendWhenReleased("suspender")])]
)

QUICK = af.Workflow("quick", stages=[af.Stage("s", actions=[step_one])])

INSERTS_REGISTERED = af.Workflow(
    "inserts-registered", stages=[af.Stage("s", actions=[insert_registered, Record("after")])]
)


@af.action(name="insert-registered-stage")
async def insert_registered_stage(ctx: af.ActionContext) -> None:
    """Insert a stage holding an action registered only in the first engine's registry."""
    record("insert-registered-stage", ctx.idempotency_key)
    ctx.add_dynamic_stage(af.Stage("registered", actions=[ONLY_IN_FIRST_REGISTRY]))


INSERTS_REGISTERED_STAGE = af.Workflow(
    "inserts-registered-stage", stages=[af.Stage("s", actions=[insert_registered_stage, Record("after")])]
)


INSERTS_CLOSURE = af.Workflow("inserts-closure", stages=[af.Stage("s", actions=[insert_closure])])

INSERTS_LAMBDA_STAGE = af.Workflow(
    "inserts-lambda-stage", stages=[af.Stage("s", actions=[insert_stage_with_lambda_made])]
)

FAILING = af.Workflow("failing", stages=[af.Stage("s", actions=[boom])])
FAILS_WITH_A_COLON = af.Workflow("fails-with-a-colon", stages=[af.Stage("s", actions=[fail_with_a_colon])])

ANNOUNCING = af.Workflow("announcing", stages=[af.Stage("s", actions=[announce])])

INSERTS_GLOBAL = af.Workflow("inserts-global", stages=[af.Stage("s", actions=[insert_global])])

BASIC_NO_HANG = af.Workflow(
    "basic-no-hang", stages=[af.Stage("s1", actions=[step_one, Record("x"), Record("y")])]
)


FAILS_QUOTING_A_FILE = af.Workflow("fails-quoting", stages=[af.Stage("s", actions=[fail_quoting_a_file])])
SUSPENDS_QUOTING_A_FILE = af.Workflow(
    "suspends-quoting", stages=[af.Stage("s", actions=[suspend_quoting_a_file])]
)
STAGE_PER_FILE = af.Workflow("stage-per-file", stages=[af.Stage("s", actions=[insert_stage_per_file])])
INT_KEYS = af.Workflow("int-keys", stages=[af.Stage("s", actions=[write_int_keyed_dict])])
SUSPENDS_WITH_INT_KEYS = af.Workflow(
    "suspend-int-keys", stages=[af.Stage("s", actions=[suspend_with_int_keys])]
)
SENDS_INT_KEYS = af.Workflow("send-int-keys", stages=[af.Stage("s", actions=[send_int_keys])])
RAISES_SUSPEND_WITH_INT_KEYS = af.Workflow(
    "raise-suspend-int-keys", stages=[af.Stage("s", actions=[raise_suspend_with_int_keys])]
)
METADATA_ACROSS_A_RESTART = af.Workflow(
    "metadata-across-a-restart", stages=[af.Stage("s", actions=[put_tagged, HangOnce("hang"), read_tagged])]
)
MERGES_NOT_JSON = af.Workflow("merges-not-json", stages=[af.Stage("s", actions=[merge_not_json])])
RAISES_SUSPEND_WITH_INT_KEYS_TIMED = af.Workflow(
    "raise-suspend-int-keys-timed", stages=[af.Stage("s", actions=[raise_suspend_with_int_keys_timed])]
)
RAISES_SUSPEND_WITH_AN_OBJECT = af.Workflow(
    "raise-suspend-object", stages=[af.Stage("s", actions=[raise_suspend_with_an_object])]
)


# ---- one workflow changed between two engines (a deploy) ---------------------------------


def deploy(*actions: af.Action, workflow_id: str = "deploy") -> af.Workflow:
    """A one-stage workflow ``workflow_id`` of ``actions``: its versions are built with this."""
    return af.Workflow(workflow_id, stages=[af.Stage("s", actions=list(actions))])


DEPLOY_V1 = deploy(Record("first"), HangOnce("hang"), Record("last"))
#: version 1 with a step added in front
DEPLOY_V2 = deploy(Record("new"), Record("first"), HangOnce("hang"), Record("last"))
#: version 1 with other constructor arguments (configuration, say): the same actions in the same places
DEPLOY_NEW_ARGUMENTS = deploy(Record("first", value="new"), HangOnce("hang"), Record("last", value="new"))
#: version 1 with its first and last steps swapped: the same names in the same places, moved arguments
DEPLOY_SWAPPED = deploy(Record("last"), HangOnce("hang"), Record("first"))

#: two stages, whose first actions trade places
DEPLOY_TWO_STAGES_V1 = af.Workflow(
    "deploy-two-stages",
    stages=[af.Stage("s1", actions=[Record("a")]), af.Stage("s2", actions=[HangOnce("hang"), Record("b")])],
)
DEPLOY_TWO_STAGES_MOVED = af.Workflow(
    "deploy-two-stages",
    stages=[af.Stage("s1", actions=[Record("b")]), af.Stage("s2", actions=[HangOnce("hang"), Record("a")])],
)


@af.action
async def alpha(ctx: af.ActionContext) -> None:
    """Record "alpha"."""
    record("alpha", ctx.idempotency_key)


@af.action
async def beta(ctx: af.ActionContext) -> None:
    """Record "beta"."""
    record("beta", ctx.idempotency_key)


DEPLOY_FUNCTIONS_V1 = deploy(alpha, HangOnce("hang"), beta, workflow_id="deploy-functions")
#: version 1 with its first and last actions swapped: as many actions, other names in those places
DEPLOY_FUNCTIONS_SWAPPED = deploy(beta, HangOnce("hang"), alpha, workflow_id="deploy-functions")

DEPLOY_APPROVAL_V1 = deploy(step_one, approve, Record("after"), workflow_id="deploy-approval")
DEPLOY_APPROVAL_V2 = deploy(Record("new"), step_one, approve, Record("after"), workflow_id="deploy-approval")


async def _first_engines_step(ctx: af.ActionContext) -> None:
    record("first-engines-step", ctx.idempotency_key)


#: Referenceable only by the name it is registered under in a per-engine registry.
FIRST_ENGINES_STEP = af.action(name="first-engines-step")(_first_engines_step)

DEPLOY_REGISTERED_V1 = deploy(
    FIRST_ENGINES_STEP, HangOnce("hang"), Record("last"), workflow_id="deploy-registered"
)
#: another plan: two actions in place of the first
DEPLOY_REGISTERED_V2 = deploy(
    Record("new"), Record("extra"), HangOnce("hang"), Record("last"), workflow_id="deploy-registered"
)
#: the same plan, its first action replaced by one of a name new to the workflow
DEPLOY_REGISTERED_REPLACED = deploy(alpha, HangOnce("hang"), Record("last"), workflow_id="deploy-registered")
#: as many actions, but one of them (alpha) moved: not a replacement in place
DEPLOY_REGISTERED_SHIFTED = af.Workflow(
    "deploy-registered-shifted", stages=[af.Stage("s", actions=[alpha, HangOnce("hang"), beta])]
)
DEPLOY_REGISTERED_SHIFTED_V1 = af.Workflow(
    "deploy-registered-shifted", stages=[af.Stage("s", actions=[FIRST_ENGINES_STEP, alpha, HangOnce("hang")])]
)


@af.action
async def disable_first_engines_step(ctx: af.ActionContext) -> None:
    """Disable the action "first-engines-step" of this stage (a plan change that names it)."""
    ctx.plan.disable_action("first-engines-step")


DEPLOY_DISABLES_V1 = deploy(
    disable_first_engines_step, FIRST_ENGINES_STEP, HangOnce("hang"), workflow_id="deploy-disables"
)
#: the disabled action replaced, in its place, by one of a new name
DEPLOY_DISABLES_REPLACED = deploy(
    disable_first_engines_step, beta, HangOnce("hang"), workflow_id="deploy-disables"
)

#: Unchanged between engines, but referenced by another name in each engine's registry.
RENAMED_REFERENCE = deploy(GLOBAL_ONLY, HangOnce("hang"), Record("last"), workflow_id="renamed-reference")
RENAMED_REFERENCE_V2 = deploy(
    Record("new"), GLOBAL_ONLY, HangOnce("hang"), Record("last"), workflow_id="renamed-reference"
)

DEPLOY_SLEEPY_V1 = deploy(Record("before"), af.sleep(100), Record("woke"), workflow_id="deploy-sleepy")
DEPLOY_SLEEPY_V2 = deploy(
    Record("new"), Record("before"), af.sleep(100), Record("woke"), workflow_id="deploy-sleepy"
)


@af.action
async def disable_optional(ctx: af.ActionContext) -> None:
    """Disable the actions tagged "optional" (a plan change that chooses actions by tag)."""
    ctx.plan.disable_by_tag("optional")


async def _optional_step(ctx: af.ActionContext) -> None:
    record("optional-step", ctx.idempotency_key)


#: Tagged "optional"; referenceable only by the name it is registered under in a per-engine registry.
OPTIONAL_STEP = af.action(name="optional-step", tags={"optional"})(_optional_step)

DEPLOY_BY_TAG_V1 = deploy(disable_optional, OPTIONAL_STEP, HangOnce("hang"), workflow_id="deploy-by-tag")
#: the tagged action replaced, in its place, by an untagged one of a new name
DEPLOY_BY_TAG_REPLACED = deploy(disable_optional, beta, HangOnce("hang"), workflow_id="deploy-by-tag")

#: version 1, and a version with beta in two places: in the first, beta may have moved there
DEPLOY_DOUBLED_V1 = deploy(FIRST_ENGINES_STEP, HangOnce("hang"), beta, workflow_id="deploy-doubled")
DEPLOY_DOUBLED = deploy(beta, HangOnce("hang"), beta, workflow_id="deploy-doubled")


class Relabelled(Record):
    """A Record under another name (what a registry may hand out under a name a definition uses)."""

    name = "relabelled"


DEPLOY_GUARD_V1 = deploy(Record("x"), HangOnce("hang"), workflow_id="deploy-guard")
DEPLOY_GUARD_V2 = deploy(Record("new"), Record("x"), HangOnce("hang"), workflow_id="deploy-guard")
