"""Family detection confusion on real data: M4 Hourly, M4 Weekly, and the 58 NAB files.

For each set: the family every series lands in (counts), the raw detected periods (counts),
and for M4 Hourly the share in a period-24 family (the issue's acceptance figure, >= 95%).
NAB is listed per file (family, or an explicit "no cycle" family). The library path is the
one ``mamlctl families detect`` runs (same interval rules, hints and thresholds), without the
database. Prints one JSON document.

    python benchmarks/bench_families.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from mamlctl.timeseries.families import Detection, detect_family
from mamlctl.timeseries.periodicity import infer_interval
from mamlctl.timeseries.readers import read_file, read_paths


def summary(dets: list[Detection]) -> dict[str, object]:
    fams = Counter(d.family.name if d.family else f"(none: {d.note})" for d in dets)
    periods = Counter(
        "no cycle" if d.estimate.period is None else str(d.estimate.period) for d in dets
    )
    fam_periods = Counter(
        "no family"
        if d.family is None
        else ("no cycle" if d.family.period is None else str(d.family.period))
        for d in dets
    )
    return {
        "series": len(dets),
        "families": dict(fams.most_common()),
        "family_period": dict(fam_periods.most_common()),
        "detected_period": dict(periods.most_common()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
    args = ap.parse_args()
    out: dict[str, object] = {}
    t0 = time.perf_counter()
    for name in ("Hourly", "Weekly"):
        src = read_file(args.data / "m4" / f"{name}-train.csv.gz")
        dets = [
            detect_family(s.series_id, s.values, interval_seconds=src.interval_seconds)
            for s in src.series
        ]
        block = summary(dets)
        if name == "Hourly":
            in24 = sum(1 for d in dets if d.family is not None and d.family.period == 24)
            exact = sum(1 for d in dets if d.estimate.period == 24)
            block["share_in_period_24_family"] = round(in24 / len(dets), 4)
            block["share_detected_exactly_24"] = round(exact / len(dets), 4)
        out[f"m4_{name.lower()}"] = block
    nab: list[Detection] = []
    per_file = {}
    for src in read_paths([args.data / "nab" / "data"]):
        s = src.series[0]
        d = detect_family(s.series_id, s.values, interval_seconds=infer_interval(s.timestamps))
        nab.append(d)
        per_file[f"{src.path.parent.name}/{s.series_id}"] = {
            "interval_s": d.interval_seconds,
            "period": d.estimate.period,
            "acf": round(d.estimate.strength, 3),
            "family": d.family.name if d.family else None,
        }
    out["nab"] = {**summary(nab), "files": per_file}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
