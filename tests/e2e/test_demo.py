"""``mamlctl demo`` end to end on the shipped M4 Hourly subset (fixed, seeded iterations so
the models are deterministic): its JSON summary against the files it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.settings import Settings


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("demo") / "home"
    result = CliRunner().invoke(
        app,
        ["demo", "--home", str(home), "--iterations", "40", "--latency-requests", "20", "--json"],
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@pytest.mark.slow
def test_demo_summary_matches_registry_and_onnx_files(demo_run: dict[str, Any]) -> None:
    import onnxruntime as ort

    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    s = demo_run
    home = Path(s["home"])
    # 60 real series, one family (period 24 at 1 h), all trained on, registered, adapted
    assert s["data"]["series"] == 60
    fams = {f["name"]: f for f in s["families"]}
    assert fams["hourly"]["series"] == 60 and fams["hourly"]["period"] == 24
    trained = s["trained"]
    assert (trained["registered_model"], trained["version"]) == ("maml-hourly", 1)
    assert "champion" in trained["aliases"] and trained["iterations"] == 40
    assert s["adapted"]["series"] == 60 and s["adapted"]["initializer_version"] == 1
    assert s["adapted"]["parity_max_rel_error"] <= 1e-5

    settings = Settings(home=home)
    with open_registry(settings) as factory, factory() as session:
        current = {r.series_id: r for r in q.current_adapted_models(session, "hourly")}
        family = q.get_family(session, "hourly")
    assert family.champion_version == 1 and len(current) == 60

    injected = [r for r in s["scores"] if r["injected_anomaly"]]
    normal = [r for r in s["scores"] if not r["injected_anomaly"]]
    assert len(injected) == 1 and len(normal) == 4
    assert injected[0]["is_anomaly"] == [True]
    assert all(r["is_anomaly"] == [False] for r in normal)
    for r in s["scores"]:
        rec = current[r["series_id"]]
        assert r["model_sha256"] == rec.sha256 and r["initializer_version"] == 1
        # oracle: onnxruntime on the series' own file, fed the same window
        with open_registry(settings) as factory, factory() as session:
            window = q.last_points(session, r["series_id"], family.window)[0]
        assert window[-1] == r["window_last"]
        sess = ort.InferenceSession(str(home / "models" / rec.path))
        forecast, sigma = sess.run(None, {"window": window.astype(np.float32)[None, :]})
        # bit for bit: the export's batched linear form is what the server's bank computes
        np.testing.assert_array_equal(np.asarray(r["forecast"], dtype=np.float32), forecast[0])
        np.testing.assert_array_equal(np.asarray(r["sigma"], dtype=np.float32), sigma[0])
        # the score is |actual - forecast| / sigma against the threshold the registry holds
        assert r["threshold"] == pytest.approx(rec.threshold)
    assert s["latency"]["requests"] == 20 and s["latency"]["p50_ms"] > 0
    # the latency line is `mamlctl serve`'s own (a child process), not an in-process server
    log = (home / "serve.log").read_text()
    assert f"mamlctl serve: {s['server']['url']}" in log, log
    assert any("mamlctl ui" in line for line in s["next"])


def test_demo_refuses_a_used_home(tmp_path: Path) -> None:
    home = tmp_path / "used"
    (home / "mlflow").mkdir(parents=True)
    result = CliRunner().invoke(app, ["demo", "--home", str(home)])
    assert result.exit_code == 1
    assert "already holds a mamlctl home" in result.output
