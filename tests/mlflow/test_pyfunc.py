"""The registered initializer is an MLflow Model (pyfunc flavor).

Oracles: ``mamlctl adapt --weights float32`` then the ``forecast`` stage (the exported ONNX
files run by the scoring server's runtime) on the same series: the pyfunc's in-memory
adaptation + forecast must give the same frame (ids, stamps exactly; numbers within float32
rounding of the file vs torch), zero-shot series included; ``mlflow models serve`` answers
``/invocations`` with the frame ``predict`` gives; the run's dataset input carries the data
fingerprint; ``store.load(..., loader=load_initializer)`` still reads the initializer.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from local_processes import free_port, start, wait_http
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import Series
from mamlctl.registry.mlflow_client import TrackingTarget
from mamlctl.settings import Settings

TINY = ["--iterations", "24", "--meta-batch", "4", "--hidden", "16,16", "--query", "6"]
LEVELS = [80.0, 95.0]


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def _add_short_series(settings: Settings, values: np.ndarray) -> None:
    """A series of the family with L <= n < K points (served zero-shot)."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    with open_registry(settings) as factory, factory.begin() as sess:
        store_series(
            sess,
            [
                IncomingSeries(
                    series=Series(series_id="short", values=values),
                    source="seed",
                    interval_seconds=3600.0,
                )
            ],
        )
        q.assign_family(sess, "sines", ["short"])


def _long_frame(values: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame({"unique_id": sid, "ds": np.arange(v.shape[0], dtype=np.int64), "y": v})
            for sid, v in values.items()
        ],
        ignore_index=True,
    )


@pytest.fixture
def trained(embedded_settings: Settings, seeded_registry: Any, monkeypatch: pytest.MonkeyPatch):
    values = dict(seeded_registry.values)
    values["short"] = values["s0"][:40]  # L = 24 <= 40 < K = 60
    _add_short_series(seeded_registry.settings, values["short"])
    train = _cli("train", "--family", "sines", *TINY)
    target = TrackingTarget.from_settings(embedded_settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", target.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", target.registry_uri)
    return train, values, target


def test_pyfunc_predict_equals_adapt_then_forecast(trained: Any, embedded_settings: Settings):
    import mlflow.pyfunc

    from mamlctl.stages.forecast import forecast_frame, load_targets

    _, values, _ = trained
    model = mlflow.pyfunc.load_model("models:/maml-sines@champion")
    frame = _long_frame(values).sample(frac=1.0, random_state=0)  # any row order
    got = model.predict(frame, params={"level": LEVELS})

    report = _cli("adapt", "--family", "sines", "--weights", "float32")
    assert report["adapted"] == 6 and report["zero_shot"] == 1
    settings = Settings()
    targets = load_targets(settings, family="sines", series_ids=list(values))
    want = forecast_frame(targets, models_dir=settings.models_dir, levels=LEVELS)

    assert list(got.columns) == list(want.columns)
    # series in order of first appearance in the input, H rows each
    first_seen = list(dict.fromkeys(frame["unique_id"]))
    assert got["unique_id"].tolist() == list(np.repeat(first_seen, 6))
    got = got.sort_values(["unique_id", "ds"], ignore_index=True)
    want = want.sort_values(["unique_id", "ds"], ignore_index=True)
    assert got["unique_id"].tolist() == want["unique_id"].tolist()
    assert np.array_equal(got["ds"].to_numpy(), want["ds"].to_numpy())
    assert got["ds"].tolist()[:6] == list(range(240, 246))
    for col in want.columns[2:]:
        np.testing.assert_allclose(got[col], want[col], rtol=2e-5, atol=2e-5, err_msg=col)
    # without levels: the point forecast alone
    plain = model.predict(frame)
    assert list(plain.columns) == ["unique_id", "ds", "yhat"]
    plain = plain.sort_values(["unique_id", "ds"], ignore_index=True)
    assert np.array_equal(plain["yhat"].to_numpy(), got["yhat"].to_numpy())


def test_version_is_an_mlflow_model_and_store_load_still_works(
    trained: Any, embedded_settings: Settings, tmp_path: Path
):
    from mlflow import MlflowClient
    from mlflow.models import Model

    from mamlctl.maml.initializer import load_initializer
    from mamlctl.registry.mlflow_store import open_store

    train, _, target = trained
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri)
    mv = client.get_model_version_by_alias("maml-sines", "champion")
    assert mv.source == f"runs:/{mv.run_id}/model"
    run = client.get_run(mv.run_id)
    assert run.info.run_name.startswith("train-sines-")
    # dataset input: the series the run saw, digest = the data fingerprint
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == train["data_fingerprint"]
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}
    # the MLflow Model: signature, input example, the initializer artifact
    local = Path(client.download_artifacts(mv.run_id, "model", str(tmp_path / "dl")))
    mlmodel = Model.load(str(local / "MLmodel"))
    assert mlmodel.signature is not None
    assert mlmodel.signature.inputs.input_names() == ["unique_id", "ds", "y"]
    assert mlmodel.signature.params.to_dict()[0]["name"] == "level"
    assert mlmodel.saved_input_example_info is not None
    pyfunc = mlmodel.flavors["python_function"]
    assert pyfunc["artifacts"]["initializer"]["path"] == "artifacts/initializer"
    # models from code: the model is a code file, nothing in its folder is a pickle
    assert "python_model" not in pyfunc and "pyfunc_code.py" in (local / "MLmodel").read_text()
    assert not [p.name for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    # the run's initializer/ and the model's copy are the same bytes; store.load reads it
    for name in ("weights.safetensors", "initializer.json"):
        got = client.download_artifacts(mv.run_id, f"initializer/{name}", str(tmp_path / "x"))
        run_copy = Path(got)
        assert run_copy.read_bytes() == (local / "artifacts" / "initializer" / name).read_bytes()
    store = open_store(embedded_settings)
    init = store.load("models:/maml-sines@champion", loader=load_initializer)
    direct = load_initializer(local / "artifacts" / "initializer")
    assert all(np.array_equal(init.params[k], direct.params[k]) for k in direct.params)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_like_predict(trained: Any, tmp_path: Path) -> None:
    import mlflow.pyfunc

    _, values, target = trained
    frame = _long_frame({k: values[k] for k in ("s1", "short")})
    want = mlflow.pyfunc.load_model("models:/maml-sines@champion").predict(
        frame, params={"level": LEVELS}
    )
    port = free_port()
    # `mlflow models serve` runs `exec uvicorn ...` from PATH: make that this interpreter's
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "uvicorn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn "$@"\n')
    (shims / "uvicorn").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": target.tracking_uri,
        "MLFLOW_REGISTRY_URI": target.registry_uri,
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/maml-sines@champion"]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = start("mlflow-models-serve", argv, env=env, log_dir=tmp_path / "logs")
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc=proc, timeout_s=120)
        body = json.dumps(
            {"dataframe_split": frame.to_dict(orient="split"), "params": {"level": LEVELS}}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["predictions"]
    finally:
        proc.stop()
    got = pd.DataFrame(rows)
    assert list(got.columns) == list(want.columns)
    assert got["unique_id"].tolist() == want["unique_id"].tolist()
    assert got["ds"].tolist() == want["ds"].tolist()
    for col in want.columns[2:]:
        assert np.array_equal(got[col].to_numpy(dtype=np.float64), want[col].to_numpy()), col
