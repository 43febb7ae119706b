"""``mamlctl evaluate nab`` through the served path, end to end on a tiny hourly corpus.

Oracles: each results file's scores equal the detector module run offline
(:func:`~mamlctl.timeseries.stream_detector.run_stream`) on the same stream with the home's
exported model run by onnxruntime (its ``rank_score``); NAB's score of the results files
equals the harness' figures; the family rule by hand."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from nab_corpus_files import write_corpus
from observe_fixtures import onnx_forecaster
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.contract import parse_metadata
from mamlctl.evaluation.nab import load_corpus
from mamlctl.evaluation.nab_data import probationary_length, read_results
from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus
from mamlctl.evaluation.nab_served import interval_of as _interval
from mamlctl.evaluation.nab_served import kept_rows, nab_family, row_score, trainable
from mamlctl.serving.runtime import make_session
from mamlctl.timeseries.stream_detector import (
    DetectorConfig,
    Ranking,
    StreamState,
    run_stream,
    threshold_z,
)

#: rows, spike row (None: no anomaly) per file; 600 rows -> probation 90 < K = 120
SPEC = (("catA", "a", 800, 500), ("catA", "b", 600, 400), ("catB", "c", 800, None))
T0 = datetime(2021, 3, 1)


def make_corpus(root: Path) -> Path:
    rng = np.random.default_rng(3)
    files = []
    for cat, name, n, spike in SPEC:
        t = np.arange(n)
        values = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n)
        if spike is not None:
            values[spike] += 12.0
        stamps = [(T0 + timedelta(hours=int(i))).strftime("%Y-%m-%d %H:%M:%S") for i in t]
        window = None if spike is None else (spike - 8, spike + 8)
        files.append((cat, name, values, stamps, window))
    return write_corpus(root, files)


def test_family_rule_by_hand() -> None:
    five = 300.0
    assert nab_family(five, 750).name == "5min"  # K = 576 fits
    reduced = nab_family(600.0, 324)  # 10min: P=144, K=432 > 324 -> L' = 180 -> 176
    assert (reduced.name, reduced.window, reduced.support) == ("10min-L176", 176, 320)
    short = nab_family(five, 375)  # L' = 87 < P = 288: the no-cycle family
    assert (short.name, short.window, short.support) == ("5min-nocycle", 32, 40)
    assert nab_family(3600.0, 90).name == "hourly-L64"


def test_kept_rows_drop_repeated_and_backward_timestamps() -> None:
    ts = np.array(
        ["2020-01-01T00", "2020-01-01T01", "2020-01-01T01", "2020-01-01T00", "2020-01-01T02"],
        dtype="datetime64[ns]",
    )
    assert kept_rows(ts).tolist() == [True, True, False, False, True]


def test_row_score_is_the_rank_score_and_zero_unscored() -> None:
    assert row_score({"status": "scored", "magnitude": 3.0, "rank_score": 0.25}) == 0.25
    assert row_score({"status": "duplicate", "rank_score": 0.25}) == 0.0
    assert row_score({"error": {"status": 409}}) == 0.0


@pytest.mark.slow
def test_cli_evaluate_nab_served_scores_are_the_servers(tmp_path: Path) -> None:
    from mamlctl.evaluation.product_home import home_settings
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction

    root = make_corpus(tmp_path / "nab")
    out = tmp_path / "out"
    args = ["evaluate", "nab", "--data", str(root), "--out", str(out), "--folds", "2"]
    result = CliRunner().invoke(
        app, [*args, "--iterations", "20", "--no-baselines", "--no-mlflow", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    corpus = load_corpus(root)
    # fold0 = a, c (rank 0, 2): trained on b; fold1 = b: trained on a and c
    trained = {r["name"]: r["trained"] for r in summary["folds"]}
    assert [t["family"] for t in trained["fold0"]] == ["hourly"]
    assert [t["family"] for t in trained["fold1"]] == ["hourly-L64"]
    assert trained["fold1"][0]["joined"] == 1  # b's probation (90) is too short to train
    answered = sum(sum(r["answers"].values()) for r in summary["folds"])
    assert answered == sum(len(s) - probationary_length(len(s)) for s in corpus)

    folds = {"catA/a.csv": "fold0", "catB/c.csv": "fold0", "catA/b.csv": "fold1"}
    for s in corpus:
        p = probationary_length(len(s))
        got = read_results(out, "mamlctl", s.key)
        assert np.all(got[:p] == 0.0)
        settings = home_settings(out / "homes" / folds[s.key])
        family = nab_family(_interval(s), p)
        with transaction(settings) as session:
            (record,) = [
                r for r in q.current_adapted_models(session, family.name) if r.series_id == s.key
            ]
        assert record.window == family.window
        path = settings.models_dir / record.path
        forecaster = onnx_forecaster(path)
        scale = float(parse_metadata(make_session(path).get_modelmeta().custom_metadata_map).scale)
        stored = s.values[:p][kept_rows(s.timestamps[:p])]
        ranking = Ranking(low=float(stored.min()), high=float(stored.max()))
        start = StreamState(np.asarray(stored[-record.window :]), 0, ranking)
        _, verdicts = run_stream(
            start,
            s.values[p:],
            forecaster,
            z_threshold=threshold_z(record.threshold),
            scale=scale,
            config=DetectorConfig(flag="rank"),  # serve's (and evaluate nab's) default rule
        )
        expected = np.array([v.rank_score for v in verdicts])
        np.testing.assert_allclose(got[p:], expected, rtol=1e-6, atol=1e-9)
        spike = dict((f"{c}/{n}.csv", k) for c, n, _, k in SPEC)[s.key]
        if spike is not None:  # the injected 60-sigma spike scores the file's top score
            assert got[spike] == got.max() == 1.0

    rescored = score_corpus(
        [prepare_file(s.key, read_results(out, "mamlctl", s.key), s.windows) for s in corpus]
    )
    for profile, res in rescored.results.items():
        assert summary["scores"]["mamlctl"][profile] == pytest.approx(res.score, abs=1e-9)
    assert summary["scores"]["mamlctl"]["standard"] > 50.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--iterations", "0"], "error: --iterations must be >= 1, got 0"),
        (["--batch", "0"], "error: --batch must be >= 1, got 0"),
    ],
)
def test_cli_evaluate_nab_bad_input_is_one_line(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    root = make_corpus(tmp_path / "nab")
    args = ["evaluate", "nab", "--data", str(root), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 1
    assert result.output.strip() == message


def test_flat_and_exactly_periodic_series_do_not_train() -> None:
    family = nab_family(300.0, 750)  # 5min: P = 288, H = 12
    day = np.random.default_rng(0).normal(size=288)
    assert not trainable(np.full(2000, 3.0), family)
    assert not trainable(np.tile(day, 7), family)  # seasonal naive is exact
    assert trainable(np.tile(day, 7) + 1e-3 * (np.arange(7 * 288) % 7), family)


@pytest.mark.slow
def test_readapt_by_the_datas_clock_runs_the_adapt_stage_each_round(tmp_path: Path) -> None:
    from mamlctl.evaluation.nab_served import FoldReport, ServedOptions, served_detector

    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    scores: dict[float, dict[str, np.ndarray]] = {}
    reports: dict[float, list[FoldReport]] = {}
    for days in (0.0, 5.0):
        reports[days] = []
        options = ServedOptions(folds=2, iterations=5, readapt_days=days)
        detect = served_detector(
            corpus, options, workdir=tmp_path / f"d{days}", reports=reports[days]
        )
        scores[days] = {s.key: detect(s, probationary_length(len(s))) for s in corpus}
    # 5 days of hourly data = 120 rows a round; a re-adapt after every round that leaves rows:
    # a (680 rows after its probation): 5, c: 5, b (510): 4
    assert {r.name: r.readapted for r in reports[5.0]} == {"fold0": 10, "fold1": 4}
    assert all(r.readapted == 0 for r in reports[0.0])
    for s in corpus:
        p = probationary_length(len(s))
        once, daily = scores[0.0][s.key], scores[5.0][s.key]
        # the first round is served by the same (seeded) models; later rounds by re-adapted ones
        np.testing.assert_array_equal(once[: p + 120], daily[: p + 120])
        assert not np.array_equal(once[p + 120 :], daily[p + 120 :])
