"""Accuracy of the exported per-series models on the M4 Hourly test set (after `mamlctl adapt`).

Run after ``mamlctl ingest <m4>/Hourly-train.csv.gz --format m4 && mamlctl families detect &&
mamlctl train --family hourly && mamlctl adapt --family hourly`` in the same ``MAMLCTL_HOME``.
For every series with a current adapted model, the ONNX file itself (opened and sha256-checked
like the server does, run by onnxruntime) forecasts the 48 test points from the last L training
points. Compared, on the same series: the un-adapted champion initializer (same normalisation,
torch) and seasonal naive (m = 24). Reported: mean MASE (m = 24) and sMAPE over H = 48, and the
same for the first step only ("one-step"). Prints one JSON document.

    MAMLCTL_HOME=... python benchmarks/eval_adapt_m4.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data")
    parser.add_argument("--family", default="hourly")
    args = parser.parse_args()

    import torch

    from mamlctl.evaluation.m4 import load_subset
    from mamlctl.maml.initializer import load_initializer
    from mamlctl.maml.models import point_forecast
    from mamlctl.maml.onnx_contract import apply_floor
    from mamlctl.maml.onnx_parity import ort_session
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.registry.model_files import open_verified
    from mamlctl.settings import Settings
    from mamlctl.timeseries.baselines import seasonal_naive
    from mamlctl.timeseries.metrics import mase, smape
    from mamlctl.timeseries.scaling import support_stats

    torch.set_num_threads(1)
    settings = Settings()
    data = load_subset(args.data, "Hourly")
    index = {sid: i for i, sid in enumerate(data.ids)}
    with open_registry(settings) as factory, factory() as session:
        records = q.current_adapted_models(session, args.family)
    if not records:
        raise SystemExit(f"no adapted models for family {args.family} in {settings.home}")
    ref = records[0]
    store = open_store(settings)
    version = f"models:/{ref.registered_model}/{ref.initializer_version}"
    init = store.load(version, loader=load_initializer)
    model = init.model().eval()
    head = init.model_config.head

    rows = [index[r.series_id] for r in records]
    histories = [data.histories[i] for i in rows]
    actual = data.actual[rows]
    adapted = np.empty_like(actual)
    initial = np.empty_like(actual)
    for j, (rec, hist) in enumerate(zip(records, histories, strict=True)):
        blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
        window = hist[-rec.window :].astype(np.float32)[None]
        adapted[j] = ort_session(blob).run(None, {"window": window})[0][0]
        loc, scale = support_stats(hist[-rec.support :])
        z = torch.from_numpy(((hist[-rec.window :] - loc) / scale).astype(np.float32))[None]
        with torch.no_grad():
            pred = point_forecast(model(z), head)[0].double().numpy()
        initial[j] = pred * scale + loc
    # The files bound their forecasts below (the initializer's rule); score the initializer alike.
    window_min = np.array([np.min(h[-r.window :]) for r, h in zip(records, histories, strict=True)])
    initial = apply_floor(
        initial,
        window_min,
        nonnegative=bool(init.train_config.get("nonnegative")),
        floor_fraction=float(init.train_config.get("floor_fraction", 0.0)),
    )
    naive = seasonal_naive(histories, actual.shape[1], m=24)

    def scores(f: np.ndarray, steps: int) -> dict[str, float]:
        return {
            "mase": float(np.mean(mase(histories, actual[:, :steps], f[:, :steps], m=24))),
            "smape": float(np.mean(smape(actual[:, :steps], f[:, :steps]))),
        }

    out: dict[str, Any] = {
        "family": args.family,
        "series": len(records),
        "initializer": f"{ref.registered_model} v{ref.initializer_version}",
        "horizon": int(actual.shape[1]),
    }
    for name, f in (
        ("adapted_onnx", adapted),
        ("initializer_unadapted", initial),
        ("seasonal_naive", naive),
    ):
        out[name] = {"h_step": scores(f, actual.shape[1]), "one_step": scores(f, 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
