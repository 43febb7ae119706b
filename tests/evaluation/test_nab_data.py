"""NAB corpus reading and results layout, on a tiny corpus written under tmp_path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from mamlctl.errors import InputError, NotFoundError
from mamlctl.evaluation import nab_data
from mamlctl.evaluation.nab_scoring import prepare_file, score_corpus

REAL = Path("/work/shared/data/nab")


def make_corpus(root: Path, *, bad_bound: bool = False) -> Path:
    rows = ["timestamp,value"] + [f"2020-01-01 00:{m:02d}:00,{m}" for m in range(40)]
    (root / "data" / "catA").mkdir(parents=True)
    (root / "data" / "catA" / "one.csv.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
    (root / "data" / "catA" / "two.csv").write_text("\n".join(rows) + "\n")
    (root / "labels").mkdir()
    end = "2020-01-01 00:30:30.000000" if bad_bound else "2020-01-01 00:30:00.000000"
    windows = {
        "catA/one.csv": [["2020-01-01 00:20:00.000000", end]],
        "catA/two.csv": [],
    }
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_keys_windows_and_rows(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "nab")
    assert nab_data.resolve_root(tmp_path) == root  # the parent holding nab/ works too
    files = nab_data.list_files(root)
    assert [(f.key, f.category, f.name, f.path.name) for f in files] == [
        ("catA/one.csv", "catA", "one.csv", "one.csv.gz"),
        ("catA/two.csv", "catA", "two.csv", "two.csv"),
    ]
    windows = nab_data.load_windows(root)
    assert windows["catA/one.csv"] == [("2020-01-01 00:20:00", "2020-01-01 00:30:00")]
    series = nab_data.read_file(files[0], windows["catA/one.csv"])
    assert len(series) == 40 and series.values[7] == 7.0
    assert series.windows == ((20, 30),)
    labels = nab_data.window_labels(40, series.windows)
    assert labels.sum() == 11 and labels[20] == 1 and labels[31] == 0


def test_results_layout_round_trip(tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "nab")
    f = nab_data.list_files(root)[0]
    series = nab_data.read_file(f, nab_data.load_windows(root)[f.key])
    scores = np.linspace(0, 1, 40)
    path = nab_data.write_results(tmp_path / "out", "mamlctl", series, scores)
    assert path == tmp_path / "out" / "results" / "mamlctl" / "catA" / "mamlctl_one.csv"
    header = path.read_text().splitlines()[:2]
    assert header == ["timestamp,value,anomaly_score,label", "2020-01-01 00:00:00,0.0,0.0,0"]
    assert nab_data.read_results(tmp_path / "out", "mamlctl", f.key) == pytest.approx(scores)
    with pytest.raises(NotFoundError, match="run the detector"):
        nab_data.read_results(tmp_path / "out", "mamlctl", "catA/two.csv")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        nab_data.write_results(tmp_path / "out", "x", series, scores + 1)


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no NAB corpus"):
        nab_data.resolve_root(tmp_path)
    root = make_corpus(tmp_path / "nab", bad_bound=True)
    f = nab_data.list_files(root)[0]
    with pytest.raises(InputError, match="not a timestamp"):
        nab_data.read_file(f, nab_data.load_windows(root)[f.key])
    (root / "data" / "catA" / "two.csv").unlink()
    with pytest.raises(NotFoundError, match=r"catA/two\.csv"):
        nab_data.list_files(root)


def test_probationary_length_matches_nab() -> None:
    assert nab_data.probationary_length(100) == 15
    assert nab_data.probationary_length(4032) == 604
    assert nab_data.probationary_length(22695) == 750  # capped at 0.15 * 5000


@pytest.mark.skipif(not REAL.is_dir(), reason="NAB corpus not present")
def test_real_corpus_null_zero_and_perfect_hundred() -> None:
    windows = nab_data.load_windows(REAL)
    series = [nab_data.read_file(f, windows[f.key]) for f in nab_data.list_files(REAL)]
    assert len(series) == 58 and sum(len(s.windows) for s in series) == 116
    assert sum(len(s) for s in series) == 365_558

    def first_rows(s: nab_data.NabSeries) -> np.ndarray:
        out = np.zeros(len(s))
        out[[a for a, _ in s.windows]] = 1.0
        return out

    perfect = score_corpus([prepare_file(s.key, first_rows(s), s.windows) for s in series])
    null = score_corpus([prepare_file(s.key, np.zeros(len(s)), s.windows) for s in series])
    assert perfect.scores() == pytest.approx(dict.fromkeys(perfect.scores(), 100.0))
    assert null.scores() == pytest.approx(dict.fromkeys(null.scores(), 0.0))
