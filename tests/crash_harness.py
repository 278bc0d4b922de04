"""Kill real engine processes with SIGKILL, restart them, and check what recovery left behind.

A *campaign* lands a number of kills on child processes running
:mod:`crash_child`. It works in *rounds*: a round is a fresh SQLite file and
ledger, and a sequence of *cycles*, each one child process. Every cycle but
the last is killed, either by the engine itself at a persistence boundary
(``ASYNCFLOW_CRASH_AT=point:N``, see ``asyncflow/_core/faults.py``) or by the
harness at a random moment: mostly within 60 ms of the cycle's first action,
where it often lands inside an action, and one time in four anywhere from
start-up on (opening the file, taking runs over). The last cycle of a round
runs undisturbed and must exit 0. A round also ends early when a child
finishes before its kill lands. Then the round is checked:

- every run exists once per idempotency key and has completed;
- ``PRAGMA integrity_check`` says ``ok``;
- each step has exactly one completion checkpoint, and ran to its end in the
  ledger at least once; the disabled step never ran;
- no step ran twice in one process; the final store holds the mark of one
  execution of each step (the committed one), and it is the step's last:
  nothing ran again after its completion was committed;
- every other execution was in flight in a process that was killed, and no
  kill caught more executions of one run than its stage runs at once (one,
  except in the concurrent stage). Runs execute concurrently, so one kill may
  catch one action of each run: the bound is per run, not per kill;
- the retried step always succeeded on attempt 2 (its failed first attempt is
  remembered across restarts, or repeated when the kill came before it was);
- a process that exited 0 left no action begun and unfinished.

Used by ``tests/test_crash.py`` (30 kills) and ``benchmarks/stress.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import crash_child  # the sibling script: its workflow and what its runs must execute

import asyncflow as af
from asyncflow.backends import SQLiteBackend

CHILD = Path(__file__).with_name("crash_child.py")

#: the kinds of kill: the crash points of ``asyncflow._core.faults``, and a kill at a random moment
KINDS = ("before_start", "before_commit", "after_commit", "random")

#: runs per round
RUNS = 10
#: the child's engine lease and poll interval: a restarted child takes over after about a lease
LEASE = 0.5
POLL_INTERVAL = 0.2
#: seconds a random kill may wait after the cycle's first action
RANDOM_WINDOW = 0.06
#: seconds an early random kill may wait after the spawn (start-up, opening the file, take-over)
EARLY_WINDOW = 1.0

_STAGE_CONCURRENCY = {stage.id: stage.concurrency for stage in crash_child.WORKFLOW.stages}
_RETRIED_STEP = "charge/0"
_EXPECTED_ONCE = Counter(list(crash_child.EXPECTED_STEPS))


@attrs.frozen
class Kill:
    """How one cycle is to die: at the ``count``-th pass of a crash point, or ``delay`` s in.

    A random kill counts its delay from the cycle's first action, or from
    its spawn when ``early``.
    """

    kind: str
    count: int = 0
    delay: float = 0.0
    early: bool = False

    def __str__(self) -> str:
        if self.kind != "random":
            return f"{self.kind}:{self.count}"
        return f"random:{self.delay * 1000:.0f}ms after {'spawn' if self.early else 'first action'}"


@attrs.frozen
class Cycle:
    """One child process of a round and how it ended."""

    number: int
    kill: Kill | None
    returncode: int
    timed_out: bool
    #: seconds from spawn to the first ledger line it wrote (None: it wrote none)
    first_action: float | None
    duration: float

    @property
    def killed(self) -> bool:
        """Whether SIGKILL ended it."""
        return self.returncode == -signal.SIGKILL and not self.timed_out


@attrs.frozen
class Execution:
    """One ledger line: an action execution beginning, ending or failing."""

    phase: str
    cycle: int
    run_id: str
    stage: str
    action: str
    attempt: int
    step: str  # the step key, ``stage/position``


@attrs.define
class Figures:
    """What a campaign did and found."""

    seed: int
    kills: Counter[str] = attrs.field(factory=Counter)
    processes: int = 0
    restarts: int = 0
    rounds: int = 0
    runs: int = 0
    completed: int = 0
    actions: int = 0
    re_executions: int = 0
    max_executions: int = 0
    mid_action_kills: int = 0
    recovery: list[float] = attrs.field(factory=list)
    elapsed: float = 0.0
    violations: list[str] = attrs.field(factory=list)

    @property
    def total_kills(self) -> int:
        """Kills that landed, all kinds."""
        return sum(self.kills.values())

    def report(self) -> str:
        """The figures as lines of text, ending with the verdict."""
        kinds = ", ".join(f"{kind} {self.kills[kind]}" for kind in KINDS if self.kills[kind])
        recovery = (
            f"mean {statistics.fmean(self.recovery):.3f} s, median {statistics.median(self.recovery):.3f} s, "
            f"max {max(self.recovery):.3f} s over {len(self.recovery)} restarts"
            if self.recovery
            else "n/a"
        )
        lines = [
            f"seed                   {self.seed}",
            f"kills                  {self.total_kills} ({kinds})",
            f"  landing mid-action   {self.mid_action_kills}",
            f"restarts               {self.restarts} ({self.processes} processes, {self.rounds} rounds)",
            f"runs                   {self.runs} ({self.completed} completed)",
            f"actions executed       {self.actions}",
            f"re-executions          {self.re_executions} (most of one step: {self.max_executions})",
            f"restart to 1st action  {recovery} (lease {LEASE} s)",
            f"wall time              {self.elapsed:.1f} s",
        ]
        if self.violations:
            lines.append(f"VERDICT: FAILED, {len(self.violations)} violation(s):")
            lines.extend(f"  - {v}" for v in self.violations)
        else:
            lines.append("VERDICT: ok")
        return "\n".join(lines)


def choose_kill(rng: random.Random, kind: str, runs: int) -> Kill:
    """A kill of ``kind`` at a random place: a pass count for a crash point, a delay for ``random``."""
    if kind == "random":
        # Mostly while actions run; one in four anywhere from start-up on.
        if rng.random() < 0.25:
            return Kill(kind, delay=rng.uniform(0.0, EARLY_WINDOW), early=True)
        return Kill(kind, delay=rng.uniform(0.0, RANDOM_WINDOW))
    if kind == "before_start":
        return Kill(kind, count=rng.randint(1, runs))
    # A round makes about 30 commits per run: a few kills reach its end.
    return Kill(kind, count=rng.randint(1, 8 * runs))


def run_cycle(directory: Path, number: int, kill: Kill | None, runs: int, *, timeout: float) -> Cycle:
    """Run one child on ``directory``'s database until it exits, is killed, or times out."""
    ledger = directory / "ledger"
    env = {k: v for k, v in os.environ.items() if k != "ASYNCFLOW_CRASH_AT"}
    if kill is not None and kill.kind != "random":
        env["ASYNCFLOW_CRASH_AT"] = f"{kill.kind}:{kill.count}"
    command = [
        sys.executable,
        str(CHILD),
        str(directory / "runs.db"),
        str(ledger),
        str(runs),
        f"--cycle={number}",
        f"--lease={LEASE}",
        f"--poll-interval={POLL_INTERVAL}",
    ]
    base = ledger.stat().st_size if ledger.exists() else 0
    first: float | None = None
    kill_at: float | None = None
    timed_out = False
    with open(directory / f"stderr-{number}.txt", "wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        if kill is not None and kill.kind == "random" and kill.early:
            kill_at = started + kill.delay
        try:
            while proc.poll() is None:
                now = time.perf_counter()
                if first is None and ledger.exists() and ledger.stat().st_size > base:
                    first = now - started
                    if kill is not None and kill.kind == "random" and not kill.early:
                        kill_at = now + kill.delay
                if kill_at is not None and now >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    kill_at = None
                elif now - started > timeout:
                    timed_out = True
                    proc.kill()
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
            returncode = proc.wait()
    duration = time.perf_counter() - started
    if first is None and ledger.exists() and ledger.stat().st_size > base:
        first = duration  # wrote its first line in the last millisecond
    return Cycle(number, kill, returncode, timed_out, first, duration)


def run_campaign(
    workdir: Path,
    *,
    kills: int,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    runs: int = RUNS,
    timeout: float = 30.0,
    progress: Callable[[Figures], None] | None = None,
) -> Figures:
    """Land ``kills`` kills, of ``kinds`` in turn, round after round; stop at the first bad round.

    Args:
        workdir: an empty directory for the rounds' files.
        timeout: seconds one child may run before the round counts as hung.
        progress: called with the figures after each round.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kill kind {kind!r}; choose from {KINDS}")
    rng = random.Random(seed)
    figures = Figures(seed)
    began = time.perf_counter()
    while figures.total_kills < kills and not figures.violations:
        directory = workdir / f"round-{figures.rounds}"
        directory.mkdir(parents=True)
        cycles: list[Cycle] = []
        while True:
            kill = None
            if figures.total_kills < kills:
                kind = kinds[figures.total_kills % len(kinds)]
                kill = choose_kill(rng, kind, runs)
            cycle = run_cycle(directory, len(cycles), kill, runs, timeout=timeout)
            cycles.append(cycle)
            figures.processes += 1
            if cycles[-2:-1] and cycles[-2].killed:
                figures.restarts += 1
                if cycle.first_action is not None:
                    figures.recovery.append(cycle.first_action)
            if cycle.killed and kill is not None:
                figures.kills[kill.kind] += 1
                continue
            # Not killed: the round is over (a round has at most one cycle per kill, plus one).
            if cycle.returncode != 0:
                figures.violations.append(_bad_exit(directory, cycle))
            break
        figures.rounds += 1
        if not figures.violations:
            check_round(directory, runs, cycles, figures)
        if progress is not None:
            progress(figures)
    figures.elapsed = time.perf_counter() - began
    return figures


def _bad_exit(directory: Path, cycle: Cycle) -> str:
    stderr = (directory / f"stderr-{cycle.number}.txt").read_text(errors="replace").strip()
    what = (
        f"did not finish within the timeout ({cycle.duration:.1f} s)"
        if cycle.timed_out
        else f"exited with {cycle.returncode}"
    )
    statuses = _statuses(directory / "runs.db")
    return (
        f"{directory.name}: cycle {cycle.number} (after {cycle.number} kill(s)) {what}; "
        f"runs by status: {statuses}; stderr: {stderr[-2000:] or '(empty)'}"
    )


def _statuses(db: Path) -> dict[str, int]:
    async def read() -> dict[str, int]:
        engine = af.Engine(SQLiteBackend(db), recover=False)
        async with engine:
            page = await engine.list_runs(limit=1000)
        return dict(Counter(info.status.value for info in page.runs))

    try:
        return asyncio.run(read())
    except af.WorkflowError as exc:
        return {f"unreadable: {exc}": 0}


@attrs.frozen
class _Database:
    """What the round's database holds after its last cycle."""

    runs: list[af.RunInfo]
    integrity: str
    completions: dict[str, list[str]]  # run id -> step keys of its action checkpoints
    stores: dict[str, dict[str, object]]  # run id -> final store


def _read_database(db: Path) -> _Database:
    async def read() -> _Database:
        backend = SQLiteBackend(db)
        engine = af.Engine(backend, recover=False)
        async with engine:
            page = await engine.list_runs(limit=1000)
            completions: dict[str, list[str]] = {}
            stores: dict[str, dict[str, object]] = {}
            for info in page.runs:
                saved = await backend.load(info.run_id)
                completions[info.run_id] = [
                    cp.step_key for cp in (saved.checkpoints if saved else []) if cp.kind == "action"
                ]
                stores[info.run_id] = dict((await engine.wait(info.run_id)).store)
            integrity = await backend.integrity_check()
        return _Database(page.runs, integrity, completions, stores)

    return asyncio.run(read())


def read_ledger(path: Path) -> list[Execution]:
    """The ledger's lines, parsed; a malformed line raises ValueError."""
    executions = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split(" ")
        if len(fields) != 7 or fields[0] not in ("begin", "end", "fail"):
            raise ValueError(f"ledger line {number} is malformed: {line!r}")
        phase, cycle, run_id, stage, action, attempt, key = fields
        run_of_key, _, step = key.partition(":")
        if run_of_key != run_id:
            raise ValueError(f"ledger line {number}: idempotency key {key!r} is not of run {run_id}")
        executions.append(Execution(phase, int(cycle), run_id, stage, action, int(attempt), step))
    return executions


def check_round(directory: Path, runs: int, cycles: Sequence[Cycle], figures: Figures) -> None:
    """Check one finished round against every rule in the module docstring; add to ``figures``."""
    bad = figures.violations
    where = directory.name
    killed = {c.number for c in cycles if c.killed}
    clean = {c.number for c in cycles if c.returncode == 0}
    kills = {c.number: str(c.kill) if c.killed else f"exit {c.returncode}" for c in cycles}
    database = _read_database(directory / "runs.db")
    ledger = read_ledger(directory / "ledger")
    figures.runs += len(database.runs)

    if database.integrity != "ok":
        bad.append(f"{where}: PRAGMA integrity_check says {database.integrity!r}")
    keys = Counter(info.idempotency_key for info in database.runs)
    if set(keys) != {f"run-{i}" for i in range(runs)} or max(keys.values(), default=0) > 1:
        bad.append(f"{where}: runs by idempotency key {dict(keys)}; expected run-0 .. run-{runs - 1}, once")
    for info in database.runs:
        if info.status is af.RunStatus.COMPLETED:
            figures.completed += 1
        else:
            bad.append(
                f"{where}: run {info.idempotency_key} {info.run_id} is {info.status.value}: {info.error}"
            )
        steps = Counter(database.completions[info.run_id])
        if steps != _EXPECTED_ONCE:
            extra = dict(steps - _EXPECTED_ONCE)
            missing = sorted(set(crash_child.EXPECTED_STEPS) - set(steps))
            bad.append(
                f"{where}: run {info.idempotency_key} has completion checkpoints off: "
                f"missing {missing}, extra/duplicate {extra}"
            )

    run_names = {info.run_id: info.idempotency_key for info in database.runs}
    ends: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    open_begins: Counter[tuple[int, str, str, int]] = Counter()
    for ex in ledger:
        if ex.run_id not in run_names:
            bad.append(f"{where}: the ledger has an execution of run {ex.run_id}, which the database lacks")
            continue
        slot = (ex.cycle, ex.run_id, ex.step, ex.attempt)
        if ex.phase == "begin":
            open_begins[slot] += 1
        else:
            open_begins[slot] -= 1
        if ex.phase == "end":
            ends[(ex.run_id, ex.step)].append(ex)
        if (ex.stage, ex.action) == crash_child.DISABLED:
            bad.append(f"{where}: {run_names[ex.run_id]} ran the disabled action {ex.action!r} ({ex})")
    figures.actions += sum(len(found) for found in ends.values())
    for (cycle, run_id, step, attempt), count in open_begins.items():
        if count and cycle in clean:
            bad.append(
                f"{where}: in cycle {cycle}, which exited 0, {run_names[run_id]} step {step} attempt "
                f"{attempt} has {count} more begin than end/fail lines"
            )
    figures.mid_action_kills += len({slot[0] for slot, count in open_begins.items() if count > 0} & killed)

    superseded: dict[tuple[int, str], list[Execution]] = defaultdict(list)
    for run_id, name in run_names.items():
        marks: dict[str, list[str]] = defaultdict(list)
        for key in database.stores.get(run_id, {}):
            if key.startswith("done:"):
                marks[key[5:].rpartition("@")[0]].append(key)
        for step, action in crash_child.EXPECTED_STEPS.items():
            found = ends.get((run_id, step), [])
            label = f"{where}: {name} step {step}"
            if not found:
                bad.append(f"{label} never ran to its end in the ledger")
                continue
            figures.max_executions = max(figures.max_executions, len(found))
            figures.re_executions += len(found) - 1
            history = ", ".join(f"cycle {e.cycle} ({kills[e.cycle]})" for e in found)
            if any(e.action != action for e in found):
                bad.append(f"{label} ran actions {sorted({e.action for e in found})}, expected {action!r}")
            per_cycle = Counter(e.cycle for e in found)
            if max(per_cycle.values()) > 1:
                bad.append(f"{label} ran more than once in one process: {history}")
            committed = sorted(int(key.rpartition("@")[2]) for key in marks.get(step, ()))
            if committed != [found[-1].cycle]:
                bad.append(
                    f"{label}: the store holds the completion marks of cycles {committed}, but it ran "
                    f"in {history}; only its last execution may be committed, once"
                )
            for ex in found[:-1]:
                if ex.cycle not in killed:
                    bad.append(f"{label} ran again although cycle {ex.cycle} was not killed: {history}")
                superseded[(ex.cycle, run_id)].append(ex)
            if step == _RETRIED_STEP and any(e.attempt != 2 for e in found):
                bad.append(f"{label} succeeded on attempts {[e.attempt for e in found]}, expected 2 each")
    for (cycle, run_id), lost in superseded.items():
        stages = {ex.stage for ex in lost}
        room = max(_STAGE_CONCURRENCY.get(stage, 1) for stage in stages)
        if len(stages) > 1 or len(lost) > room:
            bad.append(
                f"{where}: the kill of cycle {cycle} ({kills[cycle]}) caught {len(lost)} executions of "
                f"{run_names[run_id]} in flight ({[ex.step for ex in lost]}); at most {room} of one stage "
                f"can be"
            )
