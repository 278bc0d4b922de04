"""Draw runs for a terminal: a run as a tree (:func:`format_run`), a run's
fields (:func:`format_run_info`) and a table of runs (:func:`format_runs`).

The tree follows the run's records (:attr:`RunResult.steps`): each stage
with its actions beneath it; an action's dynamic children beneath that
action; a dynamic stage beneath the stage that inserted it, after that
stage's actions. Durations sit right-aligned in one column.

In a sequential stage this tree order *is* the execution order. In a
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

import json
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._core.errors import RecordedError
from ._core.execute import REPLAYED
from ._core.records import RunResult, RunStatus, StepRecord, StepStatus, short_run_id
from .backends import RunInfo

__all__ = ["format_run", "format_run_info", "format_runs"]

# SGR codes; one style per meaning, so the colours read as a legend.
_RESET = "\x1b[0m"
_BOLD = "1"
_DIM = "2"
_RED = "31"
_GREEN = "32"
_YELLOW = "33"
_BLUE = "34"
_MAGENTA = "35"
_CYAN = "36"

_STEP_STYLE = {
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
_BAILED = "bailed: "  # how the runner words the reason on the action that bailed
_SUSPENDED = "suspended: "  # ... and on the action that suspended the run
_REPLAYED = REPLAYED  # ... and on an action replayed after a restart


class _Glyphs:
    """The characters the tree is drawn with (Unicode, or ASCII for narrow encodings)."""

    __slots__ = ("branch", "dot", "ellipsis", "last", "pipe", "replay", "space", "status")

    def __init__(self, *, unicode: bool) -> None:
        if unicode:
            self.branch, self.last, self.pipe, self.space = "├─ ", "└─ ", "│  ", "   "
            self.ellipsis, self.dot, self.replay = "…", " · ", "↺"
            self.status = {
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


def _build_tree(steps: list[StepRecord]) -> list[_Node]:
    """Hang each record under the stage or action that inserted it (linear time)."""
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
            parent = _stage_parent(stages, record)
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


def _stage_parent(stages: dict[str, _Node], record: StepRecord) -> _Node | None:
    if not record.dynamic or record.inserted_by_stage is None:
        return None
    return stages.get(record.inserted_by_stage)


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
        if record.dynamic and record.kind == "stage" and record.inserted_by:
            inserter = record.inserted_by[len(record.inserted_by_stage or "") + 1 :]
            optional.append((f"  (inserted by {inserter})", _DIM))
        if replayed:
            took = self.earlier.get(id(record))
            if took is not None:
                right = f"{self.glyphs.replay} {_duration(took):>{_DURATION_WIDTH - 2}}"
            elif record.kind == "action" and record.stage_id in self.replayed_stages:
                right = ""  # its stage's line says it, once, rather than a column of marks
            else:
                right = f"{self.glyphs.replay} replayed"
        elif record.status is StepStatus.SKIPPED:
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
        elif record.reason and record.reason.startswith(_BAILED):
            self.detail(record.reason.removeprefix(_BAILED), detail_prefix, _YELLOW)
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
        if record.dynamic:
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
            reason = (record.reason or "").removeprefix(_SUSPENDED)
            marks.append((f"  suspended{': ' + reason if reason else ''}", _BLUE))
        elif record.reason and record.reason.startswith(_BAILED):
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
    return record.kind == "action" and record.status is StepStatus.COMPLETED and record.reason == _REPLAYED


def _paint(segments: _Segments, color: bool) -> str:
    if not color:
        return "".join(text for text, _ in segments).rstrip()
    return "".join(
        f"\x1b[{style}m{text}{_RESET}" if style and text.strip() else text for text, style in segments
    ).rstrip()


def _step_keys(steps: Sequence[StepRecord]) -> list[tuple[str, str, str | None, int]]:
    """A key per record that names the same step in another execution of the run."""
    seen: dict[tuple[str, str, str | None], int] = {}
    keys = []
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
        color: add ANSI colours (green completed, yellow skipped, red
            failed, cyan dynamic); pass ``False`` for files and pipes.
        width: the number of columns to fit every line into (at least 40).
        unicode: draw with box-drawing glyphs; ``False`` uses ASCII only.
        earlier: the result of the execution before this one (a durable
            run resumed in the same process): replayed steps show the
            durations they took then, and the total counts both executions.

    Returns:
        The text, lines joined with ``"\\n"``, without a trailing newline.
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
        "dynamic": sum(s.dynamic for s in steps),
        "skipped": sum(s.status is StepStatus.SKIPPED for s in steps),
        "failed": sum(s.status is StepStatus.FAILED for s in actions),
        "cancelled": sum(s.status is StepStatus.CANCELLED for s in actions),
        "replayed": sum(_replayed(s) for s in actions),
    }
    details = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    optional = [(f" ({details})", _DIM)] if details else []
    renderer.line(summary, _duration(duration), "", optional=optional)
    return "\n".join(_paint(line, color) for line in renderer.lines)


# ---- runs of a database -------------------------------------------------------------

_GAP = "  "
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


def _cut(text: str, room: int, ellipsis: str) -> str:
    return text if len(text) <= room else text[: max(room - len(ellipsis), 0)] + ellipsis


def format_runs(
    runs: Sequence[RunInfo],
    *,
    color: bool,
    width: int = 80,
    unicode: bool = True,
    now: float | None = None,
) -> str:
    """Draw ``runs`` as a table: short run id, workflow, status, age, last change, and a note.

    The note is a failed run's error, a suspended run's reason, a bailed
    run's reason or when a sleeping run wakes, cut to what fits ``width``
    (``asyncflow runs show`` gives it whole). Times are ages (``5m ago``)
    as of ``now`` (default: the current time).

    Returns:
        The header and one line per run, joined with ``"\\n"`` (no trailing newline).
    """
    width = max(width, 40)
    ellipsis = "…" if unicode else "~"
    now = time.time() if now is None else now
    rows = [
        (
            short_run_id(info.run_id),
            info.workflow_id,
            info.status,
            _ago(now - info.created_at),
            _ago(now - info.updated_at),
            _note(info, now),
        )
        for info in runs
    ]
    headers = ("RUN", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "NOTE")
    widths = [max([len(h), *(len(str(row[i])) for row in rows)]) for i, h in enumerate(headers[:5])]
    widths[1] = min(widths[1], 24)
    fixed = sum(widths) + len(_GAP) * len(widths)
    longest_note = max((len(row[5]) for row in rows), default=0)
    notes = longest_note > 0
    wanted = min(longest_note, 20)
    if notes and width - fixed < wanted:
        # Give the note some room at the workflow's expense, down to 14 columns.
        widths[1] = max(14, widths[1] - (wanted - (width - fixed)))
        fixed = sum(widths) + len(_GAP) * len(widths)
    note_room = width - fixed
    notes = notes and note_room >= 8

    def cells(values: Sequence[str], styles: Sequence[str]) -> _Segments:
        line: _Segments = []
        for index, (value, style) in enumerate(zip(values, styles, strict=True)):
            room = widths[index] if index < len(widths) else note_room
            text = _cut(value, room, ellipsis)
            last = index == len(values) - 1
            line.append((text, style))
            if not last:
                line.append((" " * (room - len(text)) + _GAP, ""))
        return line

    columns = 6 if notes else 5
    lines = [cells(headers[:columns], [_BOLD] * columns)]
    for run_id, workflow_id, status, created, updated, note in rows:
        values = (run_id, workflow_id, status.value, created, updated, note)[:columns]
        styles = ("", "", _RUN_STYLE.get(status, ""), _DIM, _DIM, _NOTE_STYLE.get(status, ""))[:columns]
        lines.append(cells(values, styles))
    return "\n".join(_paint(line, color) for line in lines)


def _json_lines(value: Any, room: int) -> list[str]:
    """``value`` as JSON: on one line if it fits ``room`` columns, else indented."""
    compact = json.dumps(value, ensure_ascii=False)
    if len(compact) <= room:
        return [compact]
    return json.dumps(value, ensure_ascii=False, indent=2).splitlines()


def format_run_info(info: RunInfo, *, color: bool, width: int = 80) -> str:
    """Draw what the database knows of a run as ``label  value`` lines.

    Always the id, workflow, status and times; then whichever apply: the
    version of the workflow it started on, the idempotency key, who holds
    the run, when it wakes, why it is suspended with the data it gave (and
    the data it was resumed with), the error and where it happened, the
    bail reason. Data is shown as JSON, whole.
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
    if info.suspend_reason is not None:
        where = f" (at step {info.suspended_step})" if info.suspended_step else ""
        fields.append(("suspended", f"{info.suspend_reason}{where}", _BLUE))
    label_width = max(len(label) for label in ("suspend data", *(f[0] for f in fields))) + 2
    room = width - label_width
    if info.suspend_reason is not None or info.suspend_data is not None:
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
    lines: list[_Segments] = []
    for label, value, style in fields:
        texts = value if isinstance(value, list) else textwrap.wrap(_one_line(value), room) or [""]
        for index, text in enumerate(texts):
            head = label.ljust(label_width) if index == 0 else " " * label_width
            lines.append([(head, _DIM), (text, style)])
    return "\n".join(_paint(line, color) for line in lines)
