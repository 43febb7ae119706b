"""Plain, frozen domain objects that cross stage boundaries.

ORM rows become these before they leave ``mamlctl.registry``; torch tensors never appear
here (a serving-only install must be able to import this module). Arrays are numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

FloatArray = npt.NDArray[np.float64]

#: Which parameters adaptation moves per series: every one, or the last layer only (ANIL).
AdaptScope = Literal["all", "head"]
#: How an export stores each adapted layer's weights: exact float32, or int8 deltas from the
#: initializer's weights with a float32 scale per output row (1 byte per weight per series).
WeightFormat = Literal["float32", "int8-delta"]

#: How a served model's parameters were obtained: adapted to the series, or the family
#: initializer as it is ("zero-shot": the series holds one window but too few points to adapt).
#: Files carry it as metadata ``mamlctl.adaptation``, registry rows as metadata ``adaptation``;
#: absent means adapted (files and rows written before zero-shot models existed).
Adaptation = Literal["adapted", "zero-shot"]
ADAPTED: Adaptation = "adapted"
ZERO_SHOT: Adaptation = "zero-shot"
ADAPTATION_KEY = "adaptation"

#: The alias a family's scoring follows unless configured otherwise.
CHAMPION = "champion"
CHALLENGER = "challenger"


#: Longest family name (the column's width) and series id.
FAMILY_NAME_MAX = 128
SERIES_ID_MAX = 255
#: Pieces a family name may not hold: it names MLflow experiments, folders and model files.
_FAMILY_FORBIDDEN = ("/", "\\", ":", "\x00", "..")


def validate_family_name(name: str) -> str:
    """``name`` when it is a valid family name, else :class:`InputError`.

    The one check, used by the CLI and the registry: 1-128 printable characters, no
    whitespace, no ``/``, ``\\``, ``:``, ``..`` or NUL, not starting with a dot. A family name
    becomes part of paths (the MLflow experiment's artifact folder) and URIs
    (``models:/maml-<family>@champion``), so anything that could leave a folder is refused.
    """
    bad = (
        not name
        or len(name) > FAMILY_NAME_MAX
        or name.startswith(".")
        or any(piece in name for piece in _FAMILY_FORBIDDEN)
        or any(c.isspace() or not c.isprintable() for c in name)
    )
    if bad:
        raise InputError(
            f"invalid family name {name[:80]!r}: 1-{FAMILY_NAME_MAX} printable characters, no "
            "spaces, '/', '\\', ':', '..' or NUL, not starting with '.'"
        )
    return name


def validate_series_id(series_id: str) -> str:
    """``series_id`` when it is valid, else :class:`InputError`: 1-255 characters of text, no
    NUL. (Where a series id becomes part of a file name it is slugged, so ``/`` is allowed.)"""
    if not series_id or len(series_id) > SERIES_ID_MAX or "\x00" in series_id:
        raise InputError(
            f"invalid series id {series_id[:80]!r}: 1-{SERIES_ID_MAX} characters, no NUL"
        )
    return series_id


#: Prefix of every family's MLflow registered-model (and experiment) name.
MODEL_NAME_PREFIX = "maml-"


def registered_model_name(family: str) -> str:
    """The MLflow registered-model name of a family's initializers (name validated)."""
    return f"{MODEL_NAME_PREFIX}{validate_family_name(family)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """A group of series sharing a sampling interval and a dominant period.

    ``period`` is None for the explicit "no cycle" family kind. ``window`` (L) is the model's
    input length, ``horizon`` (H) the number of values forecast, ``support`` (K) the number of
    recent points a series is adapted on.
    """

    name: str
    period: int | None
    interval_seconds: float | None
    window: int
    horizon: int
    support: int
    alias: str = CHAMPION
    #: Version the alias pointed at when last promoted, as mirrored in the registry database.
    champion_version: int | None = None
    #: The MLflow run of that version (a re-created registered model repeats version numbers).
    champion_run_id: str | None = None

    @property
    def registered_model(self) -> str:
        return registered_model_name(self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesInfo:
    """A series' identity and summary, without its points."""

    series_id: str
    family: str | None
    n_points: int
    first_ts: datetime | int | None
    last_ts: datetime | int | None
    interval_seconds: float | None = None
    detected_period: int | None = None
    source: str | None = None
    #: "detected" or "assigned" (by the user); None while the series has no family.
    family_origin: str | None = None
    #: Autocorrelation at the detected period (strength of the cycle).
    period_strength: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """A series with its points, in time order. ``timestamps`` is None for integer positions."""

    series_id: str
    values: FloatArray
    timestamps: npt.NDArray[np.datetime64] | None = None
    family: str | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class InitializerRef:
    """A registered initializer: one MLflow model version of a family."""

    family: str
    registered_model: str
    version: int
    run_id: str
    aliases: tuple[str, ...] = ()
    source_uri: str | None = None
    created_at: datetime | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewModel:
    """One adapted-model row to record (the file is already complete and hashed)."""

    series_id: str
    path: str
    sha256: str
    residual_scale: float
    threshold: float
    support_end: int | None
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptedModelRecord:
    """A per-series adapted model file, as recorded in the registry database."""

    series_id: str
    family: str
    registered_model: str
    initializer_version: int
    initializer_run_id: str
    path: str
    sha256: str
    adapted_at: datetime
    support: int
    window: int
    horizon: int
    residual_scale: float
    threshold: float
    metadata: dict[str, str] = field(default_factory=dict)
    #: False for an adapted model superseded by a newer one (history is kept).
    is_current: bool = True
    #: Position of the last support point the model was adapted on (None when unknown).
    support_end: int | None = None

    @property
    def adaptation(self) -> Adaptation:
        """``adapted`` or ``zero-shot`` (rows without the key are adapted)."""
        return ZERO_SHOT if self.metadata.get(ADAPTATION_KEY) == ZERO_SHOT else ADAPTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """The answer for one window: forecast, and when ``actual`` was given, the anomaly view."""

    series_id: str
    forecast: tuple[float, ...]
    residual: tuple[float, ...] | None
    anomaly_score: float | None
    is_anomaly: bool | None
    registered_model: str
    initializer_version: int
    adapted_at: datetime


#: Status of an anomaly record: new, or seen by someone (``mamlctl anomalies ack``).
AnomalyStatus = Literal["open", "acknowledged"]
ANOMALY_STATUSES: tuple[AnomalyStatus, ...] = ("open", "acknowledged")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalyRecord:
    """A flagged observation of ``POST /v1/observe``, as the registry keeps it.

    ``timestamp`` is the point's timestamp (naive UTC) or, for a series stored by integer
    positions, its position; ``z`` is ``|value - forecast| / sigma`` and ``magnitude`` the
    ``-log10`` two-sided Gaussian tail probability of ``z``."""

    id: int
    series_id: str
    family: str | None
    timestamp: datetime | int
    position: int
    value: float
    forecast: float
    sigma: float
    z: float
    anomaly_score: float
    magnitude: float
    registered_model: str
    initializer_version: int
    model_sha256: str
    status: AnomalyStatus
    created_at: datetime
    acknowledged_at: datetime | None
