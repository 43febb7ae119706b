"""The served ranking score (``rank_score``): Numenta's anomaly likelihood kept online and the
spatial range check, one observation at a time.

Oracles: a brute-force recomputation from the definition (mean and population variance of every
earlier short-term average, Numenta's floors, the red-after-red rule, NAB's log scaling, the
range of every earlier value); the batch form :func:`anomaly_likelihood` where the two
definitions meet (a re-estimation every row); a JSON round trip that changes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlctl.timeseries.anomaly_likelihood import anomaly_likelihood
from mamlctl.timeseries.stream_detector import (
    DetectorConfig,
    Ranking,
    StreamState,
    rank,
    ranking_from_json,
    ranking_to_json,
    restore_state,
    run_stream,
)


def _oracle(values: np.ndarray, raw: np.ndarray, cfg: DetectorConfig) -> list[tuple[float, bool]]:
    """(rank_score, out_of_range) of each row from the definition, all rows kept."""
    out = []
    averages: list[float] = []
    prev_red = False
    for t in range(raw.shape[0]):
        lo, hi = (values[:t].min(), values[:t].max()) if t else (math.inf, -math.inf)
        slack = cfg.spatial_tolerance * (hi - lo)
        outside = t > 0 and hi > lo and (values[t] > hi + slack or values[t] < lo - slack)
        avg = float(raw[max(0, t - cfg.short_window + 1) : t + 1].mean())
        lik, red = 0.5, False
        if len(averages) >= cfg.estimation_samples:
            past = np.array(averages)
            m, v = max(past.mean(), 0.03), max(past.var(), 0.0003)
            tail = 0.5 * math.erfc((avg - m) / math.sqrt(v) / math.sqrt(2))
            red = tail <= 1e-5
            lik = 1 - (1e-3 if red and prev_red else tail)
        prev_red = red
        averages.append(avg)
        score = 1.0 if outside else min(max(math.log(1.0000000001 - lik) / math.log(1e-10), 0), 1)
        out.append((score, outside))
    return out


def _stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = 10 + np.sin(np.arange(n) / 4) + rng.normal(0, 0.3, n)
    values[n // 2] += 6.0  # a spike beyond the range
    raw = np.abs(rng.normal(0, 0.2, n)).clip(0, 1)
    raw[n // 2 : n // 2 + 3] = 0.99  # and a burst of large raw scores
    return values, raw


def test_rank_equals_the_definition_row_by_row() -> None:
    cfg = DetectorConfig(estimation_samples=20)
    values, raw = _stream(300, 0)
    state = Ranking()
    got = []
    for v, s in zip(values.tolist(), raw.tolist(), strict=True):
        state, _, outside, score = rank(state, v, s, cfg)
        got.append((score, outside))
    want = _oracle(values, raw, cfg)
    assert [g[1] for g in got] == [w[1] for w in want]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-9, atol=1e-12)
    assert got[150] == (1.0, True)  # the spike: beyond the range
    assert max(g[0] for g in got[151:160]) >= 0.5  # the burst: a red likelihood


def test_rank_matches_the_batch_likelihood_with_reestimation_every_row() -> None:
    """Where the definitions meet (no learning period, re-estimation every row, the whole past
    as history), the online likelihood is the batch one."""
    cfg = DetectorConfig(estimation_samples=30, spatial_tolerance=1e9)
    _, raw = _stream(200, 1)
    batch = anomaly_likelihood(raw, learning_period=0, estimation_samples=30, reestimation_period=1)
    state, online = Ranking(), []
    for s in raw.tolist():
        state, lik, _, _ = rank(state, 0.0, s, cfg)
        online.append(lik)
    # the batch filter compares with the previous row under today's distribution: rows where
    # two reds meet may differ; everywhere else the two agree
    np.testing.assert_allclose(online[31:], batch[31:], rtol=1e-9, atol=1e-12)
    assert online[:30] == [0.5] * 30


def test_exponential_weighting_after_the_historic_window() -> None:
    """Past ``historic_window`` averages the statistics forget: a regime change is absorbed."""
    cfg = DetectorConfig(historic_window=50, estimation_samples=10, spatial_tolerance=1e9)
    state = Ranking()
    for _ in range(400):
        state, *_ = rank(state, 0.0, 0.1, cfg)
    for _ in range(400):
        state, *_ = rank(state, 0.0, 0.6, cfg)
    # weight (49/50)^~390 ~ 4e-4 left on the old regime (an exact mean would say 0.35)
    assert state.mean == pytest.approx(0.6, abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40),
    st.lists(st.floats(0.0, 1.0), min_size=40, max_size=40),
)
def test_scores_lie_in_unit_interval_and_json_round_trips(
    values: list[float], raw: list[float]
) -> None:
    cfg = DetectorConfig(estimation_samples=5)
    state = Ranking()
    for v, s in zip(values, raw, strict=False):
        state, lik, outside, score = rank(state, v, s, cfg)
        assert 0.0 <= lik <= 1.0 and 0.0 <= score <= 1.0
        assert (score == 1.0) or not outside
        assert ranking_from_json(ranking_to_json(state)) == state
    assert state.low == min(values) and state.high == max(values)


def test_unknown_or_malformed_stored_state_reads_as_none() -> None:
    assert ranking_from_json(None) is None
    assert ranking_from_json('{"v": 2}') is None
    assert ranking_from_json("not json") is None
    assert ranking_from_json('{"v": 1, "recent": "x"}') is None
    assert ranking_from_json(ranking_to_json(Ranking())) == Ranking()


def test_restore_takes_the_stored_ranking_else_the_values_range() -> None:
    stored = Ranking(recent=(0.1,), count=1, mean=0.1, var=0.0, low=-2.0, high=5.0)
    values = [1.0, 2.0, 3.0]
    flags = [False] * 3
    reps = [math.nan] * 3
    assert restore_state(values, window=2, flagged=flags, replacement=reps).ranking == Ranking(
        low=1.0, high=3.0
    )
    restored = restore_state(values, window=2, flagged=flags, replacement=reps, ranking=stored)
    assert restored.ranking == stored


def test_a_stream_split_in_two_with_a_json_restart_scores_the_same() -> None:
    """The server stores the ranking as JSON between requests: a stream cut anywhere and resumed
    from the stored state gives the same verdicts as one uninterrupted stream."""
    rng = np.random.default_rng(4)
    values = 5 + np.sin(np.arange(400) / 3) + rng.normal(0, 0.1, 400)
    values[300] += 4

    def forecaster(w: np.ndarray) -> tuple[float, float]:
        return float(w[-1]), 0.2

    cfg = DetectorConfig(estimation_samples=20)
    start = StreamState(values[:8].copy(), 0, Ranking(low=values[:8].min(), high=values[:8].max()))
    _, whole = run_stream(start, values[8:], forecaster, z_threshold=4.0, scale=1.0, config=cfg)
    mid, first = run_stream(
        start, values[8:200], forecaster, z_threshold=4.0, scale=1.0, config=cfg
    )
    resumed = StreamState(mid.window, mid.run, ranking_from_json(ranking_to_json(mid.ranking)))
    _, second = run_stream(
        resumed, values[200:], forecaster, z_threshold=4.0, scale=1.0, config=cfg
    )
    assert [v.rank_score for v in first + second] == [v.rank_score for v in whole]
    assert whole[292].out_of_range and whole[292].rank_score == 1.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(1e-6, 1e3))
def test_the_scalar_score_is_score_from_z_bit_for_bit(value: float, forecast: float, sigma: float):  # type: ignore[no-untyped-def]
    """``step`` computes ``erf(z / sqrt 2)`` with ``math`` per observation; it must equal the
    one score of :mod:`mamlctl.timeseries.anomaly` exactly (records, plots and tests use it)."""
    from mamlctl.timeseries.anomaly import score_from_z
    from mamlctl.timeseries.stream_detector import step

    _, verdict = step(StreamState(np.zeros(4)), value, forecast, sigma, z_threshold=3.0)
    assert verdict.anomaly_score == float(score_from_z(verdict.z))
    assert json.loads(ranking_to_json(Ranking(recent=(0.1, 1e-300), low=-1.5))) == {
        "v": 1,
        "recent": [0.1, 1e-300],
        "count": 0,
        "mean": 0.0,
        "var": 0.0,
        "red": False,
        "low": -1.5,
        "high": None,
    }


def test_the_flag_rule_is_z_or_rank() -> None:
    from mamlctl.errors import InputError

    values, _ = _stream(300, 5)

    def forecaster(w: np.ndarray) -> tuple[float, float]:
        return float(w[-1]), 0.01  # a tiny sigma: the z rule flags nearly everything

    start = StreamState(values[:8].copy(), 0, Ranking(low=values[:8].min(), high=values[:8].max()))
    runs = {
        rule: run_stream(
            start,
            values[8:],
            forecaster,
            z_threshold=4.0,
            scale=1.0,
            config=DetectorConfig(flag=rule, estimation_samples=20),
        )[1]
        for rule in ("z", "rank")
    }
    assert [v.is_anomaly for v in runs["z"]] == [v.z >= 4.0 for v in runs["z"]]
    assert [v.is_anomaly for v in runs["rank"]] == [v.rank_score >= 0.5 for v in runs["rank"]]
    assert sum(v.is_anomaly for v in runs["z"]) > 200 > sum(v.is_anomaly for v in runs["rank"])
    assert runs["rank"][150 - 8].is_anomaly  # the spike beyond the range
    with pytest.raises(InputError, match="flag must be one of z, rank"):
        DetectorConfig(flag="loud")
