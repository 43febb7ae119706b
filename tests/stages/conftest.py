"""A home with adapted models on timestamped and positional series (sqlite only)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import Family, Series
from mamlctl.settings import Settings

L, H, K = 24, 6, 60
START = "2024-03-01 00:00"
#: Points each series held when it was adapted (support end = ADAPTED - 1); 200 stored after.
ADAPTED = 180


@dataclass(frozen=True)
class AdaptedHome:
    settings: Settings
    frame: pd.DataFrame  # the Nixtla frame ingested (timestamped series t0, t1)
    positional: dict[str, np.ndarray]  # series ingested without timestamps


def register_initializer(settings: Settings, tmp: Path, family: str) -> Any:
    """An untrained MLP initializer registered as the family's champion (fast, seeded)."""
    import torch

    from mamlctl.maml.initializer import save_initializer
    from mamlctl.maml.models import MLPConfig, build_model
    from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, open_store

    config = MLPConfig(input_size=L, output_size=H, hidden=(16, 16))
    torch.manual_seed(0)
    model = build_model(config)
    folder = save_initializer(
        tmp / "init",
        model_config=config,
        params=dict(model.state_dict()),
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 2, "inner_lr": 0.05},
    )
    store = open_store(settings)
    with store.start_run(family=family, run_name="test-init") as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    return store.register_initializer(
        family=family, run_id=run.run_id, tags={}, description="test", promote=True
    )


@pytest.fixture
def adapted_home(db_settings: Settings, tmp_path: Path, mlflow_db_template: Path) -> AdaptedHome:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.registry.ingest import IncomingSeries, store_series

    settings = db_settings
    settings.ensure_home()
    shutil.copyfile(mlflow_db_template, settings.mlflow_dir / "mlflow.db")
    t = np.arange(200)
    rng = np.random.default_rng(0)
    parts = []
    for i in range(2):
        y = 10 + i + np.sin(2 * np.pi * t / 24 + i) + 0.05 * rng.standard_normal(t.size)
        y[190] += 6.0 * (i + 1)  # a spike after the support end
        ds = pd.date_range(START, periods=t.size, freq="h") + pd.Timedelta(days=i)
        parts.append(pd.DataFrame({"unique_id": f"t{i}", "ds": ds, "y": y}))
    frame = pd.concat(parts, ignore_index=True)
    early = tmp_path / "early.csv"  # adapted on these; the rest arrives after adaptation
    frame.groupby("unique_id").head(ADAPTED).to_csv(early, index=False)
    result = CliRunner().invoke(app, ["ingest", str(early)])
    assert result.exit_code == 0, result.stderr
    positional = {"p0": 5 + np.cos(2 * np.pi * t / 24)}
    family = Family(
        name="sines", period=24, interval_seconds=3600.0, window=L, horizon=H, support=K
    )
    with transaction(settings) as session:
        q.upsert_family(session, family)
        store_series(
            session,
            [
                IncomingSeries(
                    series=Series(series_id="p0", values=positional["p0"][:ADAPTED]), source="t"
                )
            ],
        )
        q.assign_family(session, "sines", ["t0", "t1", "p0"])
    register_initializer(settings, tmp_path, "sines")
    result = CliRunner().invoke(app, ["adapt", "--family", "sines"])
    assert result.exit_code == 0, result.stderr
    full = tmp_path / "frame.csv"
    frame.to_csv(full, index=False)
    result = CliRunner().invoke(app, ["ingest", str(full)])
    assert result.exit_code == 0, result.stderr
    with transaction(settings) as session:
        store_series(
            session,
            [IncomingSeries(series=Series(series_id="p0", values=positional["p0"]), source="t")],
        )
    return AdaptedHome(settings=settings, frame=frame, positional=positional)
