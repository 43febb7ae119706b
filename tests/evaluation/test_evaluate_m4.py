"""``mamlctl evaluate m4`` end to end through the product on a tiny synthetic hourly subset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.evaluation.m4 import load_subset
from mamlctl.timeseries.metrics import m4_accuracy


def _hourly_like(n_series: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(length + 48)
    out = []
    for _ in range(n_series):
        amp, level = rng.uniform(5, 20), rng.uniform(50, 500)
        out.append(
            level + amp * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6)) + rng.normal(0, 1, t.size)
        )
    return out


def _write_wide(path: Path, rows: list[tuple[str, np.ndarray]], width: int) -> None:
    header = ",".join(f'"V{i}"' for i in range(1, width + 2))
    body = [
        ",".join([f'"{sid}"'] + [f"{v:.4f}" for v in vals] + [""] * (width - len(vals)))
        for sid, vals in rows
    ]
    path.write_bytes(gzip.compress(("\n".join([header, *body]) + "\n").encode()))


def _hourly_subset(root: Path) -> Path:
    root.mkdir(parents=True)
    series = _hourly_like(12, 460, 2)
    lengths = [460, 440, 450, 460, 430, 445] * 2
    train = [(f"H{i + 1}", s[:n]) for i, (s, n) in enumerate(zip(series, lengths, strict=True))]
    test = [
        (f"H{i + 1}", s[n : n + 48]) for i, (s, n) in enumerate(zip(series, lengths, strict=True))
    ]
    _write_wide(root / "Hourly-train.csv.gz", train, 460)
    _write_wide(root / "Hourly-test.csv.gz", test, 48)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("protocol", "history"), [("family", None), ("family", 300), ("new-series", 300)]
)
def test_cli_evaluate_m4_runs_the_product(
    tmp_path: Path, protocol: str, history: int | None
) -> None:
    """The mamlctl row comes from the product's files: each forecast equals the series' own
    exported ONNX file run by onnxruntime on its last L shown values; the aggregates equal the
    harness' scoring of the written forecasts; new series are adapted from an initializer that
    never saw them."""
    import onnxruntime as ort

    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.registry.model_files import open_verified
    from mamlctl.settings import Settings

    data = _hourly_subset(tmp_path / "m4")
    out = tmp_path / "out"
    args = ["evaluate", "m4", "--subset", "hourly", "--data", str(data), "--out", str(out)]
    args += ["--no-stats", "--json", "--iterations", "3", "--protocol", protocol, "--folds", "2"]
    if history is not None:
        args += ["--history", str(history)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    subset = load_subset(data, "hourly")
    shown = subset.histories if history is None else [x[-history:] for x in subset.histories]
    lines = (out / "forecasts" / "mamlctl.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(f"F{k}" for k in range(1, 49))
    ours = np.array([[float(v) for v in ln.split(",")[1:]] for ln in lines[1:]])
    assert summary["product"]["unserved"] == 0

    homes = sorted((out / "homes").iterdir())
    assert [h.name for h in homes] == (["family"] if protocol == "family" else ["fold0", "fold1"])
    by_file = {}
    for home in homes:
        settings = Settings(home=home, database_url=None, tracking_uri=f"sqlite:///{home}/m.db")
        with transaction(settings) as session:
            records = q.current_adapted_models(session, "hourly")
        for rec in records:
            blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
            sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            i = subset.ids.index(rec.series_id)
            window = shown[i][-rec.window :].astype(np.float32)[None, :]
            by_file[rec.series_id] = sess.run(["forecast"], {"window": window})[0][0]
    assert sorted(by_file) == sorted(subset.ids)
    for i, sid in enumerate(subset.ids):
        np.testing.assert_array_equal(ours[i], by_file[sid].astype(np.float64))

    from mamlctl.timeseries.baselines import naive2

    official = naive2(subset.histories, 48, m=24)  # OWA's denominator: Naive2 on full histories
    acc = m4_accuracy(subset.histories, subset.actual, ours, m=24, naive2_forecast=official)
    row = {r["method"]: r for r in summary["results"]}["mamlctl"]
    assert row["owa"] == pytest.approx(acc.owa, rel=1e-9)
    trained = [h["series_train"] for h in summary["product"]["homes"]]
    if protocol == "new-series":  # each fold trains on the other fold's series only
        from mamlctl.evaluation.m4_product import fold_of

        sizes = [sum(fold_of(s, 2) == f for s in subset.ids) for f in (0, 1)]
        validation = [n - t for n, t in zip(sizes[::-1], trained, strict=True)]
        assert all(v >= 1 for v in validation)
    else:
        assert trained[0] < len(subset.ids)  # the rest are held out for validation
    assert "mlflow_run_id" in summary


def test_cli_evaluate_m4_bad_subset_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["evaluate", "m4", "--subset", "daily", "--data", str(tmp_path), "--out", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:")
    assert len(result.output.strip().splitlines()) == 1


def test_cli_evaluate_m4_bad_iterations_is_one_line(tmp_path: Path) -> None:
    args = ["evaluate", "m4", "--subset", "hourly", "--data", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--iterations", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --iterations must be >= 1, got 0"


def test_cli_evaluate_m4_bad_protocol_is_one_line(tmp_path: Path) -> None:
    args = ["evaluate", "m4", "--subset", "hourly", "--data", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--protocol", "x"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --protocol must be family or new-series, got 'x'"
