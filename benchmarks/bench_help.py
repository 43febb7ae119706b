"""Wall time of ``mamlctl --help`` (must stay < 0.5 s: lazy imports), median of N runs.

Baselines in the same run: the bare interpreter (``python -c pass``) and ``import typer``
(the floor any Typer CLI pays). Also reports which heavy modules ``--help`` imported (none of
torch, mlflow, onnxruntime, sqlalchemy, pandas, numpy may appear). Prints one JSON document.

    python benchmarks/bench_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "mlflow", "onnxruntime", "sqlalchemy", "pandas", "numpy", "alembic", "scipy")


def wall(cmd: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    probe = (
        "import sys; from mamlctl.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    heavy = subprocess.run(
        [py, "-c", probe], capture_output=True, text=True, check=True
    ).stderr.strip()
    result = {
        "runs": args.runs,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "mamlctl_help": wall([os.path.join(os.path.dirname(py), "mamlctl"), "--help"], args.runs),
        "baseline_python_pass": wall([py, "-c", "pass"], args.runs),
        "baseline_import_typer": wall([py, "-c", "import typer"], args.runs),
        "heavy_modules_imported": heavy.split(",") if heavy else [],
    }
    result["under_0_5_s"] = result["mamlctl_help"]["median_s"] < 0.5  # type: ignore[index]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
