"""``asyncflow worker MODULE:ATTR --db URL``: a process that runs the runs of a shared database.

It imports the workflows ``MODULE:ATTR`` names (an :class:`~asyncflow.Engine`,
a :class:`~asyncflow.Workflow`, or a list of workflows, or a function that
returns one of these), opens an engine on ``--db`` and takes runs of those
workflows as they come: new ones left free, ones given back by workers that
stopped, and those of workers that died. Up to ``--concurrency`` at once.

On SIGTERM or SIGINT it shuts down gracefully: it stops taking runs, lets
the actions in flight finish for up to ``--grace`` seconds (each run is
given back after its next checkpoint), then gives back every run it still
holds, so another worker takes them at once, and exits 0. A second signal
stops it at once (runs are still given back).

Its log lines go to stderr. With ``--json``, stdout has one JSON object per
line for each thing a supervisor may follow, ``event`` saying which
(``worker_ready``, ``run_started``, ``run_finished`` with the run's
``status``, ``run_suspended``, ``run_given_back``, ``worker_draining``,
``worker_stopped``), with ``at`` (Unix time), the ``worker``'s name and the
run's ``run_id`` and ``workflow_id``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core.engine import Engine
    from ._core.workflow import Workflow

_EPILOG = """\
examples:
  asyncflow worker myapp.flows:engine --db postgresql://app@db.internal/app --concurrency 200
  asyncflow worker myapp.flows:WORKFLOWS --db postgresql://... --grace 30
"""


def add_worker_command(commands: Any, output: argparse.ArgumentParser) -> None:
    """Add ``asyncflow worker`` to the ``asyncflow`` parser's subcommands."""
    parser = commands.add_parser(
        "worker",
        parents=[output],
        help="run the runs of a shared database (PostgreSQL) until stopped",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="MODULE:ATTR", help="an af.Engine, an af.Workflow or a list of them")
    parser.add_argument(
        "--db",
        default=os.environ.get("ASYNCFLOW_DB"),
        help="the database URL (default: $ASYNCFLOW_DB, else the engine's own)",
    )
    parser.add_argument("--concurrency", type=_positive_int, default=100, help="runs at once (default 100)")
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=30.0,
        help="seconds for actions in flight to finish on SIGTERM/SIGINT (default 30)",
    )
    parser.add_argument("--lease", type=_seconds, default=30.0, help="seconds a claim holds (default 30)")
    parser.add_argument(
        "--poll", type=_seconds, default=1.0, help="seconds between looks for runs (default 1)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="the level of asyncflow's log lines on stderr (default INFO)"
    )
    parser.set_defaults(handler=run_worker)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}")
    return value


def _load(spec: str) -> tuple[Engine | None, list[Workflow]]:
    """The engine and workflows ``MODULE:ATTR`` names."""
    import importlib

    from ._core.engine import Engine
    from ._core.workflow import Workflow
    from .cli import CommandError

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CommandError(f"{spec!r} must be 'module:attr', e.g. myapp.flows:engine", 2)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise CommandError(
            f"{spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})", 2
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(f"{spec!r}: {module_name!r} has no attribute {attr!r}", 2) from None
    if callable(target) and not isinstance(target, Engine | Workflow):
        try:
            target = target()
        except Exception as exc:
            raise CommandError(f"{spec!r}: calling {attr!r} raised {exc!r}", 2) from None
    if isinstance(target, Engine):
        return target, target.workflows
    items = list(target) if isinstance(target, list | tuple) else [target]
    if not items or not all(isinstance(item, Workflow) for item in items):
        raise CommandError(
            f"{spec!r} is {target!r}, not an af.Engine, an af.Workflow or a list of workflows", 2
        )
    return None, items


def _engine(args: argparse.Namespace) -> Engine:
    from ._core.engine import Engine
    from ._core.errors import WorkflowError
    from .backends import MemoryBackend, open_backend
    from .cli import CommandError

    given, workflows = _load(args.app)
    url = args.db or (given.backend.url if given is not None else None)
    if not url:
        raise CommandError("say which database: --db postgresql://user@host/db (or set ASYNCFLOW_DB)", 2)
    try:
        backend = open_backend(url if "://" in url else "sqlite:///" + url)
    except WorkflowError as exc:
        raise CommandError(str(exc), 2) from None
    if isinstance(backend, MemoryBackend):
        raise CommandError(f"--db {url!r} keeps no runs between processes: give a database URL", 2)
    if not args.poll * 2 < args.lease:
        raise CommandError(f"--poll ({args.poll:g}) must be under half the --lease ({args.lease:g})", 2)
    engine = Engine(
        backend,
        runner=given.runner if given is not None else None,
        registry=given.registry if given is not None else None,
        lease=args.lease,
        poll_interval=args.poll,
        concurrency=args.concurrency,
    )
    for workflow in workflows:
        try:
            engine.register(workflow)
        except (WorkflowError, TypeError) as exc:
            raise CommandError(f"cannot load workflow {workflow.id!r}: {exc}", 2) from None
    return engine


def run_worker(args: argparse.Namespace) -> int:
    """The ``asyncflow worker`` command: serve until a signal, then shut down gracefully; the exit code."""
    import anyio
    from loguru import logger

    from .cli import CommandError

    engine = _engine(args)
    logger.remove()
    try:
        logger.add(sys.stderr, level=args.log_level.upper(), format="{time:HH:mm:ss.SSS} {level} {message}")
    except ValueError as exc:
        raise CommandError(f"--log-level {args.log_level!r}: {exc}", 2) from None
    logger.enable("asyncflow")
    return anyio.run(_serve, engine, args.grace, bool(args.json))


def _emit(event: str, **fields: Any) -> None:
    """(``--json``) One JSON line on stdout: ``event``, the time, then ``fields``."""
    line = json.dumps({"event": event, "at": time.time(), **fields}, ensure_ascii=False, default=str)
    print(line, flush=True)


def _emit_run_events(engine: Engine) -> None:
    """(``--json``) A line for each run that starts executing here, ends, suspends or is given back."""
    from ._core.events import Event, EventKind

    names = {
        EventKind.RUN_STARTED: "run_started",
        EventKind.RUN_FINISHED: "run_finished",
        EventKind.RUN_SUSPENDED: "run_suspended",
        EventKind.RUN_INTERRUPTED: "run_given_back",
    }

    def on_event(event: Event) -> None:
        name = names.get(event.kind)
        if name is None:
            return
        fields: dict[str, Any] = {
            "worker": engine.owner,
            "run_id": event.run_id,
            "workflow_id": event.workflow_id,
        }
        if event.kind is EventKind.RUN_FINISHED:
            fields["status"] = event.status
            if event.error is not None:
                fields["error"] = f"{type(event.error).__name__}: {event.error}"
        elif event.kind is EventKind.RUN_SUSPENDED:
            fields["reason"] = event.reason
        _emit(name, **fields)

    engine.runner.on_event(on_event)


async def _serve(engine: Engine, grace: float, as_json: bool = False) -> int:
    import anyio
    from loguru import logger

    from ._core.errors import BackendError

    if as_json:
        _emit_run_events(engine)

    signals = 0
    stop = anyio.Event()
    now_scope = anyio.CancelScope()

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info(
                "{} received: taking no more runs, giving back the others within {:g} s",
                signal.Signals(signum).name,
                grace,
            )
            if as_json:
                _emit("worker_draining", worker=engine.owner, signal=signal.Signals(signum).name, grace=grace)
            stop.set()
        else:
            logger.warning("{} received again: stopping now", signal.Signals(signum).name)
            stop.set()
            now_scope.cancel()

    import asyncio

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    delay = 0.1
    reported = False
    opened = False
    while True:
        try:
            async with engine:
                opened = True
                logger.info(
                    "worker {} ready on {}: workflows {}, concurrency {}",
                    engine.owner,
                    engine.backend.url,
                    ", ".join(sorted(w.id for w in engine.workflows)),
                    engine.concurrency,
                )
                if as_json:
                    _emit(
                        "worker_ready",
                        worker=engine.owner,
                        database=engine.backend.url,
                        workflows=sorted(w.id for w in engine.workflows),
                        concurrency=engine.concurrency,
                    )
                with now_scope:  # (a second signal cancels it)
                    await stop.wait()
                    started = time.monotonic()
                    await engine.drain(grace)
                    logger.info("drained in {:.2f} s", time.monotonic() - started)
            break
        except BackendError as exc:
            if opened or not _unreachable(exc):
                print(f"asyncflow: {' '.join(str(exc).split())}", file=sys.stderr)
                return 1
            if not reported:
                logger.warning("{}; retrying with back-off until it answers", exc)
                reported = True
            with anyio.move_on_after(delay):
                await stop.wait()
            if stop.is_set():
                if as_json:
                    _emit("worker_stopped", worker=engine.owner)
                return 0
            delay = min(delay * 2, 5.0)
    if signals:
        logger.info("worker {} stopped; its unfinished runs are given back", engine.owner)
    if as_json:
        _emit("worker_stopped", worker=engine.owner)
    return 0


def _unreachable(exc: BaseException) -> bool:
    """Whether an error opening the database means the server did not answer (worth waiting for).

    A server that is starting, or that has no connection to spare (``too many
    clients``), counts too: both pass.
    """
    cause = exc.__cause__
    return isinstance(cause, OSError | TimeoutError) or type(cause).__name__ in (
        "CannotConnectNowError",
        "TooManyConnectionsError",
    )
