"""``POST /v1/observe``: the service keeps each series' window and anomaly state.

Oracles: the served model file run by onnxruntime on the window (forecasts); the detector
module run offline on the same stream with that forecaster (every verdict); the injection
positions (flags); the registry's rows (what was stored).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from observe_fixtures import (
    SIGMA,
    T0,
    TS_SERIES,
    Z_THRESHOLD,
    L,
    Served,
    add_timestamped_series,
    offline_start,
    onnx_forecaster,
    record_models,
    stored_series,
)

from mamlctl.timeseries.stream_detector import StreamState, run_stream, tail_magnitude

IDS = [f"s{i}" for i in range(6)]


@pytest.fixture
def home(seeded_registry: Any) -> Any:
    settings = seeded_registry.settings
    t_values = seeded_registry.values["s0"][:100]
    add_timestamped_series(settings, t_values)
    paths = record_models(settings, [*IDS, TS_SERIES])
    return settings, paths, {**seeded_registry.values, TS_SERIES: t_values}


@pytest.fixture
def served(home: Any) -> Any:
    s = Served(home[0])
    yield s
    s.close()


def test_forecast_is_the_onnx_file_on_the_window_and_the_numbers_follow(home, served) -> None:  # type: ignore[no-untyped-def]
    settings, paths, values = home
    window = values["s3"][-L:]
    expected_f, expected_s = onnx_forecaster(paths["s3"])(window)
    got = served.observe({"series_id": "s3", "timestamp": 240, "value": 7.25})
    assert got["status"] == "scored" and got["position"] == 240
    assert got["forecast"] == expected_f  # float32 output of the same file, exactly
    assert got["forecast"] == float(np.float32(window[0]))  # seasonal naive: one period back
    assert got["sigma"] == pytest.approx(SIGMA, rel=1e-7) and got["sigma"] == expected_s
    residual = 7.25 - expected_f
    assert got["residual"] == residual
    assert got["z"] == abs(residual) / expected_s
    assert got["magnitude"] == pytest.approx(tail_magnitude(got["z"]))
    assert got["threshold_z"] == pytest.approx(Z_THRESHOLD, rel=1e-9)
    assert got["is_anomaly"] is (got["z"] >= got["threshold_z"])
    assert got["lineage"]["registered_model"] == "maml-sines"
    assert got["lineage"]["initializer_version"] == 1
    assert got["gap"] == 0
    # stored: the registry's series continues with the observed value
    assert stored_series(settings, "s3").values[-1] == 7.25
    assert len(stored_series(settings, "s3").values) == 241


def _injected(clean: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Spike at 20, dropout 60..62, level shift from 100; the flags the module doc promises:
    the spike and dropout points, and the shift until the window learnt it (L + 3 points)."""
    stream = clean.copy()
    stream[20] += 3.0
    stream[60:63] = 0.0
    stream[100:] += 2.0
    return stream, [20, 60, 61, 62, *range(100, 100 + L + 3)]


def test_injected_anomalies_are_flagged_recorded_and_match_the_offline_detector(
    home, served
) -> None:  # type: ignore[no-untyped-def]
    settings, paths, values = home
    rng = np.random.default_rng(7)
    n = 150
    t = np.arange(240, 240 + n)
    clean = 6.0 + 1.2 * np.sin(2 * np.pi * t / 24 + 0.5) + 0.05 * rng.standard_normal(n)
    stream, expected = _injected(clean)
    quiet = 7.0 + 1.4 * np.sin(2 * np.pi * t / 24 + 1.0) + 0.05 * rng.standard_normal(n)
    # interleaved with another series, in requests of uneven sizes (rounds across requests)
    items = []
    for k in range(n):
        items.append({"series_id": "s1", "timestamp": 240 + k, "value": float(stream[k])})
        items.append({"series_id": "s2", "timestamp": 240 + k, "value": float(quiet[k])})
    answers: list[dict[str, Any]] = []
    for lo, hi in ((0, 1), (1, 40), (40, 41), (41, 300)):
        answers += (
            served.observe(*items[lo:hi])["results"]
            if hi - lo > 1
            else [served.observe(*items[lo:hi])]
        )
    s1 = [a for a in answers if a["series_id"] == "s1"]
    s2 = [a for a in answers if a["series_id"] == "s2"]
    assert [a["position"] - 240 for a in s1 if a["is_anomaly"]] == expected
    assert not any(a["is_anomaly"] for a in s2)
    # the same detector module offline, forecasts by onnxruntime on the file
    for sid, data, got in (("s1", stream, s1), ("s2", quiet, s2)):
        start = StreamState(values[sid][-L:].copy())
        _, offline = run_stream(
            start, data, onnx_forecaster(paths[sid]), z_threshold=got[0]["threshold_z"]
        )
        assert [a["forecast"] for a in got] == [v.forecast for v in offline]
        assert [a["z"] for a in got] == [v.z for v in offline]
        assert [a["is_anomaly"] for a in got] == [v.is_anomaly for v in offline]
    # records: one per flagged observation, with the answer's numbers
    records = served.client.get("/v1/series/s1/anomalies").json()["anomalies"]
    assert [r["position"] - 240 for r in records] == expected
    flagged = {a["position"]: a for a in s1 if a["is_anomaly"]}
    for rec in records:
        a = flagged[rec["position"]]
        assert rec["id"] == a["anomaly_id"] and rec["status"] == "open"
        assert (rec["value"], rec["forecast"], rec["z"]) == (a["value"], a["forecast"], a["z"])
        assert rec["magnitude"] == a["magnitude"] and rec["initializer_version"] == 1
    everything = served.client.get("/v1/anomalies", params={"family": "sines"}).json()
    assert len(everything["anomalies"]) == len(expected)
    assert served.client.get("/v1/anomalies", params={"status": "acknowledged"}).json() == {
        "anomalies": []
    }
    # stored: every observed value, in order, after the seeded ones
    assert np.array_equal(stored_series(settings, "s1").values, np.r_[values["s1"], stream])
    metrics = served.client.get("/metrics").text
    assert f'mamlctl_anomalies_total{{family="sines"}} {float(len(expected))}' in metrics


def test_restart_and_reload_keep_windows_and_records(home, served) -> None:  # type: ignore[no-untyped-def]
    settings, paths, values = home
    rng = np.random.default_rng(3)
    t = np.arange(240, 300)
    clean = 7.0 + 1.4 * np.sin(2 * np.pi * t / 24 + 1.0) + 0.05 * rng.standard_normal(60)
    clean[28:30] = 0.0  # a dropout just before the restart: replaced in the window
    items = [
        {"series_id": "s2", "timestamp": 240 + k, "value": float(v)} for k, v in enumerate(clean)
    ]
    first = served.observe(*items[:30])["results"]
    assert [a["position"] for a in first if a["is_anomaly"]] == [268, 269]
    again = Served(settings)  # a new server on the same registry
    second = again.observe(*items[30:])["results"]
    start, scale = offline_start(paths["s2"], values["s2"], L)
    offline = run_stream(
        start,
        clean,
        onnx_forecaster(paths["s2"]),
        z_threshold=first[0]["threshold_z"],
        scale=scale,
    )[1]
    assert [a["forecast"] for a in first + second] == [v.forecast for v in offline]
    assert [a["is_anomaly"] for a in first + second] == [v.is_anomaly for v in offline]
    # the ranking state (likelihood statistics, range) is stored and continues too
    assert [a["rank_score"] for a in first + second] == [v.rank_score for v in offline]
    assert [a["out_of_range"] for a in first + second] == [v.out_of_range for v in offline]
    assert first[28]["out_of_range"] and first[28]["rank_score"] == 1.0  # the dropout
    # the server holds float32 windows (the model's input type): the same forecasts as the
    # float64 offline run above, half the memory per series
    assert again.app.observer.streams["s2"].detector.window.dtype == np.float32
    assert len(again.client.get("/v1/series/s2/anomalies").json()["anomalies"]) == 2
    # re-adapted (version 2, a model reading one step later): the window is kept
    new_paths = record_models(settings, ["s2"], version=2, lag_shift=1)
    assert again.app.holder.reload()
    again.app.observer.sync(again.app.holder.state)
    window = np.r_[values["s2"], clean][-L:]
    got = again.observe({"series_id": "s2", "timestamp": 300, "value": 7.0})
    assert got["forecast"] == onnx_forecaster(new_paths["s2"])(window)[0]
    assert got["forecast"] == float(np.float32(window[1]))
    assert got["lineage"]["initializer_version"] == 2
    again.close()


def test_duplicates_are_idempotent(home, served) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = home
    item = {"series_id": "s4", "timestamp": 240, "value": 9.5}
    first = served.observe(item)
    second = served.observe(item)
    assert second["status"] == "duplicate"
    assert {k: v for k, v in second.items() if k != "status"} == {
        k: v for k, v in first.items() if k != "status"
    }
    batch = served.observe(item, {**item, "timestamp": 241}, {**item, "timestamp": 241})["results"]
    assert [a.get("status") for a in batch] == ["duplicate", "scored", "duplicate"]
    assert batch[2]["forecast"] == batch[1]["forecast"]
    # an older stored point: answered from the registry
    old = served.observe({"series_id": "s4", "timestamp": 10, "value": float(home[2]["s4"][10])})
    assert old == {
        "series_id": "s4",
        "timestamp": 10,
        "value": home[2]["s4"][10],
        "status": "duplicate",
    }
    conflict = served.observe({**item, "value": 1.0}, status=409)
    assert conflict["detail"][0]["type"] == "conflict"
    assert len(stored_series(settings, "s4").values) == 242  # nothing appended twice


def test_bad_observations_get_per_item_errors_and_the_rest_is_processed(home, served) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = home
    t_last = T0 + timedelta(hours=99)
    items = [
        {"series_id": "s5", "timestamp": 240, "value": None},
        {"series_id": "s5", "timestamp": 240, "value": "NaN"},
        {"series_id": "s5", "timestamp": 240, "value": 1e39},
        {"series_id": "nope", "timestamp": 240, "value": 1.0},
        {"series_id": "s5", "timestamp": 250, "value": 1.0},
        {"series_id": "s5", "timestamp": "2026-03-01T00:00:00", "value": 1.0},
        {"series_id": TS_SERIES, "timestamp": 100, "value": 1.0},
        {"series_id": TS_SERIES, "timestamp": "yesterday", "value": 1.0},
        {
            "series_id": TS_SERIES,
            "timestamp": (t_last - timedelta(minutes=30)).isoformat(),
            "value": 1.0,
        },
        {"series_id": "s5", "timestamp": 240, "value": 5.0, "extra": 1},
        {"series_id": "s5", "timestamp": 240},
        "not an object",
        {"series_id": "s5", "timestamp": 240, "value": 5.5},
        {
            "series_id": TS_SERIES,
            "timestamp": (t_last + timedelta(hours=3)).isoformat(),
            "value": 5.0,
        },
        {
            "series_id": TS_SERIES,
            "timestamp": (t_last + timedelta(hours=4)).isoformat() + "+02:00",
            "value": 5.0,
        },
    ]
    results = served.observe(*items)["results"]
    errors = [
        (r["error"]["status"], r["error"]["type"], r["error"]["loc"][-1]) for r in results[:12]
    ]
    assert errors == [
        (422, "float_type", "value"),
        (422, "float_type", "value"),
        (422, "finite_number", "value"),
        (404, "not_found", "series_id"),
        (422, "position_gap", "timestamp"),
        (422, "timestamp_type", "timestamp"),
        (422, "timestamp_type", "timestamp"),
        (422, "timestamp_format", "timestamp"),
        (409, "out_of_order", "timestamp"),
        (422, "extra_forbidden", "extra"),
        (422, "missing", "value"),
        (422, "object_type", 11),
    ]
    assert results[12]["status"] == "scored" and results[12]["position"] == 240
    assert results[13]["status"] == "scored" and results[13]["gap"] == 2  # 3 hours on: 2 missing
    # +02:00 is converted to UTC: 2 hours earlier than written, before the last: out of order
    assert results[14]["error"]["type"] == "out_of_order"
    t = stored_series(settings, TS_SERIES)
    assert len(t.values) == 101 and t.timestamps[-1] == np.datetime64(t_last + timedelta(hours=3))
    assert len(stored_series(settings, "s5").values) == 241
    # a single bad observation answers its status; structure errors fail the request
    single = served.observe({"series_id": "nope", "timestamp": 1, "value": 1.0}, status=404)
    assert single["detail"][0]["loc"] == ["body", "series_id"]
    assert served.client.post("/v1/observe", content=b"{").status_code == 422
    assert served.client.post("/v1/observe", json={"items": []}).status_code == 422
    assert served.client.get("/v1/anomalies", params={"family": "nope"}).status_code == 404
    assert served.client.get("/v1/anomalies", params={"status": "odd"}).status_code == 422


def test_recent_answers_are_one_bound_for_all_series() -> None:
    """The answers kept for duplicates are bounded for the whole server, oldest out first, so a
    server's memory per series does not grow with the observations it answered."""
    from mamlctl.serving.streams import RecentAnswers

    recent = RecentAnswers(size=3)
    for k in range(5):
        recent.remember(f"s{k % 2}", k, {"position": k})
    assert [recent.get(f"s{k % 2}", k) for k in range(5)] == [
        None,
        None,
        {"position": 2},
        {"position": 3},
        {"position": 4},
    ]
    assert recent.get("s1", 4) is None  # keyed by series and timestamp


def test_the_rank_flag_rule_flags_what_the_ranking_score_says(home) -> None:  # type: ignore[no-untyped-def]
    """``serve --flag rank``: ``is_anomaly`` is ``rank_score >= 0.5`` (out of range, or a red
    likelihood), the records follow it, and the offline detector with the same rule agrees."""
    from mamlctl.timeseries.stream_detector import DetectorConfig

    settings, paths, values = home
    rng = np.random.default_rng(11)
    t = np.arange(240, 400)
    clean = 7.0 + 1.4 * np.sin(2 * np.pi * t / 24 + 1.0) + 0.05 * rng.standard_normal(160)
    clean[150] += 9.0  # beyond the range: flagged by either rule
    served = Served(settings, flag="rank")
    items = [
        {"series_id": "s2", "timestamp": 240 + k, "value": float(v)} for k, v in enumerate(clean)
    ]
    got = served.observe(*items)["results"]
    assert [a["is_anomaly"] for a in got] == [a["rank_score"] >= 0.5 for a in got]
    assert got[150]["is_anomaly"] and got[150]["out_of_range"]
    start, scale = offline_start(paths["s2"], values["s2"], L)
    offline = run_stream(
        start,
        clean,
        onnx_forecaster(paths["s2"]),
        z_threshold=got[0]["threshold_z"],
        scale=scale,
        config=DetectorConfig(flag="rank"),
    )[1]
    assert [a["is_anomaly"] for a in got] == [v.is_anomaly for v in offline]
    assert [a["forecast"] for a in got] == [v.forecast for v in offline]
    records = served.client.get("/v1/series/s2/anomalies").json()["anomalies"]
    assert [r["position"] for r in records] == [a["position"] for a in got if a["is_anomaly"]]
    served.close()
