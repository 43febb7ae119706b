"""Injected spikes, level shifts and dropouts through the served path: event F1 and false alarms
of the server's flag rules against a rolling median/MAD rule (issue 15).

What it does (one JSON document on stdout; progress on stderr):

1. A fresh home: ``--series`` hourly series with a daily cycle (level, amplitude, phase and
   noise drawn per series, a slow trend), ingested with timestamps; the product's ``hourly``
   family (P=24, L=96, H=48); ``train`` (fixed ``--iterations``, ``--seed``) on the first
   ``--train-points`` of every series; ``adapt`` on the same points.
2. The rest of each series (``--stream-points``) with anomalies injected at random places
   (each at least 3 days from the last): a **spike** (one point, +-6 to 10 noise sds plus 0.5
   amplitude), a **level shift** (+-4 to 6 noise sds plus 0.3 amplitude, lasting 24-72 points),
   a **dropout** (0 for 3-12 points). Each injection's window is its span plus 6 points.
3. For each flag rule (``z``, ``rank``) a server on the home (``create_app`` in-process,
   ``serve --flag`` by option) gets the streams through ``POST /v1/observe``; the same values go
   through the median/MAD ``z > 4`` rule (288 rows, as ``nab_event_f1.py``).
4. Event counting as ``nab_event_f1.py``: a window with a flag is detected; flags outside every
   window, merged into runs, are false alarms.

Run: ``OMP_NUM_THREADS=1 python benchmarks/injected_streams.py [--series 20 --iterations 300]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from nab_event_f1 import events, mad_flags, summary

T0 = np.datetime64("2024-01-01T00:00:00", "s")
HOUR = np.timedelta64(3600, "s")


def make_series(rng: Any, n: int) -> np.ndarray:
    t = np.arange(n)
    level, amp = rng.uniform(20, 200), rng.uniform(0.2, 0.6)
    noise = rng.uniform(0.02, 0.08)
    phase = rng.uniform(0, 2 * np.pi)
    base = level * (1 + amp * np.sin(2 * np.pi * t / 24 + phase) + 0.0005 * t / 24)
    return np.asarray(base + level * noise * rng.standard_normal(n), dtype=np.float64)


def inject(rng: Any, values: np.ndarray, start: int, level: float, sd: float) -> list[Any]:
    """Anomalies in ``values[start:]`` (in place); their windows as inclusive row pairs."""
    windows, t, kinds = [], start + 72, ("spike", "shift", "dropout")
    while t < values.shape[0] - 80:
        kind = kinds[int(rng.integers(3))]
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind == "spike":
            span = 1
            values[t] += sign * (rng.uniform(6, 10) * sd + 0.5 * level)
        elif kind == "shift":
            span = int(rng.integers(24, 73))
            values[t : t + span] += sign * (rng.uniform(4, 6) * sd + 0.3 * level)
        else:
            span = int(rng.integers(3, 13))
            values[t : t + span] = 0.0
        windows.append((kind, t, t + span - 1 + 6))
        t += span + int(rng.integers(72, 200))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--train-points", type=int, default=24 * 42)
    parser.add_argument("--stream-points", type=int, default=24 * 60)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from mamlctl.evaluation.nab_served import Serving, stream
    from mamlctl.evaluation.product_home import (
        adapt_home,
        home_settings,
        ingest_values,
        train_home,
    )
    from mamlctl.timeseries.families import calendar_period, family_for

    rng = np.random.default_rng(args.seed)
    n = args.train_points + args.stream_points
    clean = {f"syn{i:03d}": make_series(rng, n) for i in range(args.series)}
    stamps = T0 + HOUR * np.arange(n)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="injected-"))
    settings = home_settings(work / "home")
    family = family_for(calendar_period(3600.0), 3600.0)  # hourly: P=24, L=96, H=48
    p = args.train_points
    began = time.perf_counter()
    ingest_values(
        settings,
        family,
        {k: v[:p] for k, v in clean.items()},
        3600.0,
        timestamps={k: stamps[:p] for k in clean},
        source="synthetic",
    )
    outcome, store = train_home(settings, family.name, iterations=args.iterations, seed=args.seed)
    adapt_home(settings, store, family.name, list(clean), version=outcome.ref.version)
    setup_s = time.perf_counter() - began

    streams, windows = {}, {}
    for sid, v in clean.items():
        noisy = v.copy()
        level = float(np.mean(v[:p]))
        sd = float(np.std(np.diff(v[:p]))) / np.sqrt(2)
        windows[sid] = inject(rng, noisy, p, level, sd)
        streams[sid] = noisy
    out: dict[str, Any] = {
        "series": args.series,
        "iterations": args.iterations,
        "seed": args.seed,
        "setup_s": round(setup_s, 1),
        "windows": sum(len(w) for w in windows.values()),
        "kinds": {
            k: sum(1 for w in windows.values() for kind, *_ in w if kind == k)
            for k in ("spike", "shift", "dropout")
        },
    }
    totals: dict[str, dict[str, int]] = {}
    rows = 0
    for rule in ("z", "rank"):
        # each rule streams into its own copy of the home (the server stores what it observes)
        import shutil

        copy = work / f"home-{rule}"
        shutil.copytree(settings.home, copy)
        with Serving(home_settings(copy), max_batch=256, flag=rule) as server:
            for sid, values in streams.items():
                got = stream(server.post, sid, stamps[p:], values[p:], 256)
                flags = np.zeros(n, dtype=np.bool_)
                flags[p:] = [bool(a.get("is_anomaly")) for a in got]
                counted = np.zeros(n, dtype=np.bool_)
                counted[p:] = [a.get("status") == "scored" for a in got]
                wins = [(a, b) for _, a, b in windows[sid]]
                counts = events(flags, counted, wins)
                total = totals.setdefault(f"served flag {rule}", dict.fromkeys(counts, 0))
                for k, v in counts.items():
                    total[k] += v
                if rule == "z":
                    rows += int(counted.sum())
                    mad = mad_flags(values, 288)
                    base = events(mad, counted, wins)
                    total = totals.setdefault("median/MAD z > 4", dict.fromkeys(base, 0))
                    for k, v in base.items():
                        total[k] += v
    out["rows"] = rows
    out.update({name: summary(c, rows) for name, c in totals.items()})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
