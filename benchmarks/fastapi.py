"""asyncflow inside FastAPI: request latency, SSE fan-out, and the restart after kill -9.

Run with ``python benchmarks/fastapi.py`` (needs ``asyncflow[fastapi]``, uvicorn and httpx).
Everything runs on 127.0.0.1; the server is a uvicorn process of its own.

(a) Latency: 50 concurrent clients send 2,000 requests to an endpoint that
    awaits a three-action in-memory workflow (``af.run``), and 2,000 to the same
    handler written without asyncflow (the three steps awaited in turn), in
    alternating rounds in the same run. Reported: p50 and p99 of each, and the
    ratios (target: within 1.1x).
(b) SSE fan-out: 200 clients watch one run (``GET /runs/{id}/events``) whose
    actions send messages; reported: events delivered per second (all watchers
    together) and the p99 lag from an event's time to its arrival at a watcher.
(c) Restart after kill -9: a process starts runs on an SQLite file, each hanging
    in its second action, and is killed with SIGKILL; a new process opens the file.
    Reported: seconds from the new engine's open until every interrupted run has
    gone on and ended (its one remaining step takes no time).
(d) The cost of the event log (``engine.watch``) per committed action: 100 runs
    of 20 no-op actions started at once on SQLite, ``Engine(events=True)`` against
    ``events=False``, alternating, best of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This file is named fastapi.py (as the issue asks): run as a script, its folder comes first on
# sys.path and would hide the fastapi package; it imports nothing from its folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import anyio  # noqa: E402

import asyncflow as af  # noqa: E402

# ---- the workflows (module level: the restart case re-creates them by import path) ------------


@af.action
async def step_a(ctx: af.ActionContext) -> None:
    ctx.store["a"] = 1


@af.action
async def step_b(ctx: af.ActionContext) -> None:
    ctx.store["b"] = ctx.store.get("a", int) + 1


@af.action
async def step_c(ctx: af.ActionContext) -> None:
    ctx.store["c"] = ctx.store.get("b", int) + 1


INLINE = af.Workflow("inline", stages=[af.Stage("s", actions=[step_a, step_b, step_c])])


async def plain_a(store: dict[str, Any]) -> None:
    store["a"] = 1


async def plain_b(store: dict[str, Any]) -> None:
    store["b"] = store["a"] + 1


async def plain_c(store: dict[str, Any]) -> None:
    store["c"] = store["b"] + 1


@af.action
async def chatter(ctx: af.ActionContext) -> None:
    """From the store's ``start_at`` (when every watcher is there), send 50 messages a little apart."""
    await anyio.sleep(max(ctx.store.get_or("start_at", 0.0) - time.time(), 0.0))
    for i in range(50):
        await ctx.send("tick", {"i": i})
        await anyio.sleep(0.01)


CHATTY = af.Workflow("chatty", stages=[af.Stage("s", actions=[chatter])])


@af.action
async def first(ctx: af.ActionContext) -> None:
    ctx.store["first"] = True


@af.action
async def hang_once(ctx: af.ActionContext) -> None:
    """Hang in the first process (which is killed); go on at once in the next."""
    if os.environ.get("ASYNCFLOW_BENCH_HANG") == "1":
        await anyio.sleep_forever()


RESTART = af.Workflow("restart", stages=[af.Stage("s", actions=[first, hang_once])])


# ---- the server ---------------------------------------------------------------------------------


def make_app(db: str) -> Any:
    from fastapi import FastAPI

    from asyncflow.integrations.fastapi import lifespan, runs_router

    engine = af.Engine(f"sqlite:///{db}")
    engine.register(CHATTY)
    app = FastAPI(lifespan=lifespan(engine))
    app.include_router(runs_router(engine))
    runner = af.Runner()

    @app.get("/inline")
    async def inline() -> dict[str, int]:
        result = await runner.run(INLINE)
        return {"c": result.store["c"]}

    @app.get("/plain")
    async def plain() -> dict[str, int]:
        store: dict[str, Any] = {}
        await plain_a(store)
        await plain_b(store)
        await plain_c(store)
        return {"c": store["c"]}

    return app


def serve(port: int, db: str) -> None:
    import uvicorn

    uvicorn.run(
        make_app(db),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=120,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(db: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), db])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, base
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.05)


# ---- (a) latency ----------------------------------------------------------------------------------


async def latency(base: str, requests: int, clients: int, rounds: int) -> dict[str, list[float]]:
    import httpx

    times: dict[str, list[float]] = {"/inline": [], "/plain": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        for path in times:  # warm up
            for _ in range(50):
                (await client.get(path)).raise_for_status()
        for _ in range(rounds):
            for path in ("/inline", "/plain") if _ % 2 == 0 else ("/plain", "/inline"):
                remaining = requests // rounds

                async def one_client(path: str = path) -> None:
                    nonlocal remaining
                    while True:
                        if remaining == 0:  # (no await between the test and the decrement)
                            return
                        remaining -= 1
                        t0 = time.perf_counter()
                        response = await client.get(path)
                        times[path].append(time.perf_counter() - t0)
                        response.raise_for_status()

                async with anyio.create_task_group() as group:
                    for _ in range(clients):
                        group.start_soon(one_client)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- (b) SSE fan-out ------------------------------------------------------------------------------


async def fan_out(base: str, watchers: int) -> tuple[int, float, float]:
    """Events delivered to ``watchers`` live watchers of one run: how many, per second, and the lag p99."""
    import httpx

    lags: list[float] = []
    arrivals: list[float] = []
    limits = httpx.Limits(max_connections=watchers + 5)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        # The run waits until every watcher has connected (a few seconds for 200), then speaks:
        # only the events it sends from then on count (those before replay at once on connecting).
        start_at = time.time() + 2 + watchers / 50
        body = {"workflow_id": "chatty", "store": {"start_at": start_at}}
        run_id = (await client.post("/runs", json=body)).json()["run_id"]
        opened = 0

        async def watch() -> None:
            nonlocal opened
            async with client.stream("GET", f"/runs/{run_id}/events") as stream:
                opened += 1
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line[6:])
                        if data["at"] >= start_at:
                            now = time.time()
                            lags.append(now - data["at"])
                            arrivals.append(now)

        async with anyio.create_task_group() as group:
            for _ in range(watchers):
                group.start_soon(watch)
    if opened < watchers:
        raise RuntimeError(f"only {opened} of {watchers} watchers connected")
    window = max(arrivals) - start_at if arrivals else float("nan")
    return len(arrivals), window, pct(lags, 0.99) if lags else float("nan")


# ---- (c) restart after kill -9 --------------------------------------------------------------------


def child_start(db: str, runs: int) -> None:
    """Start ``runs`` runs that hang in their second action, say so, and wait to be killed."""

    async def main() -> None:
        engine = af.Engine(f"sqlite:///{db}")
        engine.register(RESTART)
        async with engine:
            handles = [await engine.start(RESTART) for _ in range(runs)]
            while True:
                infos = [await engine.get_run(h.run_id) for h in handles]
                hanging = [
                    any(s["action_name"] == "hang-once" and s["status"] == "running" for s in i.steps or [])
                    for i in infos
                ]
                if all(hanging):
                    print("ready", flush=True)
                    await anyio.sleep_forever()
                await anyio.sleep(0.01)

    os.environ["ASYNCFLOW_BENCH_HANG"] = "1"
    anyio.run(main)


async def restart(db: str, runs: int) -> float:
    async with await anyio.open_process([sys.executable, __file__, "--child", db, str(runs)]) as proc:
        assert proc.stdout is not None
        said = b""
        async for chunk in proc.stdout:
            said += chunk
            if b"\n" in said:
                break
        if said.strip() != b"ready":
            raise RuntimeError(f"the child said {said!r}")
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    engine = af.Engine(f"sqlite:///{db}")
    engine.register(RESTART)
    t0 = time.perf_counter()
    async with engine:
        page = await engine.list_runs(limit=1000)
        for info in page.runs:
            await engine.wait(info.run_id)
        return time.perf_counter() - t0


# ---- (d) the event log's cost ---------------------------------------------------------------------


@af.action
async def noop(ctx: af.ActionContext) -> None:
    pass


TWENTY = af.Workflow("twenty", stages=[af.Stage("s", actions=[noop] * 20)])


async def event_log_cost(tmp: str, rounds: int) -> dict[bool, float]:
    best = {True: float("inf"), False: float("inf")}
    for round_ in range(rounds):
        for events in (True, False) if round_ % 2 == 0 else (False, True):
            engine = af.Engine(f"sqlite:///{tmp}/cost-{round_}-{events}.db", events=events)
            engine.register(TWENTY)
            async with engine:
                t0 = time.perf_counter()
                handles = [await engine.start(TWENTY) for _ in range(100)]
                for handle in handles:
                    await handle.result()
                best[events] = min(best[events], (time.perf_counter() - t0) / 2000)
    return best


# ---- main ----------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(str(Path(tmp) / "served.db"))
        try:
            times = await latency(base, args.requests, args.clients, args.rounds)
            p50 = {path: pct(values, 0.5) * 1e3 for path, values in times.items()}
            p99 = {path: pct(values, 0.99) * 1e3 for path, values in times.items()}
            print(
                f"(a) {args.clients} clients, {len(times['/inline'])} requests each endpoint, "
                f"{args.rounds} alternating rounds"
            )
            for path in times:
                print(f"    {path:8} p50 {p50[path]:7.2f} ms   p99 {p99[path]:7.2f} ms")
            print(
                f"    ratio (inline / plain): p50 {p50['/inline'] / p50['/plain']:.3f}x   "
                f"p99 {p99['/inline'] / p99['/plain']:.3f}x   (target <= 1.1x)"
            )
            print(f"    median of all: {statistics.median(times['/inline']) * 1e3:.2f} ms inline")
            delivered, elapsed, lag = await fan_out(base, args.watchers)
            print(
                f"(b) {args.watchers} watchers of one run: {delivered} live events delivered in "
                f"{elapsed:.2f} s, {delivered / elapsed:,.0f} events/s; lag p99 {lag * 1e3:.0f} ms"
            )
        finally:
            proc.terminate()
            proc.wait(10)
        cost = await event_log_cost(tmp, 6)
        print(
            f"(d) per committed action (100 runs x 20, best of 3 each): events on {cost[True] * 1e6:.1f} us, "
            f"off {cost[False] * 1e6:.1f} us ({cost[True] / cost[False]:.2f}x)"
        )
        seconds = await restart(str(Path(tmp) / "restart.db"), args.runs)
        print(f"(c) kill -9 with {args.runs} runs in flight: all ended {seconds:.2f} s after the new open")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_start(sys.argv[2], int(sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--requests", type=int, default=2000)
        parser.add_argument("--clients", type=int, default=50)
        parser.add_argument("--rounds", type=int, default=4)
        parser.add_argument("--watchers", type=int, default=200)
        parser.add_argument("--runs", type=int, default=50)
        asyncio.run(main(parser.parse_args()))
