"""Latency of "the last 512 points of one series" (p50, p99) on SQLite and PostgreSQL.

A fresh database holds M4 Hourly + Weekly train (773 series, 720,412 points). Each backend
answers ``last_points(session, series_id, 512)`` for random series, one short transaction per
read (as a scoring request would). Baseline in the same run: loading the whole series
(``series_values``) and slicing its tail. Prints one JSON document.

    python benchmarks/bench_read_last.py [--reads 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_scratch import scratch_database

from mamlctl.registry import queries as q
from mamlctl.registry.db import make_engine, upgrade_schema
from mamlctl.registry.ingest import store_series
from mamlctl.stages.ingest import prepare_ingest


def _pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(np.array(xs) * 1e3, p)), 3)


def measure(url: str, prepared: object, reads: int, seed: int) -> dict[str, object]:
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        factory = sessionmaker(engine)
        with factory.begin() as s:
            store_series(s, prepared.batch)  # type: ignore[attr-defined]
        ids = [i.series.series_id for i in prepared.batch]  # type: ignore[attr-defined]
        truth = {i.series.series_id: i.series.values for i in prepared.batch}  # type: ignore[attr-defined]
        rng = random.Random(seed)
        picks = [rng.choice(ids) for _ in range(reads)]
        out: dict[str, object] = {}
        for name, fn in (
            ("last_points_512", lambda s, sid: q.last_points(s, sid, 512)[0]),
            ("baseline_full_series_then_slice", lambda s, sid: q.series_values(s, sid)[-512:]),
        ):
            n = reads if name.startswith("last") else max(200, reads // 10)
            for sid in picks[:50]:  # warm caches
                with factory.begin() as s:
                    fn(s, sid)
            lat = []
            for sid in picks[:n]:
                t0 = time.perf_counter()
                with factory.begin() as s:
                    values = fn(s, sid)
                lat.append(time.perf_counter() - t0)
                assert np.array_equal(values, truth[sid][-512:])
            out[name] = {"reads": n, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}
        return out
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "m4",
    )
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    prepared = prepare_ingest(
        [args.data / "Hourly-train.csv.gz", args.data / "Weekly-train.csv.gz"], fmt="m4"
    )
    result: dict[str, object] = {
        "series": len(prepared.batch),
        "points": sum(len(i.series) for i in prepared.batch),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }

    @contextmanager
    def sqlite_url():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/registry.db"

    with sqlite_url() as url:
        result["sqlite"] = measure(url, prepared, args.reads, seed=0)
    with scratch_database() as url:
        result["postgresql"] = (
            "skipped: no server" if url is None else measure(url, prepared, args.reads, seed=0)
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
