"""mamlctl as an M4 method: meta-train a window forecaster, adapt it per series, forecast H.

A *task* is a stretch of ``K + H`` raw points of one series: the first ``K`` are what the
method sees (the support), the last ``H`` the future it is asked for (the query target). The
stretch is normalised with :func:`mamlctl.timeseries.scaling.support_stats` of the ``K`` visible
points only. Support pairs are every window ``x = z[s : s + L]`` with ``s = 0 .. K - L - 1``;
their targets ``z[s + L : s + L + H]`` are *masked* where they pass the end of the visible part,
so short histories (the few-shot track: 48 hourly points cannot hold a full L + H = 72 pair)
still give ``K - L`` pairs. The query pair is ``x = z[K - L : K]`` (the newest window), ``y`` the
``H`` future points. Loss: masked MSE (targets carry ``[y, mask]`` side by side, width ``2H``).

The network predicts the residual to a seasonal-naive forecast of its own input window
(``season`` m: ``base[h] = x[L - m + (h mod m)]``; m = 1 is the naive forecast), a skip
connection so an untrained network already forecasts like seasonal naive.

Two methods share all of this (:func:`fit`): ``maml`` (second-order MAML over the masked
loss, :func:`mamlctl.maml.meta.meta_objective_stacked`) and ``pretrained`` (the paper's
transfer-learning baseline: one network regressed jointly on every pair, then fine-tuned per
series with the same steps). Per-series adaptation is one
:func:`mamlctl.maml.engine.batch_adapt` call over all series. Training is budgeted by time.

With ``folds > 1`` (the few-shot track) the initializer that forecasts series ``i`` is
meta-trained only on the full training histories of the series in the other folds, so no
series' own older points ever reach its forecast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mamlctl.errors import ConfigError, InputError, TrainingError

if TYPE_CHECKING:
    from torch import Tensor

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Method = Literal["maml", "pretrained"]
ProgressFn = Callable[[str, float], None]

__all__ = [
    "FitResult",
    "ForecasterConfig",
    "config_for",
    "fit",
    "forecast",
    "loss_of",
    "m4_method",
    "masked_mae",
    "masked_mse",
    "stretch_tasks",
]


class ForecasterConfig(BaseModel):
    """Shapes and hyperparameters of the evaluated forecaster (unknown keys fail)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(ge=1)
    horizon: int = Field(ge=1)
    support: int = Field(ge=2, description="K raw points a series is adapted on.")
    season: int = Field(default=1, ge=1, description="m of the seasonal-naive skip.")
    hidden: tuple[int, ...] = (64, 64)
    inner_steps: int = Field(default=2, ge=1, le=50)
    inner_lr: float = Field(default=0.3, gt=0)
    meta_lr: float = Field(default=3e-3, gt=0)
    meta_batch: int = Field(default=32, ge=1)
    time_budget_s: float = Field(default=120.0, gt=0)
    max_iterations: int = Field(default=100_000, ge=1)
    seed: int = 0
    adapt_steps: int | None = Field(
        default=None, ge=0, le=100, description="Steps per series at forecast time (None: inner)."
    )
    clip: float | None = Field(
        default=None, gt=0, description="Clip normalised values to +-clip (spiky series)."
    )
    loss: Literal["mse", "mae"] = Field(
        default="mae", description="Masked loss; MAE targets the median (M4 scores MAE-like)."
    )

    @model_validator(mode="after")
    def _check(self) -> ForecasterConfig:
        if self.support <= self.window:
            raise ValueError(f"support K={self.support} must exceed the window L={self.window}")
        if self.season > self.window:
            raise ValueError(f"season {self.season} must not exceed the window {self.window}")
        return self

    @property
    def pairs(self) -> int:
        return self.support - self.window


def make_config(**values: object) -> ForecasterConfig:
    try:
        return ForecasterConfig(**values)  # type: ignore[arg-type]
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid forecaster config at {loc}: {first['msg']}") from None


def config_for(subset: str, *, history: int | None, time_budget_s: float) -> ForecasterConfig:
    """The family config the CLI derives (Hourly P=24 L=96 H=48 K=167; Weekly L=52 H=13 K=77),
    shrunk to fit a few-shot history (Hourly 48: L=24, K=48; Weekly 104: L=52, K=104)."""
    if subset == "hourly":
        window, horizon, support, season = 96, 48, 167, 24
    elif subset == "weekly":
        window, horizon, support, season = 52, 13, 77, 1
    else:
        raise InputError(f"unknown M4 subset {subset!r}; choose hourly or weekly")
    if history is not None:
        support = history
        window = min(window, max(season, history // 2))
    return make_config(
        window=window,
        horizon=horizon,
        support=support,
        season=season,
        time_budget_s=time_budget_s,
    )


# --------------------------------------------------------------------------- tasks (numpy)


def _base(x: FloatArray, horizon: int, season: int) -> FloatArray:
    """Seasonal-naive forecast of H from the last axis of ``x`` (period ``season``)."""
    length = x.shape[-1]
    idx = length - season + (np.arange(horizon) % season)
    return x[..., idx]


def stretch_tasks(
    visible: FloatArray, future: FloatArray | None, cfg: ForecasterConfig
) -> dict[str, npt.NDArray[np.float32] | FloatArray]:
    """Tasks of N stretches: ``visible [N, K]`` (and ``future [N, H]`` for a query target).

    Returns float32 ``support_x [N, P, L]``, ``support_y [N, P, 2H]`` (residual to the
    seasonal-naive base, then the mask), ``query_x [N, 1, L]``, ``query_base [N, 1, H]``,
    ``query_y [N, 1, 2H]`` (when ``future`` is given) and float64 ``loc``, ``scale`` ``[N]``.
    """
    from mamlctl.timeseries.scaling import support_stats

    k, length, h, m = cfg.support, cfg.window, cfg.horizon, cfg.season
    if visible.ndim != 2 or visible.shape[1] != k:
        raise InputError(f"stretches must be [N, {k}], got {visible.shape}")
    loc, scale = support_stats(visible)
    z = (visible - loc[:, None]) / scale[:, None]
    if cfg.clip is not None:
        z = np.clip(z, -cfg.clip, cfg.clip)
    padded = np.concatenate([z, np.zeros((z.shape[0], h))], axis=1)
    starts = np.arange(cfg.pairs)
    x = z[:, starts[:, None] + np.arange(length)]  # [N, P, L]
    tgt_idx = starts[:, None] + length + np.arange(h)  # [P, H]
    y = padded[:, tgt_idx]
    mask = np.broadcast_to((tgt_idx < k).astype(np.float64), y.shape)
    base = _base(x, h, m)
    sy = np.concatenate([(y - base) * mask, mask], axis=-1)
    qx = z[:, None, k - length :]
    qbase = _base(qx, h, m)
    out: dict[str, npt.NDArray[np.float32] | FloatArray] = {
        "support_x": x.astype(np.float32),
        "support_y": sy.astype(np.float32),
        "query_x": qx.astype(np.float32),
        "query_base": qbase.astype(np.float32),
        "loc": loc,
        "scale": scale,
    }
    if future is not None:
        fz = (future - loc[:, None]) / scale[:, None]
        if cfg.clip is not None:
            fz = np.clip(fz, -cfg.clip, cfg.clip)
        qy = np.concatenate([fz[:, None, :] - qbase, np.ones_like(qbase)], axis=-1)
        out["query_y"] = qy.astype(np.float32)
    return out


class StretchSampler:
    """Uniform draws of (series, start) stretches of ``K + H`` points, vectorised."""

    def __init__(self, series: Sequence[FloatArray], cfg: ForecasterConfig, *, seed: int) -> None:
        span = cfg.support + cfg.horizon
        arrays = [np.asarray(s, dtype=np.float64) for s in series]
        arrays = [a for a in arrays if a.shape[0] >= span and np.all(np.isfinite(a))]
        if not arrays:
            raise TrainingError(f"no training series has the {span} points a task needs (K + H)")
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.n_starts = lengths - span + 1
        self.cum = np.cumsum(self.n_starts)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.flat = np.concatenate(arrays)
        self.span = span
        self.cfg = cfg
        self.n_series = len(arrays)
        self.rng = np.random.default_rng(seed)

    def sample(self, n_tasks: int) -> dict[str, npt.NDArray[np.float32] | FloatArray]:
        draw = self.rng.integers(0, int(self.cum[-1]), size=n_tasks)
        idx = np.searchsorted(self.cum, draw, side="right")
        start = draw - (self.cum[idx] - self.n_starts[idx])
        raw = self.flat[(self.offsets[idx] + start)[:, None] + np.arange(self.span)]
        k = self.cfg.support
        return stretch_tasks(raw[:, :k], raw[:, k:], self.cfg)


# --------------------------------------------------------------------------- torch


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """MSE over observed targets: ``target [..., N, 2H]`` = values then mask; leading axes kept."""
    h = pred.shape[-1]
    y, mask = target[..., :h], target[..., h:]
    se = (pred - y).pow(2) * mask
    return se.sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp(min=1.0)


def masked_mae(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over observed targets, shaped like :func:`masked_mse`."""
    h = pred.shape[-1]
    y, mask = target[..., :h], target[..., h:]
    ae = (pred - y).abs() * mask
    return ae.sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp(min=1.0)


def loss_of(cfg: ForecasterConfig) -> Callable[[Tensor, Tensor], Tensor]:
    return masked_mae if cfg.loss == "mae" else masked_mse


@dataclass(frozen=True, slots=True, kw_only=True)
class FitResult:
    """A trained initializer (or pretrained network) and how training went."""

    method: Method
    config: ForecasterConfig
    params: dict[str, Tensor]
    iterations: int
    elapsed_s: float
    final_loss: float
    n_series: int


def _model(cfg: ForecasterConfig) -> object:
    import torch

    from mamlctl.maml.models import MLPConfig, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(
            MLPConfig(input_size=cfg.window, hidden=cfg.hidden, output_size=cfg.horizon)
        )
    # Start at the seasonal-naive skip: a zero read-out predicts a zero residual.
    last = f"layers.{len(cfg.hidden)}"
    with torch.no_grad():
        dict(model.named_parameters())[f"{last}.weight"].mul_(0.01)
        dict(model.named_parameters())[f"{last}.bias"].zero_()
    return model


def fit(
    series: Sequence[FloatArray],
    cfg: ForecasterConfig,
    *,
    method: Method,
    time_budget_s: float | None = None,
    on_progress: ProgressFn | None = None,
    init: FitResult | None = None,
) -> FitResult:
    """Meta-train (``maml``) or jointly pre-train (``pretrained``) on stretches of ``series``
    until ``time_budget_s`` (default ``cfg.time_budget_s``) or ``cfg.max_iterations``."""
    import torch

    from mamlctl.maml.engine import batched_forward
    from mamlctl.maml.meta import FlatAdam, FlatParams, meta_objective_stacked
    from mamlctl.maml.tasks import TaskBatch

    budget = cfg.time_budget_s if time_budget_s is None else time_budget_s
    loss_fn = loss_of(cfg)
    sampler = StretchSampler(series, cfg, seed=cfg.seed + (0 if method == "maml" else 1))
    model = _model(cfg)
    assert isinstance(model, torch.nn.Module)
    start = init.params if init is not None else dict(model.named_parameters())
    flat = FlatParams({k: v.detach() for k, v in start.items()})
    opt = FlatAdam(flat.flat, lr=cfg.meta_lr)
    forward = batched_forward(model)
    t = cfg.meta_batch
    began = time.perf_counter()
    it, recent = 0, 0.0
    while it < cfg.max_iterations and time.perf_counter() - began < budget:
        d = sampler.sample(t)
        batch = TaskBatch(*(torch.from_numpy(np.asarray(d[k])) for k in _BATCH_KEYS))
        theta = flat.expanded(t)
        if method == "maml":
            loss = meta_objective_stacked(
                forward,
                theta,
                batch,
                inner_lr=cfg.inner_lr,
                steps=cfg.inner_steps,
                loss_fn=loss_fn,
                second_order=True,
            )
        else:
            x = torch.cat([batch.support_x, batch.query_x], dim=1)
            y = torch.cat([batch.support_y, batch.query_y], dim=1)
            loss = loss_fn(forward(theta, x), y).mean()
        (grad,) = torch.autograd.grad(loss, flat.flat)
        if not torch.isfinite(grad).all():
            raise TrainingError(f"{method} training diverged at iteration {it}; lower meta_lr")
        opt.step(grad)
        it += 1
        lv = float(loss.detach())
        recent = 0.95 * recent + 0.05 * lv if it > 1 else lv
        if on_progress is not None and it % 20 == 0:
            on_progress(method, min(1.0, (time.perf_counter() - began) / budget))
    return FitResult(
        method=method,
        config=cfg,
        params=flat.detached(),
        iterations=it,
        elapsed_s=time.perf_counter() - began,
        final_loss=recent,
        n_series=sampler.n_series,
    )


_BATCH_KEYS = ("support_x", "support_y", "query_x", "query_y")


def _visible(histories: Sequence[FloatArray], k: int) -> FloatArray:
    """The last K points of each history, edge-padded on the left when shorter."""
    rows = []
    for i, hist in enumerate(histories):
        arr = np.asarray(hist, dtype=np.float64)
        if arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
            raise InputError(f"series #{i} is empty or has non-finite values")
        tail = arr[-k:]
        if tail.shape[0] < k:
            tail = np.concatenate([np.full(k - tail.shape[0], tail[0]), tail])
        rows.append(tail)
    return np.stack(rows)


def forecast(
    fitted: FitResult,
    histories: Sequence[FloatArray],
    *,
    steps: int | None = None,
    chunk_size: int = 512,
) -> FloatArray:
    """Adapt ``fitted`` on each history's last K points (``steps`` inner steps, default the
    config's) and forecast H in raw units: ``[N, H]``."""
    import torch

    from mamlctl.maml.engine import batch_adapt, batched_forward, expand_params

    cfg = fitted.config
    d = stretch_tasks(_visible(histories, cfg.support), None, cfg)
    model = _model(cfg)
    assert isinstance(model, torch.nn.Module)
    default_steps = cfg.inner_steps if cfg.adapt_steps is None else cfg.adapt_steps
    n_steps = default_steps if steps is None else steps
    sx = torch.from_numpy(np.asarray(d["support_x"]))
    sy = torch.from_numpy(np.asarray(d["support_y"]))
    qx = torch.from_numpy(np.asarray(d["query_x"]))
    n = sx.shape[0]
    if n_steps > 0:
        phi = batch_adapt(
            model,
            fitted.params,
            sx,
            sy,
            steps=n_steps,
            inner_lr=cfg.inner_lr,
            loss_fn=loss_of(cfg),
            chunk_size=chunk_size,
        )
    else:
        phi = expand_params(fitted.params, n)
    with torch.no_grad():
        out = batched_forward(model)(phi, qx)[:, 0, :].double().numpy()
    z = out + np.asarray(d["query_base"], dtype=np.float64)[:, 0, :]
    loc, scale = np.asarray(d["loc"]), np.asarray(d["scale"])
    fc = z * scale[:, None] + loc[:, None]
    # A series that never went below zero is not forecast below zero (M4's are all positive).
    nonneg = np.array([np.min(np.asarray(x)[-cfg.support :]) >= 0 for x in histories])
    fc[nonneg] = np.maximum(fc[nonneg], 0.0)
    if not np.all(np.isfinite(fc)):
        raise TrainingError(f"{fitted.method} produced non-finite forecasts; lower inner_lr")
    return np.asarray(fc, dtype=np.float64)


def m4_method(
    cfg: ForecasterConfig,
    *,
    method: Method,
    corpus: Sequence[FloatArray] | None = None,
    folds: int = 1,
    on_progress: ProgressFn | None = None,
    fits: list[FitResult] | None = None,
) -> Callable[[Sequence[FloatArray], int], FloatArray]:
    """A harness ``ForecastFn`` for ``run_m4``.

    Without ``corpus`` it trains on the histories it is shown. With ``corpus`` (the full
    training histories, aligned with the shown ones) and ``folds`` k, series ``i`` is forecast by
    a network trained on the corpus series ``j`` with ``j % k != i % k``; the time budget is
    split across folds. Each trained network is appended to ``fits`` when given.
    """
    if folds < 1:
        raise InputError(f"folds must be >= 1, got {folds}")

    def run(histories: Sequence[FloatArray], h: int) -> FloatArray:
        if h != cfg.horizon:
            raise InputError(f"forecaster horizon {cfg.horizon} != harness horizon {h}")
        source = list(corpus) if corpus is not None else list(histories)
        if len(source) != len(histories):
            raise InputError("the training corpus must align with the shown histories")
        n = len(histories)
        out = np.empty((n, h))
        budget = cfg.time_budget_s / folds
        for f in range(folds):
            train = [s for j, s in enumerate(source) if folds == 1 or j % folds != f]
            target = [j for j in range(n) if folds == 1 or j % folds == f]
            fitted = fit(train, cfg, method=method, time_budget_s=budget, on_progress=on_progress)
            if fits is not None:
                fits.append(fitted)
            out[target] = forecast(fitted, [histories[j] for j in target])
        return out

    return run
