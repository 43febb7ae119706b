"""A family of two series is never a dead end: it trains (held out in time), adapts and is
served, through the CLI a user runs.

Oracles: the training split (each series' last H points held out, so validation covers both
series and training sees neither's last H), and the served forecast equal to the series'
exported ONNX file run directly by onnxruntime on its last L stored values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.settings import Settings

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
L, H, P = 24, 6, 24


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_family_of_two_series_trains_adapts_and_is_served(
    db_settings: Settings, tmp_path: Path, mlflow_db_template: Path
) -> None:
    db_settings.ensure_home()
    shutil.copyfile(mlflow_db_template, db_settings.mlflow_dir / "mlflow.db")
    t = np.arange(120)
    rng = np.random.default_rng(1)
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "unique_id": sid,
                    "ds": pd.date_range("2025-01-01", periods=t.size, freq="h"),
                    "y": 20
                    + 5 * i
                    + 3 * np.sin(2 * np.pi * t / P + i)
                    + 0.1 * rng.standard_normal(t.size),
                }
            )
            for i, sid in enumerate(["a", "b"])
        ],
        ignore_index=True,
    )
    frame.to_csv(tmp_path / "pair.csv", index=False)
    assert run("ingest", str(tmp_path / "pair.csv"))[0] == 0
    code, _, err = run(
        "families", "create", "pair", "-L", str(L), "-H", str(H), "-P", str(P), "--interval", "1h"
    )
    assert code == 0, err
    assert run("families", "assign", "pair", "a", "b")[0] == 0

    code, out, err = run(
        "train", "--family", "pair", "-n", "30", "--meta-batch", "4", "--hidden", "16,16",
        "--query", "6", "--json",
    )  # fmt: skip
    assert code == 0, err
    trained = json.loads(out)
    # held out in time: both series validate on their last H points and train on the rest
    assert (trained["series_train"], trained["series_validation"]) == (2, 2)
    assert trained["metrics"]["val_seasonal_naive_mase"] > 0

    version = str(trained["version"])  # champion or not (the baseline gate), adapt this one
    code, out, err = run("adapt", "--family", "pair", "--version", version, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["adapted"], report["zero_shot"], report["too_short"]) == (2, 0, [])

    code, out, err = run("forecast", "--family", "pair", "--json")
    assert code == 0, err
    rows = json.loads(out)
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    with transaction(db_settings) as session:
        recs = {r.series_id: r for r in q.current_adapted_models(session, "pair")}
    for sid in ("a", "b"):
        served = [r["yhat"] for r in rows if r["unique_id"] == sid]
        sess = ort.InferenceSession(
            str(db_settings.models_dir / recs[sid].path), providers=["CPUExecutionProvider"]
        )
        window = frame.loc[frame.unique_id == sid, "y"].to_numpy()[-L:]
        expected: Any = sess.run(["forecast"], {"window": window[None, :].astype(np.float32)})
        np.testing.assert_allclose(served, expected[0][0], rtol=1e-6, atol=1e-6)
        assert len(served) == H
