"""int8-delta export: per-series weights stored as int8 deltas from the initializer's weights.

Oracles: the quantization bound ``|delta - scale * q| <= scale / 2`` (property-based); a
dequantization by hand from the file's own initializers; torch run with those weights; the
float32 export of the same parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import numpy_helper

from mamlctl.domain import InitializerRef
from mamlctl.errors import ConfigError
from mamlctl.maml import export as ex
from mamlctl.maml.models import build_model, config_from_dict
from mamlctl.maml.onnx_binding import dequantize_rows, quantize_rows
from mamlctl.maml.onnx_parity import check_parity, ort_session, torch_reference
from mamlctl.stages.export import export_to_files

MLP = {"kind": "mlp", "input_size": 24, "hidden": [16, 16], "output_size": 6, "head": "mean"}
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=9), elements=finite)
)
def test_quantize_rows_is_within_half_a_step_of_every_value(delta: np.ndarray) -> None:
    q, scale = quantize_rows(delta)
    assert q.dtype == np.int8 and q.shape == delta.shape and scale.shape == delta.shape[:-1]
    assert np.all(np.abs(q.astype(int)) <= 127)
    peak = np.max(np.abs(delta), axis=-1)
    tiny = np.finfo(np.float32).tiny  # rows below it are stored as zero
    expected = np.where(peak < tiny, 0, peak / np.float32(127)).astype(np.float32)
    np.testing.assert_array_equal(scale, expected)
    back = dequantize_rows(np.zeros_like(delta), q, scale)
    # half a step, plus float32 rounding of the division and the product
    bound = scale[..., None] * (0.5 + 1e-5) + np.spacing(np.abs(delta)) + tiny
    assert np.all(np.abs(back - delta) <= bound)
    assert np.all(q[peak < tiny] == 0)


def _setup(template_cache: Any, seed: int = 0) -> tuple[Any, Any, dict[str, np.ndarray]]:
    config = config_from_dict(MLP)
    core = build_model(config)
    base = {k: v.detach().numpy().copy() for k, v in core.named_parameters()}
    return config, core, base


def _moved(base: dict[str, np.ndarray], seed: int, size: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + size * rng.standard_normal(v.shape)).astype("f4") for k, v in base.items()}


def _reference(core: Any, params: dict[str, np.ndarray], **kw: Any) -> Any:
    return torch_reference(
        core,
        params,
        loc=5.0,
        scale=2.0,
        residual_scale=0.5,
        horizon=6,
        head="mean",
        nonnegative=False,
        floor_fraction=0.0,
        **kw,
    )


def _render(template: Any, params: dict[str, np.ndarray]) -> bytes:
    return bytes(template.render(params, loc=5.0, scale=2.0, residual_scale=0.5, metadata={}))


def test_file_holds_base_int8_delta_and_row_scales(template_cache: Any) -> None:
    config, _, base = _setup(template_cache)
    template = template_cache.get(config, weights="int8-delta").with_base(base)
    params = _moved(base, 1)
    blob = _render(template, params)
    inits = {
        i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(blob).graph.initializer
    }
    stored = template.stored_params(params)
    for name in ("layers.0.weight", "layers.1.weight", "layers.2.weight"):
        w0 = inits[f"core.{name}.base"]
        q, scale = inits[f"core.{name}.qdelta"], inits[f"core.{name}.qscale"]
        assert q.dtype == np.int8 and q.shape == w0.shape[::-1] and scale.shape == w0.shape[:1]
        np.testing.assert_array_equal(w0, base[name])  # the initializer's weight, as [out, in]
        by_hand = w0 + scale[:, None] * q.T.astype(np.float32)
        np.testing.assert_array_equal(stored[name], by_hand)
        assert np.all(np.abs(by_hand - params[name]) <= scale[:, None] * 0.5 + 1e-6)
        assert np.abs(q).max() == 127  # the largest delta of some row takes the full range
    for name in ("layers.0.bias", "layers.1.bias", "layers.2.bias"):  # biases stay exact
        np.testing.assert_array_equal(stored[name], params[name])
    # only the first layer's input (the normalised window) can be negative; the others are
    # ReLU outputs, quantized without a zero point
    assert template.signed_inputs == {"layers.0.weight"}


def test_file_equals_its_torch_twin_and_stays_near_the_float_model(template_cache: Any) -> None:
    """Oracle: ``torch_reference`` with ``quantized=`` (an independent torch implementation of
    the int8-delta layer). Against the unquantized adapted model the error is a small part of
    what adaptation changed: each delta term carries a weight step of 1/254 of its row's
    largest delta and an input step of 1/126 of its row's largest input (half-steps of error),
    about 1% in all; bound at 2% of the adaptation's own effect."""
    config, core, base = _setup(template_cache)
    template = template_cache.get(config, weights="int8-delta").with_base(base)
    params = _moved(base, 1)
    blob = _render(template, params)
    twin = _reference(
        core, template.stored_params(params), quantized=template.quantized_layers(params)
    )
    assert check_parity(blob, twin, loc=5.0, scale=2.0, window=24).max_rel_error <= 1e-5
    exact = check_parity(blob, _reference(core, params), loc=5.0, scale=2.0, window=24)
    moved = check_parity(blob, _reference(core, base), loc=5.0, scale=2.0, window=24)
    assert 0 < exact.max_rel_error < moved.max_rel_error / 50
    # a window equal to the level: the first layer's input is all zeros (scale 0), and the
    # file still answers the twin's finite numbers
    flat = np.full((3, 24), 5.0, dtype=np.float32)
    ours = ort_session(blob).run(None, {"window": flat})[0]
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, twin(flat)[0], rtol=0, atol=1e-5 * 2.0)


def test_int8_file_is_a_quarter_of_the_per_series_bytes(template_cache: Any) -> None:
    config, _, base = _setup(template_cache)
    float_t = template_cache.get(config)
    int8_t = template_cache.get(config, weights="int8-delta").with_base(base)
    per_series = {
        t.weights: sum(b.nbytes for b in t.bindings if b.role != "base") for t in (float_t, int8_t)
    }
    weights = sum(int(np.prod(v.shape)) for k, v in base.items() if k.endswith("weight"))
    rows = sum(v.shape[0] for k, v in base.items() if k.endswith("weight"))
    assert per_series["float32"] - per_series["int8-delta"] == 4 * weights - (weights + 4 * rows)


def test_unchanged_weights_export_exactly(template_cache: Any) -> None:
    """A series whose adaptation left a layer where it was (zero delta) gets its exact values."""
    config, _, base = _setup(template_cache)
    template = template_cache.get(config, weights="int8-delta").with_base(base)
    blob = _render(template, base)
    float_blob = _render(template_cache.get(config), base)
    window = np.random.default_rng(2).normal(5, 2, (8, 24)).astype(np.float32)
    ours = ort_session(blob).run(None, {"window": window})[0]
    theirs = ort_session(float_blob).run(None, {"window": window})[0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * 2.0)
    assert all(np.array_equal(template.stored_params(base)[k], v) for k, v in base.items())


def test_base_is_required_and_names_the_graph(template_cache: Any) -> None:
    config, _, base = _setup(template_cache)
    bare = template_cache.get(config, weights="int8-delta")
    with pytest.raises(ConfigError, match="with_base"):
        _render(bare, base)
    one, two = bare.with_base(base), bare.with_base(_moved(base, 3))
    assert len({bare.template_id, one.template_id, two.template_id}) == 3
    assert bare.with_base(base).template_id == one.template_id
    float_t = template_cache.get(config)
    assert float_t.with_base(base) is float_t
    # the metadata carries the based id: files of two initializers never share a bank
    init = InitializerRef(family="f", registered_model="maml-f", version=1, run_id="r")
    batch = ex.SeriesBatch(
        series_ids=("a",),
        params={k: v[None] for k, v in base.items()},
        loc=np.array([1.0]),
        scale=np.array([1.0]),
        residual_scale=np.array([1.0]),
        threshold=np.array([0.99]),
    )
    ids = set()
    for template in (one, two):
        ((_, blob),) = ex.render_batch(
            template, batch, initializer=init, support=60, adapted_at=datetime.now(UTC)
        )
        ids.add(ex.read_metadata(blob).template_id)
    assert ids == {one.template_id, two.template_id}


def test_unknown_weight_format_is_a_config_error(template_cache: Any) -> None:
    with pytest.raises(ConfigError, match="weight format"):
        template_cache.get(config_from_dict(MLP), weights="int4")


def test_server_state_of_int8_files_two_initializers(
    template_cache: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's load path on int8-delta files: later files of a structure are read through
    its byte layout (int8 and uint8 initializers included) and give the state of the full
    parse; files of two initializers (two bases) form two banks, each int8, each row equal to
    its file's output bit for bit."""
    from mamlctl.domain import AdaptedModelRecord
    from mamlctl.serving import state as st

    config, _, base = _setup(template_cache)
    bare = template_cache.get(config, weights="int8-delta")
    records = []
    for version, theta in ((1, base), (2, _moved(base, 9, size=0.3))):
        template = bare.with_base(theta)
        n = 5
        params = {
            k: np.stack([_moved(theta, 10 * version + i)[k] for i in range(n)]) for k in theta
        }
        ids = tuple(f"v{version}-s{i}" for i in range(n))
        batch = ex.SeriesBatch(
            series_ids=ids,
            params=params,
            loc=np.linspace(1, 5, n),
            scale=np.full(n, 2.0),
            residual_scale=np.full(n, 0.5),
            threshold=np.full(n, 0.99),
        )
        init = InitializerRef(family="f", registered_model="maml-f", version=version, run_id="r")
        stored = export_to_files(
            template,
            batch,
            models_dir=tmp_path,
            initializer=init,
            support=60,
            adapted_at=datetime.now(UTC),
            fsync=False,
        )
        records += [
            AdaptedModelRecord(
                series_id=sid,
                family="f",
                registered_model="maml-f",
                initializer_version=version,
                initializer_run_id="r",
                path=f.relpath,
                sha256=f.sha256,
                adapted_at=datetime.now(UTC),
                support=60,
                window=24,
                horizon=6,
                residual_scale=0.5,
                threshold=0.99,
            )
            for sid, f in zip(ids, stored, strict=True)
        ]
    parsed: list[str] = []
    original = st._load_one

    def counted(record: Any, data: bytes) -> Any:
        parsed.append(record.series_id)
        return original(record, data)

    monkeypatch.setattr(st, "_load_one", counted)
    fast = st.build_state(records, models_dir=tmp_path, fingerprint="f", generation=1)
    assert sorted(parsed) == ["v1-s0", "v2-s0"]  # one full parse per structure
    monkeypatch.setattr(st, "_MAX_LAYOUTS", 0)
    full = st.build_state(records, models_dir=tmp_path, fingerprint="f", generation=1)
    assert not fast.failures and len(fast.runtimes) == len(full.runtimes) == 2
    for a, b in zip(fast.runtimes, full.runtimes, strict=True):
        assert any(v.dtype == np.int8 for v in a.banks.values())  # type: ignore[attr-defined]
        for name in a.banks:  # type: ignore[attr-defined]
            assert np.array_equal(a.banks[name], b.banks[name])  # type: ignore[attr-defined]
    rng = np.random.default_rng(4)
    for rec in records:
        entry = fast.entries[rec.series_id]
        window = rng.normal(3, 2, (1, 24)).astype(np.float32)
        served, _ = fast.runtimes[entry.group].run(window, entry.row_array)
        blob = (tmp_path / rec.path).read_bytes()
        np.testing.assert_array_equal(served, ort_session(blob).run(None, {"window": window})[0])
