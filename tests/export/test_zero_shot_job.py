"""Zero-shot series through the real job, files and server: ``ingest`` + ``families assign`` +
``adapt`` (no training) serve a series too short to adapt by the family initializer, un-adapted,
and say so; once it holds K + C points the next ``adapt`` adapts it.

Oracle: the initializer's forecast computed here in torch from the same seeded weights, with the
series' support statistics by hand (``np.mean`` / ``np.std`` of its last ``min(n, K)`` points).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import ADAPTED, ZERO_SHOT, AdaptedModelRecord, Series
from mamlctl.maml.export import read_metadata
from mamlctl.maml.initializer import save_initializer
from mamlctl.maml.models import MLPConfig, build_model
from mamlctl.registry.model_files import open_verified
from mamlctl.settings import Settings
from mamlctl.timeseries.anomaly import score_from_z

runner = CliRunner()
L, H, K = 24, 6, 60
C = 24  # max(2H, P, 24) for the sines family (P = 24)
CONFIG = MLPConfig(input_size=L, output_size=H, hidden=(16, 16))


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the backend matrix of the job is covered by ``test_adapt_job.py``."""
    return sqlite_url


def _register(settings: Settings, tmp: Path, train: dict[str, Any] | None = None) -> None:
    from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, open_store

    folder = save_initializer(
        tmp / "init",
        model_config=CONFIG,
        params=dict(_theta_model().state_dict()),
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 2, "inner_lr": 0.05, **(train or {})},
    )
    store = open_store(settings)
    with store.start_run(family="sines", run_name="test-init") as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    store.register_initializer(
        family="sines", run_id=run.run_id, tags={}, description="test", promote=True
    )


def _theta_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG)


def _home(seeded_registry: Any, mlflow_db_template: Path) -> Settings:
    settings: Settings = seeded_registry.settings
    settings.ensure_home()
    shutil.copyfile(mlflow_db_template, settings.mlflow_dir / "mlflow.db")
    return settings


def _cli(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _current(settings: Settings) -> dict[str, AdaptedModelRecord]:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return {r.series_id: r for r in q.current_adapted_models(session, "sines")}


def _meta(settings: Settings, rec: AdaptedModelRecord) -> Any:
    return read_metadata(open_verified(settings.models_dir, rec.path, sha256=rec.sha256))


def _write_csv(path: Path, series_id: str, values: np.ndarray) -> Path:
    lines = ["series_id,value", *(f"{series_id},{v!r}" for v in values.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


class _Server:
    """The scoring app over the registry, called in-process through ASGI."""

    def __init__(self, settings: Settings) -> None:
        from mamlctl.serving.app import ServeOptions, create_app
        from mamlctl.serving.source import RegistrySource

        self.source = RegistrySource(settings)
        self.app = create_app(settings, self.source, options=ServeOptions(reload=False))
        assert self.app.holder.reload(force=True)

    def call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, url, **kwargs)

        response = asyncio.run(go())
        assert response.status_code == 200, response.text
        return dict(response.json())


def _oracle(history: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The initializer's un-adapted forecast (torch), normalised by the last min(n, K) points."""
    support = history[-min(len(history), K) :]
    loc = float(np.mean(support))
    scale = max(float(np.std(support)), 1e-3 * max(1.0, abs(loc)))
    z = torch.tensor((window - loc) / scale, dtype=torch.float32)[None]
    with torch.no_grad():
        out = _theta_model()(z)[0, :H].double().numpy()
    return out * scale + loc, loc, scale


def _sine(n: int, *, level: float = 8.0, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return level + 1.5 * np.sin(2 * np.pi * t / 24 + 0.3) + 0.05 * rng.standard_normal(n)


def test_a_series_added_after_training_is_served_zero_shot_then_adapted(
    seeded_registry: Any, mlflow_db_template: Path, tmp_path: Path
) -> None:
    settings = _home(seeded_registry, mlflow_db_template)
    _register(settings, tmp_path)  # no calibration prior: the documented fallback
    full = _sine(100)
    short = full[:40]  # L + H <= 40 < K + C = 84: can join the family, cannot adapt yet

    # a new series joins the trained family: ingest + families assign + adapt, no training
    _cli("ingest", str(_write_csv(tmp_path / "new40.csv", "new", short)))
    assert _cli("families", "assign", "sines", "new")["assigned"] == 1
    report = _cli("adapt", "--family", "sines")
    assert (report["adapted"], report["zero_shot"], report["too_short"]) == (6, 1, [])
    rec = _current(settings)["new"]
    assert rec.adaptation == ZERO_SHOT and rec.metadata["adaptation"] == ZERO_SHOT
    assert rec.support_end == 39 and rec.metadata["support_points"] == "40"
    blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
    meta = read_metadata(blob)
    assert meta.adaptation == ZERO_SHOT and meta.series_id == "new"
    assert _meta(settings, _current(settings)["s0"]).adaptation == ADAPTED
    # parity was checked on the zero-shot file as on the adapted ones
    assert any(p["series_id"] == "new" for p in report["parity"])
    assert report["metrics"]["parity_failed"] == 0

    # the server answers for it with the initializer's un-adapted forecast, and says so
    server = _Server(settings)
    window = short[-L:]
    actual = float(full[40])
    body = server.call(
        "POST",
        "/v1/score",
        json={"series_id": "new", "window": window.tolist(), "actual": [actual]},
    )
    expected, loc, scale = _oracle(short, window)
    assert meta.loc == pytest.approx(loc, rel=1e-12) and meta.scale == pytest.approx(scale)
    np.testing.assert_allclose(body["forecast"], expected, rtol=0, atol=2e-5 * scale + 1e-5)
    # no calibration prior in this initializer: sigma = 1.0 x scale, threshold = score(min_z)
    np.testing.assert_allclose(body["sigma"], np.full(H, scale), rtol=1e-6)
    assert body["threshold"] == pytest.approx(float(score_from_z(3.0)))
    r = actual - body["forecast"][0]
    assert body["anomaly_score"][0] == pytest.approx(float(score_from_z(r / scale)), abs=1e-6)
    assert body["lineage"]["adaptation"] == ZERO_SHOT
    assert body["lineage"]["initializer_version"] == 1
    assert server.call("GET", "/v1/series/new")["lineage"]["adaptation"] == ZERO_SHOT
    adapted_body = server.call("POST", "/v1/score", json={"series_id": "s0", "window": [5.0] * L})
    assert adapted_body["lineage"]["adaptation"] == ADAPTED
    shown = _cli("series", "show", "new")
    assert shown["adaptation"] == ZERO_SHOT
    text = runner.invoke(app, ["series", "show", "new"])
    assert text.exit_code == 0 and "zero-shot: the family initializer, un-adapted" in text.output

    # nothing new: the zero-shot model is up to date (the text report counts it apart)
    again = runner.invoke(app, ["adapt", "--family", "sines"])
    assert again.exit_code == 0, again.output
    assert "sines: 0 adapted, 0 zero-shot, 7 up to date, 0 too short" in again.output

    # the series gains enough points: the next adapt adapts it (no --force)
    _cli("ingest", str(_write_csv(tmp_path / "new100.csv", "new", full)))
    grown = _cli("adapt", "--family", "sines")
    assert (grown["adapted"], grown["zero_shot"], grown["up_to_date"]) == (1, 0, 6)
    rec2 = _current(settings)["new"]
    assert rec2.adaptation == ADAPTED and "adaptation" not in rec2.metadata
    assert rec2.support_end == 99
    assert _meta(settings, rec2).adaptation == ADAPTED
    assert server.app.holder.reload() is True
    after = server.call("POST", "/v1/score", json={"series_id": "new", "window": window.tolist()})
    assert after["lineage"]["adaptation"] == ADAPTED
    assert not np.allclose(after["forecast"], body["forecast"])
    assert _cli("series", "show", "new")["adaptation"] == ADAPTED
    server.source.close()


def test_every_series_with_one_window_has_a_current_model_after_adapt(
    seeded_registry: Any, mlflow_db_template: Path, tmp_path: Path
) -> None:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    settings = _home(seeded_registry, mlflow_db_template)
    prior = {"residual_scale_rel": 0.25, "threshold": 0.998}
    _register(settings, tmp_path, train={"calibration_prior": prior})
    # zero-shot below K; adapted from K (a60: no point left to calibrate on, so the family
    # prior; a83: calibrated on its own 23 points beyond the support)
    lengths = {"z30": L + H, "z50": 50, "z59": K - 1, "a60": K, "a83": K + C - 1}
    histories = {sid: _sine(n, level=20.0 + n, seed=n) for sid, n in lengths.items()}
    with open_registry(settings) as factory, factory.begin() as session:
        store_series(
            session,
            [
                IncomingSeries(series=Series(series_id=sid, values=v), source="t")
                for sid, v in histories.items()
            ],
        )
        q.assign_family(session, "sines", list(histories))

    report = _cli("adapt", "--family", "sines")  # int8-delta files (the default)
    assert (report["adapted"], report["zero_shot"], report["too_short"]) == (8, 3, [])
    current = _current(settings)
    with open_registry(settings) as factory, factory() as session:
        members = q.series_ids_in_family(session, "sines")
    assert sorted(current) == sorted(members)  # every member holds >= L points: all served
    adapted_meta = _meta(settings, current["s0"])
    for sid, rec in current.items():
        blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
        meta = read_metadata(blob)
        expected = ZERO_SHOT if sid.startswith("z") else ADAPTED
        assert rec.adaptation == meta.adaptation == expected, sid
        # one graph for both: zero-shot files share the adapted files' template (and bank)
        assert meta.template_id == adapted_meta.template_id
        if expected == ZERO_SHOT:
            support = histories[sid][-min(lengths[sid], K) :]
            assert meta.scale == pytest.approx(max(np.std(support), 1e-3 * np.mean(support)))
            assert rec.residual_scale == pytest.approx(0.25 * meta.scale)
            assert rec.threshold == 0.998 and rec.metadata["calibration_prior"] == "initializer"
            # int8-delta: the initializer itself, i.e. every stored delta is zero
            int8 = [
                t
                for t in onnx.load_from_string(blob).graph.initializer
                if t.data_type == onnx.TensorProto.INT8
            ]
            assert int8 and all(not onnx.numpy_helper.to_array(t).any() for t in int8)
        elif sid == "a60":  # adapted, calibrated with the family prior
            assert rec.residual_scale == pytest.approx(0.25 * meta.scale)
            assert rec.threshold == 0.998
        elif sid == "a83":  # adapted, calibrated on its own points
            assert rec.threshold != 0.998
    checked = {p["series_id"]: p["adaptation"] for p in report["parity"]}
    assert ZERO_SHOT in checked.values() and report["metrics"]["parity_failed"] == 0

    # z50 grows to K + C points: even a --stale-after job (which skips fresh models) adapts it
    grown = _sine(K + C, level=70.0, seed=50)
    grown[:50] = histories["z50"]
    with open_registry(settings) as factory, factory.begin() as session:
        store_series(
            session, [IncomingSeries(series=Series(series_id="z50", values=grown), source="t")]
        )
    stale = _cli("adapt", "--family", "sines", "--stale-after", "24h")
    counts = [stale[k] for k in ("selected", "adapted", "zero_shot", "up_to_date")]
    assert counts == [3, 1, 0, 2]  # the three zero-shot series re-checked; z50 adapted
    assert _current(settings)["z50"].adaptation == ADAPTED
