"""Soak: a durable engine under mixed load for 30 minutes, killed every minute; does anything grow?

Run with ``make soak`` (or ``python benchmarks/soak.py --minutes 30``). A
worker process runs an engine on one SQLite file with a steady mixed load:
20 runs started a second (three stages, a suspension for one run in five, a
durable sleep), resumes of the suspended runs, a cancel every two seconds,
and a purge of runs finished more than a minute ago every two seconds.
Every minute the worker is killed with SIGKILL and a new one opens the file
and takes over the interrupted runs.

Every 10 s the soak samples the worker's resident memory and open file
descriptors (from /proc), the size of the database file (and of its WAL),
and the p99 latency of the checkpoints the worker committed in the last
10 s (and the machine's load average, which that latency follows on a
shared machine). It writes them to a CSV and plots them to a PNG (matplotlib: ``pip
install 'asyncflow[soak]'``), then checks that over the last 20 minutes each
stays flat within 10%: the drift of a straight line fitted to the samples,
across the 20 minutes, is at most 10% of their mean. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import anyio

import asyncflow as af
from asyncflow.backends import SQLiteBackend
from asyncflow.backends.base import Checkpoint

HERE = Path(__file__).resolve().parent
METRICS = ("rss_mb", "fds", "file_mb", "p99_checkpoint_ms")

# ---- the worker: an engine under mixed load --------------------------------------------


@af.action
async def step(ctx: af.ActionContext) -> None:
    """Count in the store, and take a few milliseconds (an API call, say)."""
    ctx.store["n"] = ctx.store.get_or("n", 0) + 1
    await anyio.sleep(random.uniform(0, 0.02))


@af.action
async def approval(ctx: af.ActionContext) -> None:
    """One run in five waits for an approval (resumed by the worker's resumer)."""
    if not ctx.is_resuming and int(ctx.run_id[-4:], 16) % 5 == 0:
        ctx.suspend("needs approval", {"run": ctx.run_id})
    ctx.store["approved"] = ctx.resume_data


WORKFLOW = af.Workflow(
    "soak",
    stages=[
        af.Stage("fetch", actions=[step, step, step]),
        af.Stage("decide", actions=[approval, step, af.sleep(timedelta(milliseconds=200))]),
        af.Stage("finish", actions=[step, step, step]),
    ],
)


class TimedSQLite(SQLiteBackend):
    """SQLite whose checkpoints are timed (from the call to the commit that holds them)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.latencies: list[float] = []

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        started = time.perf_counter()
        await super().checkpoint(checkpoint)
        self.latencies.append(time.perf_counter() - started)


async def keep_starting(engine: af.Engine, rate: float, cap: int) -> None:
    """Start ``rate`` runs a second, whatever the machine does, with at most ``cap`` of them unfinished.

    A steady arrival rate, not a number of runs kept going: kept at 20 runs in
    flight, the rate followed the CPU the other processes on the machine left,
    and so did the number of finished runs the file held (a minute's worth).
    """
    handles: set[af.RunHandle] = set()

    async def follow(handle: af.RunHandle) -> None:
        try:
            await handle.result()
        finally:
            handles.discard(handle)

    started, due = time.monotonic(), 0
    async with anyio.create_task_group() as group:
        while True:
            due_now = int((time.monotonic() - started) * rate)
            while due < due_now:
                due += 1
                if len(handles) < cap:  # (over it: the machine cannot keep up; that run is skipped)
                    handle = await engine.start(WORKFLOW)
                    handles.add(handle)
                    group.start_soon(follow, handle)
            await anyio.sleep(0.01)


async def keep_resuming(engine: af.Engine) -> None:
    """Resume the suspended runs, every second."""
    while True:
        await anyio.sleep(1)
        page = await engine.list_runs(status=af.RunStatus.SUSPENDED, limit=100)
        for info in page.runs:
            with contextlib.suppress(af.RunStateError):  # (cancelled meanwhile)
                await engine.resume(info.run_id, {"by": "soak"}, key=f"soak-{info.run_id}")


async def keep_cancelling(engine: af.Engine) -> None:
    """Cancel one running run every two seconds."""
    while True:
        await anyio.sleep(2)
        page = await engine.list_runs(status=af.RunStatus.RUNNING, limit=20)
        if page.runs:
            with contextlib.suppress(af.RunStateError):  # (it ended meanwhile)
                await engine.cancel(random.choice(page.runs).run_id)


async def keep_purging(engine: af.Engine, every: float) -> None:
    """Purge the runs that finished more than a minute ago, every ``every`` seconds.

    Often, so the file holds between 60 and 60 + ``every`` seconds of them (every
    10 s, in step with the samples, the file's size swung by a sixth of itself).
    """
    while True:
        await anyio.sleep(every)
        await engine.purge(older_than=timedelta(minutes=1))


async def keep_reporting(backend: TimedSQLite, report: Path) -> None:
    """Append the p99 checkpoint latency of the last 10 s to ``report``, every 10 s."""
    while True:
        await anyio.sleep(10)
        latencies, backend.latencies = backend.latencies, []
        line = {"at": time.time(), "commits": len(latencies), "p99_ms": p99(latencies) * 1000}
        with report.open("a") as out:
            out.write(json.dumps(line) + "\n")


def p99(values: Sequence[float]) -> float:
    """The 99th percentile of ``values`` (NaN for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def work(db: Path, report: Path, rate: float, cap: int, purge_every: float) -> None:
    """The worker: an engine on ``db`` under the mixed load, until it is killed."""
    backend = TimedSQLite(str(db))
    engine = af.Engine(backend, lease=2.0, poll_interval=0.2)
    engine.register(WORKFLOW)
    async with engine, anyio.create_task_group() as group:
        group.start_soon(keep_starting, engine, rate, cap)
        group.start_soon(keep_resuming, engine)
        group.start_soon(keep_cancelling, engine)
        group.start_soon(keep_purging, engine, purge_every)
        group.start_soon(keep_reporting, backend, report)


# ---- the soak: the worker killed every minute, and samples --------------------------------


def start_worker(db: Path, report: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            str(db),
            "--report",
            str(report),
            "--rate",
            str(args.rate),
            "--cap",
            str(args.cap),
            "--purge-every",
            str(args.purge_every),
        ],
        stdout=subprocess.DEVNULL,
    )


def proc_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (NaN if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def proc_fds(pid: int) -> float:
    """Open file descriptors of ``pid`` (NaN if it is gone)."""
    try:
        return float(len(os.listdir(f"/proc/{pid}/fd")))
    except OSError:
        return math.nan


def size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def last_report(report: Path, since: float) -> float:
    """The p99 checkpoint latency the worker reported last, if after ``since`` (else NaN)."""
    if not report.exists():
        return math.nan
    lines = report.read_text().splitlines()
    if not lines:
        return math.nan
    last = json.loads(lines[-1])
    return float(last["p99_ms"]) if last["at"] >= since else math.nan


def drift(times: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(drift of the fitted line across ``times`` as a share of the mean, the mean), NaNs left out."""
    pairs = [(t, v) for t, v in zip(times, values, strict=True) if not math.isnan(v)]
    if len(pairs) < 3:
        return math.nan, math.nan
    ts, vs = zip(*pairs, strict=True)
    slope = statistics.linear_regression(ts, vs).slope
    mean = statistics.fmean(vs)
    return abs(slope * (ts[-1] - ts[0])) / mean if mean else 0.0, mean


def plot(rows: list[dict[str, float]], png: Path, window_start: float, kills: list[float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: matplotlib is missing; pip install 'asyncflow[soak]')")
        return
    labels = {
        "rss_mb": "worker RSS (MB)",
        "fds": "open file descriptors",
        "file_mb": "database file, its WAL orange (MB)",
        "p99_checkpoint_ms": "p99 checkpoint latency (ms)",
    }
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(9, 9), sharex=True)
    minutes = [r["t"] / 60 for r in rows]
    for ax, metric in zip(axes, METRICS, strict=True):
        ax.plot(minutes, [r[metric] for r in rows], marker=".", linewidth=1)
        if metric == "p99_checkpoint_ms":  # (on a shared machine it follows the load)
            load = ax.twinx()
            load.plot(minutes, [r["load_1min"] for r in rows], color="tab:gray", alpha=0.5, linewidth=1)
            load.set_ylabel("load average (grey)", fontsize=8)
            load.set_ylim(bottom=0)
        if metric == "file_mb":
            ax.plot(minutes, [r["wal_mb"] for r in rows], color="tab:orange", linewidth=1, alpha=0.7)
        ax.set_ylabel(labels[metric], fontsize=8)
        ax.axvspan(window_start / 60, minutes[-1], color="tab:green", alpha=0.08)
        ax.set_ylim(bottom=0)
        for kill in kills:
            ax.axvline(kill / 60, color="tab:red", alpha=0.15, linewidth=0.8)
    axes[-1].set_xlabel("minutes (red: a kill -9; green: the window checked for flatness)")
    fig.suptitle("asyncflow soak: mixed durable load on SQLite, the worker killed every minute")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def soak(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="asyncflow-soak-"))
    db, report = workdir / "soak.db", workdir / "report.jsonl"
    total, interval, kill_every = args.minutes * 60, args.interval, args.kill_every
    print(f"soak: {args.minutes} min, a kill every {kill_every} s, samples every {interval} s, in {workdir}")
    worker = start_worker(db, report, args)
    started = time.monotonic()
    next_kill = kill_every
    kills: list[float] = []
    rows: list[dict[str, float]] = []
    for n in range(1, int(total // interval) + 1):
        due = started + n * interval
        while (now := time.monotonic()) < due:
            if now - started >= next_kill:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
                kills.append(now - started)
                next_kill += kill_every
                worker = start_worker(db, report, args)
            time.sleep(min(0.2, max(0.0, due - now)))
        row = {
            "t": time.monotonic() - started,
            "rss_mb": proc_rss_mb(worker.pid),
            "fds": proc_fds(worker.pid),
            "file_mb": size_mb(db),
            "wal_mb": size_mb(db.with_name(db.name + "-wal")),
            "p99_checkpoint_ms": last_report(report, time.time() - interval),
            "load_1min": os.getloadavg()[0],
        }
        rows.append(row)
        print(
            f"  {row['t'] / 60:5.1f} min  RSS {row['rss_mb']:6.1f} MB  fds {row['fds']:4.0f}  "
            f"file {row['file_mb']:6.2f} MB  WAL {row['wal_mb']:5.2f} MB  "
            f"p99 {row['p99_checkpoint_ms']:6.2f} ms  load {row['load_1min']:4.1f}",
            flush=True,
        )
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["t", *METRICS, "wal_mb", "load_1min"])
        writer.writeheader()
        writer.writerows({k: round(v, 3) for k, v in row.items()} for row in rows)
    window_start = max(0.0, total - args.window * 60)
    plot(rows, out.with_suffix(".png"), window_start, kills)

    window = [r for r in rows if r["t"] >= window_start]
    times = [r["t"] for r in window]
    ok = True
    print(f"\nover the last {args.window} min ({len(window)} samples, {len(kills)} kills in all):")
    for metric in METRICS:
        share, mean = drift(times, [r[metric] for r in window])
        values = [r[metric] for r in window if not math.isnan(r[metric])]
        spread = (max(values) - min(values)) / mean if values and mean else math.nan
        flat = not math.isnan(share) and share <= 0.10
        ok = ok and flat
        print(
            f"  {metric:18} mean {mean:8.2f}  drift {share * 100:5.1f}% of the mean  "
            f"(min-max spread {spread * 100:5.1f}%)  {'flat' if flat else 'NOT FLAT'}"
        )
    print(f"CSV: {out.with_suffix('.csv')}  PNG: {out.with_suffix('.png')}  files: {workdir}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--window", type=float, default=20, help="minutes at the end checked for flatness")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--kill-every", type=float, default=60, help="seconds between kills")
    parser.add_argument("--rate", type=float, default=20, help="runs started per second")
    parser.add_argument("--cap", type=int, default=200, help="most unfinished runs a worker starts")
    parser.add_argument("--purge-every", type=float, default=2, help="seconds between purges")
    parser.add_argument("--out", default=str(HERE / "soak"), help="CSV and PNG path, without suffix")
    parser.add_argument("--worker", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(work(Path(args.worker), Path(args.report), args.rate, args.cap, args.purge_every))
        return 0
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
