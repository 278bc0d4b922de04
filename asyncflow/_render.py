"""Draw runs for a terminal, on ``rich``: a run as a tree (:func:`run_lines`,
:func:`format_run`), a run's fields (:func:`format_run_info`), a table of runs
(:func:`runs_table`, :func:`format_runs`), a definition (:func:`definition_tree`),
a run followed live from its events (:class:`LiveRun`), and the JSON views
every command prints with ``--json``.

The tree follows the run's records (:attr:`RunResult.steps`): stages at one
level, in the order they ran, each stage inserted at run time marked with the
action that inserted it (drawn beneath that stage, the tree was read as "runs
inside it"); each stage's actions beneath it, and an action's dynamic
children beneath that action. Durations sit right-aligned in one column:
rich's ``Tree`` has no such column, so the guides are drawn here and rich
does the styling, the terminal detection and ``NO_COLOR``.

In a sequential stage the tree order *is* the execution order. In a
concurrent stage, siblings keep the order they started in, and actions
inserted by one action sit beneath it even when a sibling started between
them: the tree shows who inserted what, which interleaved start times would
hide.

A durable run that continued after a suspension or a crash replays the
actions that completed before: they did not run again, so they are drawn
dimmed and marked ``↺`` where the duration would be (with the duration they
took before, when the caller still has that execution's result).
"""

from __future__ import annotations

import io
import json
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ._core.errors import RecordedError
from ._core.events import Event, EventKind, RunEvent
from ._core.records import (
    RunResult,
    RunStatus,
    StepKind,
    StepNote,
    StepRecord,
    StepStatus,
    is_insertion,
    read_step_reason,
    short_run_id,
)
from ._core.workflow import Workflow
from .backends import RunInfo

__all__ = [
    "LiveRun",
    "definition_json",
    "definition_tree",
    "format_run",
    "format_run_info",
    "format_runs",
    "run_info_json",
    "run_json",
    "run_lines",
    "runs_table",
    "to_text",
]

# rich styles; one per meaning, so the colours read as a legend.
_BOLD = "bold"
_DIM = "dim"
_RED = "red"
_GREEN = "green"
_YELLOW = "yellow"
_BLUE = "blue"
_MAGENTA = "magenta"
_CYAN = "cyan"

_STEP_STYLE = {
    StepStatus.RUNNING: _CYAN,
    StepStatus.PENDING: _DIM,
    StepStatus.COMPLETED: _GREEN,
    StepStatus.FAILED: _RED,
    StepStatus.SKIPPED: _YELLOW,
    StepStatus.CANCELLED: _MAGENTA,
    StepStatus.SUSPENDED: _BLUE,
}
_RUN_STYLE = {
    RunStatus.COMPLETED: _GREEN,
    RunStatus.FAILED: _RED,
    RunStatus.BAILED: _YELLOW,
    RunStatus.CANCELLED: _MAGENTA,
    RunStatus.SKIPPED: _YELLOW,
    RunStatus.SUSPENDED: _BLUE,
    RunStatus.SLEEPING: _BLUE,
    RunStatus.RUNNING: _CYAN,
    RunStatus.PENDING: _DIM,
}

_DURATION_WIDTH = 11  # "12,345.6 ms"
_MAX_DETAIL_LINES = 3


class _Glyphs:
    """The characters the tree is drawn with (Unicode, or ASCII for narrow encodings)."""

    __slots__ = ("branch", "dot", "ellipsis", "last", "pipe", "replay", "space", "status")

    def __init__(self, *, unicode: bool) -> None:
        if unicode:
            self.branch, self.last, self.pipe, self.space = "├─ ", "└─ ", "│  ", "   "
            self.ellipsis, self.dot, self.replay = "…", " · ", "↺"
            self.status = {
                StepStatus.RUNNING: "▶",
                StepStatus.PENDING: "·",
                StepStatus.COMPLETED: "✓",
                StepStatus.FAILED: "✗",
                StepStatus.SKIPPED: "○",
                StepStatus.CANCELLED: "⊘",
                StepStatus.SUSPENDED: "‖",
            }
        else:
            self.branch, self.last, self.pipe, self.space = "|- ", "`- ", "|  ", "   "
            self.ellipsis, self.dot, self.replay = "~", " - ", "@"
            self.status = {
                StepStatus.RUNNING: ">",
                StepStatus.PENDING: ".",
                StepStatus.COMPLETED: "v",
                StepStatus.FAILED: "x",
                StepStatus.SKIPPED: "-",
                StepStatus.CANCELLED: "!",
                StepStatus.SUSPENDED: "=",
            }


class _Node:
    """One record in the tree, with the records drawn beneath it."""

    __slots__ = ("children", "record")

    def __init__(self, record: StepRecord) -> None:
        self.record = record
        self.children: list[_Node] = []


# A line is a list of (text, style) segments, so lengths are measured on the
# plain text and colour is added (or not) at the very end.
_Segments = list[tuple[str, str]]


def _build_tree(steps: Sequence[StepRecord]) -> list[_Node]:
    """Stages at one level in the order they ran; actions beneath their stage or inserter (linear time)."""
    roots: list[_Node] = []
    stages: dict[str, _Node] = {}  # stage id -> its (latest) node
    # ("stage/action", depth) -> the latest action node of that name and depth:
    # names need not be unique, and the nearest earlier one is the inserter
    # (an inserted action starts only after the action that inserted it ends).
    actions: dict[tuple[str, int], _Node] = {}
    for record in steps:
        node = _Node(record)
        parent: _Node | None
        if record.kind == "stage":
            parent = None
            stages[record.stage_id] = node
        else:
            parent = None
            if record.dynamic and record.inserted_by is not None:
                parent = actions.get((record.inserted_by, record.depth - 1))
            if parent is None:
                parent = stages.get(record.stage_id)
            actions[f"{record.stage_id}/{record.action_name}", record.depth] = node
        (parent.children if parent is not None else roots).append(node)
    return roots


def _duration(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.1f} ms" if ms >= 0.05 else "<0.1 ms"


def _error_text(error: BaseException) -> str:
    if isinstance(error, RecordedError):  # read back from a database: it names the original type
        name, message = error.type_name, error.message
    else:
        name, message = type(error).__name__, str(error)
    message = " ".join(message.split())
    return f"{name}: {message}" if message else name


def _error_identity(error: BaseException) -> object:
    """What makes two records' errors the same error (read back from a database, they are copies)."""
    return _error_text(error) if isinstance(error, RecordedError) else id(error)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _fit(segments: _Segments, budget: int, ellipsis: str) -> _Segments:
    """Cut ``segments`` to at most ``budget`` characters, marking a cut with ``ellipsis``."""
    if sum(len(text) for text, _ in segments) <= budget:
        return segments
    fitted: _Segments = []
    room = budget - len(ellipsis)
    for text, style in segments:
        if room <= 0:
            break
        fitted.append((text[:room], style))
        room -= len(text[:room])
    fitted.append((ellipsis, _DIM))
    return fitted


class _Renderer:
    """Turns a tree of records into lines of (text, style) segments."""

    def __init__(
        self,
        *,
        width: int,
        glyphs: _Glyphs,
        shown_below: set[object],
        replayed_stages: set[str],
        earlier: dict[int, float],
    ) -> None:
        self.width = width
        self.glyphs = glyphs
        # Stages whose every action was replayed: they did no work in this execution.
        self.replayed_stages = replayed_stages
        # id of a replayed record -> how long it took in the earlier execution.
        self.earlier = earlier
        # ids of errors an action record carries: a stage shares its failed
        # action's error, which is drawn once, at the action.
        self.shown_below = shown_below
        # Past this indentation, deeper levels stay at it, so a long chain of
        # nested insertions still leaves room for the names.
        self.max_indent = width // 2
        self.lines: list[_Segments] = []

    def line(
        self,
        left: _Segments,
        right: str = "",
        right_style: str = _DIM,
        *,
        optional: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Add a line with ``right`` right-aligned in the duration column.

        ``optional`` segments go after ``left`` when the line has room for them.
        """
        budget = self.width - (max(_DURATION_WIDTH, len(right)) + 1 if right else 0)
        if optional and sum(len(text) for text, _ in [*left, *optional]) <= budget:
            left = [*left, *optional]
        if not right:
            self.lines.append(_fit(left, self.width, self.glyphs.ellipsis))
            return
        column = max(_DURATION_WIDTH, len(right))
        left = _fit(left, self.width - column - 1, self.glyphs.ellipsis)
        gap = self.width - sum(len(text) for text, _ in left) - len(right)
        self.lines.append([*left, (" " * gap, ""), (right, right_style)])

    def tree(self, roots: list[_Node]) -> None:
        """Draw every node, depth first, without recursion (nesting can run 10,000 deep)."""
        g = self.glyphs
        stack: list[tuple[list[_Node], int, str]] = [(roots, 0, "")]  # siblings, next index, prefix
        while stack:
            siblings, index, prefix = stack.pop()
            if index >= len(siblings):
                continue
            stack.append((siblings, index + 1, prefix))
            node = siblings[index]
            last = index == len(siblings) - 1
            child_prefix = prefix + (g.space if last else g.pipe)
            if len(child_prefix) > self.max_indent:
                child_prefix = prefix
            self.node(node, prefix, g.last if last else g.branch, child_prefix)
            if node.children:
                stack.append((node.children, 0, child_prefix))

    def node(self, node: _Node, prefix: str, connector: str, child_prefix: str) -> None:
        """Draw one step and its error, bail reason or recovered error, if any."""
        record = node.record
        status_style = _STEP_STYLE.get(record.status, "")
        name = record.stage_id if record.kind == "stage" else (record.action_name or "?")
        replayed = _replayed(record) or (record.kind == "stage" and record.stage_id in self.replayed_stages)
        left: _Segments = [
            (prefix + connector, _DIM),
            (self.glyphs.status.get(record.status, "·"), status_style),
            (" ", ""),
            # Replayed steps recede, unless the earlier execution's timings make the tree whole again.
            (
                name,
                _DIM
                if replayed and id(record) not in self.earlier
                else _BOLD
                if record.kind == "stage"
                else "",
            ),
        ]
        left.extend(self.markers(record))
        optional: _Segments = []
        if replayed:
            took = self.earlier.get(id(record))
            if took is not None:
                right = f"{self.glyphs.replay} {_duration(took):>{_DURATION_WIDTH - 2}}"
            elif record.kind == "action" and record.stage_id in self.replayed_stages:
                right = ""  # its stage's line says it, once, rather than a column of marks
            else:
                right = f"{self.glyphs.replay} replayed"
        elif record.status in (StepStatus.SKIPPED, StepStatus.PENDING):
            right = ""
        else:
            right = _duration(record.duration)
        self.line(left, right, optional=optional)
        # The details line up under the step's name, inside its branch.
        detail_prefix = child_prefix + (self.glyphs.pipe[0] + " " if node.children else "  ")
        # A stage shares its failed action's error: draw it once, at the action.
        if record.error is not None and (
            record.kind == "action" or _error_identity(record.error) not in self.shown_below
        ):
            self.detail(_error_text(record.error), detail_prefix, _RED)
        elif (bail := read_step_reason(record.reason))[0] is StepNote.BAILED:
            self.detail(bail[1], detail_prefix, _YELLOW)
        recovered = record.recovered_error
        if (
            recovered is not None
            and recovered is not record.error
            and (record.kind == "action" or _error_identity(recovered) not in self.shown_below)
        ):
            self.detail(f"recovered from {_error_text(recovered)}", detail_prefix, _YELLOW)

    def markers(self, record: StepRecord) -> _Segments:
        """What to say after the step's name: dynamic, skipped, cancelled, bailed."""
        marks: _Segments = []
        if record.dynamic and record.kind == "stage" and record.inserted_by:
            # Stages are drawn at one level: who inserted this one is said here.
            marks.append((f"  + inserted by {record.inserted_by}", _CYAN))
        elif is_insertion(record):  # not each action of an inserted stage: the stage says it
            marks.append(("  + dynamic", _CYAN))
        if record.attempts > 1:
            marks.append((f"  {record.attempts} attempts", _YELLOW))
        if record.status is StepStatus.SKIPPED:
            marks.append((f"  skipped: {record.reason or 'disabled'}", _YELLOW))
        elif record.status is StepStatus.CANCELLED:
            marks.append((f"  cancelled{': ' + record.reason if record.reason else ''}", _MAGENTA))
        elif record.status is StepStatus.FAILED:
            marks.append(("  failed", _RED))
        elif record.status is StepStatus.SUSPENDED and record.kind == "action":
            # The stage around it is suspended too; its glyph says so, the reason is told once.
            note, reason = read_step_reason(record.reason)
            if note is not StepNote.SUSPENDED:
                reason = record.reason or ""
            marks.append((f"  suspended{': ' + reason if reason else ''}", _BLUE))
        elif read_step_reason(record.reason)[0] is StepNote.BAILED:
            marks.append(("  bailed", _YELLOW))
        return marks

    def detail(self, text: str, prefix: str, style: str) -> None:
        """Draw ``text`` (an error, a bail reason) under its step, wrapped, a few lines at most."""
        room = max(self.width - len(prefix), 20)
        wrapped = textwrap.wrap(
            " ".join(text.split()),
            room,
            max_lines=_MAX_DETAIL_LINES,
            placeholder=" " + self.glyphs.ellipsis,
        )
        for line in wrapped:
            self.line([(prefix, _DIM), (line, style)])


def _replayed(record: StepRecord) -> bool:
    return (
        record.kind == StepKind.ACTION
        and record.status is StepStatus.COMPLETED
        and read_step_reason(record.reason)[0] is StepNote.REPLAYED
    )


def _paint(segments: _Segments) -> Text:
    """One line as rich ``Text``, cut (never wrapped) at the width it was laid out for."""
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    for text, style in segments:
        line.append(text, style if style and text.strip() else "")
    line.rstrip()
    return line


def to_text(renderables: Sequence[RenderableType], *, color: bool, width: int = 80) -> str:
    """``renderables`` as one string: plain, or with the ANSI styles rich writes for a terminal."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        color_system="standard" if color else None,
        width=max(width, 40),
        no_color=not color,
        emoji=False,
        highlight=False,
    )
    for renderable in renderables:
        console.print(renderable)
    text = buffer.getvalue().removesuffix("\n")
    return text if color else "\n".join(line.rstrip() for line in text.split("\n"))


def _step_keys(steps: Sequence[StepRecord]) -> list[tuple[str, str, str | None, int]]:
    """A key per record that names the same step in another execution of the run."""
    seen: dict[tuple[str, str, str | None], int] = {}
    keys: list[tuple[str, str, str | None, int]] = []
    for record in steps:
        what = (record.kind, record.stage_id, record.action_name)
        seen[what] = seen.get(what, -1) + 1
        keys.append((*what, seen[what]))
    return keys


def format_run(
    result: RunResult,
    *,
    color: bool,
    width: int = 80,
    unicode: bool = True,
    earlier: RunResult | None = None,
) -> str:
    """:func:`run_lines` as a string (``color``: with ANSI styles)."""
    return to_text(run_lines(result, width=width, unicode=unicode, earlier=earlier), color=color, width=width)


def run_lines(
    result: RunResult,
    *,
    width: int = 80,
    unicode: bool = True,
    earlier: RunResult | None = None,
) -> list[Text]:
    """Draw ``result`` as a tree of its stages and actions, for a terminal.

    The first line names the workflow, the run (short id) and how it ended;
    then each stage with its actions beneath it, dynamic steps beneath what
    inserted them and marked ``+ dynamic``, skipped steps with their reason,
    failed steps with their error, the step that suspended the run with its
    reason; durations are right-aligned in ms, and steps replayed from an
    earlier execution of a durable run say ``↺ replayed`` there instead. The
    last line gives the status, the counts and the duration of this execution.

    Args:
        result: the run to draw.
        width: the number of columns to fit every line into (at least 40).
        unicode: draw with box-drawing glyphs; ``False`` uses ASCII only.
        earlier: the result of the execution before this one (a durable
            run resumed in the same process): replayed steps show the
            durations they took then, and the total counts both executions.

    Returns:
        One styled line per row (green completed, yellow skipped, red failed, cyan dynamic).
    """
    width = max(width, 40)
    glyphs = _Glyphs(unicode=unicode)
    steps = result.steps
    shown_below = {
        _error_identity(error)
        for s in steps
        if s.kind == "action"
        for error in (s.error, s.recovered_error)
        if error is not None
    }
    worked = {
        s.stage_id
        for s in steps
        if s.kind == "action" and not _replayed(s) and s.status is not StepStatus.SKIPPED
    }
    replayed_stages = {s.stage_id for s in steps if _replayed(s)} - worked
    took: dict[int, float] = {}
    duration = result.duration
    if earlier is not None:
        before = {
            key: record.duration
            for key, record in zip(_step_keys(earlier.steps), earlier.steps, strict=True)
            if record.status is StepStatus.COMPLETED and not _replayed(record)
        }
        for key, record in zip(_step_keys(steps), steps, strict=True):
            if key in before and (
                _replayed(record) or (record.kind == "stage" and record.stage_id in replayed_stages)
            ):
                took[id(record)] = before[key]
        duration += earlier.duration
    renderer = _Renderer(
        width=width,
        glyphs=glyphs,
        shown_below=shown_below,
        replayed_stages=replayed_stages,
        earlier=took,
    )
    run_style = _RUN_STYLE.get(result.status, "")

    renderer.line(
        [
            (result.workflow_id, _BOLD),
            (glyphs.dot + "run ", _DIM),
            (short_run_id(result.run_id), ""),
            (glyphs.dot, _DIM),
            (result.status.value, run_style),
        ]
    )
    renderer.tree(_build_tree(steps))

    stages = [s for s in steps if s.kind == "stage"]
    actions = [s for s in steps if s.kind == "action"]
    summary: _Segments = [
        (result.status.value, run_style),
        (f": {_plural(len(stages), 'stage')}, {_plural(len(actions), 'action')}", ""),
    ]
    counts = {
        "dynamic": sum(map(is_insertion, steps)),
        "skipped": sum(s.status is StepStatus.SKIPPED for s in steps),
        "failed": sum(s.status is StepStatus.FAILED for s in actions),
        "cancelled": sum(s.status is StepStatus.CANCELLED for s in actions),
        "replayed": sum(_replayed(s) for s in actions),
    }
    details = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    optional = [(f" ({details})", _DIM)] if details else []
    renderer.line(summary, _duration(duration), "", optional=optional)
    return [_paint(line) for line in renderer.lines]


# ---- runs of a database -------------------------------------------------------------

_NOTE_STYLE = {RunStatus.FAILED: _RED, RunStatus.SUSPENDED: _BLUE, RunStatus.BAILED: _YELLOW}


def _ago(seconds: float) -> str:
    """``seconds`` in the past as a short age: ``just now``, ``42s ago``, ``5m ago``, ``3h ago``..."""
    if seconds < 2:
        return "just now"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"  # unreachable: seconds >= 2 matches "s"


def _timestamp(at: float) -> str:
    """An absolute time in the local zone, with the zone's name."""
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _note(info: RunInfo, now: float) -> str:
    """What to say about a run beyond its status: why it stopped or waits."""
    if info.status is RunStatus.FAILED:
        return _one_line(info.error or "")
    if info.status is RunStatus.SUSPENDED:
        return _one_line(info.suspend_reason or "")
    if info.status is RunStatus.BAILED:
        return _one_line(info.bail_reason or "")
    if info.status is RunStatus.SLEEPING and info.wake_at is not None:
        left = info.wake_at - now
        return f"wakes in {_ago(left).removesuffix(' ago')}" if left >= 2 else "wakes now"
    if info.status is RunStatus.RUNNING:
        # A running run nobody holds (its engine shut down or died) waits for an engine to take it over.
        if info.owner is None:
            return "not held by any engine"
        if info.lease_until is not None and info.lease_until < now:
            return "lease expired"
    if info.owner is not None and info.status in (RunStatus.RUNNING, RunStatus.PENDING):
        return f"held by {info.owner}"
    return ""


def runs_table(
    runs: Sequence[RunInfo], *, width: int = 80, unicode: bool = True, now: float | None = None
) -> Table:
    """``runs`` as a rich table: short run id, workflow, status, age, last change, and a note.

    The note is a failed run's error, a suspended run's reason, a bailed
    run's reason or when a sleeping run wakes, cut to what fits ``width``
    (``asyncflow runs show`` gives it whole). Times are ages (``5m ago``)
    as of ``now`` (default: the current time).
    """
    now = time.time() if now is None else now
    rows = [
        [
            short_run_id(info.run_id),
            info.workflow_id,
            info.status.value,
            _ago(now - info.created_at),
            _ago(now - info.updated_at),
            _note(info, now),
        ]
        for info in runs
    ]
    table = Table(
        box=None, pad_edge=False, show_edge=False, padding=(0, 2, 0, 0), header_style=_BOLD, expand=False
    )
    headers = ["RUN", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    widths = [max([len(header), *(len(row[index]) for row in rows)]) for index, header in enumerate(headers)]
    widths[1] = min(widths[1], 24)
    longest_note = max((len(row[5]) for row in rows), default=0)
    fixed = sum(widths) + 2 * len(widths)
    if longest_note and width - fixed < min(longest_note, 20):
        # Give the note some room at the workflow's expense, down to 14 columns.
        widths[1] = max(14, widths[1] - (min(longest_note, 20) - (width - fixed)))
        fixed = sum(widths) + 2 * len(widths)
    for header, column_width in zip(headers, widths, strict=True):
        style = _DIM if header in ("CREATED", "UPDATED") else ""
        table.add_column(header, no_wrap=True, overflow="ellipsis", width=column_width, style=style)
    notes = longest_note > 0 and width - fixed >= 8
    if notes:
        table.add_column("NOTE", no_wrap=True, overflow="ellipsis", max_width=width - fixed)
    for info, row in zip(runs, rows, strict=True):
        cells: list[Text | str] = [*row[:2], Text(row[2], _RUN_STYLE.get(info.status, "")), *row[3:5]]
        if notes:
            cells.append(Text(row[5], _NOTE_STYLE.get(info.status, "")))
        table.add_row(*cells)
    return table


def format_runs(
    runs: Sequence[RunInfo],
    *,
    color: bool,
    width: int = 80,
    unicode: bool = True,
    now: float | None = None,
) -> str:
    """:func:`runs_table` as a string ``width`` columns wide (no trailing newline)."""
    width = max(width, 40)
    return to_text([runs_table(runs, width=width, unicode=unicode, now=now)], color=color, width=width)


def _json_lines(value: Any, room: int) -> list[str]:
    """``value`` as JSON: on one line if it fits ``room`` columns, else indented."""
    compact = json.dumps(value, ensure_ascii=False)
    if len(compact) <= room:
        return [compact]
    return json.dumps(value, ensure_ascii=False, indent=2).splitlines()


def run_info_lines(info: RunInfo, *, width: int = 80) -> list[Text]:
    """What the database knows of a run as ``label  value`` lines.

    Always the id, workflow, status and times; then whichever apply: the
    version of the workflow it started on, the idempotency key, who holds
    the run, when it wakes, why it is suspended with the data it gave (only
    while it is suspended), the data it was resumed with, the error and
    where it happened, the bail reason. Data is shown as JSON, whole.
    """
    width = max(width, 40)
    fields: list[tuple[str, str | list[str], str]] = [
        ("run", info.run_id, ""),
        ("workflow", info.workflow_id, _BOLD),
        ("status", info.status.value, _RUN_STYLE.get(info.status, "")),
        ("created", _timestamp(info.created_at), ""),
        ("updated", _timestamp(info.updated_at), ""),
    ]
    if info.workflow_version is not None:
        fields.append(("version", info.workflow_version, _DIM))
    if info.idempotency_key is not None:
        fields.append(("idempotency key", info.idempotency_key, ""))
    if info.owner is not None:
        until = ""
        if info.lease_until is not None:
            expired = info.lease_until < time.time()
            until = f", lease {'expired' if expired else 'until'} {_timestamp(info.lease_until)}"
        fields.append(("held by", f"{info.owner}{until}", _DIM))
    if info.wake_at is not None and info.status is RunStatus.SLEEPING:
        fields.append(("wakes at", _timestamp(info.wake_at), _BLUE))
    # The database keeps why a run was suspended after it is resumed: it is said only while it holds.
    suspended = info.status is RunStatus.SUSPENDED
    if suspended and info.suspend_reason is not None:
        where = f" (at step {info.suspended_step})" if info.suspended_step else ""
        fields.append(("suspended", f"{info.suspend_reason}{where}", _BLUE))
    label_width = max(len(label) for label in ("suspend data", *(f[0] for f in fields))) + 2
    room = width - label_width
    if suspended and (info.suspend_reason is not None or info.suspend_data is not None):
        fields.append(("suspend data", _json_lines(info.suspend_data, room), ""))
    if info.resume_data is not None:
        fields.append(("resume data", _json_lines(info.resume_data, room), ""))
    if info.error is not None:
        fields.append(("error", info.error, _RED))
    if info.failed_stage is not None:
        where = f"stage {info.failed_stage!r}"
        if info.failed_action is not None:
            where += f", action {info.failed_action!r}"
        fields.append(("failed at", where, _RED))
    if info.bail_reason is not None:
        fields.append(("bail reason", info.bail_reason, _YELLOW))
    label_width = max(label_width, *(len(f[0]) + 2 for f in fields))
    room = max(width - label_width, 20)
    lines: list[Text] = []
    for label, value, style in fields:
        texts = value if isinstance(value, list) else textwrap.wrap(_one_line(value), room) or [""]
        for index, text in enumerate(texts):
            head_text = label.ljust(label_width) if index == 0 else " " * label_width
            lines.append(_paint([(head_text, _DIM), (text, style)]))
    return lines


def format_run_info(info: RunInfo, *, color: bool, width: int = 80) -> str:
    """:func:`run_info_lines` as a string."""
    return to_text(run_info_lines(info, width=width), color=color, width=width)


# ---- a definition -------------------------------------------------------------------


def definition_tree(workflow: Workflow) -> Tree:
    """A workflow's definition as a rich tree: its stages in order, each with its actions.

    rich draws the guides in ASCII where the output's encoding has no box-drawing characters.
    """
    title = Text(workflow.id, _BOLD)
    if workflow.name != workflow.id:
        title.append(f"  {workflow.name}", _DIM)
    tree = Tree(title, guide_style=_DIM)
    for stage in workflow.stages:
        label = Text(stage.id, _BOLD)
        if stage.concurrency != 1:
            label.append(f"  up to {stage.concurrency} at once", _DIM)
        branch = tree.add(label)
        for action in stage.actions:
            branch.add(Text(action.name))
    return tree


def definition_json(workflow: Workflow) -> dict[str, Any]:
    """A workflow's definition for ``--json``: its id, name and stages with their actions' names."""
    return {
        "workflow_id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "stages": [
            {
                "id": stage.id,
                "name": stage.name,
                "concurrency": stage.concurrency,
                "actions": [action.name for action in stage.actions],
            }
            for stage in workflow.stages
        ],
    }


# ---- JSON views ---------------------------------------------------------------------


def _error_json(error: BaseException | None) -> dict[str, str] | None:
    if error is None:
        return None
    if isinstance(error, RecordedError):
        return {"type": error.type_name, "message": error.message}
    return {"type": type(error).__name__, "message": str(error)}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it, else its ``repr`` (a store may hold any object in memory)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def step_json(record: StepRecord) -> dict[str, Any]:
    """One step record for ``--json``."""
    return {
        "kind": record.kind,
        "stage_id": record.stage_id,
        "action": record.action_name,
        "status": record.status.value,
        "dynamic": record.dynamic,
        "replayed": _replayed(record),
        "duration": record.duration,
        "started_at": record.started_at,
        "depth": record.depth,
        "inserted_by": record.inserted_by,
        "inserted_by_stage": record.inserted_by_stage,
        "reason": None if _replayed(record) else record.reason,
        "attempts": record.attempts,
        "error": _error_json(record.error),
        "recovered_error": _error_json(record.recovered_error),
    }


def run_json(result: RunResult) -> dict[str, Any]:
    """A run's result for ``--json``: status, timing, error, store (non-JSON values as repr), steps."""
    return {
        "run_id": result.run_id,
        "workflow_id": result.workflow_id,
        "status": result.status.value,
        "duration": result.duration,
        "error": _error_json(result.error),
        "bail_reason": result.bail_reason,
        "suspend_reason": result.suspend_reason,
        "suspend_data": _jsonable(result.suspend_data),
        "store": {str(key): _jsonable(value) for key, value in result.store.items()},
        "steps": [step_json(record) for record in result.steps],
    }


def run_info_json(info: RunInfo) -> dict[str, Any]:
    """What the database knows of a run, for ``--json`` (the steps once it has ended or suspended)."""
    return {
        "run_id": info.run_id,
        "workflow_id": info.workflow_id,
        "status": info.status.value,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "workflow_version": info.workflow_version,
        "idempotency_key": info.idempotency_key,
        "owner": info.owner,
        "lease_until": info.lease_until,
        "wake_at": info.wake_at,
        "suspend_reason": info.suspend_reason if info.status is RunStatus.SUSPENDED else None,
        "suspend_data": info.suspend_data if info.status is RunStatus.SUSPENDED else None,
        "suspended_step": info.suspended_step if info.status is RunStatus.SUSPENDED else None,
        "resume_data": info.resume_data,
        "error": info.error,
        "failed_stage": info.failed_stage,
        "failed_action": info.failed_action,
        "bail_reason": info.bail_reason,
    }


# ---- a run followed from its events -------------------------------------------------


def _as_error(error: BaseException | str | None) -> BaseException | None:
    """An event's error: the exception, or one read back from ``"Type: message"`` (``engine.watch``)."""
    if error is None or isinstance(error, BaseException):
        return error
    name, _, message = error.partition(": ")
    return RecordedError(name, message)


class LiveRun:
    """The tree of a run as its lifecycle events arrive, for ``asyncflow run``'s live view.

    Feed it every event of one run (:meth:`feed`); :meth:`lines` draws the
    tree so far (stages at one level in the order they started, inserted
    ones marked with their inserter, running steps marked ``▶``) and a
    progress line: steps done, running, elapsed.
    """

    def __init__(self, workflow_id: str, *, started: float | None = None) -> None:
        self.workflow_id = workflow_id
        self.run_id = ""
        self.status = RunStatus.RUNNING
        self.started = time.monotonic() if started is None else started
        self._steps: list[dict[str, Any]] = []  # StepRecord fields, in the order steps started
        self._stages: dict[str, int] = {}  # stage id -> index in _steps
        self._actions: dict[str, int] = {}  # action key -> index in _steps
        self._t0: float | None = None

    def feed(self, event: Event | RunEvent) -> None:
        """Take one event of the run into the tree (from ``runner.subscribe`` or ``engine.watch``)."""
        kind = event.kind
        if self._t0 is None:
            self._t0 = event.at
        if kind is EventKind.RUN_STARTED:
            self.run_id = event.run_id
        elif kind in (EventKind.STAGE_STARTED, EventKind.ACTION_STARTED) or (kind is EventKind.STEP_SKIPPED):
            self._start(event)
        elif kind in (EventKind.STAGE_FINISHED, EventKind.ACTION_FINISHED):
            step = self._find(event)
            if step is not None:
                step["status"] = StepStatus(event.status or "completed")
                step["duration"] = event.duration or 0.0
                step["error"] = _as_error(event.error)
                step["attempts"] = event.attempt or step["attempts"]
        elif kind is EventKind.ACTION_RETRY:
            step = self._find(event)
            if step is not None:
                step["attempts"] = event.attempt or step["attempts"]
        elif kind is EventKind.RUN_FINISHED or kind.value == "run_suspended":
            self.status = RunStatus(event.status or "suspended")

    def _find(self, event: Event | RunEvent) -> dict[str, Any] | None:
        if event.action_name is None:
            index = self._stages.get(event.stage_id or "")
        else:
            index = self._actions.get(event.key or "")
        return None if index is None else self._steps[index]

    def _start(self, event: Event | RunEvent) -> None:
        stage = event.action_name is None
        parent = None if event.parent_key is None else self._actions.get(event.parent_key)
        inserter = None if parent is None else self._steps[parent]
        if inserter is not None:
            depth = inserter["depth"] + 1
        else:  # a static step, or an action an inserted stage brought: its stage's depth
            own_stage = None if stage else self._stages.get(event.stage_id or "")
            depth = 0 if own_stage is None else self._steps[own_stage]["depth"]
        step: dict[str, Any] = {
            "kind": StepKind.STAGE if stage else StepKind.ACTION,
            "stage_id": event.stage_id or "",
            "action_name": event.action_name,
            "status": StepStatus.SKIPPED if event.kind is EventKind.STEP_SKIPPED else StepStatus.RUNNING,
            "dynamic": event.dynamic,
            "duration": 0.0,
            "started_at": event.at - (self._t0 or event.at),
            "depth": depth,
            "inserted_by": None if inserter is None else f"{inserter['stage_id']}/{inserter['action_name']}",
            "inserted_by_stage": None if inserter is None else inserter["stage_id"],
            "reason": event.reason,
            "error": None,
            "attempts": event.attempt or 0,
        }
        if stage:
            self._stages[step["stage_id"]] = len(self._steps)
        elif event.key is not None:
            self._actions[event.key] = len(self._steps)
        self._steps.append(step)

    def records(self, now: float | None = None) -> list[StepRecord]:
        """The steps so far, as step records (running ones with status running, their time so far)."""
        now = time.time() if now is None else now
        t0 = self._t0 or now
        return [
            StepRecord(**{**step, "duration": max(now - t0 - step["started_at"], 0.0)})
            if step["status"] is StepStatus.RUNNING
            else StepRecord(**step)
            for step in self._steps
        ]

    def progress(self, now: float | None = None) -> tuple[int, int, float]:
        """(steps done, steps running, seconds elapsed)."""
        done = sum(step["status"] not in (StepStatus.RUNNING, StepStatus.PENDING) for step in self._steps)
        running = sum(
            step["status"] is StepStatus.RUNNING and step["kind"] == "action" for step in self._steps
        )
        return done, running, (time.monotonic() if now is None else now) - self.started

    def lines(self, *, width: int = 80, unicode: bool = True, now: float | None = None) -> list[Text]:
        """The tree so far and the progress line."""
        width = max(width, 40)
        glyphs = _Glyphs(unicode=unicode)
        renderer = _Renderer(width=width, glyphs=glyphs, shown_below=set(), replayed_stages=set(), earlier={})
        short = short_run_id(self.run_id) if self.run_id else "…"
        renderer.line(
            [
                (self.workflow_id, _BOLD),
                (glyphs.dot + "run ", _DIM),
                (short, ""),
                (glyphs.dot, _DIM),
                (self.status.value, _RUN_STYLE.get(self.status, "")),
            ]
        )
        renderer.tree(_build_tree(self.records()))  # (running steps: their time so far)
        done, running, elapsed = self.progress(now)
        renderer.line(
            [(f"{_plural(done, 'step')} done, {running} running", _DIM)],
            f"{elapsed:,.1f} s",
            _DIM,
        )
        return [_paint(line) for line in renderer.lines]
