"""``mamlctl adapt`` in-process on one core against ``adapt --ray`` with 1 and 2 worker
processes, on the same home, in the same run (issue 17).

Home: a fresh folder with N synthetic M4-Hourly-shaped series (``bench_adapt_export``'s:
random stretches of real M4 Hourly training series, K + C + 64 points each), family ``hourly``
(P 24, L 96, H 48, K 167, ``--calibration 96``), a seeded initializer with ``train``'s family
defaults registered as champion (meta-training is not what is measured), the registry in
SQLite (default) or ``--database-url`` (PostgreSQL, migrated here), the model files under
``MAMLCTL_MODELS_ROOT``. Each run adapts all N series from nothing: the adapted-model rows and
the model files are removed between runs, so every run does the same work.

Runs (each ``mamlctl adapt --family hourly --calibration 96 --json`` in a process of its own,
as a user runs it; ``OMP_NUM_THREADS=1`` everywhere):

* ``in_process``: pinned to one core (``taskset -c 0``);
* ``ray_1w``: ``--ray`` on a fresh local cluster ``ray start --head --num-cpus 1``;
* ``ray_2w``: the same with ``--num-cpus 2`` (two worker processes).

Per run: the command's wall time, the job's own time (``seconds`` of the report: selection,
MLflow run, chunks, parity), series/s on the job time, and for Ray the chunk phase (first task
submitted to last result) and, per worker process, series, busy seconds, ms per series and peak
RSS (``report.cluster``); the in-process run's peak RSS is its process'. Ratios: 2 workers
against 1 (job and chunk phase; target >= 1.7x) and the overhead of Ray with one worker
against in-process (job time; target <= 10%). Medians over ``--repeats`` (runs interleaved).

    python benchmarks/bench_adapt_ray.py [--n 12000] [--repeats 1] [--chunk 2048]
        [--database-url URL] [--keep DIR]

(``--n 300`` smoke run: about 2 minutes on the loaded 2-core box, most of it process starts.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_adapt_export import C, H, K, L, P, make_initializer, synthetic_series

RAY = str(Path(sys.executable).with_name("ray"))
CLI = [sys.executable, "-c", "from mamlctl.cli.app import main; main()"]


def build_home(root: Path, n: int, database_url: str | None) -> dict[str, str]:
    """The home (see module doc); returns the environment that names it."""
    from mamlctl.domain import Family, Series
    from mamlctl.maml.initializer import save_initializer
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry, upgrade_schema
    from mamlctl.registry.ingest import IncomingSeries, store_series
    from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, open_store
    from mamlctl.settings import Settings

    shared = root / "shared-models"
    settings = Settings(home=root / "home", database_url=database_url, models_root=shared)
    settings.ensure_home()
    if database_url:
        upgrade_schema(database_url)
    family = Family(
        name="hourly", period=P, interval_seconds=3600.0, window=L, horizon=H, support=K
    )
    histories = synthetic_series(n)
    with open_registry(settings) as factory:
        with factory.begin() as session:
            q.upsert_family(session, family)
        ids = [f"S{i:07d}" for i in range(n)]
        for start in range(0, n, 2000):
            with factory.begin() as session:
                store_series(
                    session,
                    [
                        IncomingSeries(
                            series=Series(series_id=sid, values=histories[i]),
                            source="bench",
                            interval_seconds=3600.0,
                        )
                        for i, sid in enumerate(ids[start : start + 2000], start)
                    ],
                )
        with factory.begin() as session:
            q.assign_family(session, "hourly", ids)
    init = make_initializer(None)
    folder = save_initializer(
        root / "initializer",
        model_config=init.model_config,
        params=init.params,
        task_spec=init.task_spec,
        train_config=init.train_config,
    )
    store = open_store(settings)
    with store.start_run(family="hourly", run_name="bench-init") as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    store.register_initializer(
        family="hourly", run_id=run.run_id, tags={}, description="bench", promote=True
    )
    env = {
        **os.environ,
        "MAMLCTL_HOME": str(settings.home),
        "MAMLCTL_MODELS_ROOT": str(shared),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("MAMLCTL_RAY_ADDRESS", None)
    if database_url:
        env["MAMLCTL_DATABASE_URL"] = database_url
    else:
        env.pop("MAMLCTL_DATABASE_URL", None)
    return env


def reset(env: dict[str, str]) -> None:
    """No adapted models and no model files: the next run adapts every series from nothing."""
    from sqlalchemy import delete

    from mamlctl.registry.db import open_registry
    from mamlctl.registry.tables import AdaptedModelRow
    from mamlctl.settings import Settings

    settings = Settings(
        home=Path(env["MAMLCTL_HOME"]),
        database_url=env.get("MAMLCTL_DATABASE_URL"),
        models_root=Path(env["MAMLCTL_MODELS_ROOT"]),
    )
    with open_registry(settings) as factory, factory.begin() as session:
        session.execute(delete(AdaptedModelRow))
    shutil.rmtree(settings.models_dir, ignore_errors=True)
    settings.models_dir.mkdir(parents=True)


def adapt(env: dict[str, str], *extra: str, pin: bool = False) -> dict[str, Any]:
    """One ``mamlctl adapt`` process: its report, wall time and peak RSS."""
    cmd = [*CLI, "adapt", "--family", "hourly", "--calibration", str(C), "--json", *extra]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"adapt failed ({proc.returncode}): {stderr[-2000:]}")
    report = json.loads(stdout)
    return {"wall_s": wall, "report": report, "peak_rss_mb": usage.ru_maxrss / 1024}


@contextlib.contextmanager
def cluster(cpus: int, env: dict[str, str]) -> Any:
    """A one-node local Ray cluster with ``cpus`` CPUs (worker processes), killed afterwards."""
    temp = tempfile.mkdtemp(prefix="mrb", dir="/tmp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(temp) / "head.log"
    cmd = [
        RAY, "start", "--head", "--block", "--port", str(port), "--num-cpus", str(cpus),
        "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--temp-dir", temp,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ray start failed: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def summary(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    job = statistics.median(r["report"]["seconds"] for r in runs)
    out: dict[str, Any] = {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "job_s": round(job, 3),
        "series_per_s": round(n / job, 1),
        "ms_per_series": round(1000 * job / n, 4),
        "adapted": runs[0]["report"]["adapted"],
        "runs_job_s": [round(r["report"]["seconds"], 3) for r in runs],
        "driver_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
    }
    clusters = [r["report"]["cluster"] for r in runs if r["report"].get("cluster")]
    if clusters:
        phase = statistics.median(c["chunk_phase_s"] for c in clusters)
        out["chunk_phase_s"] = round(phase, 3)
        out["chunk_phase_series_per_s"] = round(n / phase, 1)
        out["tasks"] = clusters[0]["tasks"]
        out["workers"] = [c["workers"] for c in clusters]
        out["worker_peak_rss_mb"] = max(w["peak_rss_mb"] for c in clusters for w in c["workers"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=2048, help="adapt --chunk (Ray: per task)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default SQLite)")
    parser.add_argument("--keep", type=Path, default=None, help="Build the home here and keep it")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-adapt-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()
    env = build_home(root, args.n, args.database_url)
    setup_s = time.perf_counter() - started
    runs: dict[str, list[dict[str, Any]]] = {"in_process": [], "ray_1w": [], "ray_2w": []}
    try:
        for _ in range(args.repeats):
            reset(env)
            chunk = ("--chunk", str(args.chunk))
            runs["in_process"].append(adapt(env, *chunk, pin=True))
            for cpus, name in ((1, "ray_1w"), (2, "ray_2w")):
                reset(env)
                with cluster(cpus, env) as address:
                    runs[name].append(adapt(env, *chunk, "--ray", address))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    results = {name: summary(args.n, r) for name, r in runs.items()}
    local, one, two = results["in_process"], results["ray_1w"], results["ray_2w"]
    doc = {
        "benchmark": "bench_adapt_ray",
        "n_series": args.n,
        "repeats": args.repeats,
        "chunk": args.chunk,
        "registry": "postgresql" if args.database_url else "sqlite",
        "family": {"L": L, "H": H, "K": K, "C": C, "P": P},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_start": [round(x, 2) for x in load_start],
            "load_end": [round(x, 2) for x in os.getloadavg()],
        },
        "setup_s": round(setup_s, 1),
        "runs": results,
        "ratio_2w_over_1w_job": round(one["job_s"] / two["job_s"], 3),
        "ratio_2w_over_1w_chunk_phase": round(one["chunk_phase_s"] / two["chunk_phase_s"], 3),
        "overhead_ray_1w_vs_in_process_job": round(one["job_s"] / local["job_s"] - 1, 4),
        "targets": {"ratio_2w_over_1w": 1.7, "overhead_ray_1w": 0.10},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
