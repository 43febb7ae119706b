"""Coverage of ``mamlctl forecast --level 80,95`` on held-out M4 Hourly values; prints JSON.

The product home is the one ``mamlctl evaluate m4 --subset hourly`` builds
(:func:`mamlctl.evaluation.m4_product.run_product`: a fresh home, ingest, families assign,
``train`` with fixed iterations and seed, ``adapt`` + export); in it the forecast stage of
``mamlctl forecast --level 80,95`` (:func:`mamlctl.stages.forecast.forecast_frame`: the
server's runtime on the exported files, bands by the product's own rule) forecasts every series,
and :mod:`mamlctl.evaluation.intervals` counts the held-out values inside the bands.

``--split test``: every series' full M4 training history goes in, the M4 test set (the next 48
values) is held out. ``--split val``: the last 48 training values are held out too (the
history ends 48 earlier), so choices can be made without touching the test set.

    OMP_NUM_THREADS=1 nice python benchmarks/interval_coverage.py \\
        --data ../shared/data/m4 --split test --out /tmp/cov
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the M4 folder (or its parent)")
    ap.add_argument("--out", type=Path, required=True, help="work folder for the product home")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--iterations", type=int, default=3000, help="train's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N series")
    args = ap.parse_args()

    import torch

    from mamlctl.evaluation.intervals import coverage_report
    from mamlctl.evaluation.m4 import M4Data, load_subset
    from mamlctl.evaluation.m4_product import ProductOptions, run_product, subset_family
    from mamlctl.evaluation.product_home import home_settings
    from mamlctl.stages.forecast import forecast_frame, level_label, load_targets
    from mamlctl.timeseries.metrics import mase_scale

    torch.set_num_threads(1)
    levels = (80.0, 95.0)
    data = load_subset(args.data, "hourly")
    if args.limit is not None:
        data = data.select(args.limit)
    h = data.subset.horizon
    if args.split == "val":
        data = M4Data(
            subset=data.subset,
            ids=data.ids,
            histories=[x[:-h] for x in data.histories],
            actual=np.stack([x[-h:] for x in data.histories]),
        )
    workdir = args.out / f"homes-{args.split}-seed{args.seed}"
    began = time.perf_counter()
    run = run_product(
        data, ProductOptions(iterations=args.iterations, seed=args.seed), workdir=workdir
    )
    wall = time.perf_counter() - began
    # `mamlctl forecast hourly --level 80,95` in the home the evaluation built
    settings = home_settings(workdir / "family")
    targets = load_targets(settings, family=subset_family(data).name)
    frame = forecast_frame(targets, models_dir=settings.models_dir, levels=levels)
    rows = frame.groupby("unique_id", sort=False)
    served = set(frame["unique_id"])
    mask = np.array([sid in served for sid in data.ids])
    if not mask.all():
        raise SystemExit(f"{int((~mask).sum())} series have no forecast from the product")
    band = {
        level: tuple(
            np.stack([rows.get_group(sid)[f"yhat-{side}-{level_label(level)}"] for sid in data.ids])
            for side in ("lo", "hi")
        )
        for level in levels
    }
    yhat = np.stack([rows.get_group(sid)["yhat"].to_numpy() for sid in data.ids])
    if not np.allclose(yhat, run.forecasts, rtol=1e-6, atol=1e-6):
        raise SystemExit("forecast --level and evaluate m4 disagree on the point forecasts")
    report = coverage_report(
        actual=data.actual,
        bands=band,
        scale=mase_scale(data.histories, m=data.subset.m),
    )
    body = {
        "subset": "hourly",
        "split": args.split,
        "iterations": args.iterations,
        "seed": args.seed,
        "n_series": len(data.ids),
        "wall_s": round(wall, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "product": run.summary(),
        **report,
    }
    print(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
