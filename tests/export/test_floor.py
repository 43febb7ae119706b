"""The non-negative lower bound ``max(forecast, relu(f * min(window)))`` (issue #5, one-step sMAPE).

Oracles: the bound computed by hand in float32 (a forecast below it EQUALS it, bit for bit,
through onnxruntime on the rendered file and through the torch twin: parity 0 there), a float64
re-implementation of the rest of the contract, hand-computed held-out scores for the choice
of the fraction, and files/initializers written before the bound existed (clip at 0).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from mamlctl.domain import Family, InitializerRef
from mamlctl.errors import ConfigError
from mamlctl.maml import export as ex
from mamlctl.maml.family_data import make_config, resolve
from mamlctl.maml.family_split import ValidationSet
from mamlctl.maml.family_training import choose_floor, score
from mamlctl.maml.models import build_model, config_from_dict
from mamlctl.maml.onnx_contract import apply_floor
from mamlctl.maml.onnx_parity import check_parity, ort_session, torch_reference

SKIP_CONFIG = {"kind": "mlp", "input_size": 24, "hidden": [16], "output_size": 10, "season_skip": 4}
INIT = InitializerRef(family="hourly", registered_model="maml-hourly", version=3, run_id="r" * 32)
WHEN = datetime(2026, 11, 26, 12, 30, 5, 123456, tzinfo=UTC)
FRACTION = 0.9


def _shifted_params(core: Any, bias: float) -> dict[str, np.ndarray]:
    """Zero last layer with bias ``bias`` (normalised units): forecast = naive + bias * scale."""
    params = {k: v.detach().numpy().copy() for k, v in core.named_parameters()}
    params["layers.1.weight"][:] = 0.0
    params["layers.1.bias"][:] = bias
    return params


def test_forecast_below_the_floor_equals_the_floor_in_onnxruntime_and_torch(
    template_cache: Any,
) -> None:
    config = config_from_dict(SKIP_CONFIG)
    template = template_cache.get(config, nonnegative=True, floor_fraction=FRACTION)
    zero = template_cache.get(config, nonnegative=True)
    assert (template.floor_fraction, zero.floor_fraction) == (FRACTION, 0.0)
    assert template.template_id != zero.template_id
    # the clip-at-0 graph is the one older files have: a single Relu, no window reduction
    zero_ops = [n.op_type for n in onnx.load_from_string(zero.template_bytes).graph.node]
    ops = [n.op_type for n in onnx.load_from_string(template.template_bytes).graph.node]
    assert "ReduceMin" not in zero_ops and "Relu" in zero_ops
    assert {"ReduceMin", "Max", "Relu"} <= set(ops)

    torch.manual_seed(0)
    core = build_model(config)
    loc, scale, bias = 20.0, 4.0, -2.5  # forecast = seasonal naive - 10: often below the floor
    params = _shifted_params(core, bias)
    blob = template.render(params, loc=loc, scale=scale, residual_scale=1.0, metadata={})
    rng = np.random.default_rng(5)
    windows = (rng.uniform(8.0, 30.0, (200, 24))).astype(np.float32)
    windows[:20] -= 40.0  # minimum below 0: the floor is relu(...) = 0
    forecast, _ = ort_session(blob).run(None, {"window": windows})

    idx = [24 - 4 + (h % 4) for h in range(10)]
    unbounded = windows[:, idx].astype(np.float64) + bias * scale
    floor32 = np.maximum(windows.min(axis=1) * np.float32(FRACTION), np.float32(0.0))
    oracle = np.maximum(unbounded, floor32[:, None].astype(np.float64))
    np.testing.assert_allclose(forecast, oracle, atol=1e-5 * scale)
    below = unbounded < floor32[:, None] - 1e-3
    assert below[:20].any() and below[20:].any() and (~below).any()
    # a forecast below the floor equals the floor exactly
    np.testing.assert_array_equal(
        forecast[below], np.broadcast_to(floor32[:, None], below.shape)[below]
    )
    np.testing.assert_array_equal(forecast[:20][below[:20]], 0.0)

    reference = torch_reference(
        core,
        params,
        loc=loc,
        scale=scale,
        residual_scale=1.0,
        horizon=10,
        head="mean",
        nonnegative=True,
        floor_fraction=FRACTION,
    )
    twin, _ = reference(windows)
    np.testing.assert_array_equal(twin[below], forecast[below])  # parity 0 where the floor binds
    stats = check_parity(blob, reference, loc=loc, scale=scale, window=24, n=1000)
    assert stats.passed and stats.max_rel_error <= 1e-5, stats
    # the numpy twin used by validation and calibration agrees with the file
    np.testing.assert_allclose(
        apply_floor(unbounded, windows.min(axis=1), nonnegative=True, floor_fraction=FRACTION),
        forecast,
        atol=1e-5 * scale,
    )


def test_floor_fraction_is_recorded_in_metadata_and_old_files_clip_at_zero(
    template_cache: Any,
) -> None:
    config = config_from_dict(SKIP_CONFIG)
    template = template_cache.get(config, nonnegative=True, floor_fraction=FRACTION)
    torch.manual_seed(0)
    core = build_model(config)
    meta = ex.build_metadata(
        template,
        series_id="H1",
        initializer=INIT,
        adapted_at=WHEN,
        support=96,
        loc=1.0,
        scale=2.0,
        residual_scale=0.5,
        threshold=4.0,
        loss="mae",
    )
    blob = template.render(
        _shifted_params(core, 0.0), loc=1.0, scale=2.0, residual_scale=0.5, metadata=meta
    )
    parsed = ex.read_metadata(blob)
    assert (parsed.nonnegative, parsed.floor_fraction) == (True, FRACTION)
    old = {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
    del old[ex.PREFIX + "floor_fraction"]
    assert ex.parse_metadata(old).floor_fraction == 0.0
    # a fraction outside [0, 1] is refused in one line
    with pytest.raises(ConfigError, match="outside"):
        template_cache.get(config, nonnegative=True, floor_fraction=1.5)


def test_apply_floor_oracle() -> None:
    fc = np.array([[-1.0, 3.0, 9.0], [2.0, -5.0, 0.5]])
    wmin = np.array([4.0, -2.0])
    np.testing.assert_array_equal(
        apply_floor(fc, wmin, nonnegative=True, floor_fraction=0.5),
        [[2.0, 3.0, 9.0], [2.0, 0.0, 0.5]],
    )
    np.testing.assert_array_equal(
        apply_floor(fc, wmin, nonnegative=True, floor_fraction=0.0), np.maximum(fc, 0.0)
    )
    np.testing.assert_array_equal(apply_floor(fc, wmin, nonnegative=False, floor_fraction=1.0), fc)


FAMILY = Family(name="syn", period=4, interval_seconds=3600.0, window=8, horizon=2, support=20)


def _val(histories: list[np.ndarray], actual: np.ndarray) -> ValidationSet:
    n = len(histories)
    empty = np.zeros((n, 1, 1), dtype=np.float32)
    return ValidationSet(
        series_ids=tuple(f"s{i}" for i in range(n)),
        histories=tuple(histories),
        actual=actual,
        support_x=empty,
        support_y=empty,
        query_x=empty,
        loc=np.zeros(n),
        scale=np.ones(n),
    )


def test_choose_floor_picks_the_candidate_with_the_best_heldout_mase() -> None:
    plan = resolve(FAMILY, make_config())
    from dataclasses import replace

    plan = replace(plan, nonnegative=True)
    rng = np.random.default_rng(0)
    # low-count series (values 10-20), forecasts collapsed below 0: the window minimum is best
    histories = [rng.uniform(10.0, 20.0, 30) for _ in range(3)]
    actual = np.array([[12.0, 13.0], [15.0, 14.0], [11.0, 12.0]])
    raw = np.full((3, 2), -3.0)
    chosen, metrics = choose_floor(plan, _val(histories, actual), raw)
    assert chosen == 1.0
    for f in (0.0, 0.5, 0.9, 1.0):
        wmin = np.array([h[-8:].min() for h in histories])
        expected = score(plan, _val(histories, actual), np.maximum(raw, f * wmin[:, None]))
        assert metrics[f"val_floor_{f:g}_mase"] == pytest.approx(expected["mase"])
    # actual values near 0: any floor above 0 hurts, the clip at 0 is chosen
    chosen, _ = choose_floor(plan, _val(histories, np.zeros((3, 2))), raw)
    assert chosen == 0.0
    # nothing below any floor: every candidate ties, the largest fraction is kept
    chosen, _ = choose_floor(plan, _val(histories, actual), np.full((3, 2), 50.0))
    assert chosen == 1.0
    assert choose_floor(replace(plan, nonnegative=False), _val(histories, actual), raw) == (0.0, {})
