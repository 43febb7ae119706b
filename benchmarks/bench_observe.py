"""``POST /v1/observe`` benchmark: throughput, single-observation latency, state memory.

What it does (one JSON document on stdout; progress on stderr):

1. A registry home with M4 Hourly's 414 series x ``--copies`` (``bench_serve.build_home``: the
   real series ingested, one exported model per series, int8-delta files as the product writes
   them), SQLite, persistence on (every request commits its points before the answer).
2. ``mamlctl serve`` (one worker) as a subprocess on loopback; one client on one keep-alive
   connection (``http.client``), so the figure is the server's per-request cost plus one
   loopback round trip:
   * batches of ``--batch`` (256) observations, each of a different series (round-robin over
     all series, each series' next position, its real next value: M4's test part),
     ``--batches`` of them:
     observations/s (client wall clock) and the server's CPU per observation (``/proc``);
   * ``--singles`` single-observation requests: p50 / p99 latency.
3. In-process: the observe loop's state after loading every series, and after ``--steps``
   observations per series (the answers it keeps for duplicates included), measured with
   ``tracemalloc`` and divided by the series count: the memory of the kept state beyond the
   model.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_observe.py [--copies 25] [--batches 200]``.
The machine should be otherwise idle: record ``uptime`` beside the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bench_serve as bs


def _post(conn: http.client.HTTPConnection, doc: Any) -> tuple[int, bytes]:
    body = json.dumps(doc).encode()
    conn.request("POST", "/v1/observe", body, {"content-type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def load_m4_hourly_test() -> dict[str, np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(bs.M4 / "Hourly-test.csv.gz", index_col=0)
    return {str(sid): row.dropna().to_numpy(dtype=np.float64) for sid, row in frame.iterrows()}


def _observations(
    ids: list[str], future: dict[str, np.ndarray], position: dict[str, int], count: int
) -> list[dict[str, Any]]:
    """The next ``count`` observations, round-robin over ``ids`` (each series' next position):
    the series' real continuation (M4's 48 test values, then again from the first)."""
    out = []
    for k in range(count):
        sid = ids[(position["_cursor"] + k) % len(ids)]
        ahead = future[sid.split("-c")[0]]
        value = float(ahead[position[sid] % ahead.shape[0]])
        out.append({"series_id": sid, "timestamp": position[sid], "value": value})
        position[sid] += 1
    position["_cursor"] += count
    return out


def serve_figures(home: Path, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from mamlctl.settings import Settings

    port = bs._free_port()
    proc, cold = bs.start_mamlctl(home, port)
    future = load_m4_hourly_test()
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.tables import SeriesRow

    with open_registry(Settings(home=home)) as factory, factory() as session:
        stored = {r.series_id: r.n_points for r in session.query(SeriesRow)}
    position: dict[str, int] = {"_cursor": 0, **stored}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        status, _ = _post(conn, _observations(ids, future, position, 1)[0])  # warm up
        assert status == 200, status
        batches = [
            {"items": _observations(ids, future, position, args.batch)} for _ in range(args.batches)
        ]
        cpu0, t0 = bs.cpu_seconds(proc.pid), time.perf_counter()
        bodies = []
        for doc in batches:
            status, body = _post(conn, doc)
            if status != 200:
                raise SystemExit(f"batch answered {status}: {body[:200]!r}")
            bodies.append(body)
        wall, cpu = time.perf_counter() - t0, bs.cpu_seconds(proc.pid) - cpu0
        answers = [a for b in bodies for a in json.loads(b)["results"]]
        flagged = sum(1 for a in answers if a.get("is_anomaly")) / max(len(answers), 1)
        n_obs = args.batch * args.batches
        singles = [_observations(ids, future, position, 1)[0] for _ in range(args.singles)]
        latencies = []
        for doc in singles:
            s0 = time.perf_counter()
            status, body = _post(conn, doc)
            latencies.append(time.perf_counter() - s0)
            if status != 200:
                raise SystemExit(f"single answered {status}: {body[:200]!r}")
        rss = bs.rss_mb(proc.pid)
    finally:
        conn.close()
        bs.stop(proc)
    latencies.sort()
    return {
        "cold_start_s": round(cold, 2),
        "batch": args.batch,
        "batches": args.batches,
        "observations_per_s": round(n_obs / wall, 1),
        # flagged share: each flag writes an anomaly record too (the bench's models are
        # perturbed initializers, not adapted ones, so they flag far more than a real fleet)
        "flagged_share": round(flagged, 4),
        "server_cpu_us_per_observation": round(1e6 * cpu / n_obs, 2),
        "single_p50_us": round(1e6 * statistics.median(latencies), 1),
        "single_p99_us": round(1e6 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "server_rss_mb_after": rss,
    }


def state_memory(home: Path, ids: list[str], steps: int) -> dict[str, Any]:
    """Bytes per series of the observe loop's streams: loaded, then after ``steps``
    observations per series (in-process, the same Observer the server runs)."""
    from mamlctl.serving.app import ServeOptions, create_app
    from mamlctl.serving.source import RegistrySource
    from mamlctl.settings import Settings

    settings = Settings(home=home)
    app = create_app(settings, RegistrySource(settings), options=ServeOptions(reload=False))
    assert app.holder.reload(force=True) and app.observer is not None
    observer, state = app.observer, app.holder.state
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    observer.sync(state)
    loaded = tracemalloc.take_snapshot()
    position: dict[str, int] = {"_cursor": 0}
    position.update({sid: observer.streams[sid].n_points for sid in ids})
    future = load_m4_hourly_test()
    for _ in range(steps):
        items = _observations(ids, future, position, len(ids))
        for i in range(0, len(items), 256):
            observer.observe(state, items[i : i + 256], is_batch=True)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def grown(a: Any, b: Any) -> int:
        return sum(s.size_diff for s in b.compare_to(a, "filename"))

    n = len(ids)
    first = next(iter(observer.streams.values()))
    window = first.window
    return {
        "series": n,
        "window": window,
        "bytes_per_series_loaded": round(grown(base, loaded) / n, 1),
        "bytes_per_series_after_steps": round(grown(base, after) / n, 1),
        "steps": steps,
        "window_array_bytes": int(first.detector.window.nbytes),
        "recent_answers_kept": len(observer.recent._answers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=25, help="x 414 series (25: 10,350)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=8, help="observations per series (memory)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--residual-scale-rel",
        type=float,
        default=3.0,
        help="models' residual scale / support scale (3: a few %% flagged, as a fleet would"
        " be; 0.1: most observations flagged, each writing an anomaly record)",
    )
    args = parser.parse_args()
    values = bs.load_m4_hourly()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-observe-"))
    home = work / f"home-x{args.copies}-r{args.residual_scale_rel:g}"
    bs.log(f"building {home}")
    ids, _ = bs.build_home(
        home,
        values,
        copies=args.copies,
        seed=0,
        store_points=bs.K,
        residual_scale_rel=args.residual_scale_rel,
    )
    out: dict[str, Any] = {
        "series": len(ids),
        "residual_scale_rel": args.residual_scale_rel,
        "load_before": os.getloadavg(),
    }
    bs.log("serving")
    out["serve"] = serve_figures(home, ids, args)
    bs.log("state memory")
    out["state"] = state_memory(home, ids, args.steps)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
