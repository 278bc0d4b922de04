"""Mermaid flowcharts of definitions and runs: golden files, and structure that holds for any input.

The golden tests compare ``Workflow.to_mermaid()`` and ``RunResult.to_mermaid()``
with the files in ``tests/golden/*.mmd`` exactly, and show a diff on a
mismatch. After an intended change to the output, rewrite them with::

    ASYNCFLOW_UPDATE_GOLDEN=1 python -m pytest tests/test_mermaid.py

and review the diff of ``tests/golden/`` before committing it. Runs pass
``run_id="golden"`` so the run's header line does not change between runs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import asyncflow as af
from asyncflow import backoff
from asyncflow import middleware as mw

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("ASYNCFLOW_UPDATE_GOLDEN") == "1"


def check_golden(name: str, actual: str) -> None:
    """Compare ``actual`` with ``tests/golden/NAME.mmd``, or rewrite the file when updating."""
    path = GOLDEN_DIR / f"{name}.mmd"
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with ASYNCFLOW_UPDATE_GOLDEN=1", pytrace=False)
    # Bytes, not text: the comparison must not depend on the platform's newline translation.
    expected = path.read_bytes().decode("utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"golden/{name}.mmd",
                tofile="actual",
            )
        )
        pytest.fail(
            f"Mermaid output differs from golden/{name}.mmd "
            f"(rerun with ASYNCFLOW_UPDATE_GOLDEN=1 if the change is intended):\n{diff}",
            pytrace=False,
        )


def step(name: str) -> af.Action:
    """An action called ``name`` that does nothing."""

    async def work(ctx: af.ActionContext) -> None:
        pass

    return af.action(name=name)(work)


def run_result(workflow: af.Workflow, *, fails: bool = False) -> af.RunResult:
    """Run ``workflow`` with the fixed run id ``golden`` and return its result.

    With ``fails``, the run must raise ``af.ActionFailed``; its ``.result`` is returned.
    """

    async def go() -> af.RunResult:
        if not fails:
            return await af.run(workflow, run_id="golden")
        with pytest.raises(af.ActionFailed) as caught:
            await af.run(workflow, run_id="golden")
        result = caught.value.result
        assert result is not None
        return result

    return anyio.run(go)


# ---- the workflows behind the goldens ------------------------------------------------------


def definition_workflow() -> af.Workflow:
    """Three stages: a sequential one, a concurrent one, and one with no actions."""
    return af.Workflow(
        "publish",
        name="Publish",
        stages=[
            af.Stage("prepare", name="Prepare", actions=[step("checkout"), step("install")]),
            af.Stage("checks", actions=[step("lint"), step("types"), step("unit-tests")], concurrency=3),
            af.Stage("approval"),
            af.Stage("release", actions=[step("upload")]),
        ],
    )


def nested_dynamic_workflow() -> af.Workflow:
    """``discover`` inserts a stage that inserts a stage (two levels) whose action fans out."""

    @af.action(name="fan-out")
    async def fan_out(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("item-1"))
        ctx.add_dynamic_action(step("item-2"))

    @af.action(name="plan-level-2")
    async def plan_level_2(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("level-2", actions=[fan_out]))

    @af.action(name="plan-level-1")
    async def plan_level_1(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("level-1", actions=[plan_level_2, step("after-insert")]))

    return af.Workflow(
        "nested",
        stages=[
            af.Stage("discover", actions=[plan_level_1]),
            af.Stage("report", actions=[step("summarize")]),
        ],
    )


def skipped_workflow() -> af.Workflow:
    """``triage`` disables the ``optional`` stage and the ``lint`` action of ``checks``."""

    @af.action
    async def triage(ctx: af.ActionContext) -> None:
        ctx.plan.disable_stage("optional")
        ctx.plan.disable_action("lint", stage_id="checks")

    return af.Workflow(
        "trimmed",
        stages=[
            af.Stage("triage", actions=[triage]),
            af.Stage("optional", actions=[step("slow-report")]),
            af.Stage("checks", actions=[step("lint"), step("test")]),
        ],
    )


def failed_workflow() -> af.Workflow:
    """``load`` inserts ``cleanup``, then its next action raises: the run fails."""

    @af.action(name="plan-cleanup")
    async def plan_cleanup(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("cleanup", actions=[step("remove-temp")]))

    @af.action
    async def explode(ctx: af.ActionContext) -> None:
        raise ValueError("disk quota exceeded")

    return af.Workflow(
        "etl",
        stages=[
            af.Stage("extract", actions=[step("read")]),
            af.Stage("load", actions=[plan_cleanup, explode]),
            af.Stage("publish", actions=[step("notify")]),
        ],
    )


def retried_workflow() -> af.Workflow:
    """``flaky`` succeeds on its third attempt; ``best-effort``'s error is swallowed by mw.recover."""

    @af.action(retry=af.Retry(attempts=3, backoff=backoff.fixed(0)))
    async def flaky(ctx: af.ActionContext) -> None:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} refused")

    @af.action(name="best-effort")
    async def best_effort(ctx: af.ActionContext) -> None:
        raise RuntimeError("cache unavailable")

    fetch = af.Stage("fetch", actions=[flaky, best_effort])
    fetch.use_action(mw.recover())
    return af.Workflow("resilient", stages=[fetch, af.Stage("store", actions=[step("save")])])


# ---- golden tests -------------------------------------------------------------------------


def test_workflow_definition_golden() -> None:
    """A definition with a concurrent stage and an empty stage draws as in golden/workflow_definition.mmd."""
    check_golden("workflow_definition", definition_workflow().to_mermaid())


def test_run_nested_dynamic_golden() -> None:
    """Stages inserted two levels deep nest inside their inserters; dynamic actions are marked."""
    result = run_result(nested_dynamic_workflow())
    assert result.status is af.RunStatus.COMPLETED
    check_golden("run_nested_dynamic", result.to_mermaid())


def test_run_skipped_golden() -> None:
    """A disabled stage and a disabled action are drawn skipped, with their reason."""
    result = run_result(skipped_workflow())
    assert result.status is af.RunStatus.COMPLETED
    check_golden("run_skipped", result.to_mermaid())


def test_run_failed_golden() -> None:
    """A failed run marks the failed action and stage, and the stage it inserted is recorded skipped."""
    result = run_result(failed_workflow(), fails=True)
    assert result.status is af.RunStatus.FAILED
    check_golden("run_failed", result.to_mermaid())


def test_run_retried_and_recovered_golden() -> None:
    """A retried action shows its attempts; an action whose error was recovered says so."""
    result = run_result(retried_workflow())
    assert result.status is af.RunStatus.COMPLETED
    check_golden("run_retried_recovered", result.to_mermaid())


# ---- structure, for any input -------------------------------------------------------------

NODE = re.compile(r"^\s*(?:subgraph\s+)?([A-Za-z][\w-]*)\[\"([^\"]*)\"\]$")
EDGE = re.compile(r"^\s*([A-Za-z][\w-]*)\s+-->\s+([A-Za-z][\w-]*)$")
CLASS = re.compile(r"^\s*class\s+(\S+)\s+(\w+)$")


def diagrams() -> dict[str, Callable[[], str]]:
    """Every diagram these tests know how to build, by name."""
    return {
        "definition": lambda: definition_workflow().to_mermaid(),
        "nested": lambda: run_result(nested_dynamic_workflow()).to_mermaid(),
        "skipped": lambda: run_result(skipped_workflow()).to_mermaid(),
        "failed": lambda: run_result(failed_workflow(), fails=True).to_mermaid(),
        "retried": lambda: run_result(retried_workflow()).to_mermaid(),
        "awkward-definition": lambda: awkward_workflow().to_mermaid(),
        "awkward-run": lambda: run_result(awkward_workflow()).to_mermaid(),
        "empty-stage-run": lambda: run_result(
            af.Workflow("gap", stages=[af.Stage("before", actions=[step("a")]), af.Stage("empty")])
        ).to_mermaid(),
    }


def awkward_workflow() -> af.Workflow:
    """Ids and names full of characters that mean something to Mermaid or HTML."""
    return af.Workflow(
        'say "hi"',
        stages=[
            af.Stage('ask "why" [now]', name='Ask <b>"why"</b> & [now]', actions=[step('quote "x" [y] {z}')]),
            af.Stage("a (b) --> c; end", actions=[step("<script>&amp;")]),
        ],
    )


def structure(text: str) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """Defined node ids, edges, and ids named by ``class`` lines; fails on a line it cannot read."""
    defined: set[str] = set()
    edges: list[tuple[str, str]] = []
    classed: list[str] = []
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    for line in lines[1:]:
        stripped = line.strip()
        if stripped in ("end", "direction TB") or stripped.startswith(("%%", "classDef ")):
            continue
        if node := NODE.match(line):
            defined.add(node.group(1))
        elif edge := EDGE.match(line):
            edges.append((edge.group(1), edge.group(2)))
        elif cls := CLASS.match(line):
            classed.extend(cls.group(1).split(","))
        else:
            raise AssertionError(f"unexpected Mermaid line {line!r} in:\n{text}")
    return defined, edges, classed


@pytest.mark.parametrize("name", list(diagrams()))
def test_every_referenced_node_is_defined(name: str) -> None:
    """Every id used in an edge or a ``class`` line is defined as a node or subgraph."""
    defined, edges, classed = structure(diagrams()[name]())
    used = {a for a, _ in edges} | {b for _, b in edges} | set(classed)
    assert used <= defined, f"undefined ids: {sorted(used - defined)}"


@pytest.mark.parametrize("name", list(diagrams()))
def test_subgraphs_balance(name: str) -> None:
    """Each ``subgraph`` line has its ``end``, and no ``end`` comes before its ``subgraph``."""
    open_ = 0
    for line in diagrams()[name]().splitlines():
        word = line.strip().split(" ", 1)[0]
        if word == "subgraph":
            open_ += 1
        elif word == "end":
            open_ -= 1
            assert open_ >= 0, f"'end' without a subgraph at {line!r}"
    assert open_ == 0


@pytest.mark.parametrize("name", ["awkward-definition", "awkward-run"])
def test_labels_are_escaped(name: str) -> None:
    """Quotes, angle brackets, '#' and backticks in ids and names become Mermaid entity codes."""
    text = diagrams()[name]()
    labels = [m.group(2) for line in text.splitlines() if (m := NODE.match(line))]
    assert labels, text
    for label in labels:
        assert '"' not in label
        assert "<" not in label
        assert ">" not in label
        assert "`" not in label
        assert re.sub(r"#(35|96|quot|lt|gt);", "", label).count("#") == 0, label
    joined = "\n".join(labels)
    assert "quote #quot;x#quot; [y] {z}" in joined
    assert "#lt;script#gt;&amp;" in joined


def test_workflow_labels_keep_brackets_inside_quotes() -> None:
    """Square brackets in a stage's name stay inside its quoted label, so they end nothing early."""
    text = awkward_workflow().to_mermaid()
    assert 'subgraph s1["Ask #lt;b#gt;#quot;why#quot;#lt;/b#gt; & [now] (ask #quot;why#quot; [now])"]' in text


def deep_chain(depth: int) -> af.Workflow:
    """A workflow whose every stage inserts the next: ``depth`` levels of nested dynamic stages."""

    def inserter(level: int) -> af.Action:
        async def insert(ctx: af.ActionContext) -> None:
            if level < depth:
                ctx.add_dynamic_stage(af.Stage(f"level-{level + 1}", actions=[inserter(level + 1)]))

        return af.action(name=f"insert-{level}")(insert)

    return af.Workflow("deep", stages=[af.Stage("level-0", actions=[inserter(0)])])


def test_deep_nesting_renders_without_recursion() -> None:
    """A 2,000-deep chain of nested dynamic stages renders (no RecursionError), every level nested."""
    depth = 2_000
    result = run_result(deep_chain(depth))
    assert result.status is af.RunStatus.COMPLETED
    text = result.to_mermaid()
    lines = text.splitlines()
    assert sum(1 for line in lines if line.lstrip().startswith("subgraph ")) == depth + 1
    assert sum(1 for line in lines if line.strip() == "end") == depth + 1
    # Nesting: the last subgraph opens before the first one closes.
    first_end = next(i for i, line in enumerate(lines) if line.strip() == "end")
    last_open = max(i for i, line in enumerate(lines) if line.lstrip().startswith("subgraph "))
    assert last_open < first_end


# ---- known defects (see each reason); strict, so a fix makes them fail until unmarked ------


@af.action(name="insert-child")
async def insert_child(ctx: af.ActionContext) -> None:
    """Insert a stage called ``child``."""
    ctx.add_dynamic_stage(af.Stage("child", actions=[step("c1")]))


def test_inserted_stage_nests_under_a_stage_id_with_a_slash() -> None:
    """A stage inserted by stage ``a/b`` is drawn inside ``a/b``, not inside stage ``a``."""
    wf = af.Workflow(
        "slashes", stages=[af.Stage("a", actions=[step("x")]), af.Stage("a/b", actions=[insert_child])]
    )
    lines = run_result(wf).to_mermaid().splitlines()
    inserter = next(i for i, line in enumerate(lines) if '["a/b"]' in line)
    child = next(i for i, line in enumerate(lines) if '["child [+ dynamic]"]' in line)
    assert child > inserter


def test_newline_in_workflow_id_stays_in_the_comment() -> None:
    """A workflow id with a newline still gives a diagram whose every line is valid."""
    structure(run_result(af.Workflow("two\nlines", stages=[af.Stage("s", actions=[step("a")])])).to_mermaid())


def test_labels_escape_mermaid_entities_and_markdown() -> None:
    """Names that look like Mermaid entity codes or Markdown strings are drawn as written."""
    text = af.Workflow("w", stages=[af.Stage("`**bold**`", actions=[step("#quot;")])]).to_mermaid()
    labels = [m.group(2) for line in text.splitlines() if (m := NODE.match(line))]
    assert not any(label.startswith("`") for label in labels), labels
    assert not any("#quot;" in label for label in labels), labels
