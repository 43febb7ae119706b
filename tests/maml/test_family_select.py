"""``train --select best``: the registered initializer is the held-out best of the MAML
checkpoints and the pretrained baseline; ``last`` keeps the final MAML iterate.

Oracle: the held-out MASE of every candidate, recomputed here with the same validation
function (no lower bound is chosen: ``nonnegative=False``), and the candidates' parameters.
"""

from __future__ import annotations

import numpy as np
import torch

from mamlctl.domain import Family, Series
from mamlctl.maml.family_data import make_config
from mamlctl.maml.family_training import forecast_heldout, score, train_family
from mamlctl.stages.train import plan_training


def _data(select: str):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    t = np.arange(200)
    family = Family(
        name="sel", period=24, interval_seconds=3600.0, window=24, horizon=6, support=48
    )
    series = [
        Series(
            series_id=f"s{i}",
            values=5 + i + np.sin(2 * np.pi * t / 24 + i) + 0.3 * rng.standard_normal(t.size),
            family="sel",
        )
        for i in range(8)
    ]
    config = make_config(
        iterations=40, meta_batch=4, hidden=(16,), query=6, validations=4,
        nonnegative=False, select=select,
    )  # fmt: skip
    return plan_training(family, series, config)


def test_best_is_the_lowest_held_out_mase_of_the_candidates() -> None:
    torch.manual_seed(0)
    data = _data("best")
    result = train_family(data)
    plan, val = result.data.plan, result.data.validation
    steps = plan.config.inner_steps
    candidates = {step: m["val_mase"] for step, m in result.history}
    assert result.pretrained_params is not None
    pre = score(plan, val, forecast_heldout(plan, result.pretrained_params, val, steps=steps))
    candidates[-1] = pre["mase"]
    chosen = int(result.metrics["selected_iteration"])
    assert chosen == min(candidates, key=lambda k: candidates[k])
    assert result.metrics["val_mase"] == candidates[chosen]
    if chosen == -1:
        for name, p in result.params.items():
            assert torch.equal(p, result.pretrained_params[name])


def test_last_keeps_the_final_iterate() -> None:
    data = _data("last")
    result = train_family(data)
    assert result.metrics["selected_iteration"] == result.iterations == 40
    assert result.metrics["val_mase"] == result.history[-1][1]["val_mase"]
