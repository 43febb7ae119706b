"""The paper's sine experiment over several seeds: mean and spread per (method, K, steps).

Runs ``mamlctl experiment sine --seed S --json`` once per seed (each a separate process, one
torch thread, at most ``--parallel`` at a time, under ``nice``), keeps each seed's JSON under
``--out/seed<S>/results.json`` (with its figure and initializers), then prints ONE JSON object:

    {"seeds": [...], "iterations": N,
     "results": [{"method", "k", "steps", "mean", "std", "min", "max", "per_seed",
                  "mean_ci95"}, ...],
     "iterations_per_second": {"mean", "per_seed"}, "wall_seconds": {"per_seed"}}

``std`` is the sample standard deviation over seeds (the seed-to-seed spread); ``mean_ci95`` the
mean of the per-seed 95% CIs over test tasks. A seed whose MSE is not finite (diverged) is left
out of that row's statistics and listed in ``non_finite_seeds``. ``--aggregate-only`` re-reads the
saved per-seed files without training.

    nice -n 10 python benchmarks/bench_sine_seeds.py --seeds 0,1,2,3,4 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _command(seed: int, iterations: int, out: Path, methods: str) -> list[str]:
    exe = shutil.which("mamlctl") or str(Path(sys.executable).with_name("mamlctl"))
    return [
        exe,
        "experiment",
        "sine",
        "--seed",
        str(seed),
        "--iterations",
        str(iterations),
        "--out",
        str(out),
        "--threads",
        "1",
        "--methods",
        methods,
        "--json",
    ]


def run_seeds(
    seeds: list[int], *, iterations: int, out: Path, parallel: int, niceness: int, methods: str
) -> dict[int, float]:
    """Run every seed (``parallel`` at a time); returns each seed's wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen[bytes], float, Any]] = {}
    walls: dict[int, float] = {}
    while pending or running:
        while pending and len(running) < parallel:
            seed = pending.pop(0)
            folder = out / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            log = (folder / "stderr.log").open("wb")
            proc = subprocess.Popen(
                _command(seed, iterations, folder, methods),
                stdout=(folder / "stdout.json").open("wb"),
                stderr=log,
                env=env,
                preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            )
            running[seed] = (proc, time.perf_counter(), log)
        time.sleep(1.0)
        for seed, (proc, began, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[seed]
            walls[seed] = time.perf_counter() - began
            if proc.returncode != 0:
                tail = (out / f"seed{seed}" / "stderr.log").read_text(errors="replace")[-400:]
                sys.exit(f"seed {seed} failed (exit {proc.returncode}): {tail.strip()}")
    return walls


def aggregate(docs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample std, min and max over seeds of each (method, K, steps) MSE."""
    rows: dict[tuple[str, int, int], dict[int, tuple[float | None, float | None]]] = {}
    for seed, doc in docs.items():
        for r in doc["results"]:
            key = (r["method"], int(r["k"]), int(r["steps"]))
            rows.setdefault(key, {})[seed] = (r["mse"], r["ci95"])
    out = []
    for (method, k, steps), by_seed in rows.items():
        finite = {s: v for s, v in by_seed.items() if v[0] is not None}
        mses = [v[0] for v in finite.values() if v[0] is not None]
        cis = [v[1] for v in finite.values() if v[1] is not None]
        out.append(
            {
                "method": method,
                "k": k,
                "steps": steps,
                "mean": round(statistics.fmean(mses), 4) if mses else None,
                "std": round(statistics.stdev(mses), 4) if len(mses) > 1 else None,
                "min": round(min(mses), 4) if mses else None,
                "max": round(max(mses), 4) if mses else None,
                "mean_ci95": round(statistics.fmean(cis), 4) if cis else None,
                "per_seed": {
                    str(s): None if v[0] is None else round(v[0], 4) for s, v in by_seed.items()
                },
                "non_finite_seeds": sorted(set(by_seed) - set(finite)),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    ap.add_argument("--iterations", type=int, default=70_000)
    ap.add_argument("--parallel", type=int, default=2, help="seeds run at the same time")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the seed processes")
    ap.add_argument(
        "--methods",
        default="maml,fomaml,metasgd,pretrained,scratch",
        help="passed to `mamlctl experiment sine --methods`",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/sine_seeds"))
    ap.add_argument(
        "--aggregate-only", action="store_true", help="only re-read --out/seed*/results.json"
    )
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or args.parallel < 1 or args.iterations < 1:
        sys.exit("need at least one seed, --parallel >= 1 and --iterations >= 1")
    walls: dict[int, float] = {}
    if not args.aggregate_only:
        walls = run_seeds(
            seeds,
            iterations=args.iterations,
            out=args.out,
            parallel=args.parallel,
            niceness=args.nice,
            methods=args.methods,
        )
    docs: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        path = args.out / f"seed{seed}" / "results.json"
        if not path.is_file():
            sys.exit(f"no results for seed {seed}: {path} is missing")
        docs[seed] = json.loads(path.read_text())
    ips = {str(s): round(d["iterations_per_second"], 1) for s, d in docs.items()}
    result = {
        "seeds": seeds,
        "iterations": args.iterations,
        "results": aggregate(docs),
        "iterations_per_second": {
            "mean": round(statistics.fmean(ips.values()), 1),
            "per_seed": ips,
        },
        "wall_seconds": {"per_seed": {str(s): round(w, 1) for s, w in walls.items()}},
        "loadavg_at_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
