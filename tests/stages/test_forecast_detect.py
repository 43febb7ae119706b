"""``mamlctl forecast`` / ``mamlctl detect`` and their stage.

Oracles: each series' exported ONNX file run directly by onnxruntime on its last L stored
values (forecast) or on the L values before each point (detect); the anomaly score recomputed
from :mod:`mamlctl.timeseries.anomaly` with the file's threshold; future timestamps are the
last input timestamp + k hours (the frame ingested)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.timeseries.anomaly import anomaly_score

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
H = 6


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def records(home: Any) -> dict[str, Any]:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    with transaction(home.settings) as session:
        return {r.series_id: r for r in q.current_adapted_models(session, "sines")}


def onnx_run(home: Any, sid: str, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rec = records(home)[sid]
    sess = ort.InferenceSession(
        str(home.settings.models_dir / rec.path), providers=["CPUExecutionProvider"]
    )
    forecast, sigma = sess.run(["forecast", "sigma"], {"window": windows.astype(np.float32)})
    return forecast.astype(np.float64), sigma.astype(np.float64)


def history(home: Any, sid: str) -> np.ndarray:
    if sid in home.positional:
        return home.positional[sid]
    return home.frame.loc[home.frame.unique_id == sid, "y"].to_numpy()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_forecast_equals_the_onnx_files_with_real_timestamps(
    adapted_home: Any, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"f{suffix}"
    code, _, err = run(
        "forecast", "--series", "t0", "--series", "t1", "--level", "80,95", "--out", str(out)
    )
    assert code == 0, err
    df = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(df.columns) == [
        "unique_id",
        "ds",
        "yhat",
        "yhat-lo-80",
        "yhat-hi-80",
        "yhat-lo-95",
        "yhat-hi-95",
    ]
    for sid in ("t0", "t1"):
        part = df[df.unique_id == sid].reset_index(drop=True)
        f, s = onnx_run(adapted_home, sid, history(adapted_home, sid)[-24:][None, :])
        np.testing.assert_allclose(part["yhat"], f[0], rtol=1e-6, atol=1e-6)
        for level in (80, 95):
            z = NormalDist().inv_cdf((1 + level / 100) / 2)
            np.testing.assert_allclose(
                part[f"yhat-lo-{level}"], f[0] - z * s[0], rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(
                part[f"yhat-hi-{level}"], f[0] + z * s[0], rtol=1e-6, atol=1e-6
            )
        last = adapted_home.frame.loc[adapted_home.frame.unique_id == sid, "ds"].iloc[-1]
        want = [last + pd.Timedelta(hours=k) for k in range(1, H + 1)]
        assert list(pd.to_datetime(part["ds"])) == want


def test_forecast_positions_without_timestamps_and_json(adapted_home: Any) -> None:
    code, out, err = run("forecast", "--series", "p0", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["ds"] for r in rows] == [200 + k for k in range(H)]
    f, _ = onnx_run(adapted_home, "p0", adapted_home.positional["p0"][-24:][None, :])
    np.testing.assert_allclose([r["yhat"] for r in rows], f[0], rtol=1e-6, atol=1e-6)


def test_forecast_json_timestamps_are_iso_wall_clock(adapted_home: Any) -> None:
    code, out, err = run("forecast", "--series", "t0", "--json")
    assert code == 0, err
    rows = json.loads(out)
    last = adapted_home.frame.loc[adapted_home.frame.unique_id == "t0", "ds"].iloc[-1]
    assert rows[0]["ds"] == (last + pd.Timedelta(hours=1)).isoformat()
    assert rows[0]["ds"] == "2024-03-09T08:00:00"


def test_forecast_whole_family_to_stdout(adapted_home: Any) -> None:
    code, out, err = run("forecast", "--family", "sines")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "unique_id,ds,yhat" and len(lines) == 1 + 3 * H


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--series", "nope"], "unknown series 'nope'"),
        (["--family", "nope"], "nope"),
        (["--level", "0"], "between 0 and 100"),
        (["--level", "100"], "between 0 and 100"),
        (["--level", "abc"], "invalid level 'abc'"),
        (["--level", "80,"], None),
        (["--out", "f.txt"], ".csv"),
    ],
)
def test_forecast_bad_input_is_one_line(
    adapted_home: Any, args: list[str], problem: str | None
) -> None:
    code, _, err = run("forecast", *args)
    if problem is None:  # a trailing comma is tolerated
        assert code == 0, err
        return
    assert code == 1 and err.count("\n") == 1 and problem in err, err


def test_detect_scores_points_after_the_support_as_the_onnx_file(
    adapted_home: Any, tmp_path: Path
) -> None:
    out = tmp_path / "d.parquet"
    code, _, err = run("detect", "--series", "t0", "--out", str(out))
    assert code == 0, err
    df = pd.read_parquet(out)
    assert list(df.columns) == ["unique_id", "ds", "y", "yhat", "anomaly_score", "is_anomaly"]
    rec = records(adapted_home)["t0"]
    y = history(adapted_home, "t0")
    positions = np.arange(rec.support_end + 1, y.size)
    assert rec.support_end == 179 and len(df) == positions.size == 20
    windows = np.stack([y[p - 24 : p] for p in positions])
    f, s = onnx_run(adapted_home, "t0", windows)
    np.testing.assert_allclose(df["yhat"], f[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(df["y"], y[positions])
    np.testing.assert_allclose(
        df["anomaly_score"], anomaly_score(y[positions] - f[:, 0], s[:, 0]), atol=1e-6
    )
    np.testing.assert_array_equal(df["is_anomaly"], df["anomaly_score"] >= rec.threshold)
    ts = adapted_home.frame.loc[adapted_home.frame.unique_id == "t0", "ds"].to_numpy()
    assert list(df["ds"]) == list(pd.to_datetime(ts[positions]))
    spike = df.loc[df["ds"] == pd.Timestamp(ts[190])]
    assert bool(spike["is_anomaly"].iloc[0])


def test_detect_since_and_json(adapted_home: Any) -> None:
    ts = adapted_home.frame.loc[adapted_home.frame.unique_id == "t1", "ds"].iloc[190]
    code, out, err = run("detect", "--series", "t1", "--json")
    assert code == 0, err
    assert len(json.loads(out)) == 20
    code, out, err = run("detect", "--series", "t1", "--since", ts.isoformat(), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10 and rows[0]["ds"] == ts.isoformat()
    assert all(isinstance(r["is_anomaly"], bool) for r in rows)
    code, _, err = run("detect", "--since", "yesterday")
    assert code == 1 and err.count("\n") == 1


def test_forecast_stage_from_python(adapted_home: Any) -> None:
    from mamlctl.stages.forecast import forecast_frame, load_targets

    targets = load_targets(adapted_home.settings, family="sines")
    frame = forecast_frame(targets, models_dir=adapted_home.settings.models_dir)
    assert sorted(set(frame["unique_id"])) == ["p0", "t0", "t1"]
    assert len(frame) == 3 * H
