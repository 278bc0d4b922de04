"""The ``asyncflow`` command line (``pip install 'asyncflow[cli]'``): ``asyncflow run``, ``draw``,
``demo``, ``worker`` and ``runs list|show|resume|watch|cancel``.

Each subcommand is one ``_add_<name>`` function that declares its arguments
and sets ``handler``: a function taking the parsed arguments and returning an
exit code. Subcommands import what they need when they run, so
``asyncflow --help`` stays fast and an optional extra (a database driver for
``runs`` or ``worker``) is only needed by the command that uses it.

Output is drawn with rich: styled on a terminal, plain when stdout is not
one or ``NO_COLOR`` is set, and one JSON document with ``--json``.

Exit codes: 0 when the command did what it was asked, 1 when a run failed
(or the database refused), 2 for a usage error (a bad option, a malformed
URL, JSON or ``MODULE:ATTR``, an unknown run), 3 when ``asyncflow run``
left its run suspended, 130 on Ctrl-C. Errors are one line on stderr,
starting ``asyncflow:``, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from ._core.records import short_run_id

if TYPE_CHECKING:
    from ._core.engine import Engine
    from ._core.workflow import Workflow
    from .backends import RunInfo

Handler = Callable[[argparse.Namespace], int]

_MAX_WIDTH = 100

#: Where ``asyncflow demo`` keeps its runs unless told otherwise.
DEMO_DB = "asyncflow-demo.db"

#: What ``--app`` loads to run the demo's workflow.
DEMO_APP = "asyncflow._demo:WORKFLOW"

#: The environment variable ``asyncflow runs --db`` defaults to.
DB_VARIABLE = "ASYNCFLOW_DB"


class CommandError(Exception):
    """A command cannot go on: ``main`` prints ``message`` as one line on stderr and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def use_color(stream: TextIO, *, no_color_flag: bool = False) -> bool:
    """Whether to write ANSI colours to ``stream``.

    Only to a terminal, never with ``--no-color``, and never when the
    ``NO_COLOR`` environment variable is set to a non-empty value
    (https://no-color.org).
    """
    if no_color_flag or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def can_draw_unicode(stream: TextIO) -> bool:
    """Whether ``stream``'s encoding can carry the tree's box-drawing glyphs."""
    try:
        "├─│└✓✗○⊘‖↺…".encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def output_width(stream: TextIO) -> int:
    """The columns to draw into: the terminal's width (80 for pipes), at most 100."""
    if hasattr(stream, "isatty") and stream.isatty():
        return min(shutil.get_terminal_size().columns, _MAX_WIDTH)
    return 80


# ---- helpers shared by the subcommands ----------------------------------------------


class _Output:
    """Where and how a command writes: a rich console on stdout, or one JSON document (decided once)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rich.console import Console

        self.stream = sys.stdout
        self.json: bool = bool(getattr(args, "json", False))
        self.color = use_color(self.stream, no_color_flag=args.no_color)
        self.width = output_width(self.stream)
        self.unicode = can_draw_unicode(self.stream)
        # rich finds out whether stdout is a terminal and honours NO_COLOR itself; --no-color too.
        self.console = Console(
            file=self.stream,
            width=self.width,
            no_color=not self.color,
            highlight=False,
            emoji=False,
            markup=False,
        )

    def print(self, text: str = "", style: str = "") -> None:
        """Write a line of text, in rich ``style`` when styles are on (nothing with ``--json``)."""
        from rich.text import Text

        if not self.json:
            self.console.print(Text(text, style), soft_wrap=True)

    def show(self, *renderables: Any) -> None:
        """Write rich renderables: lines of ``Text``, tables, trees (nothing with ``--json``)."""
        if self.json:
            return
        for renderable in renderables:
            self.console.print(renderable)

    def dump(self, document: Any) -> None:
        """Write ``document`` as one JSON document."""
        print(json.dumps(document, ensure_ascii=False, default=str), file=self.stream)


def _run(main: Callable[[], Awaitable[int]]) -> int:
    import anyio

    return anyio.run(main)


def _db_url(text: str) -> str:
    """A ``--db`` value as an engine URL: a URL as it is, a plain path as an SQLite file."""
    return text if "://" in text else "sqlite:///" + text


def _open_engine(db: str | None, *, create: bool = False) -> Engine:
    """An engine (not yet opened) on the ``--db`` database; it never takes over runs.

    Raises:
        CommandError: no ``--db``, a URL that names no database (2), or a file
            that does not exist when ``create`` is false (1).
    """
    from ._core.engine import Engine
    from ._core.errors import BackendError
    from .backends import MemoryBackend, SQLiteBackend, open_backend

    if not db:
        raise CommandError(f"say which database: --db sqlite:///path/to/runs.db (or set {DB_VARIABLE})", 2)
    try:
        backend = open_backend(_db_url(db))
    except BackendError as exc:
        raise CommandError(str(exc), 2) from None
    if isinstance(backend, MemoryBackend):
        raise CommandError(
            f"--db {db!r} keeps no runs between processes; give an SQLite file (--db sqlite:///runs.db)", 2
        )
    if not create and isinstance(backend, SQLiteBackend) and not backend.path.exists():
        raise CommandError(f"no database at {str(backend.path)!r} (from --db {db!r})")
    # recover=False: looking at a database must never take over the runs in it.
    return Engine(backend, recover=False)


async def _find_run(engine: Engine, run_id: str) -> RunInfo:
    """The run with id ``run_id``, or the only one whose id starts with it (ids in tables are cut to 8).

    Raises:
        CommandError: no such run, or the prefix matches several.
    """
    from ._core.errors import UnknownRun

    try:
        return await engine.get_run(run_id)
    except UnknownRun:
        pass
    matches: list[RunInfo] = []
    cursor = None
    while run_id:
        page = await engine.list_runs(limit=1000, cursor=cursor)
        matches.extend(
            info for info in page.runs if info.run_id.startswith(run_id) or info.run_id.endswith(run_id)
        )
        if len(matches) > 1 or page.next_cursor is None:
            break
        cursor = page.next_cursor
    if len(matches) == 1:
        return matches[0]
    if matches:
        some = ", ".join(info.run_id[:12] for info in matches[:2])
        raise CommandError(f"{run_id!r} is the start of several run ids ({some}, ...); give more of it", 2)
    raise CommandError(f"no run {run_id!r} in {engine.backend.url}", 2)


def _load_workflows(specs: list[str], option: str = "--app ") -> list[Workflow]:
    """The workflows that ``--app module:attr`` options (or a ``MODULE:ATTR`` argument) name.

    ``attr`` may be a workflow, a list or tuple of workflows, or a function
    returning either. The current directory is importable, as with ``python -m``.

    Raises:
        CommandError: (2) a spec that is malformed, cannot be imported or names no workflow.
    """
    import importlib

    from ._core.workflow import Workflow

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[Workflow] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise CommandError(f"{option}{spec!r} must be 'module:attr', e.g. asyncflow._demo:WORKFLOW", 2)
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise CommandError(f"{option}{spec!r}: cannot import {module_name!r} ({exc})", 2) from None
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise CommandError(
                    f"{option}{spec!r}: {module_name!r} has no attribute {attr!r}", 2
                ) from None
        if callable(target) and not isinstance(target, Workflow):
            try:
                target = target()
            except Exception as exc:
                raise CommandError(f"{option}{spec!r}: calling {attr!r} raised {exc!r}", 2) from None
        items = list(target) if isinstance(target, list | tuple) else [target]
        if not items or not all(isinstance(item, Workflow) for item in items):
            raise CommandError(f"{option}{spec!r} is {target!r}, not an af.Workflow (or a list of them)", 2)
        found.extend(items)
    return found


def _load_workflow(spec: str) -> Workflow:
    """The one workflow a ``MODULE:ATTR`` argument names (CommandError 2 otherwise)."""
    found = _load_workflows([spec], "")
    if len(found) != 1:
        ids = ", ".join(repr(workflow.id) for workflow in found)
        raise CommandError(f"{spec!r} names {len(found)} workflows ({ids}); name one", 2)
    return found[0]


def _store_option(text: str | None) -> dict[str, Any]:
    """The ``--store`` option: a JSON object (CommandError 2 otherwise)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--store is not JSON ({exc}): {text!r}", 2) from None
    if not isinstance(value, dict):
        raise CommandError(f"--store must be a JSON object of the run's first store values, got {text!r}", 2)
    return value


def _register(engine: Engine, workflows: list[Workflow]) -> None:
    from ._core.errors import WorkflowError

    for workflow in workflows:
        try:
            engine.register(workflow)
        except (WorkflowError, TypeError) as exc:
            raise CommandError(f"cannot load workflow {workflow.id!r}: {exc}", 2) from None


def _resume_hint(run_id: str, db: str, *, app: str | None = None, data: Any = None) -> list[str]:
    """The command that resumes a run, over two lines (placeholders for what is not known)."""
    given = shlex.quote(json.dumps(data)) if data is not None else "JSON"
    return [
        f"  asyncflow runs resume {short_run_id(run_id)} --db {shlex.quote(db)} \\",
        f"      --app {app or 'module:attr'} --data {given}",
    ]


def _ended(info: RunInfo) -> bool:
    from ._core.records import RunStatus

    return info.status.finished or info.status is RunStatus.SUSPENDED


async def _print_runs(engine: Engine, out: _Output, *, limit: int, db: str) -> None:
    """The newest ``limit`` runs as a table, then how to see more."""
    from ._render import runs_table

    page = await engine.list_runs(limit=limit)
    out.show(runs_table(page.runs, width=out.width, unicode=out.unicode))
    if page.next_cursor is not None:
        out.print(f"(newest {limit}; all of them: asyncflow runs list --db {shlex.quote(db)})", "dim")


# ---- asyncflow run ----------------------------------------------------------------------

#: Exit code of ``asyncflow run`` when the run is left suspended.
EXIT_SUSPENDED = 3
#: Exit code after Ctrl-C (the run was cancelled first), as shells give for SIGINT.
EXIT_INTERRUPTED = 130

# How often the live view is redrawn at most, and at least (for the elapsed time).
_REDRAW_EVERY = 0.05
_TICK = 0.25


def _run_command(args: argparse.Namespace) -> int:
    out = _Output(args)
    store = _store_option(args.store)
    workflow = _load_workflow(args.target)
    engine = None
    if args.db:
        engine = _open_engine(args.db, create=True)
        _register(engine, [workflow])
    return _run(lambda: _run_main(args, out, workflow, store, engine))


class _LiveView:
    """The run's tree redrawn in place on a terminal as its events arrive (rich ``Live``)."""

    def __init__(self, out: _Output, workflow_id: str) -> None:
        from rich.live import Live

        from ._render import LiveRun

        self.out = out
        self.run = LiveRun(workflow_id)
        # Redrawn by hand from the event loop: rich's own refresh thread would read the
        # tree while the loop changes it.
        self.live = Live(console=out.console, auto_refresh=False, transient=True)
        self.drawn = 0.0

    def redraw(self, *, now: bool = False) -> None:
        import time

        from rich.console import Group

        moment = time.monotonic()
        if not now and moment - self.drawn < _REDRAW_EVERY:
            return
        self.drawn = moment
        lines = self.run.lines(width=self.out.width, unicode=self.out.unicode)
        for line in lines:
            line.end = "\n"  # (one line each inside a Group)
        self.live.update(Group(*lines), refresh=True)


async def _run_main(
    args: argparse.Namespace, out: _Output, workflow: Workflow, store: dict[str, Any], engine: Engine | None
) -> int:
    import contextlib
    import signal

    import anyio

    from ._core.errors import RunFailed
    from ._core.records import RunResult, RunStatus
    from ._core.runner import Runner
    from ._render import run_json, run_lines

    runner = engine.runner if engine is not None else Runner()
    view = _LiveView(out, workflow.id) if out.console.is_terminal and not out.json else None
    outcome: list[RunResult] = []
    run_ids: list[str] = []
    interrupted = False
    run_scope = anyio.CancelScope()

    async with contextlib.AsyncExitStack() as stack:
        if engine is not None:
            await stack.enter_async_context(engine)
        events = await stack.enter_async_context(runner.subscribe(buffer=100_000))
        if view is not None:
            stack.enter_context(view.live)
        async with anyio.create_task_group() as group:

            async def execute() -> None:
                with run_scope:
                    if engine is None:
                        try:
                            outcome.append(await runner.run(workflow, store=store))
                        except RunFailed as failure:
                            if failure.result is None:
                                raise
                            outcome.append(failure.result)
                    else:
                        handle = await engine.start(workflow, store=store)
                        run_ids.append(handle.run_id)
                        outcome.append(await handle.result())
                group.cancel_scope.cancel()

            async def on_ctrl_c() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        if interrupted:  # a second Ctrl-C: stop waiting
                            run_scope.cancel()
                            continue
                        interrupted = True
                        if engine is not None and run_ids:
                            # Through the engine, so that the database records the run cancelled.
                            await engine.cancel(run_ids[0])
                        else:
                            run_scope.cancel()

            async def follow() -> None:
                async for event in events:
                    if not run_ids:
                        run_ids.append(event.run_id)
                    if view is not None:
                        view.run.feed(event)
                        view.redraw()

            async def tick() -> None:
                while view is not None:
                    view.redraw(now=True)
                    await anyio.sleep(_TICK)

            group.start_soon(on_ctrl_c)
            group.start_soon(follow)
            group.start_soon(tick)
            group.start_soon(execute)

    result = outcome[0] if outcome else None
    if result is None:  # cancelled before it could say how it ended (a run in memory)
        run_id = run_ids[0] if run_ids else None
        if out.json:
            out.dump({"run_id": run_id, "workflow_id": workflow.id, "status": RunStatus.CANCELLED.value})
        else:
            out.print(f"run {short_run_id(run_id) if run_id else ''} of {workflow.id} cancelled", "magenta")
        return EXIT_INTERRUPTED
    if out.json:
        out.dump(run_json(result))
    else:
        out.show(*run_lines(result, width=out.width, unicode=out.unicode))
    short = short_run_id(result.run_id)
    if result.status is RunStatus.FAILED:
        failed = next(
            (step for step in result.steps if step.kind == "action" and step.status.value == "failed"), None
        )
        where = f" at stage {failed.stage_id!r}, action {failed.action_name!r}" if failed else ""
        error = result.error
        what = f": {type(error).__name__}: {' '.join(str(error).split())}" if error is not None else ""
        out.print(f"run {short} failed{where}{what}", "red")
        return 130 if interrupted else 1
    if result.status is RunStatus.SUSPENDED:
        out.print(f"run {short} is suspended: {result.suspend_reason}", "blue")
        if args.db:
            out.print("resume it with:")
            for line in _resume_hint(result.run_id, args.db, app=args.target):
                out.print(line)
        else:
            out.print("(a run in memory ends with this process: run it with --db to resume it later)", "dim")
        return EXIT_SUSPENDED
    if result.status is RunStatus.CANCELLED:
        out.print(f"run {short} cancelled", "magenta")
        return EXIT_INTERRUPTED if interrupted else 1
    return EXIT_INTERRUPTED if interrupted else 0


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    output: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand that writes with ``output``'s options (``--json``...) and runs ``handler``."""
    parser = commands.add_parser(name, parents=[output], help=help, description=description)
    parser.set_defaults(handler=handler)
    return parser


def _add_run(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser
) -> None:
    parser = _add_command(
        commands,
        output,
        "run",
        _run_command,
        help="run a workflow here and draw its tree live",
        description=(
            "Run a workflow in this process and draw its tree as it grows, with a progress line. "
            "Exit code 0 when the run completes, 1 when it fails, 3 when it is suspended, "
            "130 on Ctrl-C (the run is cancelled first)."
        ),
    )
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="the workflow (or a function returning it), e.g. asyncflow._demo:WORKFLOW",
    )
    parser.add_argument("--store", metavar="JSON", help="the run's first store values, a JSON object")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="run it durably on this database (sqlite:///runs.db, or a path), to resume or inspect it later",
    )


# ---- asyncflow draw ---------------------------------------------------------------------


def _draw(args: argparse.Namespace) -> int:
    from ._render import definition_json, definition_tree

    out = _Output(args)
    workflow = _load_workflow(args.target)
    if args.format == "mermaid":
        text = workflow.to_mermaid()
        if out.json:
            out.dump({"workflow_id": workflow.id, "mermaid": text})
        else:
            print(text, end="" if text.endswith("\n") else "\n", file=out.stream)
        return 0
    if out.json:
        out.dump(definition_json(workflow))
    else:
        out.show(definition_tree(workflow))
    return 0


def _add_draw(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser
) -> None:
    parser = _add_command(
        commands,
        output,
        "draw",
        _draw,
        help="draw a workflow's definition",
        description="Draw a workflow's definition: its stages and their actions, as a tree or in Mermaid.",
    )
    parser.add_argument("target", metavar="MODULE:ATTR", help="the workflow, e.g. asyncflow._demo:WORKFLOW")
    parser.add_argument(
        "--format", choices=["tree", "mermaid"], default="tree", help="tree (default) or a Mermaid flowchart"
    )


# ---- asyncflow demo ---------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    return _run(lambda: _demo_main(args))


async def _demo_main(args: argparse.Namespace) -> int:
    from ._core.records import RunStatus
    from ._demo import APPROVED_BY, START_STORE, SUMMARY, WORKFLOW
    from ._render import run_json, run_lines

    out = _Output(args)
    db: str = args.db
    engine = _open_engine(db, create=True)
    engine.register(WORKFLOW)
    async with engine:
        out.print(f"Resource discovery, run durably: every step is committed to {db}.", "bold")
        handle = await engine.start(WORKFLOW, store=START_STORE)
        short = short_run_id(handle.run_id)
        out.print(f"run {short} started: it inspects the resources, then waits for approval")
        result = await handle.result()
        if result.status is RunStatus.SUSPENDED:
            out.print(f"run {short} is suspended: {result.suspend_reason}", "blue")
            data = result.suspend_data if isinstance(result.suspend_data, dict) else {}
            for key, value in data.items():
                out.print(f"    {key}: {value}", "dim")
            if args.stop_at_approval:
                out.print()
                out.show(*run_lines(result, width=out.width, unicode=out.unicode))
                out.print()
                out.print("It stays suspended (--stop-at-approval). Approve it with:")
                hint = _resume_hint(handle.run_id, db, app=DEMO_APP, data={"approved_by": "you"})
                for line in hint:
                    out.print(line)
                out.print()
                out.print(f"Runs in {db}, newest first:", "bold")
                await _print_runs(engine, out, limit=10, db=db)
                if out.json:
                    out.dump(run_json(result))
                return 0
            approval = {"approved_by": "demo"}
            out.print(f"approving: engine.resume(run_id, {json.dumps(approval)})")
            handle = await engine.resume(handle.run_id, approval)
            first, result = result, await handle.result()
            if result.status is RunStatus.COMPLETED:
                mark = "↺" if out.unicode else "@"
                out.print(f"run {short} completed. The steps marked {mark} ran before the approval;")
                out.print("after it they were replayed from the database, not run again.")
        else:
            first = None
        out.print()
        out.show(*run_lines(result, width=out.width, unicode=out.unicode, earlier=first))
        out.print()
        summary = str(result.store.get(SUMMARY, "no summary was written"))
        if APPROVED_BY in result.store:
            summary += f"; approved by {result.store[APPROVED_BY]}"
        out.print(summary, "bold")
        out.print()
        out.print(f"Runs in {db}, newest first:", "bold")
        await _print_runs(engine, out, limit=10, db=db)
    if out.json:
        out.dump(run_json(result))
    elif args.mermaid:
        out.print("\n```mermaid")
        print(result.to_mermaid(), end="", file=out.stream)
        out.print("```")
    return 0 if result.status is RunStatus.COMPLETED else 1


def _add_demo(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser
) -> None:
    parser = _add_command(
        commands,
        output,
        "demo",
        _demo,
        help="run a small discovery workflow durably: it grows its own plan and waits for approval",
        description=(
            "Run a demo workflow on an SQLite file: a discover stage inserts one stage per "
            "resource kind, each of which fans out one action per item, run concurrently; an "
            "approval step suspends the run, and the demo resumes it; a step is switched off "
            "at run time. Prints the run as a tree, then the runs in the database."
        ),
    )
    parser.add_argument(
        "--db",
        default=DEMO_DB,
        metavar="PATH",
        help=f"the SQLite file to keep the runs in (default: ./{DEMO_DB}; created if missing)",
    )
    parser.add_argument(
        "--stop-at-approval",
        action="store_true",
        help="leave the run suspended at the approval step (resume it with 'asyncflow runs resume')",
    )
    parser.add_argument(
        "--mermaid",
        action="store_true",
        help="also print the executed plan as a Mermaid flowchart (paste it into mermaid.live)",
    )


# ---- asyncflow runs ---------------------------------------------------------------------


def _runs_list(args: argparse.Namespace) -> int:
    from ._render import run_info_json, runs_table

    out = _Output(args)
    engine = _open_engine(args.db)

    async def main() -> int:
        async with engine:
            try:
                page = await engine.list_runs(
                    status=args.status, workflow_id=args.workflow, limit=args.limit, cursor=args.cursor
                )
            except ValueError:  # the only argument argparse could not check
                raise CommandError(
                    f"--cursor {args.cursor!r} is not a cursor that 'runs list' printed", 2
                ) from None
        if out.json:
            out.dump({"runs": [run_info_json(info) for info in page.runs], "next_cursor": page.next_cursor})
            return 0
        if not page.runs:
            which = " ".join(filter(None, [args.status, "runs"]))
            where = f" of workflow {args.workflow!r}" if args.workflow else ""
            out.print(f"no {which}{where} in {engine.backend.url}")
            return 0
        out.show(runs_table(page.runs, width=out.width, unicode=out.unicode))
        if page.next_cursor is not None:
            out.print(f"next page: --cursor {page.next_cursor}", "dim")
        return 0

    return _run(main)


def _runs_show(args: argparse.Namespace) -> int:
    from ._render import run_info_json, run_info_lines, run_lines, step_json

    out = _Output(args)
    engine = _open_engine(args.db)

    async def main() -> int:
        from ._core.records import RunStatus

        async with engine:
            info = await _find_run(engine, args.run_id)
            # wait() returns at once for a run that ended or is suspended; it would block on a live one.
            result = await engine.wait(info.run_id) if _ended(info) and info.steps is not None else None
        if out.json:
            document = run_info_json(info)
            document["steps"] = None if result is None else [step_json(step) for step in result.steps]
            if args.mermaid:
                document["mermaid"] = None if result is None else result.to_mermaid()
            out.dump(document)
            return 0
        if args.mermaid:
            if result is None:
                raise CommandError(
                    f"run {short_run_id(info.run_id)} is {info.status.value}: it is drawn once it "
                    "ends or suspends"
                )
            print(result.to_mermaid(), end="", file=out.stream)
            return 0
        out.show(*run_info_lines(info, width=out.width))
        out.print()
        if result is None:
            if _ended(info):  # e.g. cancelled from another process while an engine ran it
                out.print("(no step records were kept for this run)", "dim")
            else:
                status = info.status.value
                out.print(f"(the run is {status}: its steps are recorded when it ends or suspends)", "dim")
            return 0
        out.show(*run_lines(result, width=out.width, unicode=out.unicode))
        if info.status is RunStatus.SUSPENDED:
            out.print()
            out.print("resume it with:")
            for line in _resume_hint(info.run_id, args.db):
                out.print(line)
        return 0

    return _run(main)


def _runs_resume(args: argparse.Namespace) -> int:
    from ._render import run_json, run_lines

    out = _Output(args)
    try:
        data = json.loads(args.data) if args.data is not None else None
    except ValueError as exc:
        raise CommandError(f"--data is not JSON ({exc}): {args.data!r}", 2) from None
    workflows = _load_workflows(args.app)
    engine = _open_engine(args.db)
    _register(engine, workflows)

    async def main() -> int:
        from ._core.records import RunStatus

        async with engine:
            info = await _find_run(engine, args.run_id)
            if info.workflow_id not in {w.id for w in workflows}:
                # engine.resume would take the run and fail it for want of its workflow.
                loaded = ", ".join(repr(w.id) for w in workflows) or "none"
                raise CommandError(
                    f"run {short_run_id(info.run_id)} is a run of workflow {info.workflow_id!r}, which is "
                    f"not loaded (loaded: {loaded}); name it with --app module:attr",
                    2,
                )
            handle = await engine.resume(info.run_id, data)
            out.print(f"resumed run {short_run_id(info.run_id)} ({info.workflow_id}); waiting for it")
            result = await handle.result()
        out.print()
        out.show(*run_lines(result, width=out.width, unicode=out.unicode))
        if out.json:
            out.dump(run_json(result))
        elif result.status is RunStatus.SUSPENDED:
            out.print()
            out.print(f"run {short_run_id(info.run_id)} is suspended again: {result.suspend_reason}", "blue")
            if result.suspend_data is not None:
                out.print(f"    {json.dumps(result.suspend_data, ensure_ascii=False)}", "dim")
        return 1 if result.status in (RunStatus.FAILED, RunStatus.CANCELLED) else 0

    return _run(main)


def _runs_cancel(args: argparse.Namespace) -> int:
    out = _Output(args)
    engine = _open_engine(args.db)

    async def main() -> int:
        from ._core.records import RunStatus

        async with engine:
            info = await _find_run(engine, args.run_id)
            await engine.cancel(info.run_id)
        was = info.status.value
        if out.json:
            out.dump(
                {"run_id": info.run_id, "workflow_id": info.workflow_id, "was": was, "owner": info.owner}
            )
            return 0
        if info.status is RunStatus.RUNNING and info.owner is not None:
            was += f" in {info.owner}, which stops it at its next step"
        out.print(f"cancelled run {short_run_id(info.run_id)} ({info.workflow_id}; it was {was})")
        return 0

    return _run(main)


def _runs_watch(args: argparse.Namespace) -> int:
    from ._render import run_lines

    out = _Output(args)
    engine = _open_engine(args.db)

    async def main() -> int:
        import signal

        import anyio

        from ._core.records import RunResult, RunStatus

        outcome: list[RunResult] = []
        interrupted = False
        async with engine:
            info = await _find_run(engine, args.run_id)
            view = _LiveView(out, info.workflow_id) if out.console.is_terminal and not out.json else None
            if view is not None:
                view.run.run_id = info.run_id
            async with anyio.create_task_group() as group:

                async def follow() -> None:
                    # The watch ends when the run ends or suspends (or at once, for one that has).
                    async for event in engine.watch(info.run_id, after=args.after):
                        if out.json:
                            print(json.dumps(event.to_json(), ensure_ascii=False, default=str), flush=True)
                        elif view is not None:
                            view.run.feed(event)
                            view.redraw()
                    if not out.json:
                        outcome.append(await engine.wait(info.run_id))
                    group.cancel_scope.cancel()

                async def on_ctrl_c() -> None:
                    nonlocal interrupted
                    with anyio.open_signal_receiver(signal.SIGINT) as signals:
                        async for _ in signals:
                            interrupted = True  # stop watching; the run goes on where it runs
                            group.cancel_scope.cancel()

                async def tick() -> None:
                    while view is not None:
                        view.redraw(now=True)
                        await anyio.sleep(_TICK)

                group.start_soon(on_ctrl_c)
                group.start_soon(tick)
                if view is not None:
                    view.live.start()
                try:
                    await follow()
                finally:
                    if view is not None:
                        view.live.stop()
            if interrupted:
                return EXIT_INTERRUPTED
            if out.json:
                status = (await engine.get_run(info.run_id)).status
                return (
                    1
                    if status is RunStatus.FAILED
                    else EXIT_SUSPENDED
                    if status is RunStatus.SUSPENDED
                    else 0
                )
        result = outcome[0]
        out.show(*run_lines(result, width=out.width, unicode=out.unicode))
        if result.status is RunStatus.SUSPENDED:
            out.print(f"run {short_run_id(result.run_id)} is suspended: {result.suspend_reason}", "blue")
            return EXIT_SUSPENDED
        return 1 if result.status is RunStatus.FAILED else 0

    return _run(main)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, got {text!r}")
    return value


_RUN_ID_HELP = "the run's id, or its first characters if they are unique"


def _add_runs(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser
) -> None:
    from ._core.records import RunStatus

    parser = commands.add_parser(
        "runs",
        help="list, inspect, resume and cancel the runs of a database",
        description="List, inspect, resume and cancel the runs of a database.",
    )
    database = argparse.ArgumentParser(add_help=False, parents=[output])
    database.add_argument(
        "--db",
        default=os.environ.get(DB_VARIABLE) or None,
        metavar="URL",
        help=f"sqlite:///relative.db, sqlite:////absolute.db or a path to an SQLite file "
        f"(default: ${DB_VARIABLE})",
    )
    actions = parser.add_subparsers(title="commands", dest="runs_command", metavar="COMMAND", required=True)

    listing = actions.add_parser(
        "list", parents=[database], help="a table of runs, newest first", description="Runs, newest first."
    )
    listing.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs in this status")
    listing.add_argument("--workflow", metavar="ID", help="only runs of this workflow")
    listing.add_argument("--limit", type=_limit, default=20, help="runs per page (default 20)")
    listing.add_argument("--cursor", help="where the next page starts (printed under a full page)")
    listing.set_defaults(handler=_runs_list)

    show = actions.add_parser(
        "show",
        parents=[database],
        help="a run's fields and its steps as a tree",
        description="A run's fields (suspend and resume data as JSON) and its steps as a tree.",
    )
    show.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)
    show.add_argument(
        "--mermaid", action="store_true", help="draw the run as a Mermaid flowchart instead (mermaid.live)"
    )
    show.set_defaults(handler=_runs_show)

    resume = actions.add_parser(
        "resume",
        parents=[database],
        help="continue a suspended run here, and wait for it",
        description=(
            "Continue a suspended run in this process, from the action that suspended it, and "
            "wait until it ends or suspends again. This process runs it, so it must load the "
            "run's workflow: name it with --app."
        ),
    )
    resume.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)
    resume.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="a workflow (or a list of them, or a function returning one) to load, e.g. "
        "asyncflow._demo:WORKFLOW; repeatable",
    )
    resume.add_argument("--data", metavar="JSON", help="what ctx.resume_data will be (default: null)")
    resume.set_defaults(handler=_runs_resume)

    watch = actions.add_parser(
        "watch",
        parents=[database],
        help="follow a run live, whichever process executes it",
        description=(
            "Follow a run live, whichever process executes it, until it ends or suspends; then draw "
            "it. With --json, one JSON line per event as it happens. Exit code 0 when the run "
            "completes, 1 when it fails, 3 when it is suspended, 130 on Ctrl-C (the run goes on)."
        ),
    )
    watch.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)
    watch.add_argument("--after", metavar="CURSOR", help="start after this event's cursor (from --json)")
    watch.set_defaults(handler=_runs_watch)

    cancel = actions.add_parser(
        "cancel",
        parents=[database],
        help="cancel a run that has not ended",
        description="Cancel a pending, running, sleeping or suspended run.",
    )
    cancel.add_argument("run_id", metavar="RUN_ID", help=_RUN_ID_HELP)
    cancel.set_defaults(handler=_runs_cancel)


# ---- the parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncflow`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="asyncflow",
        description="asyncio-native workflows of stages of async actions that reshape their own run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Options every subcommand that prints takes, declared once.
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--no-color",
        action="store_true",
        help="do not colour the output (also off when NO_COLOR is set or output is not a terminal)",
    )
    output.add_argument("--json", action="store_true", help="write one JSON document, for scripts")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    _add_run(commands, output)
    _add_draw(commands, output)
    _add_demo(commands, output)
    _add_runs(commands, output)
    from ._worker import add_worker_command

    add_worker_command(commands, output)
    return parser


#: What ``asyncflow`` says when rich (the ``cli`` extra) is missing.
MISSING_EXTRA = "asyncflow: the command line needs rich: pip install 'asyncflow[cli]'"


def main(argv: list[str] | None = None) -> int:
    """Run the ``asyncflow`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        import rich  # noqa: F401  (the extra, checked once, before anything is drawn)
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 1
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help, --version and bad usage; hand back its code.
        return exit_.code if isinstance(exit_.code, int) else 2
    from ._core.errors import WorkflowError

    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``asyncflow runs list | head``): stop quietly, and keep the
        # interpreter's final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CommandError as exc:
        print(f"asyncflow: {exc}", file=sys.stderr)
        return exc.code
    except WorkflowError as exc:  # unknown run, a run that cannot be cancelled or resumed, a bad database
        print(f"asyncflow: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
