"""The MLflow initializer store against the embedded SQLite store and a real server.

Oracles: the values we logged (params, metric histories), the bytes we uploaded, and the
alias rules of the issue (first -> champion, later -> challenger, promote moves champion).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from local_processes import free_port
from mlflow import MlflowClient

from mamlctl.domain import CHALLENGER, CHAMPION
from mamlctl.errors import NotFoundError, StoreError, TrackingUnavailableError
from mamlctl.registry.mlflow_client import TrackingTarget, probe
from mamlctl.registry.mlflow_models import models_uri
from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, MlflowStore, open_store
from mamlctl.settings import Settings


def _initializer_dir(root: Path, seed: int) -> Path:
    """An opaque initializer folder (weights bytes + config) standing in for safetensors."""
    folder = root / f"init-{seed}"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(hashlib.sha256(str(seed).encode()).digest() * 64)
    (folder / "config.json").write_text(f'{{"seed": {seed}, "hidden": [40, 40]}}\n')
    return folder


def _train_and_register(
    store: MlflowStore, family: str, tmp_path: Path, seed: int, *, promote: bool = False
) -> tuple[str, Path]:
    folder = _initializer_dir(tmp_path, seed)
    with store.start_run(family=family, run_name=f"seed-{seed}") as run:
        run.log_config({"model": {"hidden": [40, 40], "kind": "mlp"}, "seed": seed, "lr": 1e-3})
        for step in range(3):
            run.log_metrics({"train_loss": 1.0 / (step + 1), "val_mase": 2.0 - step}, step=step)
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    store.register_initializer(
        family=family,
        run_id=run.run_id,
        tags={"period": 24, "K": 72, "data_fingerprint": f"fp{seed}"},
        description=f"seed {seed}",
        promote=promote,
    )
    return run.run_id, folder


def test_run_logs_flattened_params_and_step_metrics(store: MlflowStore, family: str) -> None:
    with store.start_run(family=family, tags={"purpose": "test"}) as run:
        run.log_config({"model": {"hidden": [8, 8], "kind": "mlp"}, "inner": {"lr": 0.4}})
        for step in range(5):
            run.log_metrics({"train_loss": 10.0 - step, "skip": float("nan")}, step=step)
    client = store.client
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" == run.status
    assert logged.data.params == {"model.hidden": "[8, 8]", "model.kind": "mlp", "inner.lr": "0.4"}
    assert logged.data.tags["family"] == family
    assert logged.data.tags["purpose"] == "test"
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, 10.0 - s) for s in range(5)
    ]
    assert client.get_metric_history(run.run_id, "skip") == []
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.name == f"maml-{family}"


def test_alias_lifecycle_and_byte_identical_round_trip(
    store: MlflowStore, family: str, tmp_path: Path
) -> None:
    run1, folder1 = _train_and_register(store, family, tmp_path, seed=1)
    run2, folder2 = _train_and_register(store, family, tmp_path, seed=2)

    champion = store.resolve_alias(family, CHAMPION)
    challenger = store.resolve_alias(family, CHALLENGER)
    assert (champion.version, champion.run_id, champion.aliases) == (1, run1, (CHAMPION,))
    assert (challenger.version, challenger.run_id, challenger.aliases) == (2, run2, (CHALLENGER,))
    assert champion.source_uri == f"runs:/{run1}/{INITIALIZER_ARTIFACT}"

    # The champion's artifact comes back byte-identical through models:/...@champion.
    def read_all(path: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}

    loaded = store.load(models_uri(family), loader=read_all)
    assert loaded == read_all(folder1)

    # Promotion moves champion to v2 and drops its challenger alias.
    promoted = store.set_alias(family=family, version=2, alias=CHAMPION)
    assert promoted.aliases == (CHAMPION,)
    assert store.resolve_alias(family).version == 2
    with pytest.raises(NotFoundError, match="challenger"):
        store.resolve_alias(family, CHALLENGER)
    assert store.load(models_uri(family), loader=read_all) == read_all(folder2)
    assert store.load(f"models:/maml-{family}/1", loader=read_all) == read_all(folder1)

    listed = store.list_versions(family=family)
    assert [(v.ref.version, v.ref.aliases) for v in listed] == [(2, (CHAMPION,)), (1, ())]
    assert listed[0].tags["data_fingerprint"] == "fp2"
    assert listed[0].tags["family"] == family
    assert listed[0].ref.metrics == {"val_mase": 0.0}
    assert listed[1].description == "seed 1"


def test_alias_moved_outside_mamlctl_is_followed(
    store: MlflowStore, family: str, tmp_path: Path
) -> None:
    """Whoever moves the alias (here: a plain MlflowClient, as the UI does) wins."""
    _train_and_register(store, family, tmp_path, seed=1)
    run2, _ = _train_and_register(store, family, tmp_path, seed=2)
    other = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.target.registry_uri)
    other.set_registered_model_alias(f"maml-{family}", CHAMPION, "2")
    assert store.resolve_alias(family).run_id == run2


def test_promote_flag_makes_new_version_champion(
    store: MlflowStore, family: str, tmp_path: Path
) -> None:
    _train_and_register(store, family, tmp_path, seed=1)
    _train_and_register(store, family, tmp_path, seed=2, promote=True)
    assert store.resolve_alias(family).version == 2
    assert [v.ref.aliases for v in store.list_versions(family=family)] == [(CHAMPION,), ()]


@pytest.mark.parametrize(
    ("raised", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_interrupted_run_ends_failed_or_killed_and_is_never_registered(
    store: MlflowStore, family: str, raised: BaseException, status: str
) -> None:
    with pytest.raises(type(raised)), store.start_run(family=family) as run:
        run.log_metrics({"train_loss": 1.0}, step=0)
        raise raised
    assert store.get_run_status(run.run_id) == status == run.status
    with pytest.raises(StoreError, match=f"ended {status}"):
        store.register_initializer(family=family, run_id=run.run_id, tags={}, description="x")
    assert store.client.search_model_versions(f"name = 'maml-{family}'") == []
    # Metrics logged before the failure were flushed.
    assert [m.value for m in store.client.get_metric_history(run.run_id, "train_loss")] == [1.0]


def test_unknown_version_and_family_are_not_found(store: MlflowStore, family: str) -> None:
    with pytest.raises(NotFoundError, match=f"maml-{family}"):
        store.resolve_alias(family)
    with pytest.raises(NotFoundError, match=f"maml-{family}"):
        store.list_versions(family=family)


def test_embedded_store_keeps_everything_under_home(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    store = open_store(embedded_settings)
    assert store.tracking_uri == f"sqlite:///{embedded_settings.home / 'mlflow' / 'mlflow.db'}"
    run_id, folder = _train_and_register(store, "emb", tmp_path, seed=3)
    stored = embedded_settings.artifact_root / "maml-emb" / run_id / "artifacts" / "initializer"
    assert (stored / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()


def test_server_down_fails_fast_naming_the_uri(clean_env: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    settings = Settings(tracking_uri=uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=uri.replace(".", r"\.")) as info:
        open_store(settings)
    assert time.monotonic() - started < 5.0
    assert "\n" not in str(info.value)


def test_probe_skips_local_stores(tmp_path: Path) -> None:
    probe(TrackingTarget(tracking_uri="sqlite:///x.db", registry_uri="sqlite:///x.db"))


def test_server_stopping_mid_session_raises_tracking_unavailable(
    clean_env: Path, tmp_path: Path
) -> None:
    """A store opened while the server was up fails within seconds once it is gone."""
    import subprocess
    import sys

    from local_processes import stop_process_group, wait_for_health

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-c", _TINY_HEALTH_SERVER, str(port)], start_new_session=True
    )
    try:
        wait_for_health(uri, timeout_s=30, process=process)
        store = open_store(Settings(tracking_uri=uri))
    finally:
        stop_process_group(process)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=uri.replace(".", r"\.")):
        store.resolve_alias("anything")
    assert time.monotonic() - started < 15.0


_TINY_HEALTH_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_corrupted_initializer_artifact_is_one_line_naming_the_version(
    store: MlflowStore, family: str, tmp_path: Path
) -> None:
    # Oracle: the weights' sha256 recorded at save; one bit flipped before logging.
    import json

    from mamlctl.errors import IntegrityError
    from mamlctl.maml.initializer import (
        CONFIG_FILE,
        WEIGHTS_FILE,
        load_initializer,
        save_initializer,
    )
    from mamlctl.maml.models import MLPConfig, build_model

    config = MLPConfig(input_size=8, output_size=2, hidden=(4,))
    folder = tmp_path / "init"
    save_initializer(
        folder,
        model_config=config,
        params=dict(build_model(config).named_parameters()),
        task_spec={"window": 8, "horizon": 2},
        train_config={},
    )
    raw = bytearray((folder / WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0x01
    (folder / WEIGHTS_FILE).write_bytes(bytes(raw))
    assert json.loads((folder / CONFIG_FILE).read_text())["weights_sha256"]
    with store.start_run(family=family) as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    store.register_initializer(family=family, run_id=run.run_id, tags={}, description="flip")
    with pytest.raises(IntegrityError, match=rf"initializer maml-{family} v1 .*weights") as err:
        store.load(models_uri(family), loader=load_initializer)
    assert "\n" not in str(err.value)
