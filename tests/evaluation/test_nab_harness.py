"""The NAB harness on a tiny synthetic corpus: layout, null = 0, oracle = 100, table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nab_corpus_files import write_corpus

from mamlctl.errors import InputError
from mamlctl.evaluation.nab import (
    fold_of,
    load_corpus,
    markdown_table,
    null_detector,
    run_nab,
    windowed_gaussian,
)
from mamlctl.evaluation.nab_data import NabSeries, read_results


def make_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    stamps = [f"2020-01-01 {m // 60:02d}:{m % 60:02d}:00" for m in range(200)]
    files = []
    for cat, name, spike in (("catA", "a", 150), ("catB", "b", 120), ("catB", "c", None)):
        values = 10 + rng.normal(0, 1, 200)
        if spike is not None:
            values[spike] += 40.0
        window = None if spike is None else (spike - 5, spike + 4)
        files.append((cat, name, values, stamps, window))
    return write_corpus(root, files)


def oracle(series: NabSeries, probation: int) -> np.ndarray:
    out = np.zeros(len(series))
    out[[a for a, _ in series.windows]] = 1.0
    return out


def test_run_nab_layout_and_normalisation(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    seen: list[tuple[str, str]] = []
    run = run_nab(
        corpus,
        {"null": null_detector, "oracle": oracle, "windowedGaussian": windowed_gaussian},
        out_dir=tmp_path / "out",
        on_file=lambda d, k: seen.append((d, k)),
    )
    assert run.reports["null"].scores() == pytest.approx(
        dict.fromkeys(run.reports["null"].scores(), 0.0)
    )
    assert run.reports["oracle"].scores() == pytest.approx(
        dict.fromkeys(run.reports["oracle"].scores(), 100.0)
    )
    # The 40-sigma spikes sit 5 rows into their windows: found, but a little late.
    late = run.reports["windowedGaussian"].results["standard"]
    assert 0 < late.score < 100 and late.fp == 0
    assert len(seen) == 9 and seen[0] == ("null", "catA/a.csv")
    path = tmp_path / "out" / "results" / "oracle" / "catB" / "oracle_b.csv"
    assert path.read_text().splitlines()[0] == "timestamp,value,anomaly_score,label"
    assert read_results(tmp_path / "out", "oracle", "catB/b.csv").sum() == 1.0
    table = (tmp_path / "out" / "nab_scores.md").read_text()
    assert table == markdown_table(run)
    assert table.splitlines()[2].startswith("| oracle | 100.00 | 100.00 | 100.00 |")
    saved = json.loads((tmp_path / "out" / "nab_scores.json").read_text())
    assert saved["oracle"]["standard"]["score"] == pytest.approx(100.0)


def test_run_nab_rejects_bad_detectors(tmp_path: Path) -> None:
    corpus = load_corpus(make_corpus(tmp_path / "nab"))
    with pytest.raises(InputError, match="scores in"):
        run_nab(corpus, {"bad": lambda s, p: np.full(len(s), 2.0)})
    with pytest.raises(InputError, match="detector name"):
        run_nab(corpus, {"my_det": null_detector})
    with pytest.raises(InputError, match="empty"):
        run_nab([], {"null": null_detector})


def test_fold_of_is_the_rank_of_the_sorted_keys_modulo_folds() -> None:
    keys = ["b/x.csv", "a/z.csv", "a/y.csv", "c/w.csv", "b/v.csv"]
    assert fold_of(keys, 2) == {
        "a/y.csv": 0,
        "a/z.csv": 1,
        "b/v.csv": 0,
        "b/x.csv": 1,
        "c/w.csv": 0,
    }
