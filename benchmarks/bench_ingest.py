"""Ingest throughput (points/s): M4 Hourly + Weekly train on SQLite and PostgreSQL.

For each backend and repeat, a fresh migrated database receives both files in one transaction
(read + validate timed apart from the store). The baseline, timed in the same run on the same
prepared points, is SQLAlchemy Core ``executemany`` of ``insert(points)`` with one dict per
point (what a straightforward implementation does); mamlctl's store uses raw ``executemany``
on SQLite and ``COPY`` on PostgreSQL. A re-ingest of the same files (the idempotent check that
compares every stored point) is timed too. Prints one JSON document; figures are medians.

    python benchmarks/bench_ingest.py [--repeats 3] [--data /work/shared/data/m4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_scratch import scratch_database

from mamlctl.registry.db import make_engine, upgrade_schema
from mamlctl.registry.ingest import store_series
from mamlctl.registry.tables import PointRow, SeriesRow
from mamlctl.stages.ingest import PreparedIngest, prepare_ingest


def _store(url: str, prepared: PreparedIngest) -> tuple[float, float]:
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        factory = sessionmaker(engine)
        t0 = time.perf_counter()
        with factory.begin() as s:
            store_series(s, prepared.batch)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        with factory.begin() as s:
            summary = store_series(s, prepared.batch)
        again = time.perf_counter() - t0
        assert summary.points_added == 0
        return first, again
    finally:
        engine.dispose()


def _baseline(url: str, prepared: PreparedIngest) -> float:
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        factory = sessionmaker(engine)
        t0 = time.perf_counter()
        with factory.begin() as s:
            rows = [
                SeriesRow(series_id=i.series.series_id, n_points=len(i.series))
                for i in prepared.batch
            ]
            s.add_all(rows)
            s.flush()
            points = [
                {"series_pk": row.id, "position": p, "ts": None, "value": v}
                for row, item in zip(rows, prepared.batch, strict=True)
                for p, v in enumerate(item.series.values.tolist())
            ]
            s.execute(insert(PointRow), points)
        return time.perf_counter() - t0
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "m4",
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    files = [args.data / "Hourly-train.csv.gz", args.data / "Weekly-train.csv.gz"]

    read_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        prepared = prepare_ingest(files, fmt="m4")
        read_times.append(time.perf_counter() - t0)
    n_points = sum(len(i.series) for i in prepared.batch)

    results: dict[str, object] = {
        "files": [f.name for f in files],
        "series": len(prepared.batch),
        "points": n_points,
        "repeats": args.repeats,
        "read_validate_s": round(statistics.median(read_times), 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "backends": {},
    }

    def measure(name: str, make_url: object) -> None:
        store, again, base = [], [], []
        for _ in range(args.repeats):
            for kind in ("mamlctl", "baseline"):
                with make_url() as url:  # type: ignore[operator]
                    if url is None:
                        results["backends"][name] = "skipped: no server"  # type: ignore[index]
                        return
                    if kind == "mamlctl":
                        a, b = _store(url, prepared)
                        store.append(a)
                        again.append(b)
                    else:
                        base.append(_baseline(url, prepared))
        s_med, b_med = statistics.median(store), statistics.median(base)
        results["backends"][name] = {  # type: ignore[index]
            "store_s": round(s_med, 3),
            "store_points_per_s": round(n_points / s_med),
            "end_to_end_points_per_s": round(n_points / (s_med + results["read_validate_s"])),  # type: ignore[operator]
            "reingest_unchanged_s": round(statistics.median(again), 3),
            "baseline_core_executemany_s": round(b_med, 3),
            "baseline_points_per_s": round(n_points / b_med),
            "speedup_vs_baseline": round(b_med / s_med, 2),
        }

    from contextlib import contextmanager

    @contextmanager
    def sqlite_url():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/registry.db"

    measure("sqlite", sqlite_url)
    measure("postgresql", scratch_database)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
