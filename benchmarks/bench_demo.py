"""``mamlctl demo`` wall time vs the same pipeline typed as separate commands, in the same run.

Demo: ``mamlctl demo --home <fresh> --json`` as a subprocess (interpreter start, imports, every
stage, in-process server, 200 timed requests, shutdown): the figure the README promises
(< 3 minutes on the 2-core machine).

Baseline (same run, same meta-training budget): what a newcomer would type without ``demo``:
``mamlctl ingest --format m4 --interval 1h``, ``families detect``, ``train --family hourly
--time-budget B --promote``, ``adapt --family hourly`` -- each its own process (imports paid
per command), without the server and scoring stages (so the baseline does strictly less work).

Runs alternate demo/baseline ``--runs`` times; prints one JSON document with medians, each
run's figures, the demo's own stage timings and the machine's load average at the start.

    python benchmarks/bench_demo.py [--runs 3] [--train-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAMLCTL = [sys.executable, "-c", "from mamlctl.cli.app import main; main()"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAMLCTL_", "MLFLOW_"))}
    env.update({"MAMLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"})
    return env


def _run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run([*MAMLCTL, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"mamlctl {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def demo_once(root: Path, train_seconds: float) -> dict[str, Any]:
    home = root / "demo"
    args = ["demo", "--home", str(home), "--train-seconds", str(train_seconds), "--json"]
    wall, out = _run(args, _env(home))
    summary = json.loads(out)
    return {
        "wall_s": round(wall, 3),
        "in_process_s": summary["total_seconds"],
        "stages_s": summary["stage_seconds"],
        "iterations": summary["trained"]["iterations"],
        "latency_p50_ms": summary["latency"]["p50_ms"],
    }


def baseline_once(root: Path, train_seconds: float, data: Path) -> dict[str, Any]:
    home = root / "steps"
    env = _env(home)
    steps = [
        ["ingest", "--format", "m4", "--interval", "1h", str(data)],
        ["families", "detect"],
        ["train", "--family", "hourly", "--time-budget", str(train_seconds), "--promote"],
        ["adapt", "--family", "hourly"],
    ]
    times = {}
    for args in steps:
        times[" ".join(args[:1])], _ = _run(args, env)
    return {"wall_s": round(sum(times.values()), 3), "steps_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=20.0)
    args = parser.parse_args()
    from mamlctl.cli.demo_flow import TRAIN_FILE, shipped_file

    data = shipped_file(TRAIN_FILE)
    load = os.getloadavg()
    demos, baselines = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
            demos.append(demo_once(Path(tmp), args.train_seconds))
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
            baselines.append(baseline_once(Path(tmp), args.train_seconds, data))
    demo_median = statistics.median(d["wall_s"] for d in demos)
    base_median = statistics.median(b["wall_s"] for b in baselines)
    print(
        json.dumps(
            {
                "benchmark": "demo",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in load],
                },
                "train_seconds": args.train_seconds,
                "runs": args.runs,
                "demo_wall_s_median": demo_median,
                "steps_wall_s_median": base_median,
                "demo_under_180_s": demo_median < 180,
                "demo": demos,
                "steps_baseline": baselines,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
