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
from conftest import Client
from observe_fixtures import (
    L,
    SIGMA,
    T0,
    TS_SERIES,
    Z_THRESHOLD,
    add_timestamped_series,
    onnx_forecaster,
    record_models,
    stored_series,
)

from mamlctl.serving.app import ServeOptions, create_app
from mamlctl.serving.source import RegistrySource
from mamlctl.settings import Settings
from mamlctl.timeseries.stream_detector import StreamState, run_stream, tail_magnitude

IDS = [f"s{i}" for i in range(6)]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite: the observe loop's SQL is the registry's portable Core; the durable e2e test
    runs the real server on it too."""
    return sqlite_url


class Served:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = RegistrySource(settings)
        self.app = create_app(settings, self.source, options=ServeOptions(reload=False))
        assert self.app.holder.reload(force=True)
        assert self.app.observer is not None
        self.app.observer.sync(self.app.holder.state)
        self.client = Client(self.app)

    def observe(self, *items: dict[str, Any], status: int = 200) -> Any:
        body = {"items": list(items)} if len(items) != 1 else items[0]
        response = self.client.post("/v1/observe", json=body)
        assert response.status_code == status, response.text
        return response.json()

    def close(self) -> None:
        self.source.close()


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
