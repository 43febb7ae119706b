"""The M4 protocol harness on a tiny synthetic subset, and Naive2 on the real data."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mamlctl.errors import InputError, NotFoundError
from mamlctl.evaluation.m4 import (
    SUBSETS,
    baseline_methods,
    load_subset,
    markdown_table,
    run_m4,
)
from mamlctl.timeseries.metrics import m4_accuracy

REAL = Path("/work/shared/data/m4")


def write_wide(path: Path, rows: list[tuple[str, list[float]]], width: int) -> None:
    header = ",".join(f'"V{i}"' for i in range(1, width + 2))
    body = [
        ",".join([f'"{sid}"'] + [f'"{v}"' for v in vals] + [""] * (width - len(vals)))
        for sid, vals in rows
    ]
    path.write_bytes(gzip.compress(("\n".join([header, *body]) + "\n").encode()))


def make_weekly(root: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = [], []
    for i, n in enumerate((30, 25, 40)):
        x = 100 + np.cumsum(rng.normal(0, 1, n + 13))
        train.append((f"W{i + 1}", [round(v, 3) for v in x[:n]]))
        test.append((f"W{i + 1}", [round(v, 3) for v in x[n:]]))
    root.mkdir(parents=True)
    write_wide(root / "Weekly-train.csv.gz", train, 40)
    write_wide(root / "Weekly-test.csv.gz", test, 13)


def test_load_run_and_write(tmp_path: Path) -> None:
    make_weekly(tmp_path / "m4")
    data = load_subset(tmp_path, "weekly")  # finds the m4/ folder below
    assert data.ids == ("W1", "W2", "W3")
    assert [len(x) for x in data.histories] == [30, 25, 40]
    seen: list[int] = []

    def spy(xs: Sequence[np.ndarray], h: int) -> np.ndarray:
        seen.extend(len(x) for x in xs)
        return np.stack([np.full(h, x.mean()) for x in xs])

    methods = {"mean": spy, **baseline_methods(data.subset, statsforecast=False)}
    run = run_m4(data, methods, history=10, out_dir=tmp_path / "out")
    assert seen == [10, 10, 10]  # the few-shot track shows every method the last 10 points
    by_name = {r.method: r for r in run.results}
    shown = [x[-10:] for x in data.histories]
    want = m4_accuracy(
        data.histories,  # MASE scale on the full training part
        data.actual,
        np.stack([np.full(13, x.mean()) for x in shown]),
        m=1,
        # OWA's denominator: M4's Naive2 on the full history (m = 1: its last value)
        naive2_forecast=np.stack([np.full(13, x[-1]) for x in data.histories]),
    )
    assert by_name["mean"].smape == pytest.approx(want.smape)
    assert by_name["mean"].mase == pytest.approx(want.mase)
    assert by_name["mean"].owa == pytest.approx(want.owa)
    assert by_name["naive2"].owa == pytest.approx(1.0)

    lines = (tmp_path / "out" / "forecasts" / "naive.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(f"F{k}" for k in range(1, 14))
    assert lines[1].split(",")[0] == "W1"
    assert float(lines[1].split(",")[5]) == pytest.approx(data.histories[0][-1])
    table = (tmp_path / "out" / "results.md").read_text()
    assert table == markdown_table(run) and "| naive2 |" in table and "last 10 points" in table
    assert (tmp_path / "out" / "results.json").is_file()


def test_harness_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="Weekly-train"):
        load_subset(tmp_path, "weekly")
    with pytest.raises(InputError, match="unknown M4 subset"):
        load_subset(tmp_path, "daily")
    make_weekly(tmp_path / "m4")
    data = load_subset(tmp_path / "m4", "weekly")
    with pytest.raises(InputError, match="method bad"):
        run_m4(data, {"bad": lambda xs, h: np.zeros((len(xs), h - 1))})
    with pytest.raises(InputError, match="history"):
        run_m4(data, {}, history=0)


@pytest.mark.skipif(not REAL.is_dir(), reason="M4 data not present")
def test_real_naive2_matches_published_m4_figures() -> None:
    # M4 (Makridakis et al. 2020): Naive2 Hourly sMAPE 18.383, MASE 2.395;
    # Weekly sMAPE 9.161, MASE 2.777. Seasonal naive on Hourly: sMAPE 13.912, MASE 1.193.
    hourly = run_m4(
        load_subset(REAL, "hourly"), baseline_methods(SUBSETS["hourly"], statsforecast=False)
    )
    weekly = run_m4(
        load_subset(REAL, "weekly"), baseline_methods(SUBSETS["weekly"], statsforecast=False)
    )
    h = {r.method: r for r in hourly.results}
    w = {r.method: r for r in weekly.results}
    assert (round(h["naive2"].smape, 3), round(h["naive2"].mase, 3)) == (18.383, 2.395)
    assert (round(w["naive2"].smape, 3), round(w["naive2"].mase, 3)) == (9.161, 2.777)
    assert (round(h["seasonal_naive"].smape, 3), round(h["seasonal_naive"].mase, 3)) == (
        13.912,
        1.193,
    )
    assert h["seasonal_naive"].owa == pytest.approx(0.627, abs=1.5e-3)
