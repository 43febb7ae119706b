"""The adaptation job's plan: hyperparameters (:class:`AdaptConfig`) resolved against the
family and the initializer into shapes and rules (:class:`AdaptPlan`, :func:`plan_adaptation`).

See :mod:`mamlctl.maml.adaptation` for what the plan drives. Pure; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mamlctl.domain import AdaptScope, WeightFormat
from mamlctl.errors import TrainingError
from mamlctl.maml.calibration import MIN_CALIBRATION, CalibrationPrior
from mamlctl.maml.horizon_band import HorizonBand

if TYPE_CHECKING:
    from mamlctl.maml.initializer import Initializer

#: The prior of an initializer written before ``calibration_prior`` was recorded.
FALLBACK_PRIOR = CalibrationPrior.from_train_config({})


class AdaptConfig(BaseModel):
    """Hyperparameters of the daily adaptation; None means "as in meta-training"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1, le=1000)
    inner_lr: float | None = Field(default=None, gt=0)
    calibration: int | None = Field(default=None, ge=4)
    false_alarm_rate: float = Field(default=0.005, gt=0, lt=1)
    min_z: float = Field(default=3.0, ge=0)
    chunk_size: int = Field(default=1024, ge=1)
    adapt_scope: AdaptScope | None = None
    weights: WeightFormat = "int8-delta"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptPlan:
    """Resolved shapes and hyperparameters of one adaptation job."""

    window: int
    horizon: int
    support: int  # K raw points
    pairs: int  # K - L (partial) or K - L - H + 1 (full pairs)
    calibration: int  # C raw points at most
    steps: int
    inner_lr: float | None  # None: the initializer's learned Meta-SGD rates
    loss: str  # mse | mae | gaussian_nll, as in meta-training
    false_alarm_rate: float
    min_z: float
    chunk_size: int
    nonnegative: bool = False  # raw forecasts bounded below (the exported graph does the same)
    floor_fraction: float = 0.0  # the bound: relu(fraction * window minimum); 0 = clip at 0
    adapt_scope: str = "all"  # all | head (ANIL: only the last layer moves per series)
    weights: str = "int8-delta"  # float32 | int8-delta: how the export stores adapted layers
    partial: bool = False  # partial-horizon support pairs, masked loss (the task spec says)
    prior: CalibrationPrior = FALLBACK_PRIOR
    prior_recorded: bool = False  # the prior comes from the initializer (else the fallback)
    min_calibration: int = MIN_CALIBRATION
    #: the family's prediction band (None: growth 1, Gaussian bands; see maml.horizon_band)
    band: HorizonBand | None = None

    @property
    def min_points(self) -> int:
        """Points a series strictly needs: the K support points."""
        return self.support

    @property
    def full_points(self) -> int:
        """Points a series calibrates on itself with all C: K + C (fetch this many)."""
        return self.support + self.calibration

    def as_dict(self) -> dict[str, Any]:
        """The plan for logs and the job hash. Keys added with partial initializers appear only
        for them, so an older initializer's plan (and job hash) is unchanged."""
        out: dict[str, Any] = {
            "window": self.window,
            "horizon": self.horizon,
            "support": self.support,
            "pairs": self.pairs,
            "calibration": self.calibration,
            "steps": self.steps,
            "inner_lr": "meta-sgd" if self.inner_lr is None else self.inner_lr,
            "loss": self.loss,
            "nonnegative": self.nonnegative,
            "floor_fraction": self.floor_fraction,
            "adapt_scope": self.adapt_scope,
            "weights": self.weights,
            "false_alarm_rate": self.false_alarm_rate,
            "min_z": self.min_z,
        }
        if self.partial or self.prior_recorded:
            out["partial"] = self.partial
            out["min_calibration"] = self.min_calibration
            out["calibration_prior"] = self.prior.to_dict()
        if self.band is not None:
            out["horizon_band"] = self.band.to_dict()
        return out


def plan_adaptation(
    initializer: Initializer,
    *,
    window: int,
    horizon: int,
    support: int,
    period: int | None,
    config: AdaptConfig,
) -> AdaptPlan:
    """Resolve the job's shapes and hyperparameters from the family, initializer and config.

    The support pairs follow the initializer's window task spec when it has one (adaptation
    mirrors meta-training's inner loop: ``partial`` specs cut horizons at the support end and
    use the masked loss), else the family's K raw points as full pairs.
    """
    mc = initializer.model_config
    if (int(mc.window), int(mc.horizon)) != (window, horizon):
        raise TrainingError(
            f"initializer takes L={mc.window}, H={mc.horizon} but the family has "
            f"L={window}, H={horizon}; retrain the family's initializer"
        )
    spec = initializer.task_spec
    is_window = spec.get("kind") == "window"
    partial = bool(spec.get("partial", False)) if is_window else False
    pairs = int(spec["support"]) if is_window else support - window - horizon + 1
    if pairs < 1:
        raise TrainingError(
            f"support K={support} is too short for L={window}, H={horizon} (needs >= L + H)"
        )
    k_points = pairs + window if partial else pairs + window + horizon - 1
    train = initializer.train_config
    steps = config.steps or int(train.get("inner_steps", 1))
    if config.inner_lr is not None:
        lr: float | None = float(config.inner_lr)
    elif initializer.inner_lrs is not None:
        lr = None
    else:
        lr = float(train.get("inner_lr", 0.01))
    # Initializers written before the loss was recorded trained with the head's natural loss.
    loss = str(train.get("loss", "auto"))
    if loss == "auto":
        loss = "gaussian_nll" if mc.head == "gaussian" else "mse"
    calibration = config.calibration or max(2 * horizon, period or 0, 24)
    return AdaptPlan(
        window=window,
        horizon=horizon,
        support=k_points,
        pairs=pairs,
        calibration=calibration,
        steps=steps,
        inner_lr=lr,
        loss=loss,
        nonnegative=bool(train.get("nonnegative", False)),
        # Initializers written before the bound was recorded clip at 0.
        floor_fraction=float(train.get("floor_fraction", 0.0)),
        adapt_scope=config.adapt_scope or str(train.get("adapt_scope", "all")),
        weights=config.weights,
        false_alarm_rate=config.false_alarm_rate,
        min_z=config.min_z,
        chunk_size=config.chunk_size,
        partial=partial,
        prior=CalibrationPrior.from_train_config(train),
        prior_recorded=bool(train.get("calibration_prior")),
        # a gaussian head predicts its own per-step sigma: no band on top of it
        band=(HorizonBand.from_train_config(train, horizon=horizon) if mc.head == "mean" else None),
    )
