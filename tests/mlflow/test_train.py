"""`mamlctl train` end to end on a tiny synthetic family (the root conftest's ``sines``),
against the embedded store and a real ``mlflow server``.

Oracles: the forecasts computed in memory at training time (the initializer loaded back by
``models:/maml-sines@champion`` must reproduce them bit for bit), torch vs onnxruntime for the
ONNX artifact, the alias rules, and the registry database rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from local_processes import free_port
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.errors import TrainingError
from mamlctl.maml.family_data import make_config
from mamlctl.maml.family_training import forecast_heldout
from mamlctl.registry.mlflow_models import models_uri
from mamlctl.registry.mlflow_store import MlflowStore, open_store
from mamlctl.registry.series_store import SqlSeriesStore
from mamlctl.settings import Settings
from mamlctl.stages.train import plan_training, run_training

TINY = ["--iterations", "24", "--meta-batch", "4", "--hidden", "16,16", "--query", "6"]
TINY_CONFIG: dict[str, Any] = {"iterations": 24, "meta_batch": 4, "hidden": (16, 16), "query": 6}


def _train(*extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["train", "--family", "sines", *TINY, "--json", *extra])
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def _family_data(settings: Settings, **config: Any) -> Any:
    from mamlctl.registry.db import transaction
    from mamlctl.registry.family_queries import get_family
    from mamlctl.registry.series_queries import load_family_series

    with transaction(settings) as session:
        family = get_family(session, "sines")
        series = load_family_series(session, "sines")
    return plan_training(family, series, make_config(**{**TINY_CONFIG, **config}))


def _db_versions(settings: Settings) -> tuple[list[tuple[int, str]], int | None]:
    from mamlctl.registry.db import transaction
    from mamlctl.registry.family_queries import get_family
    from mamlctl.registry.model_queries import list_initializer_versions

    with transaction(settings) as session:
        rows = [(r.version, r.run_id) for r in list_initializer_versions(session, "sines")]
        return rows, get_family(session, "sines").champion_version


def _run_capturing(data: Any, store: MlflowStore, **kwargs: Any) -> tuple[Any, Any]:
    """run_training, keeping the in-memory training result (the forecasts' oracle)."""
    import mamlctl.stages.train as stage

    captured: dict[str, Any] = {}
    original = stage.train_family

    def capture(*args: Any, **kw: Any) -> Any:
        captured["result"] = original(*args, **kw)
        return captured["result"]

    stage.train_family = capture  # type: ignore[assignment]
    try:
        outcome = run_training(data, store, **kwargs)
    finally:
        stage.train_family = original  # type: ignore[assignment]
    return outcome, captured["result"]


@pytest.mark.slow
def test_train_end_to_end(backend: str, seeded_registry: Any, tmp_path: Path) -> None:
    """CLI train -> v1 (its last iterate after 24 iterations loses to seasonal naive on the
    pure sines: the baseline gate registers it as challenger; a person promotes it); stage
    train -> v2 challenger;
    promote -> v2 champion, loaded back by models:/maml-sines@champion with bit-identical
    forecasts; registry DB mirrors it."""
    import onnxruntime as ort

    from mamlctl.maml.initializer import load_initializer

    settings = Settings()
    first = _train("--select", "last")
    m = first["metrics"]
    assert m["val_mase"] > m["val_seasonal_naive_mase"]
    assert (first["version"], first["aliases"]) == (1, ["challenger"])
    assert "worse than seasonal naive" in first["baseline_gate"]
    assert first["series_train"] == 5 and first["series_validation"] == 1
    assert _db_versions(settings) == ([(1, first["run_id"])], None)
    promoted = CliRunner().invoke(app, ["promote", "--family", "sines", "--version", "1"])
    assert promoted.exit_code == 0, promoted.output
    assert _db_versions(settings) == ([(1, first["run_id"])], 1)

    store = open_store(settings)
    run = store.client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.inner_lr"] == "0.3"
    assert run.data.params["train.inner_steps"] == "2"
    assert run.data.params["family.support_points"] == "60"
    assert run.data.params["data.fingerprint"] == first["data_fingerprint"]
    losses = store.client.get_metric_history(first["run_id"], "train_loss")
    assert max(m.step for m in losses) == 24
    val_steps = sorted(m.step for m in store.client.get_metric_history(first["run_id"], "val_mase"))
    assert val_steps == [6, 12, 18, 24, 24]  # four validation points, then the final value
    for key in ("val_mase", "val_pretrained_mase", "val_seasonal_naive_mase", "val_initial_mase"):
        assert run.data.metrics[key] == pytest.approx(first["metrics"][key])
    artifacts = {a.path for a in store.client.list_artifacts(first["run_id"])}
    assert artifacts == {"initializer", "model", "onnx", "plots", "series_ids.json"}
    ids_file = store.client.download_artifacts(first["run_id"], "series_ids.json", str(tmp_path))
    ids = json.loads(Path(ids_file).read_text())
    assert sorted(ids["train"] + ids["validation"]) == [f"s{i}" for i in range(6)]

    data = _family_data(settings, seed=1)
    outcome, result = _run_capturing(
        data, store, record=SqlSeriesStore(settings).record_initializer
    )
    assert (outcome.ref.version, outcome.ref.aliases) == (2, ("challenger",))
    versions = [(1, first["run_id"]), (2, outcome.run_id)]
    assert _db_versions(settings) == (versions, 1)

    promoted = CliRunner().invoke(app, ["promote", "--family", "sines", "--version", "2"])
    assert promoted.exit_code == 0, promoted.output
    assert store.resolve_alias("sines").version == 2
    assert _db_versions(settings) == (versions, 2)

    loaded = store.load(models_uri("sines"), loader=load_initializer)
    assert loaded.task_spec == {"kind": "window", **data.plan.task_spec().to_dict()}
    for name, tensor in result.params.items():
        assert np.array_equal(loaded.params[name].numpy(), tensor.numpy())
    again = forecast_heldout(result.data.plan, loaded.params, data.validation, steps=2)
    np.testing.assert_array_equal(again, result.forecasts.adapted)

    onnx_dir = Path(store.client.download_artifacts(outcome.run_id, "onnx", str(tmp_path)))
    session = ort.InferenceSession(
        str(onnx_dir / "initializer.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_forecast, _sigma) = session.run(None, {"window": data.validation.query_x[:, 0, :]})
    val = data.validation
    initial = (result.forecasts.initial - val.loc[:, None]) / val.scale[:, None]
    np.testing.assert_allclose(onnx_forecast, initial, atol=1e-5)


def _stage_runs(store: MlflowStore) -> list[Any]:
    experiment = store.client.get_experiment_by_name("maml-sines")
    if experiment is None:
        return []
    return list(store.client.search_runs([experiment.experiment_id]))


@pytest.mark.parametrize(
    ("raised", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_crash_or_ctrl_c_mid_training_ends_the_run_and_registers_nothing(
    embedded_settings: Settings, seeded_registry: Any, raised: BaseException, status: str
) -> None:
    settings = Settings()
    data = _family_data(settings)
    store = open_store(settings)
    recorded: list[Any] = []

    def explode(done: int, total: int, latest: Mapping[str, float]) -> None:
        if done >= 12:
            raise raised

    with pytest.raises(type(raised)):
        run_training(data, store, on_progress=explode, record=recorded.append)
    (run,) = _stage_runs(store)
    assert run.info.status == status
    assert store.client.search_registered_models("name = 'maml-sines'") == []
    assert recorded == []
    assert _db_versions(settings) == ([], None)


def test_bad_input_fails_before_any_run(embedded_settings: Settings, seeded_registry: Any) -> None:
    runner = CliRunner()
    cases = {
        ("--family", "nope"): "unknown family 'nope'",
        ("--family", "sines", "--inner-lr", "-1"): "invalid training option inner_lr",
        ("--family", "sines", "--support", "20"): "K counts the window, so K must be >= L + 1 = 25",
        ("--family", "sines", "--hidden", "a,b"): "invalid --hidden 'a,b'",
    }
    for args, message in cases.items():
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 1, (args, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line, line
    assert _stage_runs(open_store(Settings())) == []


def test_family_of_three_series_holds_out_in_time_and_too_short_is_refused(
    embedded_settings: Settings, seeded_registry: Any
) -> None:
    from mamlctl.domain import Series
    from mamlctl.registry.db import transaction
    from mamlctl.registry.series_queries import load_family_series

    with transaction(Settings()) as session:
        series = load_family_series(session, "sines")[:3]
    # 1-3 series are held out in time (their last H points) instead of refused
    data = plan_training(seeded_registry.family, series, make_config())
    assert data.plan.holdout == "time" and len(data.train) == 3
    need = data.plan.time_holdout_span
    short = [Series(series_id=s.series_id, values=s.values[: need - 1]) for s in series]
    with pytest.raises(TrainingError, match=f"no series with the {need} points training needs"):
        plan_training(seeded_registry.family, short, make_config())


def test_server_down_fails_fast_and_records_nothing(
    clean_env: Path, seeded_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MAMLCTL_TRACKING_URI", uri)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["train", "--family", "sines", *TINY])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert uri in line and "unreachable" in line
    assert _db_versions(Settings()) == ([], None)
