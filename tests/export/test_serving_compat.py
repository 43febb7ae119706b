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


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_files_bank_in_the_server_with_identical_outputs(
    template_cache: Any, name: str
) -> None:
    pytest.importorskip("mamlctl.serving.bank")
    from mamlctl.serving.bank import BankBuilder, structure_key, template_of
    from mamlctl.serving.runtime import BankRuntime

    config = config_from_dict(CONFIGS[name])
    template = template_cache.get(config)
    core = build_model(config)
    n = 6
    rng = np.random.default_rng(1)
    params = {
        k: (v.detach().numpy()[None] + 0.05 * rng.standard_normal((n, *v.shape))).astype("f4")
        for k, v in core.named_parameters()
    }
    batch = ex.SeriesBatch(
        series_ids=tuple(f"s{i}" for i in range(n)),
        params=params,
        loc=rng.uniform(-20, 300, n),
        scale=rng.uniform(0.5, 30, n),
        residual_scale=rng.uniform(0.1, 2, n),
        threshold=np.full(n, 0.999),
    )
    init = InitializerRef(family="f", registered_model="maml-f", version=1, run_id="r")
    blobs = [
        b
        for _, b in ex.render_batch(
            template, batch, initializer=init, support=60, adapted_at=datetime.now(UTC)
        )
    ]
    models = [onnx.load_from_string(b) for b in blobs]
    assert len({structure_key(m, template_id=template.template_id) for m in models}) == 1
    builder = BankBuilder(template_of(models[0]), capacity=n)
    for m in models:
        builder.add(m)
    runtime = BankRuntime.from_bank(builder.build())
    rows = rng.integers(0, n, 40).astype(np.int64)
    windows = batch.loc[rows, None] + batch.scale[rows, None] * rng.standard_normal((40, 24))
    windows = windows.astype(np.float32)
    forecast, sigma = runtime.run(windows, rows)
    for j, r in enumerate(rows):
        f1, s1 = ort_session(blobs[r]).run(None, {"window": windows[j : j + 1]})
        tol = 1e-5 * batch.scale[r]
        np.testing.assert_allclose(forecast[j], f1[0], rtol=0, atol=tol)
        np.testing.assert_allclose(sigma[j], s1[0], rtol=0, atol=tol)
