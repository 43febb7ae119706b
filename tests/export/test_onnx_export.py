"""Template export + weight swap: parity with torch, the file contract, metadata, batch shapes.

Oracles: the torch contract module with the same weights (parity), a float64 numpy re-implementation
of the MLP contract (normalisation inside the graph), and the values we wrote (metadata and
initializers read back with ``onnx``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from torch import nn

from mamlctl.domain import InitializerRef
from mamlctl.errors import ConfigError, InputError
from mamlctl.maml import export as ex
from mamlctl.maml.models import build_model, config_from_dict, config_to_dict
from mamlctl.maml.onnx_parity import check_parity, ort_session, torch_reference
from mamlctl.maml.onnx_template import OPSET, OnnxTemplate, build_template
from mamlctl.registry.model_files import open_verified
from mamlctl.stages.export import export_to_files

#: Small configs of both architectures; ids used in parametrised tests.
CONFIGS: dict[str, dict[str, Any]] = {
    "mlp-mean": {"kind": "mlp", "input_size": 24, "hidden": [16, 16], "output_size": 6},
    "mlp-gaussian": {
        "kind": "mlp",
        "input_size": 24,
        "hidden": [16, 16],
        "output_size": 6,
        "head": "gaussian",
    },
    "conv-mean": {"kind": "conv", "window": 24, "horizon": 6, "channels": 4},
    "conv-gaussian": {
        "kind": "conv",
        "window": 24,
        "horizon": 6,
        "channels": 4,
        "head": "gaussian",
    },
}


@pytest.fixture(params=sorted(CONFIGS))
def config_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


INIT = InitializerRef(family="hourly", registered_model="maml-hourly", version=3, run_id="r" * 32)
WHEN = datetime(2026, 11, 26, 12, 30, 5, 123456, tzinfo=UTC)


def _template(cache: Any, name: str) -> tuple[OnnxTemplate, nn.Module]:
    config = config_from_dict(CONFIGS[name])
    torch.manual_seed(0)
    return cache.get(config), build_model(config)


def _adapted(core: nn.Module, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` series' parameters: the initializer plus a per-series perturbation."""
    rng = np.random.default_rng(seed)
    return {
        name: (p.detach().numpy()[None] + 0.05 * rng.standard_normal((n, *p.shape))).astype(
            np.float32
        )
        for name, p in core.named_parameters()
    }


def _batch(core: nn.Module, n: int, *, seed: int = 1) -> ex.SeriesBatch:
    rng = np.random.default_rng(seed)
    return ex.SeriesBatch(
        series_ids=tuple(f"H{i}" for i in range(n)),
        params=_adapted(core, n, seed),
        loc=rng.uniform(-50, 500, n),
        scale=rng.uniform(0.5, 40, n),
        residual_scale=rng.uniform(0.1, 3, n),
        threshold=rng.uniform(2, 5, n),
    )


def _render(template: OnnxTemplate, batch: ex.SeriesBatch, **kw: Any) -> list[bytes]:
    return [
        blob
        for _, blob in ex.render_batch(
            template, batch, initializer=INIT, support=96, adapted_at=WHEN, **kw
        )
    ]


def _twin(
    core: nn.Module,
    template: OnnxTemplate,
    batch: ex.SeriesBatch,
    i: int,
    *,
    weights_of: int | None = None,
    **kw: Any,
) -> Any:
    """The torch twin of series ``i``'s file (``weights_of``: another series' weights)."""
    return torch_reference(
        core,
        batch.params_of(i if weights_of is None else weights_of),
        loc=float(batch.loc[i]),
        scale=float(batch.scale[i]),
        residual_scale=float(batch.residual_scale[i]),
        horizon=template.horizon,
        head=template.head,
        **kw,
    )


def test_parity_with_torch_on_1000_windows(template_cache: Any, config_name: str) -> None:
    template, core = _template(template_cache, config_name)
    batch = _batch(core, 3)
    for i, blob in enumerate(_render(template, batch)):
        reference = _twin(core, template, batch, i)
        stats = check_parity(
            blob,
            reference,
            loc=float(batch.loc[i]),
            scale=float(batch.scale[i]),
            window=template.window,
            n=1000,
        )
        assert stats.n_windows == 1000
        assert stats.passed, stats
        assert stats.max_rel_error <= 1e-5


def test_parity_detects_a_different_model(template_cache: Any) -> None:
    template, core = _template(template_cache, "mlp-mean")
    batch = _batch(core, 2)
    blobs = _render(template, batch)
    wrong = _twin(core, template, batch, 0, weights_of=1)  # another series' weights
    stats = check_parity(
        blobs[0], wrong, loc=float(batch.loc[0]), scale=float(batch.scale[0]), window=24, n=100
    )
    assert not stats.passed and stats.max_rel_error > 1e-3


def test_graph_normalises_raw_windows_like_the_contract_says(template_cache: Any) -> None:
    """Independent float64 numpy oracle of the MLP mean-head file."""
    template, core = _template(template_cache, "mlp-mean")
    batch = _batch(core, 1)
    blob = _render(template, batch)[0]
    p = {k: v[0].astype(np.float64) for k, v in batch.params.items()}
    loc, scale, rs = float(batch.loc[0]), float(batch.scale[0]), float(batch.residual_scale[0])
    rng = np.random.default_rng(5)
    windows = (loc + scale * rng.standard_normal((50, 24))).astype(np.float32)
    h = (windows.astype(np.float64) - loc) / scale
    for i in range(3):
        h = h @ p[f"layers.{i}.weight"].T + p[f"layers.{i}.bias"]
        if i < 2:
            h = np.maximum(h, 0.0)
    expected = h * scale + loc
    forecast, sigma = ort_session(blob).run(None, {"window": windows})
    assert np.max(np.abs(forecast - expected)) / scale < 1e-5
    np.testing.assert_array_equal(sigma, np.full((50, 6), np.float32(rs)))


def test_gaussian_sigma_is_clamped_exp_half_logvar_times_scale(template_cache: Any) -> None:
    template, core = _template(template_cache, "mlp-gaussian")
    batch = _batch(core, 1)
    # Push the log-variance bias far out so the clamp at +10 is active.
    batch.params["layers.2.bias"][0, 6:] = 40.0
    blob = _render(template, batch)[0]
    windows = np.full((2, 24), float(batch.loc[0]), dtype=np.float32)
    _, sigma = ort_session(blob).run(None, {"window": windows})
    np.testing.assert_allclose(sigma, np.exp(5.0) * batch.scale[0], rtol=1e-6)


def test_metadata_round_trip(template_cache: Any) -> None:
    template, core = _template(template_cache, "conv-gaussian")
    batch = _batch(core, 2)
    blob = _render(template, batch)[1]
    meta = ex.read_metadata(blob)
    assert meta.series_id == "H1"
    assert (meta.family, meta.registered_model) == ("hourly", "maml-hourly")
    assert (meta.initializer_version, meta.initializer_run_id) == (3, "r" * 32)
    assert meta.adapted_at == WHEN
    assert (meta.support, meta.window, meta.horizon) == (96, 24, 6)
    assert (meta.head, meta.loss) == ("gaussian", "gaussian_nll")
    assert meta.model_config == config_to_dict(config_from_dict(CONFIGS["conv-gaussian"]))
    assert meta.config_hash == ex.config_hash(meta.model_config)
    assert meta.loc == float(batch.loc[1]) and meta.scale == float(batch.scale[1])
    assert meta.residual_scale == float(batch.residual_scale[1])
    assert meta.threshold == float(batch.threshold[1])
    assert meta.template_id == template.template_id
    assert meta.series_initializers == template.series_initializers
    # onnxruntime exposes the same map; parse_metadata needs no onnx or torch.
    ort_meta = ort_session(blob).get_modelmeta().custom_metadata_map
    assert ex.parse_metadata(ort_meta) == meta
    assert all(k.startswith("mamlctl.") for k in ort_meta)


def test_file_is_standard_self_contained_onnx(template_cache: Any, config_name: str) -> None:
    template, core = _template(template_cache, config_name)
    batch = _batch(core, 1)
    blob = _render(template, batch)[0]
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
    assert OPSET >= 17
    assert [i.name for i in model.graph.input] == ["window"]
    assert [o.name for o in model.graph.output] == ["forecast", "sigma"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 24
    for init in model.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL
    assert all(not n.metadata_props for n in model.graph.node)  # no stack traces / local paths
    # Every per-series initializer holds exactly the value we wrote.
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for b in template.bindings:
        if b.param in ("loc", "scale", "residual_scale"):
            want = np.float32(getattr(batch, b.param)[0])
            assert inits[b.initializer].tolist() == [want]
        else:
            value = batch.params[b.param][0]
            want, got = (value.T if b.transpose else value), inits[b.initializer]
            # a per-series linear weight is stored [1, out, in] (batched_linear_form)
            assert got.shape in (want.shape, (1, *want.shape))
            np.testing.assert_array_equal(got.reshape(want.shape), want)
    # Re-serialising through onnx gives a model with identical outputs (standard ModelProto).
    windows = np.random.default_rng(0).normal(100, 10, (8, 24)).astype(np.float32)
    a = ort_session(blob).run(None, {"window": windows})
    b2 = ort_session(model.SerializeToString()).run(None, {"window": windows})
    for x, y in zip(a, b2, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("batch_size", [1, 7, 300])
def test_dynamic_batch_rows_equal_single_row_runs(template_cache: Any, batch_size: int) -> None:
    template, core = _template(template_cache, "conv-mean")
    blob = _render(template, _batch(core, 1))[0]
    session = ort_session(blob)
    windows = np.random.default_rng(batch_size).normal(10, 3, (batch_size, 24)).astype(np.float32)
    forecast, sigma = session.run(None, {"window": windows})
    assert forecast.shape == sigma.shape == (batch_size, 6)
    for row in (0, batch_size - 1):
        single_f, single_s = session.run(None, {"window": windows[row : row + 1]})
        np.testing.assert_allclose(forecast[row], single_f[0], rtol=0, atol=1e-5 * 3)
        np.testing.assert_array_equal(sigma[row], single_s[0])


def test_export_to_files_writes_hashed_files_without_sidecar(
    template_cache: Any, tmp_path: Path
) -> None:
    template, core = _template(template_cache, "mlp-mean")
    batch = _batch(core, 5)
    stored = export_to_files(
        template, batch, models_dir=tmp_path, initializer=INIT, support=96, adapted_at=WHEN
    )
    assert len(stored) == 5
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 5 and all(p.suffix == ".onnx" for p in files)
    for sid, rec in zip(batch.series_ids, stored, strict=True):
        blob = open_verified(tmp_path, rec.relpath, sha256=rec.sha256)
        assert ex.read_metadata(blob).series_id == sid
        onnx.checker.check_model(str(tmp_path / rec.relpath))  # loads with no sidecar


def test_same_config_same_template_id_different_config_different(template_cache: Any) -> None:
    template, _ = _template(template_cache, "mlp-mean")
    again = ex.template_for_config(config_from_dict(CONFIGS["mlp-mean"]), seed=3)
    assert again.template_id == template.template_id
    assert template_cache.get(config_from_dict(CONFIGS["conv-mean"])).template_id != (
        template.template_id
    )


class _TransposedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 12))
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b


class _Folded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.w * 2.0).T


def test_weights_the_exporter_pre_transposes_are_bound_transposed() -> None:
    core = _TransposedLinear()
    template = build_template(core, model_config={"k": "t"}, window=12, horizon=6, head="mean")
    by_param = {b.param: b for b in template.bindings}
    assert by_param["w"].transpose and by_param["w"].shape == (6, 12)
    params = {"w": np.arange(72, dtype=np.float32).reshape(6, 12) / 72, "b": np.ones(6, "f4")}
    blob = template.render(params, loc=1.0, scale=2.0, residual_scale=0.5, metadata={})
    windows = np.random.default_rng(0).normal(1, 2, (100, 12)).astype(np.float32)
    ref = torch_reference(
        core, params, loc=1.0, scale=2.0, residual_scale=0.5, horizon=6, head="mean"
    )
    assert check_parity(blob, ref, loc=1.0, scale=2.0, window=12, n=100).passed
    forecast, _ = ort_session(blob).run(None, {"window": windows})
    z = (windows.astype(np.float64) - 1.0) / 2.0
    np.testing.assert_allclose(forecast, (z @ params["w"].T + 1.0) * 2.0 + 1.0, atol=2e-5)


def test_a_weight_folded_into_a_constant_is_refused() -> None:
    with pytest.raises(ConfigError, match="no initializer of its own"):
        build_template(_Folded(), model_config={"k": "f"}, window=12, horizon=6, head="mean")


def test_batch_validation_errors_are_input_errors(template_cache: Any) -> None:
    template, core = _template(template_cache, "mlp-mean")
    good = _batch(core, 2)
    with pytest.raises(InputError, match="non-positive scale"):
        ex.SeriesBatch(
            series_ids=good.series_ids,
            params=good.params,
            loc=good.loc,
            scale=np.array([1.0, 0.0]),
            residual_scale=good.residual_scale,
            threshold=good.threshold,
        )
    with pytest.raises(InputError, match="leading size"):
        ex.SeriesBatch(
            series_ids=("a",),
            params=good.params,
            loc=good.loc[:1],
            scale=good.scale[:1],
            residual_scale=good.residual_scale[:1],
            threshold=good.threshold[:1],
        )
    partial = {k: v for k, v in good.params.items() if not k.endswith("bias")}
    with pytest.raises(InputError, match="lack"):
        list(
            ex.render_batch(
                template,
                ex.SeriesBatch(
                    series_ids=good.series_ids,
                    params=partial,
                    loc=good.loc,
                    scale=good.scale,
                    residual_scale=good.residual_scale,
                    threshold=good.threshold,
                ),
                initializer=INIT,
                support=96,
                adapted_at=WHEN,
            )
        )
    with pytest.raises(InputError, match="timezone"):
        ex.build_metadata(
            template,
            series_id="s",
            initializer=INIT,
            adapted_at=datetime(2026, 1, 1),
            support=1,
            loc=0,
            scale=1,
            residual_scale=1,
            threshold=1,
        )


@settings(max_examples=20, deadline=None)
@given(
    loc=st.floats(-1e4, 1e4),
    log_scale=st.floats(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_parity_holds_up_to_float32_resolution_for_any_level_and_scale(
    template_cache: Any, loc: float, log_scale: float, seed: int
) -> None:
    """Invariant: the only error beyond 1e-5 of scale is float32 rounding at the series' level."""
    template, core = _template(template_cache, "mlp-mean")
    scale = 10.0**log_scale
    params = {k: v[0] for k, v in _adapted(core, 1, seed).items()}
    blob = template.render(params, loc=loc, scale=scale, residual_scale=1.0, metadata={})
    ref = torch_reference(
        core, params, loc=loc, scale=scale, residual_scale=1.0, horizon=6, head="mean"
    )
    stats = check_parity(blob, ref, loc=loc, scale=scale, window=24, n=50, seed=seed)
    assert stats.max_rel_error <= max(1e-5, 2 * stats.resolution), stats


SKIP_CONFIG = {"kind": "mlp", "input_size": 24, "hidden": [16], "output_size": 10, "season_skip": 4}


def test_season_skip_and_nonnegative_clip_in_the_graph_follow_the_oracle(
    template_cache: Any,
) -> None:
    """Zero last layer: the file forecasts max(seasonal naive of the RAW window, 0) exactly as
    the oracle computes it; the clip shows as one Relu after de-normalisation; the torch twin
    agrees on 1,000 windows around 0 (where the clip acts); metadata records clip and loss."""
    config = config_from_dict(SKIP_CONFIG)
    template = template_cache.get(config, nonnegative=True)
    assert template.nonnegative and not template_cache.get(config).nonnegative
    assert template.template_id != template_cache.get(config).template_id
    torch.manual_seed(0)
    core = build_model(config)
    params = {k: v.detach().numpy().copy() for k, v in core.named_parameters()}
    params["layers.1.weight"][:] = 0.0
    params["layers.1.bias"][:] = 0.0
    loc, scale = 0.5, 2.0
    blob = template.render(params, loc=loc, scale=scale, residual_scale=1.0, metadata={})
    windows = np.random.default_rng(3).normal(0.0, 2.0, (50, 24)).astype(np.float32)
    forecast, sigma = ort_session(blob).run(None, {"window": windows})
    idx = [24 - 4 + (h % 4) for h in range(10)]
    oracle = np.maximum(windows[:, idx].astype(np.float64), 0.0)
    np.testing.assert_allclose(forecast, oracle, atol=1e-5 * scale)
    assert (forecast == 0).any() and (forecast > 0).any()
    np.testing.assert_allclose(sigma, 1.0)
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    assert "Relu" in ops[ops.index("Mul") :]  # after forecast = out * scale + loc

    batch = _batch(core, 2)
    batch = ex.SeriesBatch(
        series_ids=batch.series_ids,
        params=batch.params,
        loc=np.array([0.0, 3.0]),
        scale=batch.scale,
        residual_scale=batch.residual_scale,
        threshold=batch.threshold,
    )
    blobs = _render(template, batch, loss="mae")
    for i, b in enumerate(blobs):
        reference = _twin(core, template, batch, i, nonnegative=True)
        stats = check_parity(
            b, reference, loc=float(batch.loc[i]), scale=float(batch.scale[i]), window=24, n=1000
        )
        assert stats.passed and stats.max_rel_error <= 1e-5, stats
        meta = ex.read_metadata(b)
        assert (meta.nonnegative, meta.loss) == (True, "mae")
    # files written before the clip existed parse as not clipped
    old = {p.key: p.value for p in onnx.load_from_string(blobs[0]).metadata_props}
    del old[ex.PREFIX + "nonnegative"]
    assert ex.parse_metadata(old).nonnegative is False


@pytest.mark.parametrize("weights", ["float32", "int8-delta"])
def test_sigma_growth_is_in_the_graph_and_the_band_in_the_metadata(
    template_cache: Any, weights: str
) -> None:
    """Oracle: ``sigma = residual_scale * growth`` (step 1 exactly the residual scale, what the
    anomaly score reads), the forecast as without growth, the band read back as written; an
    all-ones growth is the old graph (same template id)."""
    import dataclasses

    from mamlctl.contract import band_multiplier

    config = config_from_dict(CONFIGS["mlp-mean"])
    torch.manual_seed(0)
    core = build_model(config)
    growth = (1.0, 1.5, 2.0, 2.0, 2.5, 3.0)
    plain = template_cache.get(config, weights=weights)
    grown = template_cache.get(config, weights=weights, growth=growth)
    ones = template_cache.get(config, weights=weights, growth=(1.0,) * 6)
    assert ones.template_id == plain.template_id != grown.template_id
    band = ((80.0, 1.1), (95.0, 2.0))
    if weights == "int8-delta":
        base = {n: p.detach().numpy() for n, p in core.named_parameters()}
        plain, grown = plain.with_base(base), grown.with_base(base)
    batch = _batch(core, 2)
    blobs = _render(dataclasses.replace(grown, band=band), batch)
    windows = batch.loc[1] + batch.scale[1] * np.random.default_rng(3).standard_normal((4, 24))
    forecast, sigma = ort_session(blobs[1]).run(None, {"window": windows.astype(np.float32)})
    before, flat = ort_session(_render(plain, batch)[1]).run(
        None, {"window": windows.astype(np.float32)}
    )
    np.testing.assert_array_equal(forecast, before)
    np.testing.assert_array_equal(sigma[:, 0], flat[:, 0])
    np.testing.assert_allclose(sigma, flat * np.asarray(growth, dtype=np.float32), rtol=1e-6)
    meta = ex.read_metadata(blobs[1])
    assert meta.band == band and band_multiplier(80.0, meta.band) == 1.1
    assert ex.read_metadata(_render(plain, batch)[1]).band is None
    with pytest.raises(ConfigError, match="start at 1"):
        template_cache.get(config, growth=(2.0,) * 6)
