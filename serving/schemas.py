"""Request and response documents of the scoring API, as pydantic models for OpenAPI.

The hot path (``POST /v1/score``) validates with hand-written checks in
:mod:`mamlctl.serving.scoring` (pydantic would triple its latency); these models are the
documented contract those checks implement, and the tests validate live responses against them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from mamlctl.serving.limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY  # noqa: F401 (re-export)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreItem(_Doc):
    """One window of one series; ``actual`` = what happened next (1..H values), optional."""

    series_id: Annotated[str, Field(min_length=1, max_length=512)]
    window: Annotated[list[float], Field(description="The L most recent raw values, oldest first.")]
    actual: Annotated[
        list[float] | None,
        Field(default=None, min_length=1, description="Observed values after the window."),
    ] = None


class ScoreBatch(_Doc):
    """Several items (any mix of series) scored in one call."""

    items: Annotated[list[ScoreItem], Field(min_length=1, max_length=DEFAULT_MAX_BATCH)]


class Lineage(_Doc):
    """The model that answered: initializer (registered model + version) and adaptation."""

    family: str
    registered_model: str
    initializer_version: int
    initializer_run_id: str
    adapted_at: str
    adaptation: Literal["adapted", "zero-shot"] = Field(
        default="adapted",
        description="'adapted' to the series, or 'zero-shot': the family initializer un-adapted "
        "(the series holds one window but too few points to adapt yet).",
    )
    model_sha256: str
    generation: int = Field(description="Reload generation of the server state that answered.")


class ScoreResult(_Doc):
    series_id: str
    forecast: list[float] = Field(description="H forecast values in raw units.")
    sigma: list[float] = Field(description="Scale of each forecast step (anomaly scoring).")
    residual: list[float] | None = Field(description="actual - forecast, when actual was given.")
    anomaly_score: list[float] | None = Field(description="Per actual value, in [0, 1].")
    is_anomaly: list[bool] | None = Field(description="anomaly_score >= threshold.")
    threshold: float
    lineage: Lineage


class ItemErrorDetail(_Doc):
    status: int = Field(description="What a single request would have answered (404, 422).")
    type: str = Field(
        description="not_found, window_length, actual_length, finite_number or model_overflow."
    )
    msg: str
    loc: list[str | int] = Field(description="The offending field, e.g. body.items.3.window.5.")


class ItemError(_Doc):
    """In place of a batch item the served models cannot answer (the others are scored)."""

    series_id: str
    error: ItemErrorDetail


class BatchResult(_Doc):
    results: list[ScoreResult | ItemError] = Field(
        description="One entry per item, in order: a result, or an error for that item alone."
    )


class SeriesDetail(_Doc):
    series_id: str
    family: str
    window: int
    horizon: int
    threshold: float
    residual_scale: float
    served_by: str = Field(description="'bank' (shared graph) or 'sessions' (fallback).")
    lineage: Lineage
    load_error: str | None = Field(
        default=None,
        description="Why the current model file failed to load, when the series is served by"
        " its previous model (lineage names that model).",
    )


class ErrorItem(_Doc):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(_Doc):
    detail: list[ErrorItem] | str


class Health(_Doc):
    status: str


class Ready(_Doc):
    """``status`` "ready" (200), or "degraded" (503, with ``detail``): no model loaded, or more
    than the allowed share of the current models failed to load."""

    status: str
    detail: str | None = None
    generation: int
    series: int
    bank_groups: int
    session_groups: int
    bank_bytes: int
    failures: int = Field(description="Current models whose file failed to load.")
    stale: int = Field(description="Of those, series still served by their previous model.")
    records: int = Field(description="Current models in the registry (a shard: its own).")
    loaded_at: str
    load_seconds: float
    shard: str | None = Field(
        default=None, description="`I/N` of a shard (`serve --shard`); absent otherwise."
    )


# --- MLflow scoring protocol (POST /invocations; mamlctl.serving.invocations) ----------------
Cell = str | int | float | None


class DataframeSplit(_Doc):
    """pandas ``to_dict(orient="split")``: column names and rows (``index`` is ignored)."""

    columns: list[str] = Field(description="Must hold unique_id and y; ds optional.")
    data: list[list[Cell]]
    index: list[Cell] | None = None


class InvocationParams(_Doc):
    level: list[float] | None = Field(
        default=None, description="Interval levels in percent, each in (0, 100)."
    )


class InvocationSplit(_Doc):
    dataframe_split: DataframeSplit
    params: InvocationParams | None = None


class FrameRow(BaseModel):
    """One row of the long frame (other columns are ignored)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    unique_id: str | int = Field(description="The served series' id.")
    ds: int | str | SkipJsonSchema[None] = Field(
        default=None,  # absent: the rows are in time order (null is refused)
        description="Position or ISO time; in every row or none, one kind for the frame.",
    )
    y: float


class InvocationRecords(_Doc):
    dataframe_records: list[FrameRow] = Field(description="One object per row.")
    params: InvocationParams | None = None


class Prediction(BaseModel):
    """One forecast step of one series; plus ``yhat-lo-<l>``/``yhat-hi-<l>`` per level."""

    model_config = ConfigDict(extra="allow", frozen=True)

    unique_id: str
    ds: int | str | None = Field(
        default=None, description="Position or ISO time of the step (absent without input ds)."
    )
    yhat: float


class InvocationItemError(_Doc):
    unique_id: str
    error: ItemErrorDetail


class InvocationResult(_Doc):
    predictions: list[Prediction] = Field(description="H rows per forecast series, in order.")
    errors: list[InvocationItemError] | None = Field(
        default=None, description="The series that could not be forecast (absent when none)."
    )


class InvocationErrorBody(_Doc):
    """MLflow's error document, plus the offending field."""

    error_code: str
    message: str
    loc: list[str | int]
