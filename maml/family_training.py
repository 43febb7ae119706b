"""Meta-train a family's initializer and validate it: pure, reports through callbacks.

The stage that logs, registers and records the result is :mod:`mamlctl.stages.train`.

::

    plan + held-out split                                   (maml.family_data, family_split)
      -> meta_train (MAML) with a callback: loss + periodic held-out validation
      -> pretrained baseline (same tasks, same budget share), final validation vs seasonal naive
      -> the calibration prior of short series              (maml.heldout_prior)

Validation is
what the product does daily: adapt on the K newest points of a held-out series' history and
forecast its last H points; errors are MASE (m = period) and sMAPE in raw units.

Training also computes the family's calibration prior on the held-out series (their one-step
out-of-sample residuals, :mod:`mamlctl.maml.heldout_prior`), stored in the initializer's
``calibration_prior`` for series too short to calibrate on their own points.

Periodic validation needs θ mid-training, which ``meta_train``'s progress callback does not
carry, so training runs in ``validations`` segments continued from the previous θ (the task
stream continues; Adam's moments restart at each segment boundary).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from mamlctl.maml.family_data import FLOOR_CANDIDATES, ResolvedPlan
from mamlctl.maml.family_split import FamilyData, ValidationSet
from mamlctl.maml.heldout_prior import heldout_prior
from mamlctl.maml.onnx_contract import apply_floor

if TYPE_CHECKING:
    from torch import Tensor

#: Callback for progress: (iterations done, total planned, latest metrics).
ProgressFn = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Forecasts:
    """Raw-unit forecasts ``[N, H]`` of the held-out series by each method."""

    adapted: np.ndarray
    initial: np.ndarray
    pretrained: np.ndarray | None
    seasonal_naive: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyTrainingResult:
    data: FamilyData
    params: dict[str, Tensor]
    pretrained_params: dict[str, Tensor] | None
    iterations: int
    elapsed_s: float
    losses: tuple[float, ...]
    metrics: dict[str, float]
    forecasts: Forecasts
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def forecast_heldout(
    plan: ResolvedPlan,
    params: Mapping[str, Tensor],
    val: ValidationSet,
    *,
    steps: int,
    bounded: bool = True,
) -> np.ndarray:
    """Adapt ``params`` on every held-out support set (``steps`` inner steps, the plan's loss) and
    forecast H in raw units (bounded below for a non-negative family, as the exported files are,
    unless not ``bounded``)."""
    import torch

    from mamlctl.maml.engine import batch_adapt, batched_forward, expand_params
    from mamlctl.maml.models import build_model, loss_by_name, point_forecast

    model_config = plan.model_config()
    model = build_model(model_config)
    sx, sy = torch.from_numpy(val.support_x), torch.from_numpy(val.support_y)
    qx = torch.from_numpy(val.query_x)
    n = sx.shape[0]
    if steps > 0:
        phi = batch_adapt(
            model,
            params,
            sx,
            sy,
            steps=steps,
            inner_lr=plan.config.inner_lr,
            loss_fn=loss_by_name(plan.loss, masked=plan.partial),
            adapt_names=plan.adapt_names,
        )
    else:
        phi = expand_params({k: v.detach() for k, v in params.items()}, n)
    with torch.no_grad():
        out = batched_forward(model)(phi, qx)  # [N, 1, out]
        mean = point_forecast(out, model_config.head)[:, 0, :].double().numpy()
    raw = np.asarray(mean * val.scale[:, None] + val.loc[:, None], dtype=np.float64)
    if not bounded:
        return raw
    return apply_floor(
        raw,
        _window_min(plan, val),
        nonnegative=bool(plan.nonnegative),
        floor_fraction=plan.bound_fraction,
    )


def _window_min(plan: ResolvedPlan, val: ValidationSet) -> np.ndarray:
    return np.array([np.min(h[-plan.window :]) for h in val.histories], dtype=np.float64)


def choose_floor(
    plan: ResolvedPlan, val: ValidationSet, raw: np.ndarray
) -> tuple[float, dict[str, float]]:
    """The lower bound's fraction of a non-negative family: among ``FLOOR_CANDIDATES``, the one
    whose bounded held-out forecasts (``raw``: unbounded, ``[N, H]``) score the lowest MASE, then
    sMAPE, then the larger fraction. Returns it with each candidate's ``val_floor_*`` metrics."""
    if not plan.nonnegative:
        return 0.0, {}
    window_min = _window_min(plan, val)
    ranked: list[tuple[float, float, float]] = []
    metrics: dict[str, float] = {}
    for fraction in FLOOR_CANDIDATES:
        bounded = apply_floor(raw, window_min, nonnegative=True, floor_fraction=fraction)
        s = score(plan, val, bounded)
        metrics.update(_prefixed(f"val_floor_{fraction:g}_", s))
        ranked.append((s["mase"], s["smape"], -fraction))
    return -min(ranked)[2], metrics


def seasonal_naive_heldout(plan: ResolvedPlan, val: ValidationSet) -> np.ndarray:
    from mamlctl.timeseries.baselines import seasonal_naive

    return seasonal_naive(list(val.histories), plan.horizon, m=plan.season)


def score(plan: ResolvedPlan, val: ValidationSet, forecast: np.ndarray) -> dict[str, float]:
    """Mean MASE (m = period) and sMAPE of a forecast of the held-out series."""
    from mamlctl.timeseries.metrics import mase, smape

    return {
        "mase": float(np.mean(mase(list(val.histories), val.actual, forecast, m=plan.season))),
        "smape": float(np.mean(smape(val.actual, forecast))),
    }


def train_family(
    data: FamilyData,
    *,
    on_metrics: Callable[[int, Mapping[str, float]], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> FamilyTrainingResult:
    """Meta-train, train the pretrained baseline and validate. No I/O: reports via callbacks.

    ``on_metrics(step, metrics)`` receives the training loss every ``log_every`` iterations and
    the ``val_*`` metrics at each validation point; ``on_progress`` drives a progress bar.
    """
    import torch

    from mamlctl.maml.meta import MetaTrainProgress, meta_train
    from mamlctl.maml.tasks import WindowTaskSampler

    plan, cfg, val = data.plan, data.plan.config, data.validation
    budget = cfg.time_budget_s
    # The pretrained baseline gets a quarter of the budget (its iterations are cheaper).
    maml_budget = budget * (0.8 if cfg.pretrained_baseline else 1.0) if budget else None
    sampler = WindowTaskSampler([s.values for s in data.train], plan.task_spec(), seed=cfg.seed)
    model_config = plan.model_config()
    total = cfg.iterations
    segment = max(1, math.ceil(total / cfg.validations))
    history: list[tuple[int, dict[str, float]]] = []
    losses: list[float] = []
    params: dict[str, Tensor] | None = None
    #: (held-out MASE, iteration, parameters) of the best MAML checkpoint so far
    best: tuple[float, int, dict[str, Tensor]] | None = None
    done = 0
    began = time.perf_counter()
    stop = False
    emit = on_metrics or (lambda step, metrics: None)

    def callback(progress: MetaTrainProgress) -> bool:
        nonlocal stop
        it = done + progress.iteration
        emit(it, {"train_loss": progress.loss})
        if on_progress is not None:
            on_progress(it, total, {"loss": progress.loss})
        if maml_budget is not None and time.perf_counter() - began > maml_budget:
            stop = True
            return False
        return True

    while done < total and not stop:
        n = min(segment, total - done)
        result = meta_train(
            model_config,
            sampler,
            plan.meta_config(iterations=n),
            callback=callback,
            init_params=params,
        )
        params = result.params
        losses.extend(result.losses)
        done += result.iterations
        val_metrics = _prefixed(
            "val_", score(plan, val, forecast_heldout(plan, params, val, steps=cfg.inner_steps))
        )
        history.append((done, val_metrics))
        emit(done, val_metrics)
        if best is None or val_metrics["val_mase"] < best[0]:
            best = (
                val_metrics["val_mase"],
                done,
                {k: v.detach().clone() for k, v in params.items()},
            )
    assert params is not None and best is not None
    elapsed = time.perf_counter() - began

    pretrained: dict[str, Tensor] | None = None
    if cfg.pretrained_baseline:
        left = budget - (time.perf_counter() - began) if budget else None
        pre_began = time.perf_counter()

        def pre_callback(progress: MetaTrainProgress) -> bool:
            return left is None or time.perf_counter() - pre_began < max(left, 1.0)

        pre_sampler = WindowTaskSampler(
            [s.values for s in data.train], plan.task_spec(), seed=cfg.seed + 1
        )
        pre = meta_train(
            model_config,
            pre_sampler,
            plan.meta_config(method="pretrained", iterations=max(done, 1)),
            callback=pre_callback,
        )
        pretrained = pre.params

    # the initializer registered (``select``): the best held-out checkpoint, the pretrained
    # baseline when it validates better still, or the last iterate
    selected = float(done)
    if cfg.select == "best":
        best_mase, selected, params = best[0], float(best[1]), best[2]
        if pretrained is not None:
            pre_val = score(
                plan, val, forecast_heldout(plan, pretrained, val, steps=cfg.inner_steps)
            )
            if pre_val["mase"] < best_mase:
                params, selected = pretrained, -1.0
    floor_metrics: dict[str, float] = {}
    if plan.floor_fraction is None:  # choose the non-negative lower bound on the held-out set
        raw = forecast_heldout(plan, params, val, steps=cfg.inner_steps, bounded=False)
        chosen, floor_metrics = choose_floor(plan, val, raw)
        plan = replace(plan, floor_fraction=chosen)
        data = replace(data, plan=plan)

    # the calibration prior of series too short to calibrate themselves (maml.calibration)
    # and, for a mean head, the prediction band of the family (maml.horizon_band)
    adapted = forecast_heldout(plan, params, val, steps=cfg.inner_steps)
    prior, band = heldout_prior(
        plan,
        params,
        val,
        steps=cfg.inner_steps,
        forecast=adapted if plan.config.head == "mean" else None,
    )
    plan = replace(
        plan,
        calibration_prior=prior.to_dict(),
        horizon_band=None if band is None else band.to_dict(),
    )
    data = replace(data, plan=plan)

    forecasts = Forecasts(
        adapted=adapted,
        initial=forecast_heldout(plan, params, val, steps=0),
        pretrained=(
            forecast_heldout(plan, pretrained, val, steps=cfg.inner_steps)
            if pretrained is not None
            else None
        ),
        seasonal_naive=seasonal_naive_heldout(plan, val),
    )
    final = {
        **_prefixed("val_", score(plan, val, forecasts.adapted)),
        **_prefixed("val_initial_", score(plan, val, forecasts.initial)),
        **_prefixed("val_seasonal_naive_", score(plan, val, forecasts.seasonal_naive)),
    }
    if forecasts.pretrained is not None:
        final.update(_prefixed("val_pretrained_", score(plan, val, forecasts.pretrained)))
    final.update(floor_metrics)
    final["floor_fraction"] = plan.bound_fraction
    final.update(_prefixed("calibration_prior_", prior.to_dict()))
    if band is not None:  # the band's growth at the horizon's end and its 80/95 multipliers
        final["band_growth_last"] = band.growth[-1]
        final.update(
            {
                f"band_multiplier_{v:g}": m
                for v, m in zip(band.levels, band.multipliers, strict=True)
                if v in (80.0, 95.0)
            }
        )
    final["train_seconds"] = elapsed
    final["iterations"] = float(done)
    # the MAML iteration whose parameters are the initializer; -1: the pretrained baseline
    final["selected_iteration"] = selected
    emit(done, final)
    del torch
    return FamilyTrainingResult(
        data=data,
        params=params,
        pretrained_params=pretrained,
        iterations=done,
        elapsed_s=elapsed,
        losses=tuple(losses),
        metrics=final,
        forecasts=forecasts,
        history=history,
    )


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}
