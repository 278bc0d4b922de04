"""Mermaid flowcharts of a workflow definition and of an executed run.

Both are plain text (``flowchart TD``) that renders on GitHub, in
mermaid.live, or in any Markdown viewer with Mermaid support. Each stage is
a subgraph holding its actions in order; in a run, inserted stages are
drawn inside the stage that inserted them, and inserted, skipped, failed and
cancelled steps carry classes with their own styles (the actions an inserted
stage brought with it are inside its subgraph, which is marked, not each).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from .records import is_insertion, short_run_id

if TYPE_CHECKING:
    from .records import RunResult, StepRecord
    from .workflow import Workflow

_STYLES = (
    "classDef completed fill:#e6f4ea,stroke:#34a853,color:#1e4620",
    "classDef failed fill:#fce8e6,stroke:#d93025,color:#7f1d1d",
    "classDef cancelled fill:#fef7e0,stroke:#f29900,color:#5c3c00",
    "classDef skipped fill:#f1f3f4,stroke:#9aa0a6,color:#5f6368,stroke-dasharray:4 3",
    "classDef pending fill:#ffffff,stroke:#9aa0a6,color:#5f6368",
    "classDef dynamic stroke-width:3px,stroke:#7b1fa2",
)


_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "`": "#96;", "\n": " ", "\r": " "}


def _label(text: str) -> str:
    """``text`` as a quoted Mermaid label, with Mermaid's entity codes for what it would read."""
    return '"' + "".join(_ESCAPES.get(char, char) for char in text) + '"'


def _comment(text: str) -> str:
    """``text`` safe inside a ``%%`` comment line."""
    return text.replace("\r", " ").replace("\n", " ")


def workflow_to_mermaid(workflow: Workflow) -> str:
    """A flowchart of the workflow's definition: stages in order, each with its actions."""
    lines = ["flowchart TD"]
    previous: str | None = None
    edges: list[str] = []
    for s_index, stage in enumerate(workflow.stages, start=1):
        sid = f"s{s_index}"
        title = stage.id if stage.name == stage.id else f"{stage.name} ({stage.id})"
        if stage.concurrency > 1:
            title += f" · concurrency {stage.concurrency}"
        lines.append(f"    subgraph {sid}[{_label(title)}]")
        lines.append("        direction TB")
        nodes = [f"{sid}a{a_index}" for a_index in range(1, len(stage.actions) + 1)]
        if not nodes:
            nodes = [f"{sid}empty"]
            lines.append(f"        {nodes[0]}[{_label('(no actions)')}]")
        for node, action in zip(nodes, stage.actions, strict=False):
            lines.append(f"        {node}[{_label(action.name)}]")
        if stage.concurrency == 1:
            lines.extend(f"        {a} --> {b}" for a, b in itertools.pairwise(nodes))
        lines.append("    end")
        if previous is not None:
            edges.append(f"    {previous} --> {sid}")
        previous = sid
    lines.extend(edges)
    return "\n".join(lines) + "\n"


class _Group:
    """One executed (or skipped) stage of a run and what belongs to it."""

    def __init__(self, key: str, record: StepRecord) -> None:
        self.key = key
        self.record = record
        self.actions: list[tuple[str, StepRecord]] = []
        self.children: list[_Group] = []


def _marks(record: StepRecord) -> str:
    parts = []
    if is_insertion(record):
        parts.append("+ dynamic")
    status = record.status.value
    if status != "completed":
        parts.append(status)
    if record.recovered_error is not None:
        parts.append("recovered")
    if record.attempts > 1:
        parts.append(f"{record.attempts} attempts")
    return f" [{', '.join(parts)}]" if parts else ""


def run_to_mermaid(result: RunResult) -> str:
    """A flowchart of the run as executed: steps in execution order, marked by kind and status."""
    groups: dict[str, _Group] = {}
    roots: list[_Group] = []
    order: list[str] = []  # action nodes (or a stage's placeholder) in execution order
    classes: dict[str, list[str]] = {}

    def add_class(node: str, *names: str) -> None:
        for name in names:
            classes.setdefault(name, []).append(node)

    for record in result.steps:
        if record.kind == "stage":
            group = _Group(f"s{len(groups) + 1}", record)
            groups[record.stage_id] = group
            parent = None
            if record.inserted_by_stage is not None:
                parent = groups.get(record.inserted_by_stage)
            (parent.children if parent is not None else roots).append(group)
            add_class(group.key, record.status.value, *(["dynamic"] if is_insertion(record) else []))
            if record.status.value == "skipped":
                placeholder = f"{group.key}x"
                group.actions.append((placeholder, record))
                order.append(placeholder)
                add_class(placeholder, "skipped")
            continue
        owner = groups.get(record.stage_id)
        if owner is None:  # pragma: no cover - an action record always follows its stage's
            continue
        node = f"{owner.key}a{len(owner.actions) + 1}"
        owner.actions.append((node, record))
        order.append(node)
        add_class(node, record.status.value, *(["dynamic"] if is_insertion(record) else []))

    title = f"run {short_run_id(result.run_id)} of {result.workflow_id}: {result.status.value}"
    lines = ["flowchart TD", f"    %% {_comment(title)}"]
    # Iterative, so a deeply nested plan cannot hit the recursion limit.
    stack: list[tuple[_Group, int, bool]] = [(g, 1, False) for g in reversed(roots)]
    while stack:
        group, depth, closing = stack.pop()
        pad = "    " * min(depth, 8)  # deep nesting must not make the text grow quadratically
        if closing:
            lines.append(f"{pad}end")
            continue
        record = group.record
        lines.append(f"{pad}subgraph {group.key}[{_label(record.stage_id + _marks(record))}]")
        lines.append(f"{pad}    direction TB")
        for node, action in group.actions:
            if action.kind == "stage":
                text = f"skipped: {action.reason}" if action.reason else "skipped"
            else:
                text = (action.action_name or "") + _marks(action)
                if action.reason and action.status.value == "skipped":
                    text += f": {action.reason}"
            lines.append(f"{pad}    {node}[{_label(text)}]")
        if not group.actions:
            lines.append(f"{pad}    {group.key}e[{_label('(no actions)')}]")
        stack.append((group, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(group.children))
    lines.extend(f"    {a} --> {b}" for a, b in itertools.pairwise(order))
    lines.extend(f"    {style}" for style in _STYLES)
    for name in ("completed", "failed", "cancelled", "skipped", "pending", "dynamic"):
        if classes.get(name):
            lines.append(f"    class {','.join(classes[name])} {name}")
    return "\n".join(lines) + "\n"
