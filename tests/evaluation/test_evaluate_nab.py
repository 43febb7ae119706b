"""mamlctl as a NAB detector: causal scores, folds that never see the scored file, and
``mamlctl evaluate nab`` end to end on a tiny synthetic corpus (rescored from its files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from nab_corpus_files import write_corpus
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.evaluation.m4_maml import fit
from mamlctl.evaluation.nab import load_corpus
from mamlctl.evaluation.nab_data import NabSeries, probationary_length, read_results
from mamlctl.evaluation.nab_maml import (
    NabDetectorConfig,
    _forecaster,
    fold_of,
    likelihood_scores,
    maml_detector,
    online_residuals,
    residuals,
    scores_for,
    spatial_anomaly,
)
from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus
from mamlctl.timeseries.anomaly import anomaly_score
from mamlctl.timeseries.anomaly_likelihood import anomaly_likelihood, log_likelihood
from mamlctl.timeseries.scaling import support_stats

N_ROWS = 400


def make_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    spec = (("catA", "a", 300), ("catA", "b", 250), ("catB", "c", 320), ("catB", "d", None))
    t = np.arange(N_ROWS)
    stamps = [f"2020-01-{1 + m // 1440:02d} {m // 60 % 24:02d}:{m % 60:02d}:00" for m in t]
    files = []
    for cat, name, spike in spec:
        values = 10 + 3 * np.sin(2 * np.pi * t / 40) + rng.normal(0, 0.3, N_ROWS)
        if spike is not None:
            values[spike] += 15.0
        window = None if spike is None else (spike - 10, spike + 9)
        files.append((cat, name, values, stamps, window))
    return write_corpus(root, files)


def _fitted(corpus: list[NabSeries]) -> tuple[NabDetectorConfig, object]:
    cfg = NabDetectorConfig(support=64, window=16, hidden=(8,), folds=2, time_budget_s=30)
    forecaster = _forecaster(cfg, cfg.support).model_copy(update={"max_iterations": 5})
    return cfg, fit([s.values for s in corpus], forecaster, method="maml")


def test_scores_use_only_the_past(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    _, fitted = _fitted(corpus)
    series = corpus[0]
    p = probationary_length(len(series))
    base = scores_for(fitted, series, p, scale_window=50)  # type: ignore[arg-type]
    cut = 200
    changed = series.values.copy()
    changed[cut + 1 :] = np.random.default_rng(1).normal(0, 100, N_ROWS - cut - 1)
    other = NabSeries(
        key=series.key, timestamps=series.timestamps, values=changed, windows=series.windows
    )
    again = scores_for(fitted, other, p, scale_window=50)  # type: ignore[arg-type]
    np.testing.assert_array_equal(base[: cut + 1], again[: cut + 1])
    assert not np.array_equal(base[cut + 1 :], again[cut + 1 :])
    assert np.all(base[:p] == 0.0)


def test_scores_are_anomaly_scores_of_residuals_against_past_std(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    _, fitted = _fitted(corpus)
    series = corpus[0]
    p = probationary_length(len(series))
    r = residuals(fitted, series.values, p)  # type: ignore[arg-type]
    scores = scores_for(fitted, series, p, scale_window=50)  # type: ignore[arg-type]
    t = 250
    past = r[t - 50 : t]
    assert scores[t] == pytest.approx(float(anomaly_score(r[t], np.std(past))), rel=1e-9)
    # the injected spike (row 300) is the most anomalous row of its file
    assert int(np.argmax(scores)) == 300


def test_detector_trains_each_fold_on_the_other_folds(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    folds = fold_of([s.key for s in corpus], 2)
    assert sorted(folds.values()) == [0, 0, 1, 1]
    cfg = NabDetectorConfig(support=64, window=16, hidden=(8,), folds=2, time_budget_s=0.5)
    fits: dict[int, object] = {}
    detect = maml_detector(corpus, cfg, fits=fits)  # type: ignore[arg-type]
    for s in corpus:
        out = detect(s, probationary_length(len(s)))
        assert out.shape == (N_ROWS,) and np.all((out >= 0) & (out <= 1))
    assert sorted(fits) == [0, 1]
    assert all(f.n_series == 2 for f in fits.values())  # type: ignore[attr-defined]


@pytest.mark.slow
def test_cli_evaluate_nab_layout_and_scores(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "nab")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            *("evaluate", "nab", "--data", str(root), "--out", str(out)),
            *("--path", "recipe", "--time-budget", "2", "--folds", "2", "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    corpus = load_corpus(root)
    path = out / "results" / "mamlctl" / "catA" / "mamlctl_a.csv"
    assert path.read_text().splitlines()[0] == "timestamp,value,anomaly_score,label"
    rescored = score_corpus(
        [prepare_file(s.key, read_results(out, "mamlctl", s.key), s.windows) for s in corpus]
    )
    for profile, res in rescored.results.items():
        assert summary["scores"]["mamlctl"][profile] == pytest.approx(res.score, abs=1e-9)
    assert summary["scores"]["null"]["standard"] == pytest.approx(0.0, abs=1e-9)
    # a 50-sigma spike in each labelled file: mamlctl beats the null detector clearly
    assert summary["scores"]["mamlctl"]["standard"] > 50.0
    assert "mlflow_run_id" in summary
    assert len(list((out / "plots").glob("*.png"))) == 4


def test_suppression_keeps_only_new_maxima(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    _, fitted = _fitted(corpus)
    series = corpus[0]
    p = probationary_length(len(series))
    raw = scores_for(fitted, series, p, scale_window=50)  # type: ignore[arg-type]
    kept = scores_for(fitted, series, p, scale_window=50, suppress=20)  # type: ignore[arg-type]
    for t in range(len(raw)):
        before = raw[max(0, t - 20) : t].max(initial=0.0)
        assert kept[t] == (raw[t] if raw[t] > before else 0.0)
    assert kept[300] == raw[300] > 0.99  # the spike survives


def test_online_blocks_are_models_adapted_on_the_rows_just_before(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    _, fitted = _fitted(corpus)
    values = corpus[0].values
    p = probationary_length(len(values))  # 60 rows: blocks 16..119, 120..179, 180..239, ...
    r, sigma = online_residuals(fitted, values, p, every=p)  # type: ignore[arg-type]
    assert np.all(np.isnan(r[:16])) and np.all(np.isfinite(r[16:]))
    once = residuals(fitted, values, p)  # type: ignore[arg-type]
    np.testing.assert_allclose(r[16:120], once[16:120], rtol=1e-5, atol=1e-5)
    assert not np.allclose(r[120:], once[120:])
    # the block from row 180 is the initializer adapted on rows 120..179 alone
    alone = residuals(fitted, values[120:], p)  # type: ignore[arg-type]
    np.testing.assert_allclose(r[180:240], alone[60:120], rtol=1e-5, atol=1e-5)
    assert sigma[200] == pytest.approx(float(support_stats(values[120:180])[1]), rel=1e-12)


def test_likelihood_scores_are_causal_and_find_the_spike(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    _, fitted = _fitted(corpus)
    series = corpus[0]
    p = probationary_length(len(series))
    r, sigma = online_residuals(fitted, series.values, p, every=p)  # type: ignore[arg-type]
    scores = likelihood_scores(r, sigma, p)
    assert np.all(scores[:p] == 0.0)
    raw = np.where(np.isfinite(r), anomaly_score(np.nan_to_num(r), np.nan_to_num(sigma, nan=1)), 0)
    lik = anomaly_likelihood(raw, learning_period=p // 2, estimation_samples=p - p // 2)
    np.testing.assert_allclose(scores[p:], log_likelihood(lik)[p:], rtol=0, atol=1e-12)
    # the injected spike (row 300) lifts the 10-row average into the red zone by row 301;
    # the red rows after the onset are filtered to the yellow likelihood 0.999
    assert int(np.argmax(scores)) in (300, 301) and scores.max() > 0.5
    np.testing.assert_allclose(scores[302:305], 0.3, atol=1e-8)
    cut = 200
    changed = series.values.copy()
    changed[cut + 1 :] = np.random.default_rng(1).normal(0, 100, N_ROWS - cut - 1)
    r2, sigma2 = online_residuals(fitted, changed, p, every=p)  # type: ignore[arg-type]
    again = likelihood_scores(r2, sigma2, p)
    np.testing.assert_array_equal(scores[: cut + 1], again[: cut + 1])
    assert not np.array_equal(scores[cut + 1 :], again[cut + 1 :])


def test_spatial_anomaly_is_beyond_the_past_range_by_five_percent() -> None:
    values = np.array([1.0, 3.0, 2.0, 3.05, 3.2, 0.8, 0.85, 5.0])
    # row 3: 3.05 <= 3 + 0.05 * 2; row 4: 3.2 > 3.05 + 0.05 * 2.05; row 5: 0.8 < 1 - 0.05 * 2.2
    assert spatial_anomaly(values).tolist() == [0, 0, 0, 0, 1, 1, 0, 1]
    r = np.zeros(8)
    out = likelihood_scores(r, np.ones(8), 2, spatial=spatial_anomaly(values))
    # zero raw scores: floored mean 0.03, std sqrt(0.0003) -> L = 1 - Q(-1.732) = 0.0416
    quiet = np.log(0.5 * math.erfc(-0.03 / math.sqrt(0.0003) / math.sqrt(2))) / np.log(1e-10)
    np.testing.assert_allclose(out, [0, 0, quiet, quiet, 1, 1, quiet, 1], atol=1e-9)
    assert quiet == pytest.approx(0.00185, abs=1e-5)
