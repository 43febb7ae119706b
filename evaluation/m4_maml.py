"""mamlctl as an M4 method: meta-train a window forecaster, adapt it per series, forecast H.

Tasks, the config and the losses live in :mod:`mamlctl.evaluation.m4_tasks`. Two methods share
them (:func:`fit`): ``maml`` (second-order MAML over the masked loss,
:func:`mamlctl.maml.meta.meta_objective_stacked`) and ``pretrained`` (the paper's
transfer-learning baseline: one network regressed jointly on every pair, then fine-tuned per
series with the same steps). Per-series adaptation is one
:func:`mamlctl.maml.engine.batch_adapt` call over all series. Training stops at
``max_iterations`` or the time budget, whichever comes first: a fixed iteration count
reproduces a run whatever the machine's load (given the budget is not hit first).

With ``folds > 1`` (the few-shot track) the initializer that forecasts series ``i`` is
meta-trained only on the full training histories of the series in the other folds, so no
series' own older points ever reach its forecast. With ``ensemble`` E > 1 each fold trains E
initializers (seeds ``seed + 1000 r``) and the forecast is the mean of their E adapted
forecasts (a plain forecast average, an ensemble, not a single network).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, TrainingError

if TYPE_CHECKING:
    from torch import Tensor

from .m4_tasks import (
    ForecasterConfig,
    StretchSampler,
    config_for,
    from_model_space,
    loss_of,
    make_config,
    masked_mae,
    masked_mse,
    stretch_tasks,
)

FloatArray = npt.NDArray[np.float64]
Method = Literal["maml", "pretrained"]
ProgressFn = Callable[[str, float], None]

__all__ = [
    "FitResult",
    "ForecasterConfig",
    "ProgressFn",
    "config_for",
    "fit",
    "forecast",
    "loss_of",
    "m4_method",
    "make_config",
    "masked_mae",
    "masked_mse",
    "stretch_tasks",
]


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
    fc = from_model_space(z, d)
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
    split across folds and ensemble members (each member stops at ``cfg.max_iterations``
    first). Each trained network is appended to ``fits`` when given.
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
        budget = cfg.time_budget_s / (folds * cfg.ensemble)
        for f in range(folds):
            train = [s for j, s in enumerate(source) if folds == 1 or j % folds != f]
            target = [j for j in range(n) if folds == 1 or j % folds == f]
            shown = [histories[j] for j in target]
            total = np.zeros((len(target), h))
            for r in range(cfg.ensemble):
                member = cfg.model_copy(update={"seed": cfg.seed + 1000 * r})
                fitted = fit(
                    train, member, method=method, time_budget_s=budget, on_progress=on_progress
                )
                if fits is not None:
                    fits.append(fitted)
                total += forecast(fitted, shown)
            out[target] = total / cfg.ensemble
        return out

    return run
