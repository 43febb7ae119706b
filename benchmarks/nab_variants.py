"""Compare NAB scoring variants of the mamlctl detector on ONE half of the corpus only.

The fold initializers are meta-trained once (as ``mamlctl evaluate nab`` does), residuals are
computed once per file, then each variant of the residual -> score step is scored with NAB's
scorer on the files of odd rank among the sorted keys (the selection half). The chosen variant
is then reported on the even half (never looked at for selection) and on the whole corpus.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/nab_variants.py --data ../shared/data/nab \\
        --time-budget 240 --out benchmarks/out/nab_variants.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--time-budget", type=float, default=240.0)
    ap.add_argument("--out", default="benchmarks/out/nab_variants.json")
    ap.add_argument("--choose", default=None, help="variant name to report on the other half")
    args = ap.parse_args()

    import torch

    from mamlctl.evaluation.m4_maml import fit
    from mamlctl.evaluation.nab import load_corpus
    from mamlctl.evaluation.nab_data import probationary_length
    from mamlctl.evaluation.nab_maml import (
        NabDetectorConfig,
        _forecaster,
        _segments,
        fold_of,
        likelihood_scores,
        online_residuals,
        spatial_anomaly,
    )
    from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus

    torch.set_num_threads(1)
    began = time.perf_counter()
    corpus = load_corpus(args.data)
    cfg = NabDetectorConfig(time_budget_s=args.time_budget)
    folds = fold_of([s.key for s in corpus], cfg.folds)
    forecaster = _forecaster(cfg, cfg.support)
    fits = {
        f: fit([s.values for s in corpus if folds[s.key] != f], forecaster, method="maml")
        for f in range(cfg.folds)
    }
    trained = time.perf_counter() - began
    cache = {}
    for s in corpus:
        p = probationary_length(len(s))
        f = fits[folds[s.key]]
        cache[s.key] = {
            "p": p,
            True: online_residuals(f, s.values, p, every=p),
            False: online_residuals(f, s.values, p, every=None),
        }
    residual_s = time.perf_counter() - began - trained
    order = sorted(s.key for s in corpus)
    half = {"odd": set(order[1::2]), "even": set(order[0::2]), "all": set(order)}

    def held_out_std(r: np.ndarray, p: int, readapt: bool) -> np.ndarray:
        """Scale of each block = std of the previous block's residuals (out-of-sample for the
        model that made them); the first block: its in-sample residuals on the probation."""
        n, length = r.shape[0], cfg.window
        k = max(p, length + 2)
        blocks = _segments(n, k, p if readapt else None)
        out = np.full(n, np.nan)
        prev = float(np.std(r[length:k]))
        for a, b in blocks:
            out[length if a == k else a : b] = max(prev, 1e-9)
            prev = float(np.std(r[a:b]))
        return out

    def variant_scores(name: str, key: str) -> Any:
        readapt, scale, sided, spatial = name.split("|")
        c = cache[key]
        r, sigma = c[readapt == "readapt"]
        if scale == "heldout":
            sigma = held_out_std(r, c["p"], readapt == "readapt")
        values = next(s.values for s in corpus if s.key == key)
        return likelihood_scores(
            r,
            sigma,
            c["p"],
            two_sided=sided == "two",
            spatial=spatial_anomaly(values) if spatial == "spatial" else None,
        )

    names = [
        "|".join(v)
        for v in itertools.product(
            ("readapt", "fixed"), ("support", "heldout"), ("one", "two"), ("plain", "spatial")
        )
    ]
    by_key = {s.key: s for s in corpus}

    def score(name: str, which: str) -> dict[str, float]:
        files = [
            prepare_file(k, variant_scores(name, k), by_key[k].windows)
            for k in order
            if k in half[which]
        ]
        rep = score_corpus(files)
        return {p: round(r.score, 2) for p, r in rep.results.items()}

    results: dict[str, Any] = {"odd": {n: score(n, "odd") for n in names}}
    best = max(names, key=lambda n: results["odd"][n]["standard"])
    chosen = args.choose or best
    results["chosen"] = chosen
    results["chosen_even"] = score(chosen, "even")
    results["chosen_all"] = score(chosen, "all")
    results["apriori"] = "readapt|support|one|plain"
    results["apriori_even"] = score(results["apriori"], "even")
    results["timing_s"] = {
        "train": round(trained, 1),
        "residuals": round(residual_s, 1),
        "total": round(time.perf_counter() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for n in sorted(names, key=lambda n: -results["odd"][n]["standard"]):
        print(f"{n:40s} {results['odd'][n]}")
    print("chosen", chosen, "even", results["chosen_even"], "all", results["chosen_all"])
    print("a priori even", results["apriori_even"], "timing", results["timing_s"])


if __name__ == "__main__":
    main()
