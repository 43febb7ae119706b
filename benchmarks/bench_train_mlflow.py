"""What MLflow logging adds to meta-training: the same config trained unlogged, with the MLflow
run logger (params + batched step metrics), and through the whole stage (+ artifacts: safetensors,
ONNX, PNG, series ids, + model-version registration), on M4 Hourly read from the shared data.

The variants take turns ``--rounds`` times in one process (same data, same seed, a fresh
embedded store per round), so a load change on the shared machine hits all alike. Reported:
median wall seconds and median CPU seconds of this process per variant (the embedded store
logs in-process, so CPU time is the load-robust measure on a shared machine), and the
logged / unlogged ratios of both. The ONNX exporter's template
is built once per process before timing (``mamlctl train`` pays it once per run: reported apart).

    python benchmarks/bench_train_mlflow.py [--rounds 3] [--iterations 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "m4" / "Hourly-train.csv.gz"


def _series() -> list[Any]:
    import numpy as np
    import pandas as pd

    from mamlctl.domain import Series

    frame = pd.read_csv(DATA, dtype={"V1": str})
    out = []
    for row in frame.itertuples(index=False):
        values = np.asarray(row[1:], dtype=np.float64)
        out.append(Series(series_id=str(row[0]), values=values[~np.isnan(values)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from mamlctl.maml.family_artifacts import _template
    from mamlctl.maml.family_data import make_config
    from mamlctl.maml.family_training import train_family
    from mamlctl.maml.models import config_to_dict
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.settings import Settings
    from mamlctl.stages.train import plan_training, run_training
    from mamlctl.timeseries.families import family_defaults

    family = family_defaults("hourly", period=24, interval_seconds=3600.0)
    data = plan_training(family, _series(), make_config(iterations=args.iterations))
    began = time.perf_counter()
    _template(json.dumps(config_to_dict(data.plan.model_config()), sort_keys=True))
    onnx_template_s = time.perf_counter() - began

    times: dict[str, list[float]] = {"unlogged": [], "logged_metrics": [], "full_stage": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.rounds):
        began, cpu0 = time.perf_counter(), time.process_time()
        train_family(data)
        times["unlogged"].append(time.perf_counter() - began)
        cpu["unlogged"].append(time.process_time() - cpu0)

        with tempfile.TemporaryDirectory() as home:
            store = open_store(Settings(home=Path(home), tracking_uri=None))
            store.ensure_experiment(family.name)  # store creation is not logging overhead
            began, cpu0 = time.perf_counter(), time.process_time()
            with store.start_run(family=family.name) as run:
                run.log_config(data.plan.as_params())
                train_family(data, on_metrics=lambda s, m: run.log_metrics(m, step=s))
            times["logged_metrics"].append(time.perf_counter() - began)
            cpu["logged_metrics"].append(time.process_time() - cpu0)

        with tempfile.TemporaryDirectory() as home:
            store = open_store(Settings(home=Path(home), tracking_uri=None))
            store.ensure_experiment(family.name)
            began, cpu0 = time.perf_counter(), time.process_time()
            run_training(data, store)
            times["full_stage"].append(time.perf_counter() - began)
            cpu["full_stage"].append(time.process_time() - cpu0)

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        json.dumps(
            {
                "benchmark": "train_mlflow_overhead",
                "family": "M4 Hourly (P=24, L=96, H=48, K=167)",
                "series_train": len(data.train),
                "series_validation": len(data.validation.series_ids),
                "iterations": args.iterations,
                "rounds": args.rounds,
                "median_seconds": {k: round(v, 3) for k, v in med.items()},
                "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "median_cpu_seconds": {k: round(v, 3) for k, v in med_cpu.items()},
                "all_cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
                "cpu_ratio_logged_metrics_vs_unlogged": round(
                    med_cpu["logged_metrics"] / med_cpu["unlogged"], 3
                ),
                "cpu_ratio_full_stage_vs_unlogged": round(
                    med_cpu["full_stage"] / med_cpu["unlogged"], 3
                ),
                "ratio_logged_metrics_vs_unlogged": round(
                    med["logged_metrics"] / med["unlogged"], 3
                ),
                "ratio_full_stage_vs_unlogged": round(med["full_stage"] / med["unlogged"], 3),
                "onnx_template_build_seconds_once": round(onnx_template_s, 3),
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
