"""M4 accuracy through the product on every track of the issue, 3 seeds each; prints JSON.

Each run is ``mamlctl evaluate m4 --subset S [--history N --protocol P --window L] --seed K
--no-stats --no-mlflow --json`` (ingest, families assign, train with train's default 3000
iterations, adapt, forecasts from the exported files by the server's runtime), in its own
output folder; the table is the mean OWA over seeds (official Naive2 denominator on the full
history), with the seasonal-naive anchor of the same run, the unserved and zero-shot counts, and
whether a baseline gate fired. With ``--collect DIR`` it only reads runs already written there.

    OMP_NUM_THREADS=1 python benchmarks/m4_product_tracks.py --data ../shared/data/m4 --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: name -> evaluate m4 arguments (the issue's tracks; --window as `families create -L` gives)
TRACKS: dict[str, list[str]] = {
    "hourly full": ["--subset", "hourly"],
    "weekly full": ["--subset", "weekly"],
    "hourly new-series N=168": [
        "--subset",
        "hourly",
        "--history",
        "168",
        "--protocol",
        "new-series",
    ],
    "hourly new-series N=48 (L=24)": [
        *("--subset", "hourly", "--history", "48", "--protocol", "new-series", "--window", "24"),
    ],
    "weekly new-series N=104": [
        "--subset",
        "weekly",
        "--history",
        "104",
        "--protocol",
        "new-series",
    ],
    "weekly new-series N=52 (L=39)": [
        *("--subset", "weekly", "--history", "52", "--protocol", "new-series", "--window", "39"),
    ],
    "hourly family N=168": ["--subset", "hourly", "--history", "168", "--protocol", "family"],
    "weekly family N=104": ["--subset", "weekly", "--history", "104", "--protocol", "family"],
}
TARGETS = {
    "hourly full": 0.50,
    "weekly full": 0.70,
    "hourly new-series N=168": 0.55,
    "hourly new-series N=48 (L=24)": 0.60,
    "weekly new-series N=104": 0.72,
    "weekly new-series N=52 (L=39)": 0.80,
    "hourly family N=168": 0.60,
    "weekly family N=104": 0.80,
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_one(data: str, out: Path, args: list[str], seed: int) -> dict[str, Any]:
    cmd = ["mamlctl", "evaluate", "m4", "--data", data, "--out", str(out), *args]
    cmd += ["--seed", str(seed), "--no-stats", "--no-mlflow", "--json"]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    body: dict[str, Any] = json.loads(done.stdout)
    body["bench_wall_s"] = time.perf_counter() - began
    body["load"] = os.getloadavg()
    (out / "bench.json").write_text(json.dumps(body, indent=2) + "\n")
    return body


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def owa(run: dict[str, Any], method: str) -> float:
        return float(next(r["owa"] for r in run["results"] if r["method"] == method))

    ours = [owa(r, "mamlctl") for r in runs]
    return {
        "track": name,
        "seeds": len(runs),
        "owa_mean": statistics.fmean(ours),
        "owa_by_seed": ours,
        "seasonal_naive_owa": owa(runs[0], "seasonal_naive"),
        "target": TARGETS[name],
        "unserved": [r["product"]["unserved"] for r in runs],
        "zero_shot": [r["product"]["zero_shot"] for r in runs],
        "gated_homes": [
            sum(h["baseline_gate"] is not None for h in r["product"]["homes"]) for r in runs
        ],
        "wall_s": [round(r.get("bench_wall_s", r["wall_s"]), 1) for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/m4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/m4_tracks"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", action="append", help="track names to run (default all)")
    parser.add_argument("--collect", action="store_true", help="only read runs in --out")
    args = parser.parse_args()
    rows = []
    for name, track_args in TRACKS.items():
        if args.only and name not in args.only:
            continue
        runs = []
        for seed in range(args.seeds):
            folder = args.out / f"{slug(name)}_s{seed}"
            if args.collect:
                if (folder / "bench.json").is_file():
                    runs.append(json.loads((folder / "bench.json").read_text()))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            runs.append(run_one(args.data, folder, track_args, seed))
            print(f"{name} seed {seed} done", file=sys.stderr)
        if runs:
            rows.append(summarise(name, runs))
    json.dump({"tracks": rows}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
