"""The exporter's real files work with the scoring server's weight banks (contract check).

Oracle: each per-series file run alone in onnxruntime; the server's bank graph (built from the
same files) must give the same forecast and sigma for every row of a mixed batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
import pytest

from mamlctl.domain import InitializerRef
from mamlctl.maml import export as ex
from mamlctl.maml.models import build_model, config_from_dict
from mamlctl.maml.onnx_parity import ort_session

CONFIGS = {
    "mlp-gaussian": {
        "kind": "mlp",
        "input_size": 24,
        "hidden": [16, 16],
        "output_size": 6,
        "head": "gaussian",
    },
    "conv-mean": {"kind": "conv", "window": 24, "horizon": 6, "channels": 4},
}


def _render(
    template: Any, params: dict[str, Any], rng: np.random.Generator, *, low: float
) -> tuple[Any, list[bytes]]:
    """``(batch, blobs)``: one file per row of ``params`` with random normalisation."""
    n = len(next(iter(params.values())))
    batch = ex.SeriesBatch(
        series_ids=tuple(f"s{i}" for i in range(n)),
        params=params,
        loc=rng.uniform(low, 300, n),
        scale=rng.uniform(0.5, 30, n),
        residual_scale=rng.uniform(0.1, 2, n),
        threshold=np.full(n, 0.999),
    )
    init = InitializerRef(family="f", registered_model="maml-f", version=1, run_id="r")
    stamped = ex.render_batch(
        template, batch, initializer=init, support=60, adapted_at=datetime.now(UTC)
    )
    return batch, [b for _, b in stamped]


def _bank_graph(blobs: list[bytes]) -> Any:
    from mamlctl.serving.bank import BankBuilder, template_of

    builder = BankBuilder(template_of(onnx.load_from_string(blobs[0])), capacity=len(blobs))
    for blob in blobs:
        builder.add(onnx.load_from_string(blob))
    return builder.build()


@pytest.mark.parametrize("weights", ["float32", "int8-delta"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_files_bank_in_the_server_with_identical_outputs(
    template_cache: Any, name: str, weights: str
) -> None:
    pytest.importorskip("mamlctl.serving.bank")
    from mamlctl.serving.bank import structure_key
    from mamlctl.serving.runtime import BankRuntime

    config = config_from_dict(CONFIGS[name])
    core = build_model(config)
    base = {k: v.detach().numpy() for k, v in core.named_parameters()}
    template = template_cache.get(config, weights=weights).with_base(base)
    # int8-delta: the Linear layers (the conv's readout and skip) store int8 deltas, the
    # conv kernels stay float32 per series
    assert bool(template.quantized) == (weights == "int8-delta")
    n = 6
    rng = np.random.default_rng(1)
    params = {
        k: (v.detach().numpy()[None] + 0.05 * rng.standard_normal((n, *v.shape))).astype("f4")
        for k, v in core.named_parameters()
    }
    batch, blobs = _render(template, params, rng, low=-20)
    models = [onnx.load_from_string(b) for b in blobs]
    assert len({structure_key(m, template_id=template.template_id) for m in models}) == 1
    runtime = BankRuntime.from_bank(_bank_graph(blobs))
    rows = rng.integers(0, n, 40).astype(np.int64)
    windows = batch.loc[rows, None] + batch.scale[rows, None] * rng.standard_normal((40, 24))
    windows = windows.astype(np.float32)
    forecast, sigma = runtime.run(windows, rows)
    for j, r in enumerate(rows):
        f1, s1 = ort_session(blobs[r]).run(None, {"window": windows[j : j + 1]})
        tol = 1e-5 * batch.scale[r]
        np.testing.assert_allclose(forecast[j], f1[0], rtol=0, atol=tol)
        np.testing.assert_allclose(sigma[j], s1[0], rtol=0, atol=tol)


EXACT_MLP = {
    "kind": "mlp",
    "input_size": 24,
    "hidden": [16, 16],
    "output_size": 6,
    "head": "mean",
    "season_skip": 12,
}


@pytest.mark.parametrize("weights", ["float32", "int8-delta"])
@pytest.mark.parametrize("scope", ["all", "head"])
def test_served_forecasts_equal_each_file_bit_for_bit(
    template_cache: Any, scope: str, weights: str
) -> None:
    """The export writes per-series linear layers in the batched form; the server's bank then
    computes every row with the kernel the file uses for one window, so for any batch size --
    including the multi-threaded batch session -- each served number equals the file's own
    output for that window, bit for bit (head scope: shared layers stay Gemm, also exact; int8
    deltas: the shared base is a Gemm, the delta term exact integer sums)."""
    from mamlctl.maml.models import adapt_names_for
    from mamlctl.serving.runtime import BATCH_MIN_ROWS, BankRuntime

    config = config_from_dict(EXACT_MLP)
    adapted = adapt_names_for(config, scope)
    template = template_cache.get(
        config, nonnegative=True, floor_fraction=0.5, per_series=adapted, weights=weights
    )
    ops = [node.op_type for node in onnx.load_from_string(template.template_bytes).graph.node]
    n_adapted = 3 if scope == "all" else 1  # Linear layers moved per series (of 3)
    if weights == "float32":  # shared body layers stay Gemm
        assert ops.count("Gemm") == 3 - n_adapted
    else:  # every layer has a shared Gemm: the body's, or the adapted layers' base
        assert (ops.count("Gemm"), ops.count("MatMulInteger")) == (3, n_adapted)
    core = build_model(config)
    template = template.with_base({k: v.detach().numpy() for k, v in core.named_parameters()})
    n = 9
    rng = np.random.default_rng(3)
    params = {}
    for k, v in core.named_parameters():
        base = v.detach().numpy()[None]
        moves = adapted is None or k in adapted
        noise = 0.05 * rng.standard_normal((n, *v.shape)) if moves else 0.0
        params[k] = np.broadcast_to(base + noise, (n, *v.shape)).astype("f4")
    batch, blobs = _render(template, params, rng, low=20)
    bank = _bank_graph(blobs)
    int8 = sorted(k for k, v in bank.banks.items() if v.dtype == np.int8)
    assert len(int8) == (n_adapted if weights == "int8-delta" else 0)
    runtime = BankRuntime.from_bank(bank, batch_threads=2)
    files = [ort_session(blob) for blob in blobs]
    for size in (1, 5, BATCH_MIN_ROWS + 8, 130):
        rows = rng.integers(0, n, size).astype(np.int64)
        windows = batch.loc[rows, None] + batch.scale[rows, None] * rng.standard_normal((size, 24))
        windows = windows.astype(np.float32)
        forecast, sigma = runtime.run(windows, rows)
        for j, r in enumerate(rows):
            f1, s1 = files[r].run(None, {"window": windows[j : j + 1]})
            np.testing.assert_array_equal(forecast[j], f1[0])
            np.testing.assert_array_equal(sigma[j], s1[0])


@pytest.mark.parametrize("weights", ["float32", "int8-delta"])
def test_a_group_of_identical_files_still_serves_the_files_bits(
    template_cache: Any, weights: str
) -> None:
    """One series (or files equal in every number): the batched-form weights are still gathered
    per row, so the bank keeps running the file's own kernel (int8 deltas equal everywhere are
    a shared constant: the bank runs the file's nodes on them unchanged)."""
    from mamlctl.serving.runtime import BankRuntime

    config = config_from_dict(EXACT_MLP)
    core = build_model(config)
    base = {k: v.detach().numpy() for k, v in core.named_parameters()}
    template = template_cache.get(config, weights=weights).with_base(base)
    rng = np.random.default_rng(0)
    params = {
        k: (v + 0.05 * rng.standard_normal(v.shape))[None].astype("f4") for k, v in base.items()
    }
    batch, (blob,) = _render(template, params, rng, low=20)
    bank = _bank_graph([blob])
    if weights == "float32":
        assert any(name.startswith("bank.") and "weight" in name for name in bank.banks)
    runtime = BankRuntime.from_bank(bank)
    level, spread = float(batch.loc[0]), float(batch.scale[0])
    windows = (level + spread * rng.standard_normal((17, 24))).astype(np.float32)
    forecast, _ = runtime.run(windows, np.zeros(17, dtype=np.int64))
    session = ort_session(blob)
    for j in range(17):
        np.testing.assert_array_equal(
            forecast[j], session.run(None, {"window": windows[j : j + 1]})[0][0]
        )
