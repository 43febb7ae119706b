"""Zero-shot models (the family initializer, un-adapted) for series too short to adapt.

Oracles: the support statistics by hand (``np.mean`` / ``np.std`` of the last ``min(n, K)``
points, floored), the initializer's own tensors, and the calibration prior's documented rule.
The job, file and server side are in ``test_zero_shot_job.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mamlctl.errors import InputError, TrainingError
from mamlctl.maml import adaptation as ad
from mamlctl.maml import zero_shot as zs
from mamlctl.maml.calibration import FALLBACK_PRIOR_REL
from mamlctl.maml.initializer import Initializer
from mamlctl.maml.models import MLPConfig, build_model
from mamlctl.timeseries.anomaly import score_from_z

L, H, K = 24, 6, 60


def _initializer(**train: Any) -> Initializer:
    config = MLPConfig(input_size=L, output_size=H, hidden=(16, 16))
    torch.manual_seed(0)
    model = build_model(config)
    return Initializer(
        model_config=config,
        params={k: v.detach() for k, v in model.state_dict().items()},
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 2, "inner_lr": 0.05, **train},
    )


def _plan(init: Initializer) -> ad.AdaptPlan:
    return ad.plan_adaptation(
        init, window=L, horizon=H, support=K, period=24, config=ad.AdaptConfig()
    )


def _by_hand(values: np.ndarray) -> tuple[float, float]:
    s = values[-min(len(values), K) :]
    loc = float(np.mean(s))
    return loc, max(float(np.std(s)), 1e-3 * max(1.0, abs(loc)))


def test_zero_shot_is_theta_with_the_series_support_statistics() -> None:
    init = _initializer(calibration_prior={"residual_scale_rel": 0.4, "threshold": 0.995})
    plan = _plan(init)
    assert (plan.window, plan.min_points) == (L, K)  # adaptation needs the K support points
    rng = np.random.default_rng(3)
    # one window exactly, a few between, one point short of K
    lengths = [L, 30, 40, 45, 50, plan.min_points - 1]
    histories = [100.0 * i + rng.normal(0, 1 + i, n) for i, n in enumerate(lengths)]
    out = zs.zero_shot_histories(init, histories, plan=plan)
    assert len(out) == len(lengths)
    assert list(out.support_points) == [min(n, K) for n in lengths]
    for i, values in enumerate(histories):
        loc, scale = _by_hand(values)
        assert out.loc[i] == pytest.approx(loc, rel=1e-12)
        assert out.scale[i] == pytest.approx(scale, rel=1e-12)
        assert out.residual_scale[i] == pytest.approx(0.4 * scale, rel=1e-12)
    assert np.all(out.threshold == 0.995)
    assert out.prior_source == "initializer"
    # params: theta itself for every series, as stride-0 views (no copy per series)
    assert set(out.params) == set(init.params)
    for name, p in out.params.items():
        assert p.shape == (len(lengths), *init.params[name].shape)
        assert p.strides[0] == 0
        np.testing.assert_array_equal(p[3], init.params[name].numpy())
        np.testing.assert_array_equal(p[5], init.params[name].numpy())


def test_without_a_prior_the_fallback_is_the_series_scale_and_the_min_z_score() -> None:
    init = _initializer()
    plan = _plan(init)
    values = np.linspace(0.0, 10.0, 50)
    out = zs.zero_shot_histories(init, [values], plan=plan)
    _, scale = _by_hand(values)
    assert out.prior_source == "fallback"
    assert out.residual_scale[0] == pytest.approx(FALLBACK_PRIOR_REL * scale)
    assert out.threshold[0] == pytest.approx(float(score_from_z(plan.min_z)))  # erf(3 / sqrt 2)
    assert out.threshold[0] == pytest.approx(0.9973002, abs=1e-7)


def test_a_flat_support_gets_the_floored_scale_and_residual_floor() -> None:
    init = _initializer(calibration_prior={"residual_scale_rel": 1e-9, "threshold": 0.99})
    out = zs.zero_shot_histories(init, [np.full(30, 7.0)], plan=_plan(init))
    assert out.scale[0] == pytest.approx(7e-3)
    assert out.residual_scale[0] == pytest.approx(ad.RESIDUAL_FLOOR_REL * 7e-3)


def test_only_series_between_one_window_and_k_points_are_zero_shot() -> None:
    init = _initializer()
    plan = _plan(init)
    assert not zs.can_zero_shot(L - 1, plan)
    assert zs.can_zero_shot(L, plan)
    assert zs.can_zero_shot(plan.min_points - 1, plan)
    assert not zs.can_zero_shot(plan.min_points, plan)
    for n in (L - 1, plan.min_points):
        with pytest.raises(InputError, match="zero-shot takes"):
            zs.zero_shot_histories(init, [np.ones(n)], plan=plan)
    with pytest.raises(InputError, match="NaN"):
        zs.zero_shot_histories(init, [np.r_[np.ones(30), np.nan]], plan=plan)
    with pytest.raises(InputError, match="no series"):
        zs.zero_shot_histories(init, [], plan=plan)


def test_a_prior_without_threshold_takes_the_min_z_score() -> None:
    init = _initializer(calibration_prior={"residual_scale_rel": 0.5})
    out = zs.zero_shot_histories(init, [np.arange(30.0)], plan=_plan(init))
    _, scale = _by_hand(np.arange(30.0))
    assert out.prior_source == "initializer"
    assert out.residual_scale[0] == pytest.approx(0.5 * scale)
    assert out.threshold[0] == pytest.approx(float(score_from_z(3.0)))


@pytest.mark.parametrize(
    "prior",
    [
        {"threshold": 0.99},
        {"residual_scale_rel": -1.0, "threshold": 0.99},
        {"residual_scale_rel": 1.0, "threshold": 1.5},
        "0.5",
    ],
)
def test_a_malformed_prior_is_a_training_error(prior: Any) -> None:
    init = _initializer(calibration_prior=prior)
    with pytest.raises(TrainingError, match="calibration_prior"):
        zs.zero_shot_histories(init, [np.arange(30.0)], plan=_plan(init))


def test_the_file_contract_carries_the_adaptation(template_cache: Any) -> None:
    from datetime import UTC, datetime

    from mamlctl.domain import InitializerRef
    from mamlctl.maml import export as ex

    template = template_cache.get(MLPConfig(input_size=L, output_size=H, hidden=(16, 16)))
    stamp: dict[str, Any] = {
        "series_id": "s",
        "initializer": InitializerRef(family="f", registered_model="maml-f", version=1, run_id="r"),
        "adapted_at": datetime(2026, 1, 1, tzinfo=UTC),
        "support": K,
        "loc": 1.0,
        "scale": 2.0,
        "residual_scale": 0.5,
        "threshold": 0.99,
    }
    meta = ex.build_metadata(template, **stamp, adaptation=zs.ZERO_SHOT)
    assert meta["mamlctl.adaptation"] == "zero-shot"
    assert ex.parse_metadata(meta).adaptation == "zero-shot"
    assert ex.build_metadata(template, **stamp)["mamlctl.adaptation"] == "adapted"
    old = {k: v for k, v in meta.items() if k != "mamlctl.adaptation"}  # files before the key
    assert ex.parse_metadata(old).adaptation == "adapted"
    with pytest.raises(InputError, match="malformed"):
        ex.parse_metadata({**meta, "mamlctl.adaptation": "fine-tuned"})
    with pytest.raises(InputError, match="adaptation must be"):
        ex.build_metadata(template, **stamp, adaptation="fine-tuned")


def test_stale_selection_always_rechecks_zero_shot_models() -> None:
    from datetime import UTC, datetime, timedelta

    from mamlctl.domain import AdaptedModelRecord, InitializerRef
    from mamlctl.stages.adapt import select_series

    now = datetime(2026, 11, 26, tzinfo=UTC)
    ref = InitializerRef(family="f", registered_model="maml-f", version=3, run_id="r")

    def rec(sid: str, **meta: str) -> AdaptedModelRecord:
        return AdaptedModelRecord(
            series_id=sid,
            family="f",
            registered_model="maml-f",
            initializer_version=3,
            initializer_run_id="r",
            path="p",
            sha256="0" * 64,
            adapted_at=now - timedelta(hours=1),
            support=1,
            window=1,
            horizon=1,
            residual_scale=1.0,
            threshold=0.99,
            metadata=meta,
        )

    current = {"fresh": rec("fresh"), "zs": rec("zs", adaptation="zero-shot")}
    assert current["zs"].adaptation == zs.ZERO_SHOT and current["fresh"].adaptation == zs.ADAPTED
    picked = select_series(
        current, ["fresh", "zs"], initializer=ref, stale_after=timedelta(hours=24), now=now
    )
    assert picked == ["zs"]  # recent, same version, but zero-shot: the job re-checks its points
