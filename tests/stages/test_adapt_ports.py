"""The adapt stage over its ports: on the in-memory ports it makes what it makes on the SQL
registry from the same series and initializer.

Oracles: the SQL-port job's own report and rows (counts, plan, metrics, residual scales,
thresholds, support ends, metadata), and each pair of exported files run by onnxruntime on the
same window (equal forecasts); a second job finds every series up to date on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mamlctl.domain import Series
from mamlctl.maml.adaptation import AdaptConfig
from mamlctl.maml.family_data import make_config
from mamlctl.registry.db import open_registry
from mamlctl.registry.model_files import open_verified
from mamlctl.registry.series_store import SqlAdaptedModelStore, SqlSeriesStore
from mamlctl.stages.adapt import AdaptReport, AdaptRequest, adapt_family
from mamlctl.stages.memory import (
    MemoryAdaptedModelStore,
    MemoryInitializerStore,
    MemorySeriesStore,
)
from mamlctl.stages.train import train

TINY: dict[str, Any] = {"iterations": 12, "meta_batch": 4, "hidden": (16, 16), "query": 6}
RUN_KEY = "adapt_run_id"  # differs by construction (two runs)


def _forecast(models_dir: Path, rec: Any, window: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    blob = open_verified(models_dir, rec.path, sha256=rec.sha256)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = window[-rec.window :].astype(np.float32)[None, :]
    return np.asarray(sess.run(["forecast"], {"window": x})[0][0])


def test_memory_ports_equal_the_sql_ports(seeded_registry: Any, tmp_path: Path) -> None:
    settings = seeded_registry.settings
    sql_series = SqlSeriesStore(settings)
    family = sql_series.get_family("sines")
    series = [
        Series(series_id=s.series_id, values=s.values, family="sines")
        for s in sql_series.family_series("sines")
    ]
    initializers = MemoryInitializerStore(tmp_path / "runs")
    train(
        "sines",
        make_config(**TINY),
        series_store=MemorySeriesStore([family], series),
        initializer_store=initializers,
    )
    memory = MemoryAdaptedModelStore([family], series)
    # version 1 by URI (a tiny training may lose the baseline gate: no champion then)
    request = AdaptRequest(family="sines", version=1, chunk_series=4)  # two chunks of six

    def both() -> tuple[AdaptReport, AdaptReport, SqlAdaptedModelStore, Any]:
        for d in ("sql", "mem"):
            (tmp_path / d).mkdir(exist_ok=True)
        with open_registry(settings) as factory:
            sql = SqlAdaptedModelStore(factory)
            on_sql = adapt_family(
                request,
                AdaptConfig(),
                models=sql,
                initializers=initializers,
                models_dir=tmp_path / "sql",
            )
            sql_rows = {r.series_id: r for r in sql.current_models("sines")}
        on_memory = adapt_family(
            request,
            AdaptConfig(),
            models=memory,
            initializers=initializers,
            models_dir=tmp_path / "mem",
        )
        return on_sql, on_memory, sql, sql_rows

    on_sql, on_memory, _, sql_rows = both()
    assert on_sql.adapted == on_memory.adapted == 6
    assert (on_memory.zero_shot, on_memory.up_to_date, on_memory.too_short) == (
        on_sql.zero_shot,
        on_sql.up_to_date,
        on_sql.too_short,
    )
    assert on_memory.initializer.version == on_sql.initializer.version == 1
    assert on_memory.plan == on_sql.plan
    assert on_memory.metrics == on_sql.metrics
    assert on_memory.run_id is not None and on_sql.run_id is not None
    assert initializers.runs[on_memory.run_id].status == "FINISHED"

    mem_rows = {r.series_id: r for r in memory.current_models("sines")}
    assert sorted(mem_rows) == sorted(sql_rows) == [s.series_id for s in series]
    values = {s.series_id: s.values for s in series}
    for sid, ours in mem_rows.items():
        theirs = sql_rows[sid]
        assert ours.support_end == theirs.support_end == len(values[sid]) - 1
        assert (ours.residual_scale, ours.threshold) == (theirs.residual_scale, theirs.threshold)
        assert {k: v for k, v in ours.metadata.items() if k != RUN_KEY} == {
            k: v for k, v in theirs.metadata.items() if k != RUN_KEY
        }
        np.testing.assert_array_equal(
            _forecast(tmp_path / "mem", ours, values[sid]),
            _forecast(tmp_path / "sql", theirs, values[sid]),
        )
    assert [r.version for r in memory.initializers] == [1]

    again_sql, again_memory, _, _ = both()  # nothing changed: every model is up to date
    assert (again_sql.adapted, again_sql.up_to_date) == (0, 6)
    assert (again_memory.adapted, again_memory.up_to_date) == (0, 6)
    assert again_memory.run_id is None and again_sql.run_id is None  # no work, no run
