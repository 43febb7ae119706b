"""Sanity benchmark: M4 baselines on the Hourly and Weekly test sets, printed as JSON.

Full-history track: Naive, seasonal naive, Naive2 (and, with --stats-full, AutoETS/AutoTheta).
Few-shot track (--history N per subset, default two seasonal periods): every method sees only
the last N points; the MASE scale stays the full in-sample series (it belongs to the metric,
not to the method) and OWA is relative to Naive2 given the same N points.

Published anchors (M4, full history): Naive2 Hourly sMAPE 18.383 / MASE 2.395, seasonal
naive Hourly OWA 0.627; Naive2 Weekly sMAPE 9.161 / MASE 2.777.

    python benchmarks/bench_baselines_m4.py --data /work/shared/data/m4 [--stats-full]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mamlctl.timeseries import baselines
from mamlctl.timeseries.metrics import m4_accuracy

# subset -> (horizon, MASE period m as M4 scored it, seasonal period for models, few-shot N)
SUBSETS = {"hourly": (48, 24, 24, 48), "weekly": (13, 1, 1, 104)}


def load(data: Path, subset: str) -> tuple[list[np.ndarray], np.ndarray]:
    name = subset.capitalize()
    train = pd.read_csv(data / f"{name}-train.csv.gz", index_col=0)
    test = pd.read_csv(data / f"{name}-test.csv.gz", index_col=0)
    if list(train.index) != list(test.index):
        sys.exit(f"{name}: train and test ids differ")
    histories = [row.dropna().to_numpy(dtype=np.float64) for _, row in train.iterrows()]
    return histories, test.to_numpy(dtype=np.float64)


def run(
    histories: list[np.ndarray],
    actual: np.ndarray,
    shown: list[np.ndarray],
    *,
    h: int,
    m: int,
    season: int,
    methods: dict[str, Callable[..., np.ndarray]],
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    forecasts: dict[str, np.ndarray] = {}
    reference = baselines.naive2(histories, h, m=season)  # full-history Naive2
    for name, fn in methods.items():
        t0 = time.perf_counter()
        forecasts[name] = fn(shown, h, m=season)
        out[name] = {"wall_s": round(time.perf_counter() - t0, 3)}
    for name, fc in forecasts.items():
        acc = m4_accuracy(histories, actual, fc, m=m, naive2_forecast=forecasts["naive2"])
        ref = m4_accuracy(histories, actual, fc, m=m, naive2_forecast=reference)
        out[name].update(
            smape=round(acc.smape, 3),
            mase=round(acc.mase, 3),
            owa=round(acc.owa or 0.0, 4),
            owa_vs_full_naive2=round(ref.owa or 0.0, 4),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/m4"))
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS))
    parser.add_argument(
        "--stats-full", action="store_true", help="AutoETS/AutoTheta on full history"
    )
    parser.add_argument("--no-stats", action="store_true", help="skip statsforecast entirely")
    args = parser.parse_args()

    cheap: dict[str, Callable[..., np.ndarray]] = {
        "naive": lambda x, h, m: baselines.naive(x, h),
        "seasonal_naive": baselines.seasonal_naive,
        "naive2": baselines.naive2,
    }
    stats: dict[str, Callable[..., np.ndarray]] = {
        "auto_ets": baselines.auto_ets,
        "auto_theta": baselines.auto_theta,
    }
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    for subset in args.subsets:
        h, m, season, n_few = SUBSETS[subset]
        histories, actual = load(args.data, subset)
        full_methods = dict(cheap, **(stats if args.stats_full and not args.no_stats else {}))
        few_methods = dict(cheap, **({} if args.no_stats else stats))
        report[subset] = {
            "n_series": len(histories),
            "horizon": h,
            "mase_m": m,
            "full": run(
                histories, actual, histories, h=h, m=m, season=season, methods=full_methods
            ),
            f"history_{n_few}": run(
                histories,
                actual,
                [x[-n_few:] for x in histories],
                h=h,
                m=m,
                season=season,
                methods=few_methods,
            ),
        }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
