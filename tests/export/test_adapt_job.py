"""``mamlctl adapt`` / ``mamlctl export`` end to end on SQLite and PostgreSQL: consistency
(rows only for complete, hashed files), idempotence, stale selection, lineage, MLflow run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from initializer_fixtures import register_test_initializer as _register
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import AdaptedModelRecord, InitializerRef
from mamlctl.maml.export import read_metadata
from mamlctl.maml.models import MLPConfig, build_model
from mamlctl.registry.model_files import iter_model_files, open_verified
from mamlctl.settings import Settings
from mamlctl.stages.adapt import select_series
from mamlctl.timeseries.durations import parse_timedelta as parse_duration

runner = CliRunner()
L, H, K = 24, 6, 60
#: Run a test on SQLite only (the backend matrix is covered by the consistency tests).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def registered(seeded_registry: Any, tmp_path: Path, mlflow_db_template: Path) -> Any:
    seeded_registry.settings.ensure_home()
    shutil.copyfile(mlflow_db_template, seeded_registry.settings.mlflow_dir / "mlflow.db")
    _register(seeded_registry.settings, tmp_path)
    return seeded_registry


def _current(settings: Settings) -> dict[str, AdaptedModelRecord]:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return {r.series_id: r for r in q.current_adapted_models(session, "sines")}


def _history(settings: Settings, sid: str) -> list[AdaptedModelRecord]:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with open_registry(settings) as factory, factory() as session:
        return q.adapted_model_history(session, sid)


def _adapt(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["adapt", "--family", "sines", "--json", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _runs(settings: Settings) -> list[str]:
    from mamlctl.registry.mlflow_store import open_store

    store = open_store(settings)
    experiment = store.client.get_experiment_by_name("maml-sines")
    return sorted(r.info.run_id for r in store.client.search_runs([experiment.experiment_id]))


def _assert_consistent(settings: Settings) -> dict[str, AdaptedModelRecord]:
    """Every current row points at a complete file whose hash and metadata match."""
    current = _current(settings)
    for sid, rec in current.items():
        blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
        meta = read_metadata(blob)
        assert meta.series_id == sid
        assert meta.initializer_version == rec.initializer_version
        assert meta.threshold == rec.threshold and meta.residual_scale == rec.residual_scale
    return current


def test_adapt_exports_records_and_logs_a_run(registered: Any) -> None:
    settings = registered.settings
    report = _adapt()
    assert (report["adapted"], report["up_to_date"], report["selected"]) == (6, 0, 6)
    assert report["initializer"]["version"] == 1
    current = _assert_consistent(settings)
    assert sorted(current) == [f"s{i}" for i in range(6)]
    for sid, rec in current.items():
        assert (rec.support, rec.window, rec.horizon) == (60, L, H)
        assert rec.support_end == 239  # last position of a 240-point series
        meta = read_metadata(open_verified(settings.models_dir, rec.path, sha256=rec.sha256))
        assert meta.loc == pytest.approx(registered.values[sid][-K:].mean())
    # The job's MLflow run: linked to the initializer version, with counts and parity.
    from mamlctl.registry.mlflow_store import open_store

    run = open_store(settings).client.get_run(report["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mamlctl.initializer_version"] == "1"
    assert run.data.params["adapt.steps"] == "2"
    assert run.data.metrics["series_adapted"] == 6
    assert run.data.metrics["parity_checked"] == 4
    assert run.data.metrics["parity_failed"] == 0
    assert run.data.metrics["parity_max_rel_error"] <= 1e-5
    # int8-delta files (the default): parity holds for the weights the files store; against
    # the unquantized adapted weights they differ by well under a thousandth of the scale
    assert 0 < run.data.metrics["quantization_max_rel_error"] < 1e-3
    assert run.data.metrics["support_loss_after"] < run.data.metrics["support_loss_before"]


@sqlite_only
def test_recipe_initializer_exports_clipped_head_only_files(
    registered: Any, tmp_path: Path
) -> None:
    """Season skip + MAE + non-negative clip + head-only scope: the job's files clip at 0 in
    the graph, record the loss, carry theta's body weights, and pass the job's parity check."""
    from onnx import numpy_helper

    from mamlctl.maml.onnx_parity import ort_session

    settings = registered.settings
    train = {"loss": "mae", "nonnegative": True, "adapt_scope": "head"}
    ref = _register(settings, tmp_path, seed=3, season_skip=12, train=train)
    report = _adapt()
    assert report["initializer"]["version"] == ref.version and report["adapted"] == 6
    from mamlctl.registry.mlflow_store import open_store

    run = open_store(settings).client.get_run(report["run_id"])
    assert run.data.metrics["parity_failed"] == 0 and run.data.metrics["parity_checked"] == 4
    torch.manual_seed(3)
    theta = dict(build_model(MLPConfig(input_size=L, output_size=H, hidden=(16, 16))).state_dict())
    for rec in _assert_consistent(settings).values():
        blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
        meta = read_metadata(blob)
        assert (meta.loss, meta.nonnegative, meta.model_config["season_skip"]) == ("mae", True, 12)
        proto = onnx.load_from_string(blob)
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        body = theta["layers.0.bias"].numpy()
        assert any(a.shape == body.shape and np.array_equal(a, body) for a in inits.values())
        # windows far below the series' level: the clip holds every forecast at >= 0
        low = np.full((3, L), meta.loc - 50 * meta.scale, dtype=np.float32)
        forecast = ort_session(blob).run(None, {"window": low})[0]
        assert (forecast >= 0).all() and (forecast == 0).any()


def test_weight_format_is_part_of_the_job(registered: Any) -> None:
    """``--weights float32`` re-adapts every series into exact float32 files (no int8, no
    quantization error); switching back re-adapts again; an unknown format is one line."""
    from mamlctl.registry.mlflow_store import open_store

    settings = registered.settings
    _adapt()
    report = _adapt("--weights", "float32")
    assert report["adapted"] == 6
    metrics = open_store(settings).client.get_run(report["run_id"]).data.metrics
    assert "quantization_max_rel_error" not in metrics and metrics["parity_failed"] == 0
    for rec in _assert_consistent(settings).values():
        blob = open_verified(settings.models_dir, rec.path, sha256=rec.sha256)
        types = {i.data_type for i in onnx.load_from_string(blob).graph.initializer}
        assert onnx.TensorProto.INT8 not in types
    assert _adapt()["adapted"] == 6
    result = runner.invoke(app, ["adapt", "--family", "sines", "--weights", "int4"])
    assert result.exit_code != 0 and "weights" in result.output
    assert "Traceback" not in result.output


def test_rerun_is_idempotent_and_force_keeps_history(registered: Any) -> None:
    settings = registered.settings
    _adapt()
    first = _current(settings)
    files = list(iter_model_files(settings.models_dir))
    runs_before = _runs(settings)
    again = _adapt()
    assert (again["adapted"], again["up_to_date"]) == (0, 6)
    # a job with nothing to do opens no MLflow run
    assert again["run_id"] is None and _runs(settings) == runs_before
    assert _current(settings) == first
    assert list(iter_model_files(settings.models_dir)) == files
    forced = _adapt("--force", "--series", "s2")
    assert forced["adapted"] == 1
    history = _history(settings, "s2")
    assert len(history) == 2 and [h.is_current for h in history] == [False, True]
    # The previous file is untouched and still verifies.
    open_verified(settings.models_dir, history[0].path, sha256=history[0].sha256)


@sqlite_only
def test_stale_selection_follows_age_and_champion(registered: Any, tmp_path: Path) -> None:
    settings = registered.settings
    _adapt("--series", "s0", "--series", "s1")
    fresh = _adapt("--stale-after", "24h")
    assert fresh["selected"] == 4  # only the series without a model
    assert _adapt("--stale-after", "24h")["selected"] == 0
    _register(settings, tmp_path, seed=1, promote=True)  # champion moves to version 2
    moved = _adapt("--stale-after", "24h")
    assert (moved["selected"], moved["adapted"]) == (6, 6)
    assert {r.initializer_version for r in _current(settings).values()} == {2}
    _assert_consistent(settings)


def test_select_series_by_age() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    ref = InitializerRef(family="f", registered_model="maml-f", version=3, run_id="r3")

    def rec(sid: str, version: int, age_h: float, run: str = "") -> AdaptedModelRecord:
        return AdaptedModelRecord(
            series_id=sid,
            family="f",
            registered_model="maml-f",
            initializer_version=version,
            initializer_run_id=run or f"r{version}",
            path="p",
            sha256="0" * 64,
            adapted_at=now - timedelta(hours=age_h),
            support=1,
            window=1,
            horizon=1,
            residual_scale=1.0,
            threshold=0.99,
        )

    current = {"old": rec("old", 3, 30), "new": rec("new", 3, 1), "v2": rec("v2", 2, 1)}
    current["v3-deleted-model"] = rec("v3-deleted-model", 3, 1, run="r-before")  # same number
    picked = select_series(
        current,
        ["old", "new", "v2", "v3-deleted-model", "none"],
        initializer=ref,
        stale_after=timedelta(hours=24),
        now=now,
    )
    assert picked == ["old", "v2", "v3-deleted-model", "none"]
    assert select_series(current, ["new"], initializer=ref, stale_after=None, now=now) == ["new"]
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("7d") == timedelta(days=7)


@sqlite_only
def test_export_copies_the_verified_file(registered: Any, tmp_path: Path) -> None:
    settings = registered.settings
    _adapt()
    out = tmp_path / "out" / "s3.onnx"
    result = runner.invoke(app, ["export", "--series", "s3", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rec = _current(settings)["s3"]
    assert out.read_bytes() == (settings.models_dir / rec.path).read_bytes()
    assert json.loads(result.stdout)["sha256"] == rec.sha256
    # A tampered model file is refused with one line, no traceback.
    (settings.models_dir / rec.path).write_bytes(b"tampered")
    bad = runner.invoke(app, ["export", "--series", "s3", "-o", str(out)])
    assert bad.exit_code == 1 and "sha256" in bad.output and "Traceback" not in bad.output


@sqlite_only
def test_unknown_family_and_series_are_one_line_errors(registered: Any) -> None:
    result = runner.invoke(app, ["adapt", "--family", "nope"])
    assert result.exit_code == 1 and "error: unknown family 'nope'" in result.output
    result = runner.invoke(app, ["adapt", "--family", "sines", "--series", "zz"])
    assert result.exit_code == 1 and "not in family" in result.output
    result = runner.invoke(app, ["adapt", "--family", "sines", "--stale-after", "soon"])
    assert result.exit_code == 1 and "invalid duration" in result.output
    result = runner.invoke(app, ["export", "--series", "s0", "-o", "x.onnx"])
    assert result.exit_code == 1 and "no adapted model" in result.output


@pytest.mark.slow
def test_kill_9_mid_job_leaves_no_row_without_its_file(registered: Any) -> None:
    """``kill -9`` while files are being written, and again after some chunks were recorded:
    no row ever points at a missing or partial file, every series keeps a current model, and
    the next run completes the work."""
    settings = registered.settings
    _adapt()  # every series has a current model
    before = _current(settings)
    env = {**os.environ, "MAMLCTL_HOME": str(settings.home), "OMP_NUM_THREADS": "1"}
    if settings.database_url:
        env["MAMLCTL_DATABASE_URL"] = settings.database_url
    cmd = [sys.executable, "-c", "from mamlctl.cli.app import main; main()"]
    args = ["adapt", "--family", "sines", "--force", "--chunk", "1"]

    def n_entries() -> int:
        return sum(1 for _ in settings.models_dir.rglob("*"))

    killed_after_rows = False
    for wait_rows in (False, True):
        start_files = n_entries()
        start_rows = len(_history(settings, "s0")) + len(_history(settings, "s5"))
        with subprocess.Popen(
            [*cmd, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as proc:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if not wait_rows and n_entries() > start_files:
                    break  # the first file (or its temporary) is being written
                rows = len(_history(settings, "s0")) + len(_history(settings, "s5"))
                if wait_rows and rows > start_rows:
                    break  # a chunk is recorded (s0 first), the job is still running
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed_after_rows = killed_after_rows or wait_rows
            proc.wait()
        current = _assert_consistent(settings)
        assert sorted(current) == sorted(before)  # nobody lost their current model
    assert killed_after_rows
    final = _adapt()
    assert final["adapted"] + final["up_to_date"] == 6
    _assert_consistent(settings)
    assert not list(settings.models_dir.rglob(".*tmp-*"))


def test_bulk_recording_equals_record_adapted_model(seeded_registry: Any) -> None:
    """Oracle: the registry's one-row function; same fields, same current-flip semantics."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.bulk_models import NewModel, record_models_bulk
    from mamlctl.registry.db import open_registry

    when = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    common = {"support": 60, "window": L, "horizon": H, "adapted_at": when}
    with open_registry(seeded_registry.settings) as factory:
        with factory.begin() as s:
            q.record_initializer_version(s, family="sines", version=1, run_id="r1")
            for sid in ("s0", "s1"):  # a previous current model each, of an earlier job
                q.record_adapted_model(
                    s,
                    series_id=sid,
                    registered_model="maml-sines",
                    initializer_version=1,
                    path=f"old-{sid}",
                    sha256="a" * 64,
                    residual_scale=1.0,
                    threshold=0.99,
                    **{**common, "adapted_at": when - timedelta(days=1)},
                )
        with factory.begin() as s:
            ref = q.record_adapted_model(
                s,
                series_id="s0",
                registered_model="maml-sines",
                initializer_version=1,
                path="p",
                sha256="b" * 64,
                residual_scale=0.5,
                threshold=0.998,
                metadata={"k": "v"},
                support_end=239,
                **common,
            )
            record_models_bulk(
                s,
                registered_model="maml-sines",
                initializer_version=1,
                initializer_run_id="r1",
                entries=[
                    NewModel(
                        series_id="s1",
                        path="p",
                        sha256="b" * 64,
                        residual_scale=0.5,
                        threshold=0.998,
                        support_end=239,
                        metadata={"k": "v"},
                    )
                ],
                **common,
            )
        with factory() as s:
            got = q.current_adapted_model(s, "s1")
            history = q.adapted_model_history(s, "s1")
    assert got is not None
    assert got == AdaptedModelRecord(**{**_fields(ref), "series_id": "s1"})
    assert [h.is_current for h in history] == [False, True]


def test_bulk_recording_is_once_per_job(seeded_registry: Any) -> None:
    """A chunk recorded again by the same job (same initializer, same adapted_at: a Ray task
    retried after its worker died post-commit) adds nothing; another job's rows still go in."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.bulk_models import NewModel, record_models_bulk
    from mamlctl.registry.db import open_registry

    when = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)

    def record(at: datetime, sha: str) -> int:
        with factory.begin() as s:
            return record_models_bulk(
                s,
                registered_model="maml-sines",
                initializer_version=1,
                initializer_run_id="r1",
                support=60,
                window=L,
                horizon=H,
                adapted_at=at,
                entries=[
                    NewModel(
                        series_id=sid,
                        path=f"p-{sid}-{sha}",
                        sha256=sha * 64,
                        residual_scale=0.5,
                        threshold=0.998,
                        support_end=239,
                        metadata={},
                    )
                    for sid in ("s0", "s1")
                ],
            )

    with open_registry(seeded_registry.settings) as factory:
        with factory.begin() as s:
            q.record_initializer_version(s, family="sines", version=1, run_id="r1")
        assert record(when, "a") == 2
        assert record(when, "b") == 0  # the same job again (even with other bytes): skipped
        assert record(when + timedelta(microseconds=1), "c") == 2  # the next job
        with factory() as s:
            for sid in ("s0", "s1"):
                history = q.adapted_model_history(s, sid)
                assert [h.sha256[0] for h in history] == ["a", "c"]
                assert [h.is_current for h in history] == [False, True]


def _fields(rec: AdaptedModelRecord) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(rec, f.name) for f in fields(rec)}
