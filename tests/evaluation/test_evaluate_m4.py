"""The M4 harness' network recipe (still used by ``evaluate nab``) by hand, and ``mamlctl
evaluate m4`` end to end through the product on a tiny synthetic hourly subset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.errors import ConfigError, InputError
from mamlctl.evaluation.m4 import load_subset
from mamlctl.evaluation.m4_maml import (
    FitResult,
    config_for,
    fit,
    forecast,
    from_model_space,
    m4_method,
    make_config,
    masked_mse,
    stretch_tasks,
)
from mamlctl.timeseries.baselines import seasonal_naive
from mamlctl.timeseries.metrics import m4_accuracy


def test_stretch_tasks_by_hand() -> None:
    cfg = make_config(window=3, horizon=2, support=5, season=1)
    visible = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    d = stretch_tasks(visible, np.array([[6.0, 7.0]]), cfg)
    loc, scale = 3.0, np.std([1, 2, 3, 4, 5])
    z = (np.arange(1, 8) - loc) / scale
    # pairs s = 0, 1: x = z[s:s+3]; targets z[s+3], z[s+4] (z[5] is not visible for s = 1)
    np.testing.assert_allclose(d["support_x"][0], [z[0:3], z[1:4]], rtol=1e-6)
    base = np.array([[z[2], z[2]], [z[3], z[3]]])  # naive (m = 1) from each window
    target = np.array([[z[3], z[4]], [z[4], 0.0]])
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(
        d["support_y"][0], np.concatenate([(target - base) * mask, mask], axis=1), atol=1e-6
    )
    np.testing.assert_allclose(d["query_x"][0, 0], z[2:5], rtol=1e-6)
    np.testing.assert_allclose(d["query_y"][0, 0], [z[5] - z[4], z[6] - z[4], 1, 1], atol=1e-6)
    assert d["loc"][0] == pytest.approx(loc)
    assert d["scale"][0] == pytest.approx(scale)


def test_masked_mse_by_hand() -> None:
    pred = torch.tensor([[[1.0, 2.0], [0.0, 5.0]]])  # [T=1, N=2, H=2]
    target = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 9.0, 1.0, 0.0]]])
    # observed errors: 1, 4, 1 (the masked 5 vs 9 does not count): (1 + 4 + 1) / 3
    assert masked_mse(pred, target).tolist() == pytest.approx([2.0])


def test_log_transform_tasks_by_hand() -> None:
    """transform=log: positive rows are modelled as normalised logs; a row with a point <= 0
    stays linear; from_model_space inverts both exactly."""
    cfg = make_config(window=3, horizon=2, support=5, season=1, transform="log")
    visible = np.array([[1.0, 2.0, 4.0, 8.0, 16.0], [3.0, -1.0, 2.0, 5.0, 4.0]])
    future = np.array([[32.0, 64.0], [6.0, 7.0]])
    d = stretch_tasks(visible, future, cfg)
    assert d["logged"].tolist() == [True, False]
    logs = np.log(2.0) * np.arange(7)  # log of 1, 2, ..., 64
    loc, scale = logs[:5].mean(), logs[:5].std()
    assert d["loc"][0] == pytest.approx(loc) and d["scale"][0] == pytest.approx(scale)
    z = (logs - loc) / scale
    np.testing.assert_allclose(d["query_x"][0, 0], z[2:5], rtol=1e-6)
    np.testing.assert_allclose(d["query_y"][0, 0], [z[5] - z[4], z[6] - z[4], 1, 1], atol=1e-6)
    assert d["loc"][1] == pytest.approx(visible[1].mean())  # linear row unchanged
    zf = np.stack([z[5:7], (future[1] - d["loc"][1]) / d["scale"][1]])
    np.testing.assert_allclose(from_model_space(zf, d), future, rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(
    period=st.sampled_from([1, 3, 4]),
    level=st.floats(1.0, 1e4),
    seed=st.integers(0, 1000),
    transform=st.sampled_from(["none", "log"]),
)
def test_zero_network_forecasts_seasonal_naive(
    period: int, level: float, seed: int, transform: str
) -> None:
    """With a zero read-out the forecast is exactly the seasonal-naive skip, in raw units (the
    skip in log space is the same seasonal naive once exponentiated)."""
    rng = np.random.default_rng(seed)
    cfg = make_config(
        window=8, horizon=5, support=14, season=period, hidden=(4,), transform=transform
    )
    histories = [level + rng.normal(0, level / 10, n) for n in (20, 30, 14)]
    params = {
        "layers.0.weight": torch.randn(4, 8),
        "layers.0.bias": torch.randn(4),
        "layers.1.weight": torch.zeros(5, 4),
        "layers.1.bias": torch.zeros(5),
    }
    fitted = FitResult(
        method="pretrained",
        config=cfg,
        params=params,
        iterations=0,
        elapsed_s=0.0,
        final_loss=0.0,
        n_series=0,
    )
    expected = seasonal_naive(histories, 5, m=period)
    np.testing.assert_allclose(forecast(fitted, histories, steps=0), expected, rtol=1e-5)


def test_config_for_few_shot_and_bad_values() -> None:
    full = config_for("hourly", history=None, time_budget_s=1)
    assert (full.window, full.horizon, full.support, full.season) == (96, 48, 167, 24)
    few = config_for("hourly", history=48, time_budget_s=1)
    assert (few.window, few.support, few.pairs) == (24, 48, 24)
    assert (few.transform, few.ensemble, few.adapt_steps) == ("log", 3, 3)
    assert full.transform == "none" and full.ensemble == 1
    weekly = config_for("weekly", history=104, time_budget_s=1)
    assert (weekly.window, weekly.horizon, weekly.support) == (52, 13, 104)
    with pytest.raises(ConfigError):
        make_config(window=10, horizon=2, support=10)
    with pytest.raises(InputError):
        config_for("daily", history=None, time_budget_s=1)


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


def test_cross_fitting_trains_on_other_folds_only() -> None:
    cfg = make_config(window=24, horizon=48, support=48, season=24, max_iterations=3)
    series = _hourly_like(6, 200, 0)
    short = [s[:100][-48:] for s in series]
    fits: list[FitResult] = []
    method = m4_method(cfg, method="maml", corpus=[s[:100] for s in series], folds=3, fits=fits)
    fc = method(short, 48)
    assert fc.shape == (6, 48) and np.all(np.isfinite(fc))
    assert [f.n_series for f in fits] == [4, 4, 4]  # each fold trains on the other 4 series
    assert all(f.iterations == 3 for f in fits)


def test_iterations_cap_makes_training_reproducible() -> None:
    """max_iterations (the CLI's --iterations) stops training at exactly N whatever the time
    budget, so two runs give identical networks."""
    cfg = make_config(window=24, horizon=48, support=48, season=24, hidden=(8,), max_iterations=7)
    series = _hourly_like(4, 150, 3)
    a = fit(series, cfg, method="maml", time_budget_s=600)
    b = fit(series, cfg, method="maml", time_budget_s=600)
    assert a.iterations == b.iterations == 7
    for k, v in a.params.items():
        assert torch.equal(v, b.params[k])


def test_ensemble_is_the_mean_of_its_members() -> None:
    cfg = make_config(
        window=24, horizon=48, support=48, season=24, hidden=(8,), max_iterations=4, ensemble=2
    )
    series = _hourly_like(4, 150, 4)
    shown = [s[-48:] for s in series]
    fits: list[FitResult] = []
    fc = m4_method(cfg, method="maml", corpus=series, fits=fits)(shown, 48)
    assert [f.config.seed for f in fits] == [0, 1000]
    members = [forecast(f, shown) for f in fits]
    np.testing.assert_allclose(fc, (members[0] + members[1]) / 2, rtol=1e-12)


def test_fit_improves_on_its_start() -> None:
    """A few hundred pretrained iterations on noisy sines beat the untrained (skip) forecast."""
    torch.manual_seed(0)
    cfg = make_config(window=24, horizon=12, support=48, season=6, hidden=(16,), max_iterations=150)
    series = _hourly_like(8, 300, 1)
    train = [s[:-48] for s in series]
    actual = np.stack([s[-48:-36] for s in series])
    trained = fit(train, cfg, method="pretrained", time_budget_s=60)
    untrained = fit(train, cfg.model_copy(update={"max_iterations": 1}), method="pretrained")
    err = np.mean(np.abs(forecast(trained, train, steps=0) - actual))
    err0 = np.mean(np.abs(forecast(untrained, train, steps=0) - actual))
    assert trained.iterations == 150
    assert err < 0.7 * err0


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
