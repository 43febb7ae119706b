"""Event F1 of the served anomaly flag on NAB, against a rolling median/MAD rule (issue 15).

Reads the answers an ``mamlctl evaluate nab`` run kept (``OUT/homes/fold*/answers.npz``: the
server's answers to every row after each file's probation) and the corpus' labelled windows.
Detectors compared on the same rows (after the probation, where the server answered):

* ``served flag``: the answers' ``is_anomaly`` (the calibrated ``z`` rule);
* ``served rank >= 0.5``: the answers' ``rank_score`` >= 0.5 (out of range, or a red anomaly
  likelihood: tail <= 1e-5), the ranking score read as a flag;
* ``median/MAD z > 4``: causal rolling rule on the values, ``|y - median| / (1.4826 MAD)`` over
  the previous ``--mad-window`` rows (default 288: one day of 5-minute data), a common
  baseline.

Event counting (per file, then summed): a labelled window is detected when at least one flag
falls inside it; flags outside every window are merged into alarms (runs of consecutive
flagged rows); precision = detected windows / (detected windows + false alarms), recall =
detected windows / windows, F1 their harmonic mean. Rows of the probation and rows the server
did not score are not counted.

Run: ``python benchmarks/nab_event_f1.py --run OUT --data ../shared/data/nab`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.evaluation.nab import load_corpus
from mamlctl.evaluation.nab_data import probationary_length

Flags = npt.NDArray[np.bool_]


def load_answers(run: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(run.glob("homes/fold*/answers.npz")):
        with np.load(path) as z:
            for name in z.files:
                key, field = name.rsplit("/", 1)
                out.setdefault(key, {})[field] = z[name]
    return out


def mad_flags(values: np.ndarray, window: int, z: float = 4.0) -> Flags:
    """Causal rolling median/MAD rule: row t against rows t-window .. t-1."""
    out = np.zeros(values.shape[0], dtype=np.bool_)
    for t in range(window, values.shape[0]):
        past = values[t - window : t]
        med = np.median(past)
        mad = 1.4826 * np.median(np.abs(past - med))
        if mad > 0:
            out[t] = abs(values[t] - med) / mad > z
        else:
            out[t] = values[t] != med
    return out


def events(flags: Flags, counted: Flags, windows: list[tuple[int, int]]) -> dict[str, int]:
    """Detected windows, missed windows and false alarms among the ``counted`` rows."""
    f = flags & counted
    inside = np.zeros(f.shape[0], dtype=np.bool_)
    detected = missed = 0
    for a, b in windows:
        if not counted[a : b + 1].any():
            continue  # a window inside the probation: not scored
        inside[a : b + 1] = True
        if f[a : b + 1].any():
            detected += 1
        else:
            missed += 1
    outside = f & ~inside
    starts = outside & ~np.r_[False, outside[:-1]]
    return {
        "detected": detected,
        "missed": missed,
        "false_alarms": int(starts.sum()),
        "flagged_rows_outside": int(outside.sum()),
    }


def summary(counts: dict[str, int], rows: int) -> dict[str, Any]:
    tp, fn, fp = counts["detected"], counts["missed"], counts["false_alarms"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        **counts,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "event_f1": round(f1, 4),
        "false_alarm_rows_per_1000": round(1000 * counts["flagged_rows_outside"] / rows, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="an evaluate nab --out folder")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--mad-window", type=int, default=288)
    args = parser.parse_args()
    answers = load_answers(args.run)
    totals: dict[str, dict[str, int]] = {}
    rows = 0
    for series in load_corpus(args.data):
        got = answers[series.key]
        p = probationary_length(len(series))
        n = len(series)
        scored = np.zeros(n, dtype=np.bool_)
        scored[p:] = np.isfinite(got["z"])
        rows += int(scored.sum())
        served = np.zeros(n, dtype=np.bool_)
        served[p:] = np.nan_to_num(got["is_anomaly"]) > 0
        ranked = np.zeros(n, dtype=np.bool_)
        ranked[p:] = np.nan_to_num(got["rank_score"]) >= 0.5
        detectors = {
            "served flag": served,
            "served rank >= 0.5": ranked,
            f"median/MAD z > 4 (window {args.mad_window})": mad_flags(
                series.values, args.mad_window
            ),
        }
        for name, flags in detectors.items():
            counts = events(flags, scored, list(series.windows))
            total = totals.setdefault(name, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                total[k] += v
    print(
        json.dumps(
            {
                "run": str(args.run),
                "rows": rows,
                **{k: summary(v, rows) for k, v in totals.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
