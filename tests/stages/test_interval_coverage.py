"""``forecast --level`` bands are calibrated: a random-walk family through the stages a user
runs (ingest, families assign, train, adapt + export, forecast).

Oracle: a random walk's h-step error has standard deviation ``sqrt(h)`` times the one-step one,
so bands that repeat the one-step scale for every step (the old rule) cover ever less of the
held-out continuation; the exported files' ``sigma`` must grow with the step and the bands must
cover the continuation at their nominal level, within a tolerance for 96 series x 12 steps
(steps of one walk are correlated, so the effective sample is small).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mamlctl.domain import Family

L, H, K, N, LENGTH = 24, 12, 48, 96, 240


@pytest.mark.slow
def test_random_walk_bands_cover_the_held_out_continuation(
    tmp_path: Path, mlflow_db_template: Path
) -> None:
    from mamlctl.evaluation.product_home import adapt_home, home_settings, ingest_values
    from mamlctl.maml.family_data import make_config
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.registry.series_store import SqlSeriesStore
    from mamlctl.stages.forecast import forecast_frame, load_targets
    from mamlctl.stages.train import train

    rng = np.random.default_rng(7)
    walks = 500.0 + np.cumsum(rng.standard_normal((N, LENGTH + H)), axis=1)
    settings = home_settings(tmp_path / "home")
    shutil.copyfile(mlflow_db_template, settings.mlflow_dir / "mlflow.db")
    family = Family(
        name="walks", period=None, interval_seconds=3600.0, window=L, horizon=H, support=K
    )
    ids = [f"w{i}" for i in range(N)]
    ingest_values(
        settings, family, {s: w[:LENGTH] for s, w in zip(ids, walks, strict=True)}, 3600.0,
        source="test",
    )  # fmt: skip
    store = open_store(settings)
    config = make_config(
        iterations=150, seed=0, time_budget_s=None, hidden=(32, 32), holdout_fraction=0.3,
        pretrained_baseline=False,
    )  # fmt: skip
    outcome = train("walks", config, series_store=SqlSeriesStore(settings), initializer_store=store)
    adapt_home(settings, store, "walks", ids, version=outcome.ref.version)

    targets = load_targets(settings, family="walks")
    frame = forecast_frame(targets, models_dir=settings.models_dir, levels=(80, 95))
    rows = frame.groupby("unique_id", sort=False)
    actual = walks[:, LENGTH:]

    def column(name: str) -> np.ndarray:
        return np.stack([rows.get_group(s)[name].to_numpy() for s in ids])

    width80 = column("yhat-hi-80") - column("yhat-lo-80")
    # the served sigma grows with the step, roughly as sqrt(12) = 3.5 by the last one
    growth = width80[:, -1] / width80[:, 0]
    assert 2.0 < float(np.median(growth)) < 6.0
    for level, tolerance in ((80, 10.0), (95, 6.0)):
        lo, hi = column(f"yhat-lo-{level}"), column(f"yhat-hi-{level}")
        inside = (actual >= lo) & (actual <= hi)
        assert abs(100 * inside.mean() - level) <= tolerance, (level, inside.mean())
        # and at the far steps too, where the one-step scale would cover far less
        assert abs(100 * inside[:, H // 2 :].mean() - level) <= tolerance + 2
