"""What one family's meta-training needs, checked before anything is created anywhere.

Pure (no I/O): the training config with per-family defaults (:func:`resolve`); the held-out
split, the data fingerprint and the validation set are in :mod:`mamlctl.maml.family_split`.

**Partial support pairs** (the default for new initializers, ``partial``): K raw support points
give ``K - L`` pairs whose horizons are cut at the support end (masked loss), and a task's query
forecasts the points after the support, so a task needs only K + 1 points and K only
``>= L + 1``; see :mod:`mamlctl.timeseries.windows`. ``partial=False`` is the older full-pair
form (K >= L + H).

The default recipe (the one the old in-memory evaluation code, removed in session 6, showed
beats seasonal naive on M4 Hourly and Weekly): the network predicts the residual to the
seasonal-naive forecast of its own window (``season_skip`` = the period when it fits the window,
else 1 = naive), it is trained and adapted on MAE, and its raw-unit forecasts are bounded below
when every training series is non-negative (``nonnegative``, resolved by :func:`prepare`): by
``floor_fraction`` times the minimum of the forecast's input window
(:func:`mamlctl.maml.onnx_contract.apply_floor`). Unless set, the fraction is chosen by
``train`` among :data:`FLOOR_CANDIDATES` on the held-out series (lowest MASE, then sMAPE, then
the larger fraction); 0 is the clip at 0 of older initializers, which zeroed the forecasts of
low-count series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mamlctl.domain import AdaptScope, Family
from mamlctl.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: A family needs this many usable series: at least one held out, the rest to train on.
MIN_SERIES = 4
#: Fractions of the window minimum ``train`` chooses the non-negative lower bound from.
FLOOR_CANDIDATES = (0.0, 0.5, 0.9, 1.0)
#: The fraction validation uses before the choice (periodic validation during training).
DEFAULT_FLOOR = 1.0


class FamilyTrainConfig(BaseModel):
    """Hyperparameters of ``mamlctl train``; ``None`` fields take per-family defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["mlp", "conv"] = "mlp"
    hidden: tuple[int, ...] | None = Field(default=None, description="MLP widths.")
    channels: int = Field(default=16, ge=1, le=512)
    head: Literal["mean", "gaussian"] = "mean"
    support: int | None = Field(default=None, ge=2, description="K raw support points.")
    query: int | None = Field(default=None, ge=1, le=1024, description="Query pairs per task.")
    # Defaults tuned on M4 Hourly (see the report): two inner steps at 0.3 on support-normalised
    # windows adapt far better than the paper's sine setting (one step at 0.01).
    inner_steps: int = Field(default=2, ge=1, le=50)
    inner_lr: float = Field(default=0.3, gt=0, le=10)
    first_order: bool = False
    meta_lr: float = Field(default=3e-3, gt=0, le=1)
    meta_batch: int = Field(default=16, ge=1, le=1024)
    iterations: int = Field(default=3000, ge=1, le=10_000_000)
    time_budget_s: float | None = Field(default=900.0, gt=0)
    seed: int = Field(default=0, ge=0)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=1)
    max_holdout: int = Field(default=64, ge=1)
    validations: int = Field(default=4, ge=1, le=100, description="Validation points in a run.")
    pretrained_baseline: bool = True
    select: Literal["best", "last"] = Field(
        default="best",
        description="The initializer registered: the lowest held-out MASE among the MAML "
        "checkpoints at each validation point and the pretrained baseline (best), or the "
        "last MAML iterate (last).",
    )
    # The forecasting recipe (see the module docstring): the network predicts the residual to
    # seasonal naive, is trained on MAE, and its raw forecasts are bounded below (a fraction of
    # the window minimum) for families whose series never go negative.
    season_skip: int | None = Field(
        default=None, ge=0, description="m of the seasonal-naive skip (None: period, 0: off)."
    )
    loss: Literal["mse", "mae"] = Field(
        default="mae", description="Loss of the mean head (a gaussian head uses its NLL)."
    )
    nonnegative: bool | None = Field(
        default=None,
        description="Bound forecasts below (None: when every training series >= 0).",
    )
    floor_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Lower bound: this fraction of the window minimum (0: at 0; None: chosen).",
    )
    adapt_scope: AdaptScope = Field(
        default="all", description="Parameters adapted per series: all, or the last layer (ANIL)."
    )
    partial: bool = Field(
        default=True,
        description="Partial-horizon support pairs (K >= L + 1; False: full pairs, K >= L + H).",
    )


def make_config(**values: Any) -> FamilyTrainConfig:
    """Build a config, turning validation errors into one-line :class:`ConfigError`."""
    try:
        return FamilyTrainConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid training option {loc}: {first['msg']}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedPlan:
    """The config with every per-family default filled in."""

    config: FamilyTrainConfig
    family: Family
    window: int
    horizon: int
    support_points: int  # K raw points (the family's K unless overridden)
    support_pairs: int  # K - L (partial) or K - L - H + 1
    query: int
    hidden: tuple[int, ...]
    season: int  # m for seasonal naive / MASE (1 without a cycle)
    season_skip: int  # m of the model's seasonal-naive skip (0 = off)
    nonnegative: bool | None = None  # resolved from the training series by prepare()
    floor_fraction: float | None = None  # None: chosen on the held-out series by train
    partial: bool = False  # partial-horizon support pairs and masked losses
    holdout: Literal["series", "time"] = "series"  # resolved by prepare()
    calibration_prior: dict[str, float] | None = None  # computed by train on held-out series
    horizon_band: dict[str, list[float]] | None = None  # the same (maml.horizon_band)

    @property
    def loss(self) -> str:
        """The loss meta-training and adaptation use (masked for partial pairs)."""
        return "gaussian_nll" if self.config.head == "gaussian" else self.config.loss

    @property
    def time_holdout_span(self) -> int:
        """Raw points a series needs when held out in time: a task before the last H points,
        and the validation span."""
        return max(self.task_span + self.horizon, self.validation_span)

    @property
    def task_span(self) -> int:
        """Raw points one meta-training task needs (partial: K support points + 1 query)."""
        return int(self.task_spec().span)

    @property
    def validation_span(self) -> int:
        """Raw points a held-out series needs: K support points, then H to forecast, and more
        than m points for the MASE scale."""
        return max(self.support_points, self.season + 1) + self.horizon

    def model_config(self) -> Any:
        from mamlctl.maml.models import ConvConfig, MLPConfig

        if self.config.architecture == "conv":
            return ConvConfig(
                window=self.window,
                horizon=self.horizon,
                channels=self.config.channels,
                head=self.config.head,
                season_skip=self.season_skip,
            )
        return MLPConfig(
            input_size=self.window,
            hidden=self.hidden,
            output_size=self.horizon,
            head=self.config.head,
            season_skip=self.season_skip,
        )

    def meta_config(self, *, method: str | None = None, iterations: int | None = None) -> Any:
        from mamlctl.maml.meta import MetaTrainConfig

        c = self.config
        return MetaTrainConfig(
            method=method or ("fomaml" if c.first_order else "maml"),
            iterations=iterations or c.iterations,
            meta_batch_size=c.meta_batch,
            inner_steps=c.inner_steps,
            inner_lr=c.inner_lr,
            meta_lr=c.meta_lr,
            seed=c.seed,
            log_every=max(1, min(50, (iterations or c.iterations) // 20 or 1)),
            loss=self.loss,
            adapt_names=self.adapt_names,
        )

    @property
    def adapt_names(self) -> tuple[str, ...] | None:
        """The parameters the inner loop adapts (None = all), from ``adapt_scope``."""
        from mamlctl.maml.models import adapt_names_for

        return adapt_names_for(self.model_config(), self.config.adapt_scope)

    @property
    def bound_fraction(self) -> float:
        """The lower bound's fraction of the window minimum (0 when not non-negative;
        :data:`DEFAULT_FLOOR` until ``train`` has chosen it)."""
        if not self.nonnegative:
            return 0.0
        return DEFAULT_FLOOR if self.floor_fraction is None else float(self.floor_fraction)

    def initializer_train_config(self) -> dict[str, Any]:
        """What ``adapt`` needs from training, stored in the initializer's JSON: the meta-training
        config (inner steps, rate, loss) plus the non-negative clip; for partial initializers
        also the hold-out and the calibration prior (see :mod:`mamlctl.maml.calibration`)."""
        out: dict[str, Any] = {
            **self.meta_config().model_dump(mode="json"),
            "nonnegative": bool(self.nonnegative),
            "floor_fraction": self.bound_fraction,
            "adapt_scope": self.config.adapt_scope,
        }
        if self.partial:
            out["partial"] = True
            out["holdout"] = self.holdout
        if self.calibration_prior is not None:
            out["calibration_prior"] = dict(self.calibration_prior)
        if self.horizon_band is not None:
            out["horizon_band"] = {k: list(v) for k, v in self.horizon_band.items()}
        return out

    def task_spec(self) -> Any:
        from mamlctl.timeseries.windows import WindowTaskSpec

        return WindowTaskSpec(
            window=self.window,
            horizon=self.horizon,
            support=self.support_pairs,
            query=self.query,
            partial=self.partial,
        )

    def as_params(self) -> dict[str, Any]:
        """Everything that defines the run, for MLflow params and the initializer JSON."""
        return {
            "family": {
                "name": self.family.name,
                "period": self.family.period,
                "window": self.window,
                "horizon": self.horizon,
                "support_points": self.support_points,
            },
            "task": {
                "support_pairs": self.support_pairs,
                "query": self.query,
                "partial": self.partial,
                "holdout": self.holdout,
            },
            "model": {
                "architecture": self.config.architecture,
                "hidden": list(self.hidden),
                "season_skip": self.season_skip,
            },
            "train": {
                **self.config.model_dump(mode="json", exclude={"hidden"}),
                "nonnegative": self.nonnegative,
            },
        }


def resolve(family: Family, config: FamilyTrainConfig) -> ResolvedPlan:
    """Fill per-family defaults (from L, H, K and the period) and check they fit together."""
    window, horizon = family.window, family.horizon
    k = config.support or family.support
    if config.partial:
        pairs = k - window
        if pairs < 1:
            raise ConfigError(
                f"support K={k} is too short for family {family.name} (L={window}): K counts "
                f"the window, so K must be >= L + 1 = {window + 1}"
            )
    else:
        pairs = k - window - horizon + 1
        if pairs < 1:
            raise ConfigError(
                f"support K={k} is too short for family {family.name} (L={window}, H={horizon}) "
                f"with full pairs: K must be >= L + H = {window + horizon}"
            )
    period = family.period
    query = config.query or max(horizon, period or 0, 8)
    hidden = config.hidden or ((64, 64) if window >= 64 else (40, 40))
    if any(h < 1 for h in hidden):
        raise ConfigError(f"invalid --hidden {list(hidden)}: widths must be >= 1")
    if config.season_skip is None:
        season_skip = period if period is not None and period <= window else 1
    elif config.season_skip > window:
        raise ConfigError(
            f"--season-skip {config.season_skip} exceeds the window L={window} of family "
            f"{family.name}"
        )
    else:
        season_skip = config.season_skip
    return ResolvedPlan(
        config=config,
        family=family,
        window=window,
        horizon=horizon,
        support_points=k,
        support_pairs=pairs,
        query=query,
        hidden=tuple(hidden),
        season=period or 1,
        season_skip=season_skip,
        nonnegative=config.nonnegative,
        floor_fraction=config.floor_fraction,
        partial=config.partial,
    )
