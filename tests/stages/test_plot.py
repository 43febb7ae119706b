"""``mamlctl plot``: the picture and the arrays it drew.

Oracles: the registry's stored points and anomaly records (what was drawn equals them); the
served forecasts (``POST /v1/observe``'s answers) at the observed points; the PNG header (size)."""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from observe_fixtures import SIGMA, T0, TS_SERIES, Served, add_timestamped_series, record_models
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry.anomaly_queries import list_anomalies
from mamlctl.registry.db import open_registry
from mamlctl.registry.series_queries import load_series
from mamlctl.stages.plot import plot_series


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.fixture
def observed(seeded_registry: Any) -> Any:
    """Series t0 (100 hourly points, seasonal-naive model), then 60 observed points with a
    spike at 20 and a dropout at 40..41."""
    settings = seeded_registry.settings
    base = seeded_registry.values["s0"]
    add_timestamped_series(settings, base[:100])
    record_models(settings, [TS_SERIES])
    stream = base[100:160].copy()
    stream[20] += 3.0
    stream[40:42] = 0.0
    served = Served(settings)
    items = [
        {
            "series_id": TS_SERIES,
            "timestamp": (T0 + timedelta(hours=100 + i)).isoformat(),
            "value": float(v),
        }
        for i, v in enumerate(stream)
    ]
    answers = served.observe(*items)["results"]
    served.close()
    return settings, answers


def test_plot_draws_the_stored_points_records_and_served_forecasts(
    observed: Any, tmp_path: Path
) -> None:
    settings, answers = observed
    out = tmp_path / "pics" / "t0.png"
    data = plot_series(settings, TS_SERIES, out, width=640, height=320)
    assert _png_size(out) == (640, 320)
    with open_registry(settings) as factory, factory() as session:
        stored = load_series(session, TS_SERIES)
        records = list_anomalies(session, series_id=TS_SERIES)
    np.testing.assert_array_equal(data.values, stored.values)
    np.testing.assert_array_equal(data.x, stored.timestamps)
    assert len(stored.values) == 160
    assert data.flagged_positions.tolist() == [r.position for r in records] == [120, 140, 141]
    np.testing.assert_array_equal(data.flagged_values, [r.value for r in records])
    np.testing.assert_array_equal(data.flagged_forecast, [r.forecast for r in records])
    # the drawn forecast is what the server answered, point by point (replacements included)
    served_f = np.array([a["forecast"] for a in answers])
    np.testing.assert_array_equal(data.forecast[100:], served_f)
    np.testing.assert_array_equal(data.forecast[data.flagged_positions], data.flagged_forecast)
    assert np.all(np.isnan(data.forecast[:24])) and np.all(np.isfinite(data.forecast[24:]))
    np.testing.assert_allclose(data.sigma[24:], SIGMA, rtol=1e-6)


def test_plot_since_keeps_the_later_points(observed: Any, tmp_path: Path) -> None:
    settings, _ = observed
    since = T0 + timedelta(hours=130)
    data = plot_series(settings, TS_SERIES, tmp_path / "x.png", since=since)
    assert data.positions[0] == 130 and data.values.shape == (30,)
    assert data.flagged_positions.tolist() == [140, 141]
    assert _png_size(tmp_path / "x.png") == (1200, 500)


def test_cli_plot_writes_the_png_and_bad_input_is_one_line(
    observed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = observed
    monkeypatch.setenv("MAMLCTL_HOME", str(settings.home))
    if settings.database_url:
        monkeypatch.setenv("MAMLCTL_DATABASE_URL", settings.database_url)
    out = tmp_path / "t0.png"
    args = ["plot", TS_SERIES, "--out", str(out), "--width", "800", "--height", "400"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{out}: 160 points, 3 flagged"
    assert _png_size(out) == (800, 400)
    bad = CliRunner().invoke(app, ["plot", "nope", "--out", str(out)])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert bad.output.startswith("error:")
    bad = CliRunner().invoke(app, ["plot", TS_SERIES, "--out", str(out), "--since", "x"])
    assert bad.exit_code == 1
    assert bad.output.strip() == "error: --since 'x' is not an ISO 8601 time or a position"
