"""The Backend ABC's contract, the same for every backend: claims and leases, checkpoints, records, paging.

Values in the store and plan changes are JSON text, as the engine writes
them to every backend.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import asyncflow as af
from asyncflow.backends import Backend, Checkpoint, RunInfo, StoreEntry, WorkflowVersion
from backends.storages import Storage

T0 = 1_800_000_000.0
LEASE = 30.0


@pytest.fixture
async def db(backend: Storage) -> AsyncIterator[Backend]:
    """An open backend on the test's storage."""
    async with backend.new() as opened:
        yield opened


def pending(
    run_id: str,
    *,
    workflow_id: str = "w",
    at: float = T0,
    status: af.RunStatus = af.RunStatus.PENDING,
    **fields: object,
) -> RunInfo:
    """A new run nobody holds (``status`` pending unless given), created at ``at``."""
    return RunInfo(
        run_id=run_id,
        workflow_id=workflow_id,
        status=status,
        created_at=at,
        updated_at=at,
        **fields,  # type: ignore[arg-type]
    )


async def held(db: Backend, run_id: str, owner: str = "a", *, at: float = T0) -> RunInfo:
    """Create ``run_id`` and claim it for ``owner`` at ``at``."""
    await db.create_run(pending(run_id, at=at), [])
    claimed = await db.claim(owner, now=at, lease_until=at + LEASE, limit=1, run_id=run_id)
    assert [info.run_id for info in claimed] == [run_id]
    return claimed[0]


def step(run_id: str, owner: str, seq: int, key: str, *puts: StoreEntry, **fields: object) -> Checkpoint:
    """A checkpoint of a completed action."""
    return Checkpoint(run_id, owner, key, "action", puts=puts, seq=seq, **fields)  # type: ignore[arg-type]


def decoded(store: Sequence[StoreEntry]) -> dict[str, tuple[Any, ...]]:
    """A loaded store as key -> (value, expires, tags, properties), JSON decoded (spacing may differ)."""
    return {
        e.key: (
            json.loads(e.value),
            e.expires,
            tuple(e.tags),
            json.loads(e.properties) if e.properties else None,
        )
        for e in store
    }


# ---- creating runs -----------------------------------------------------------------


async def test_create_run_is_read_back(db: Backend) -> None:
    """A created run is read back with the fields it was created with."""
    info = pending("r1", idempotency_key="k1", workflow_version="v.1")
    created, new = await db.create_run(info, [])
    assert new
    assert created == info
    assert await db.get_run("r1") == info


async def test_create_run_with_a_taken_idempotency_key_returns_the_first_run(db: Backend) -> None:
    """A second run with a taken idempotency key is not created: the first run comes back."""
    await db.create_run(pending("r1", idempotency_key="k"), [])
    existing, new = await db.create_run(pending("r2", idempotency_key="k"), [])
    assert not new
    assert existing.run_id == "r1"
    assert await db.get_run("r2") is None


async def test_create_run_with_a_taken_run_id_is_refused(db: Backend) -> None:
    """A run id that a run has already is refused with DuplicateRunId, and the run is unchanged."""
    await db.create_run(pending("r1", workflow_id="first"), [])
    with pytest.raises(af.DuplicateRunId, match="r1"):
        await db.create_run(pending("r1", workflow_id="second"), [])
    info = await db.get_run("r1")
    assert info is not None
    assert info.workflow_id == "first"


async def test_the_initial_store_is_loaded_with_the_run(db: Backend) -> None:
    """The store a run is created with comes back from load, in order, with its metadata."""
    store = [StoreEntry("a", "1"), StoreEntry("b", '"x"', 5.0, ("t",), '{"p":1}')]
    await db.create_run(pending("r1"), store)
    saved = await db.load("r1")
    assert saved is not None
    assert list(decoded(saved.store).items()) == [
        ("a", (1, None, (), None)),
        ("b", ("x", 5.0, ("t",), {"p": 1})),
    ]
    assert saved.checkpoints == []


async def test_unknown_runs_are_none(db: Backend) -> None:
    """get_run and load of a run that does not exist give None."""
    assert await db.get_run("nope") is None
    assert await db.load("nope") is None


# ---- claims and leases -------------------------------------------------------------


async def test_claim_takes_a_pending_run(db: Backend) -> None:
    """A claimed pending run becomes RUNNING, owned by the claimer until its lease ends."""
    await db.create_run(pending("r1"), [])
    (info,) = await db.claim("a", now=T0 + 1, lease_until=T0 + 31, limit=10)
    assert (info.run_id, info.status, info.owner, info.lease_until) == (
        "r1",
        af.RunStatus.RUNNING,
        "a",
        T0 + 31,
    )
    stored = await db.get_run("r1")
    assert stored is not None
    assert (stored.owner, stored.status) == ("a", af.RunStatus.RUNNING)


async def test_a_held_run_is_not_claimed_by_another(db: Backend) -> None:
    """A run whose lease still holds is not taken by another claimer."""
    await held(db, "r1", "a")
    assert await db.claim("b", now=T0 + LEASE - 1, lease_until=T0 + 100, limit=10) == []
    info = await db.get_run("r1")
    assert info is not None
    assert info.owner == "a"


async def test_a_run_whose_lease_ran_out_is_claimed_by_another(db: Backend) -> None:
    """Once its lease has run out, another claimer takes the run."""
    await held(db, "r1", "a")
    (info,) = await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=10)
    assert (info.run_id, info.owner, info.status) == ("r1", "b", af.RunStatus.RUNNING)


async def test_claim_takes_at_most_limit_oldest_first(db: Backend) -> None:
    """Claim takes no more than ``limit`` runs, the oldest first."""
    for i, at in enumerate([T0 + 3, T0 + 1, T0 + 2, T0 + 4]):
        await db.create_run(pending(f"r{i}", at=at), [])
    claimed = await db.claim("a", now=T0 + 10, lease_until=T0 + 40, limit=2)
    assert [info.run_id for info in claimed] == ["r1", "r2"]


async def test_claim_of_one_run_id_takes_only_that_run(db: Backend) -> None:
    """Claim with a run_id considers that run alone."""
    await db.create_run(pending("r1"), [])
    await db.create_run(pending("r2"), [])
    claimed = await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=10, run_id="r2")
    assert [info.run_id for info in claimed] == ["r2"]
    assert await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=10, run_id="missing") == []


async def test_claim_leaves_runs_of_skipped_versions(db: Backend) -> None:
    """Runs whose workflow version is skipped are not taken; runs of other versions (or none) are."""
    await db.create_run(pending("old", workflow_version="s1.d1"), [])
    await db.create_run(pending("new", workflow_version="s2.d2"), [])
    await db.create_run(pending("none"), [])
    claimed = await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=10, skip_versions=["s1.d1"])
    assert sorted(info.run_id for info in claimed) == ["new", "none"]


async def test_claim_keeps_a_sleeping_run_sleeping(db: Backend) -> None:
    """A sleeping run taken over stays SLEEPING (it wakes when its time comes)."""
    await held(db, "r1", "a")
    await db.checkpoint(
        Checkpoint("r1", "a", "s/sleep", "sleep", at=T0 + 100, seq=1, status=af.RunStatus.SLEEPING)
    )
    (info,) = await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=10)
    assert (info.status, info.wake_at) == (af.RunStatus.SLEEPING, T0 + 100)


@pytest.mark.parametrize(
    "status", [af.RunStatus.SUSPENDED, af.RunStatus.COMPLETED, af.RunStatus.FAILED, af.RunStatus.CANCELLED]
)
async def test_suspended_and_ended_runs_are_not_claimed(db: Backend, status: af.RunStatus) -> None:
    """Suspended runs and runs that ended are never claimed."""
    await db.create_run(pending("r1", status=status), [])
    assert await db.claim("a", now=T0 + 1000, lease_until=T0 + 2000, limit=10) == []


async def test_heartbeat_extends_the_lease_of_runs_still_held(db: Backend) -> None:
    """A heartbeat moves the lease on, so the run is not claimed when the first lease would have ended."""
    await held(db, "r1", "a")
    assert await db.heartbeat("a", ["r1"], now=T0 + 20, lease_until=T0 + 50) == set()
    assert await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=10) == []


async def test_heartbeat_reports_runs_no_longer_held(db: Backend) -> None:
    """A heartbeat names the runs its owner lost (taken over, or gone) and leaves them alone."""
    await held(db, "r1", "a")
    await held(db, "r2", "a")
    await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=1, run_id="r2")
    assert await db.heartbeat("a", ["r1", "r2", "gone"], now=T0 + 32, lease_until=T0 + 62) == {"r2", "gone"}
    info = await db.get_run("r2")
    assert info is not None
    assert (info.owner, info.lease_until) == ("b", T0 + 100)


# ---- checkpoints -------------------------------------------------------------------


async def test_checkpoints_are_loaded_in_order_with_their_store_changes(db: Backend) -> None:
    """Checkpoints come back from load in order, and the store has their changes applied."""
    await db.create_run(pending("r1"), [StoreEntry("a", "1"), StoreEntry("gone", "0")])
    await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=1)
    await db.checkpoint(step("r1", "a", 1, "s/0", StoreEntry("a", "2"), ops='[["x"]]'))
    await db.checkpoint(Checkpoint("r1", "a", "s/1", "attempt", attempts=1, at=T0 + 5, seq=2))
    await db.checkpoint(step("r1", "a", 3, "s/1", StoreEntry("b", '"y"'), deletes=("gone",)))
    saved = await db.load("r1")
    assert saved is not None
    assert [(c.seq, c.step_key, c.kind, c.ops, c.attempts, c.at) for c in saved.checkpoints] == [
        (1, "s/0", "action", '[["x"]]', 0, None),
        (2, "s/1", "attempt", None, 1, T0 + 5),
        (3, "s/1", "action", None, 0, None),
    ]
    assert decoded(saved.store) == {"a": (2, None, (), None), "b": ("y", None, (), None)}


async def test_loaded_store_applies_each_checkpoint_in_turn_keeping_write_order(db: Backend) -> None:
    """A key written again keeps its place, one deleted and written again moves last; the last write wins."""
    await db.create_run(pending("r1"), [StoreEntry("a", "1"), StoreEntry("b", "1"), StoreEntry("c", "1")])
    await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=1)
    await db.checkpoint(step("r1", "a", 1, "s/0", StoreEntry("a", "2"), deletes=("b",)))
    await db.checkpoint(
        step("r1", "a", 2, "s/1", StoreEntry("b", "3"), StoreEntry("c", "4", 9.5, ("t",), '{"p":1}'))
    )
    await db.checkpoint(Checkpoint("r1", "a", "s/2", "attempt", attempts=1, at=T0 + 5, seq=3))
    await db.checkpoint(step("r1", "a", 4, "s/2", StoreEntry("c", '{"v":[5]}')))
    saved = await db.load("r1")
    assert saved is not None
    assert list(decoded(saved.store).items()) == [
        ("a", (2, None, (), None)),
        ("c", ({"v": [5]}, None, (), None)),
        ("b", (3, None, (), None)),
    ]


async def test_a_checkpoint_of_an_engine_that_lost_the_lease_is_refused(db: Backend) -> None:
    """A checkpoint from the former owner of a run taken over raises LeaseLost and writes nothing."""
    await held(db, "r1", "a")
    await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=1)
    with pytest.raises(af.LeaseLost, match="r1"):
        await db.checkpoint(step("r1", "a", 1, "s/0", StoreEntry("k", "1")))
    saved = await db.load("r1")
    assert saved is not None
    assert saved.checkpoints == []
    assert saved.store == []


async def test_a_checkpoint_of_a_run_cancelled_elsewhere_is_refused(db: Backend) -> None:
    """A checkpoint of a run that was cancelled (and so released) meanwhile raises LeaseLost."""
    await held(db, "r1", "a")
    assert await db.update_run("r1", now=T0 + 1, status=af.RunStatus.CANCELLED, owner=None, lease_until=None)
    with pytest.raises(af.LeaseLost):
        await db.checkpoint(step("r1", "a", 1, "s/0"))


async def test_concurrent_checkpoints_of_owned_and_lost_runs(db: Backend) -> None:
    """Of checkpoints written together, those of runs still owned go in; the lost run's alone is refused."""
    import anyio

    await held(db, "mine", "a")
    await held(db, "lost", "a")
    await db.claim("b", now=T0 + LEASE + 1, lease_until=T0 + 100, limit=1, run_id="lost")
    # ("mine" is still owned by a: no one claimed it, whatever its lease says.)
    outcomes: dict[str, BaseException | None] = {}

    async def write(run_id: str) -> None:
        try:
            await db.checkpoint(step(run_id, "a", 1, "s/0", StoreEntry("k", "1")))
        except af.LeaseLost as exc:
            outcomes[run_id] = exc
        else:
            outcomes[run_id] = None

    async with anyio.create_task_group() as group:
        group.start_soon(write, "mine")
        group.start_soon(write, "lost")
    assert outcomes["mine"] is None
    assert isinstance(outcomes["lost"], af.LeaseLost)
    mine, lost = await db.load("mine"), await db.load("lost")
    assert mine is not None
    assert len(mine.checkpoints) == 1
    assert lost is not None
    assert lost.checkpoints == []


async def test_a_sleep_checkpoint_records_when_the_run_wakes(db: Backend) -> None:
    """A sleep checkpoint with status SLEEPING sets the run's status and wake time."""
    await held(db, "r1", "a")
    await db.checkpoint(
        Checkpoint("r1", "a", "s/1", "sleep", at=T0 + 60, seq=1, status=af.RunStatus.SLEEPING)
    )
    info = await db.get_run("r1")
    assert info is not None
    assert (info.status, info.wake_at) == (af.RunStatus.SLEEPING, T0 + 60)
    saved = await db.load("r1")
    assert saved is not None
    assert [(c.kind, c.at) for c in saved.checkpoints] == [("sleep", T0 + 60)]


# ---- updating runs -----------------------------------------------------------------


async def test_update_run_sets_fields_and_the_update_time(db: Backend) -> None:
    """update_run sets the fields given and updated_at, and says it did."""
    await db.create_run(pending("r1"), [])
    assert await db.update_run(
        "r1",
        now=T0 + 7,
        status=af.RunStatus.SUSPENDED,
        suspend_reason="approve",
        suspend_data={"amount": 5, "who": ["x"]},
        suspended_step="s/1",
    )
    info = await db.get_run("r1")
    assert info is not None
    assert (info.status, info.updated_at, info.suspend_reason, info.suspend_data, info.suspended_step) == (
        af.RunStatus.SUSPENDED,
        T0 + 7,
        "approve",
        {"amount": 5, "who": ["x"]},
        "s/1",
    )


async def test_update_run_for_another_holder_changes_nothing(db: Backend) -> None:
    """update_run with a holder that does not own the run returns False and changes nothing."""
    await held(db, "r1", "a")
    assert not await db.update_run("r1", holder="b", now=T0 + 1, status=af.RunStatus.COMPLETED)
    info = await db.get_run("r1")
    assert info is not None
    assert info.status is af.RunStatus.RUNNING
    assert info.updated_at == T0


async def test_update_run_in_an_unexpected_status_changes_nothing(db: Backend) -> None:
    """update_run expecting other statuses returns False and changes nothing."""
    await db.create_run(pending("r1"), [])
    expect = frozenset({af.RunStatus.SUSPENDED})
    assert not await db.update_run(
        "r1", expect=expect, now=T0 + 1, status=af.RunStatus.PENDING, resume_data=1
    )
    assert not await db.update_run("missing", now=T0 + 1, status=af.RunStatus.PENDING)
    info = await db.get_run("r1")
    assert info is not None
    assert info.resume_data is None


async def test_update_run_refuses_fields_it_may_not_set(db: Backend) -> None:
    """update_run of a run's identity or creation time is a TypeError."""
    await db.create_run(pending("r1"), [])
    with pytest.raises(TypeError, match="created_at"):
        await db.update_run("r1", now=T0, created_at=0.0)


async def test_suspend_and_resume_records_round_trip(db: Backend) -> None:
    """What a suspension and a resume record (reason, data, step, resume data) is read back as JSON values."""
    await held(db, "r1", "a")
    assert await db.update_run(
        "r1",
        holder="a",
        now=T0 + 1,
        status=af.RunStatus.SUSPENDED,
        owner=None,
        lease_until=None,
        suspend_reason="needs approval",
        suspend_data={"amount": 5},
        suspended_step="s/approve",
    )
    assert await db.claim("b", now=T0 + 1000, lease_until=T0 + 2000, limit=10) == []
    resumed = await db.update_run(
        "r1",
        expect=frozenset({af.RunStatus.SUSPENDED}),
        now=T0 + 2,
        status=af.RunStatus.PENDING,
        resume_data={"ok": True, "by": "ann"},
    )
    assert resumed
    (info,) = await db.claim("b", now=T0 + 3, lease_until=T0 + 33, limit=10)
    assert (info.suspend_reason, info.suspend_data, info.suspended_step, info.resume_data) == (
        "needs approval",
        {"amount": 5},
        "s/approve",
        {"ok": True, "by": "ann"},
    )


async def suspended(db: Backend, run_id: str) -> None:
    """Create ``run_id``, claim it for "a" and suspend it (given back, as the engine does)."""
    await held(db, run_id, "a")
    assert await db.update_run(
        run_id, holder="a", now=T0 + 1, status=af.RunStatus.SUSPENDED, owner=None, lease_until=None
    )


async def test_a_resume_key_is_written_with_the_status_change_and_read_back_everywhere(db: Backend) -> None:
    """resume_key set with a resume's status change is read back by get_run, list_runs, claim and load."""
    await suspended(db, "r1")
    before = await db.get_run("r1")
    assert before is not None
    assert before.resume_key is None
    assert await db.update_run(
        "r1",
        expect=frozenset({af.RunStatus.SUSPENDED}),
        now=T0 + 2,
        status=af.RunStatus.PENDING,
        resume_data=1,
        resume_key="approval-7",
    )
    listed = (await db.list_runs(status=None, workflow_id=None, limit=10, cursor=None)).runs
    (claimed,) = await db.claim("b", now=T0 + 3, lease_until=T0 + 33, limit=10)
    saved = await db.load("r1")
    got = await db.get_run("r1")
    assert saved is not None
    assert got is not None
    keys = [got.resume_key, listed[0].resume_key, claimed.resume_key, saved.info.resume_key]
    assert keys == ["approval-7"] * 4


async def test_a_resume_that_finds_the_run_not_suspended_writes_no_key(db: Backend) -> None:
    """update_run expecting SUSPENDED on a run resumed already writes neither its status nor its key."""
    await suspended(db, "r1")
    expect = frozenset({af.RunStatus.SUSPENDED})
    assert await db.update_run("r1", expect=expect, now=T0 + 2, status=af.RunStatus.PENDING, resume_key="k1")
    assert not await db.update_run(
        "r1", expect=expect, now=T0 + 3, status=af.RunStatus.PENDING, resume_key="k2"
    )
    info = await db.get_run("r1")
    assert info is not None
    assert (info.resume_key, info.updated_at) == ("k1", T0 + 2)


# ---- listing -----------------------------------------------------------------------


async def make_runs(db: Backend) -> None:
    """Six runs: workflows a and b, statuses pending and completed, created one second apart."""
    for i in range(6):
        status = af.RunStatus.COMPLETED if i % 2 else af.RunStatus.PENDING
        await db.create_run(pending(f"r{i}", workflow_id="ab"[i % 3 == 0], at=T0 + i, status=status), [])


async def pages(db: Backend, limit: int, **filters: object) -> list[list[str]]:
    """Every page of list_runs with ``filters``, as run ids."""
    result: list[list[str]] = []
    cursor = None
    while True:
        page = await db.list_runs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        result.append([info.run_id for info in page.runs])
        cursor = page.next_cursor
        if cursor is None:
            return result


async def test_list_runs_pages_newest_first(db: Backend) -> None:
    """list_runs gives every run once, newest first, page by page; the last page has no cursor."""
    await make_runs(db)
    assert await pages(db, 4, status=None, workflow_id=None) == [["r5", "r4", "r3", "r2"], ["r1", "r0"]]
    assert await pages(db, 3, status=None, workflow_id=None) == [["r5", "r4", "r3"], ["r2", "r1", "r0"]]


async def test_list_runs_filters_by_status_and_workflow(db: Backend) -> None:
    """list_runs filters by status, by workflow, and by both, paging through the matches only."""
    await make_runs(db)
    done = af.RunStatus.COMPLETED
    assert await pages(db, 2, status=done, workflow_id=None) == [["r5", "r3"], ["r1"]]
    assert await pages(db, 2, status=None, workflow_id="b") == [["r3", "r0"]]
    assert await pages(db, 2, status=af.RunStatus.PENDING, workflow_id="a") == [["r4", "r2"]]
    assert await pages(db, 2, status=done, workflow_id="nothing") == [[]]


async def test_list_runs_orders_runs_created_at_the_same_time_by_id(db: Backend) -> None:
    """Runs created at the same instant are listed by id, descending, and paging splits them exactly."""
    for run_id in ["c", "a", "b"]:
        await db.create_run(pending(run_id), [])
    assert await pages(db, 2, status=None, workflow_id=None) == [["c", "b"], ["a"]]


async def test_list_runs_refuses_a_malformed_cursor(db: Backend) -> None:
    """A cursor that list_runs never gave is a ValueError naming it."""
    with pytest.raises(ValueError, match="cursor"):
        await db.list_runs(status=None, workflow_id=None, limit=10, cursor="not-a-cursor")


# ---- event logs --------------------------------------------------------------------


async def test_events_of_several_runs_are_numbered_on_from_each_runs_last(db: Backend) -> None:
    """One call adds events to several runs' logs, each numbered on from that run's last event."""
    await db.create_run(pending("r1"), [])
    await db.create_run(pending("r2"), [])
    assert await db.append_events("r1", [{"kind": "a"}]) in (1, None)
    numbered = await db.append_events_of_runs({"r1": [{"kind": "b"}, {"kind": "c"}], "r2": [{"kind": "x"}]})
    assert numbered in ({"r1": 3, "r2": 1}, None)
    assert await db.append_events_of_runs({"r1": [{"kind": "d", "at": 0.1}]}) in ({"r1": 4}, None)
    assert await db.read_events("r1") == [
        (1, {"kind": "a"}),
        (2, {"kind": "b"}),
        (3, {"kind": "c"}),
        (4, {"kind": "d", "at": 0.1}),
    ]
    assert await db.read_events("r2") == [(1, {"kind": "x"})]
    assert await db.read_events("r1", after=2, limit=1) == [(3, {"kind": "c"})]


async def test_events_of_a_run_that_is_gone_are_dropped_and_the_others_kept(db: Backend) -> None:
    """Events for a run that does not exist are dropped; the other runs' events of the call are kept."""
    await db.create_run(pending("r1"), [])
    numbered = await db.append_events_of_runs({"gone": [{"kind": "a"}], "r1": [{"kind": "b"}]})
    assert numbered in ({"r1": 1}, None)
    assert await db.read_events("r1") == [(1, {"kind": "b"})]
    assert await db.read_events("gone") == []
    assert await db.append_events_of_runs({"gone": [{"kind": "a"}]}) in ({}, None)


# ---- deleting ----------------------------------------------------------------------


async def test_delete_run_removes_the_run_and_its_checkpoints(db: Backend) -> None:
    """A deleted run is gone with its store and checkpoints; deleting it again says it did not exist."""
    await db.create_run(pending("r1", idempotency_key="k"), [StoreEntry("a", "1")])
    await db.claim("a", now=T0, lease_until=T0 + LEASE, limit=1)
    await db.checkpoint(step("r1", "a", 1, "s/0", StoreEntry("b", "2")))
    assert await db.delete_run("r1")
    assert await db.get_run("r1") is None
    assert await db.load("r1") is None
    assert not await db.delete_run("r1")
    # The key is free again: a new run with it is created, with nothing of the old one.
    _, new = await db.create_run(pending("r1", idempotency_key="k"), [])
    saved = await db.load("r1")
    assert new
    assert saved is not None
    assert saved.checkpoints == []
    assert saved.store == []


async def test_purge_deletes_only_runs_that_ended_before_the_time(db: Backend) -> None:
    """Purge deletes finished runs last updated before the time and leaves the others; it counts them."""
    for run_id, status, at in [
        ("old-done", af.RunStatus.COMPLETED, T0),
        ("old-failed", af.RunStatus.FAILED, T0),
        ("old-cancelled", af.RunStatus.CANCELLED, T0),
        ("old-suspended", af.RunStatus.SUSPENDED, T0),
        ("old-pending", af.RunStatus.PENDING, T0),
        ("new-done", af.RunStatus.COMPLETED, T0 + 100),
    ]:
        await db.create_run(pending(run_id, at=at, status=status), [])
    assert await db.purge(finished_before=T0 + 50) == 3
    left = await db.list_runs(status=None, workflow_id=None, limit=10, cursor=None)
    assert sorted(info.run_id for info in left.runs) == ["new-done", "old-pending", "old-suspended"]
    assert await db.purge(finished_before=T0 + 50) == 0


# ---- workflow versions -------------------------------------------------------------


def version(shape: str, definition: str) -> WorkflowVersion:
    """A version of workflow w whose hashes are ``shape`` and ``definition``."""
    return WorkflowVersion(f"{shape}.{definition}", "w", [["s", [definition]]], {"id": "w", "d": definition})


async def test_versions_are_kept_once_and_found_by_shape(db: Backend) -> None:
    """Versions come back by the key of their shape, the one asked for first; saving twice changes nothing."""
    first, second, other = version("s1", "d1"), version("s1", "d2"), version("s2", "d3")
    for kept in [first, second, other]:
        await db.save_version(kept)
    await db.save_version(WorkflowVersion(first.version, "w", [], {"changed": True}))
    assert await db.load_versions("s1.d2") == [second, first]
    assert await db.load_versions("s1.d1") == [first, second]
    assert await db.load_versions("s2.d9") == [other]
    assert await db.load_versions("s3.d1") == []


async def test_versions_are_shared_by_backends_on_one_database(backend: Storage) -> None:
    """A version one backend saved is found by another on the same database."""
    async with backend.new() as one:
        await one.save_version(version("s1", "d1"))
    async with backend.new() as two:
        assert await two.load_versions("s1.d1") == [version("s1", "d1")]


# ---- the database ------------------------------------------------------------------


async def test_runs_outlive_the_backend_that_wrote_them(backend: Storage) -> None:
    """A run written by one backend is read, whole, by another opened later on the same database."""
    async with backend.new() as one:
        await one.create_run(pending("r1"), [StoreEntry("a", "1")])
        await one.claim("a", now=T0, lease_until=T0 + LEASE, limit=1)
        await one.checkpoint(step("r1", "a", 1, "s/0", StoreEntry("b", "2")))
    async with backend.new() as two:
        saved = await two.load("r1")
    assert saved is not None
    assert saved.info.owner == "a"
    assert [c.step_key for c in saved.checkpoints] == ["s/0"]
    assert decoded(saved.store) == {"a": (1, None, (), None), "b": (2, None, (), None)}


async def test_a_database_of_a_newer_asyncflow_is_refused(backend: Storage) -> None:
    """A database whose schema is newer than this asyncflow's is refused at open with a clear error."""
    if backend.set_schema_version is None:
        pytest.skip(f"the {backend.name} backend has no schema")
    async with backend.new():
        pass  # (created)
    await backend.set_schema_version(10_000)
    with pytest.raises(af.BackendError, match=r"newer asyncflow.*10000"):
        async with backend.new():
            pass
