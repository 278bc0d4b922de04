"""The JSON bodies of the runs router, as pydantic models (so the OpenAPI schema is exact)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...backends import RunInfo

#: The longest ``Idempotency-Key`` header (and resume key) the router takes.
MAX_KEY_LENGTH = 200


class StartRequest(BaseModel):
    """Start a run of a workflow registered with the engine, by its id."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str = Field(min_length=1, max_length=500, description="The id of a registered workflow.")
    store: dict[str, Any] = Field(
        default_factory=dict, description="The run's initial store (a JSON object)."
    )


class ResumeRequest(BaseModel):
    """Resume a suspended run with data for its suspending action."""

    model_config = ConfigDict(extra="forbid")

    data: Any = Field(default=None, description="What the suspending action reads as ctx.resume_data.")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Makes resuming idempotent: a key the run was resumed with before resumes nothing.",
    )

    @field_validator("key")
    @classmethod
    def _key_is_text(cls, key: str | None) -> str | None:
        """Refuse a key the engine refuses (blank, or not Unicode text), as bad input, not a server error."""
        if key is None:
            return key
        if key.isspace():
            raise ValueError("the resume key must not be blank")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the resume key must be Unicode text (it holds a lone surrogate)") from None
        return key


class Accepted(BaseModel):
    """A run started (or found by its idempotency key), or resumed (or found resumed by its key)."""

    run_id: str
    url: str = Field(description="The run's URL in this router.")
    created: bool = Field(description="False when an idempotency key (or resume key) found it done before.")


class Step(BaseModel):
    """One stage or action of a run's plan, as far as it has gone."""

    kind: str = Field(description='"stage" or "action".')
    stage_id: str
    action_name: str | None = None
    status: str = Field(description="pending, running, completed, failed, skipped, cancelled or suspended.")
    dynamic: bool = Field(description="Inserted at run time (by an action, or with an inserted stage).")
    depth: int = Field(
        description="0 for static steps, +1 per level of insertion (an inserted stage's actions: its depth)."
    )
    started_at: float = Field(description="Seconds from the start of the run.")
    duration: float = Field(description="Seconds the step took (so far).")
    attempts: int = 0
    inserted_by: str | None = Field(default=None, description='"stage/action" that inserted it.')
    reason: str | None = Field(
        default=None,
        description='Why it was skipped; "completed in an earlier execution" for a step replayed after a '
        "restart or a resume.",
    )
    error: str | None = Field(default=None, description='"Type: message" of a failed step.')


class StageView(Step):
    """A stage with its actions: one level of the plan's tree."""

    actions: list[Step] = Field(default_factory=list)


class RunSummary(BaseModel):
    """A run as the list shows it."""

    run_id: str
    workflow_id: str
    status: str
    created_at: float = Field(description="Seconds since the epoch.")
    updated_at: float = Field(description="Seconds since the epoch.")
    idempotency_key: str | None = None
    url: str


class RunView(RunSummary):
    """A run with its timings, where it stopped, and the plan so far as a tree of stages and actions."""

    duration: float = Field(description="Seconds from its creation to its last change.")
    suspend_reason: str | None = None
    suspend_data: Any = None
    error: str | None = None
    failed_stage: str | None = None
    failed_action: str | None = None
    bail_reason: str | None = None
    workflow_version: str | None = None
    plan: list[StageView] = Field(
        description="The stages in plan order (inserted ones after the stage that inserted them), each "
        "with its actions; empty while the run executes in another process."
    )
    store: dict[str, Any] | None = Field(
        default=None, description="The run's store, only where the router was made with expose_store=True."
    )


class RunList(BaseModel):
    """One page of runs, newest first."""

    runs: list[RunSummary]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end.")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


def summary(info: RunInfo, url: str) -> RunSummary:
    """The list's view of a run."""
    return RunSummary(
        run_id=info.run_id,
        workflow_id=info.workflow_id,
        status=info.status.value,
        created_at=info.created_at,
        updated_at=info.updated_at,
        idempotency_key=info.idempotency_key,
        url=url,
    )


def _step(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": data["kind"],
        "stage_id": data["stage_id"],
        "action_name": data.get("action_name"),
        "status": str(data["status"]),
        "dynamic": bool(data.get("dynamic")),
        "depth": int(data.get("depth") or 0),
        "started_at": float(data.get("started_at") or 0.0),
        "duration": float(data.get("duration") or 0.0),
        "attempts": int(data.get("attempts") or 0),
        "inserted_by": data.get("inserted_by"),
        "reason": data.get("reason"),
        "error": data.get("error"),
    }


def plan_tree(steps: list[dict[str, Any]] | None) -> list[StageView]:
    """A run's steps (stage, its actions, next stage...) as a list of stages each holding its actions."""
    stages: list[StageView] = []
    for data in steps or []:
        if data["kind"] == "stage":
            stages.append(StageView(**_step(data)))
        elif stages:
            stages[-1].actions.append(Step(**_step(data)))
    return stages


def view(info: RunInfo, url: str, store: dict[str, Any] | None) -> RunView:
    """The full view of a run."""
    return RunView(
        **summary(info, url).model_dump(),
        duration=max(info.updated_at - info.created_at, 0.0),
        suspend_reason=info.suspend_reason,
        suspend_data=info.suspend_data,
        error=info.error,
        failed_stage=info.failed_stage,
        failed_action=info.failed_action,
        bail_reason=info.bail_reason,
        workflow_version=info.workflow_version,
        plan=plan_tree(info.steps),
        store=store,
    )
