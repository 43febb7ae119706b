"""Choose the few-shot (``--history N``) forecaster settings on a validation split carved from
the M4 *training* files only: every training series loses its last H points, which become the
validation target; the method sees the N points before them, and the fold initializers are
meta-trained on the truncated training histories of the other fold. The M4 test files are never
read here.

    python benchmarks/m4_fewshot_select.py --subset hourly --iterations 1500 \
        --set window=24 --set inner_steps=2 ...

Training variants (``--set``) need one run each; forecast-time variants (adaptation steps, the
blend with seasonal naive) are scored from the same trained initializers in one run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mamlctl.evaluation.m4 import load_subset
from mamlctl.evaluation.m4_maml import config_for, fit, forecast
from mamlctl.timeseries.baselines import seasonal_naive
from mamlctl.timeseries.metrics import mase, smape


def _parse(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subset", default="hourly")
    ap.add_argument("--data", default="/work/shared/data/m4")
    ap.add_argument("--history", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="initializers per fold (ensemble)")
    ap.add_argument("--set", action="append", default=[], help="config key=value (JSON value)")
    ap.add_argument("--steps", default="0,1,2,3,5")
    ap.add_argument("--save", default=None, help="save validation forecasts (.npz)")
    args = ap.parse_args()

    data = load_subset(args.data, args.subset)
    spec = data.subset
    h, n_hist = spec.horizon, args.history or spec.few_shot_history
    corpus = [x[:-h] for x in data.histories]  # truncated training histories
    target = np.stack([x[-h:] for x in data.histories])  # validation target (training data)
    shown = [x[-n_hist:] for x in corpus]
    updates = dict(kv.split("=", 1) for kv in args.set)
    cfg = config_for(spec.name, history=n_hist, time_budget_s=1e9)
    cfg = cfg.model_copy(
        update={"max_iterations": args.iterations, **{k: _parse(v) for k, v in updates.items()}}
    )
    cfg = type(cfg).model_validate(cfg.model_dump())
    steps = [int(s) for s in args.steps.split(",")]
    n = len(shown)
    fcs = {s: np.zeros((args.seeds, n, h)) for s in steps}
    began = time.perf_counter()
    iters = []
    for f in range(args.folds):
        train = [s for j, s in enumerate(corpus) if j % args.folds != f]
        idx = [j for j in range(n) if j % args.folds == f]
        for r in range(args.seeds):
            fitted = fit(train, cfg.model_copy(update={"seed": cfg.seed + 1000 * r}), method="maml")
            iters.append(fitted.iterations)
            for s in steps:
                fcs[s][r, idx] = forecast(fitted, [shown[j] for j in idx], steps=s)
    snaive = seasonal_naive(shown, h, m=spec.season)
    m = spec.m

    def score(fc: np.ndarray) -> tuple[float, float, np.ndarray]:
        per = smape(target, fc)
        return float(per.mean()), float(mase(corpus, target, fc, m=m).mean()), per

    s_sn, m_sn, per_sn = score(snaive)
    print(
        json.dumps(
            {
                "cfg": updates,
                "iterations": iters,
                "seeds": args.seeds,
                "train_s": round(time.perf_counter() - began, 1),
            }
        )
    )
    print(f"seasonal_naive sMAPE {s_sn:.3f} MASE {m_sn:.3f}")
    for s in steps:
        for agg in ("mean", "median"):
            if agg == "median" and args.seeds < 3:
                continue
            ens = np.median(fcs[s], axis=0) if agg == "median" else fcs[s].mean(axis=0)
            for w in (1.0, 0.75, 0.5):
                fc = w * ens + (1 - w) * snaive
                sm, ma, per = score(fc)
                wins = int(np.sum(per < per_sn))
                print(
                    f"steps {s} {agg} w={w:.2f}: sMAPE {sm:.3f} MASE {ma:.3f} "
                    f"(series better than snaive on sMAPE: {wins}/{n})"
                )
    if args.save:
        np.savez(args.save, target=target, snaive=snaive, **{f"steps{s}": fcs[s] for s in steps})


if __name__ == "__main__":
    main()
