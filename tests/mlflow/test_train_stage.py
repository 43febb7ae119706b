"""The train stage over ports: the in-memory ports give what the CLI gives on the same data,
and the baseline gate keeps a version that loses to seasonal naive from becoming champion.

Oracles: the CLI's own ``--json`` answer (metrics equal to the last bit, since both paths run
the same seeded computation), hand-made metrics for :func:`baseline_gate`, and the alias table
of both stores after registration.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import CHALLENGER, CHAMPION, Family, Series
from mamlctl.maml.family_data import make_config
from mamlctl.registry.mlflow_store import open_store
from mamlctl.registry.series_store import SqlSeriesStore
from mamlctl.settings import Settings
from mamlctl.stages.memory import MemoryInitializerStore, MemorySeriesStore
from mamlctl.stages.train import baseline_gate, run_training, train

TINY = ["--iterations", "24", "--meta-batch", "4", "--hidden", "16,16", "--query", "6"]
TINY_CONFIG: dict[str, Any] = {"iterations": 24, "meta_batch": 4, "hidden": (16, 16), "query": 6}


def test_in_memory_stage_equals_the_cli(
    embedded_settings: Settings, seeded_registry: Any, tmp_path: Any
) -> None:
    result = CliRunner().invoke(app, ["train", "--family", "sines", *TINY, "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)

    sql = SqlSeriesStore(seeded_registry.settings)
    memory_series = MemorySeriesStore(
        [sql.get_family("sines")],
        [
            Series(series_id=s.series_id, values=s.values, family="sines")
            for s in sql.family_series("sines")
        ],
    )
    store = MemoryInitializerStore(tmp_path / "mem")
    outcome = train(
        "sines",
        make_config(**TINY_CONFIG),
        series_store=memory_series,
        initializer_store=store,
    )
    timed = {"train_seconds"}  # wall-clock: the only figure that may differ
    assert {k: v for k, v in outcome.metrics.items() if k not in timed} == {
        k: v for k, v in cli["metrics"].items() if k not in timed
    }
    assert outcome.fingerprint == cli["data_fingerprint"]
    assert (outcome.n_train, outcome.n_validation) == (
        cli["series_train"],
        cli["series_validation"],
    )
    assert outcome.ref.aliases == tuple(cli["aliases"])
    assert outcome.gate == cli["baseline_gate"]
    # the in-memory registry mirrors the champion like the SQL one
    champion = 1 if outcome.gate is None else None
    assert memory_series.families["sines"].champion_version == champion
    assert sql.get_family("sines").champion_version == champion
    assert [r.version for r in memory_series.initializers] == [1]


def test_baseline_gate_rule() -> None:
    assert baseline_gate({"val_mase": 0.9, "val_seasonal_naive_mase": 1.0}) is None
    assert baseline_gate({"val_mase": 1.0, "val_seasonal_naive_mase": 1.0}) is None
    reason = baseline_gate({"val_mase": 0.270, "val_seasonal_naive_mase": 0.105})
    assert reason is not None and "0.270" in reason and "0.105" in reason
    assert baseline_gate({"val_mase": 0.5}) is None


def _periodic_family() -> tuple[Family, list[Series]]:
    """Series that repeat one daily shape exactly, plus 1e-3 noise: seasonal naive is nearly
    perfect there, and a barely trained network cannot match it."""
    rng = np.random.default_rng(7)
    shape = np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False)) * 3.0
    family = Family(
        name="periodic", period=24, interval_seconds=3600.0, window=24, horizon=6, support=60
    )
    series = [
        Series(
            series_id=f"p{i}",
            values=10.0 + i + np.tile(shape, 10) + 1e-3 * rng.standard_normal(240),
            family="periodic",
        )
        for i in range(6)
    ]
    return family, series


@pytest.mark.parametrize("promote", [False, True])
def test_a_version_that_loses_to_seasonal_naive_is_not_champion(
    tmp_path: Any, promote: bool
) -> None:
    family, series = _periodic_family()
    store = MemoryInitializerStore(tmp_path / "mem")
    series_store = MemorySeriesStore([family], series)
    outcome = train(
        "periodic",
        make_config(iterations=2, meta_batch=2, hidden=(8,), query=6, pretrained_baseline=False),
        series_store=series_store,
        initializer_store=store,
        promote=promote,
    )
    m = outcome.metrics
    assert m["val_mase"] > m["val_seasonal_naive_mase"]
    assert outcome.gate is not None
    assert outcome.ref.aliases == (CHALLENGER,)
    assert CHAMPION not in store.aliases["periodic"]
    assert series_store.families["periodic"].champion_version is None


def test_cli_says_why_a_version_is_not_champion(embedded_settings: Settings) -> None:
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    family, series = _periodic_family()
    with open_registry(embedded_settings) as factory, factory.begin() as sess:
        q.upsert_family(sess, family)
        store_series(
            sess,
            [IncomingSeries(series=s, source="test", interval_seconds=3600.0) for s in series],
        )
        q.assign_family(sess, "periodic", [s.series_id for s in series])
    result = CliRunner().invoke(
        app,
        [
            *("train", "--family", "periodic", "-n", "2", "--meta-batch", "2"),
            *("--hidden", "8", "--query", "6", "--no-baseline"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("not champion:")]
    assert len(lines) == 1 and "worse than seasonal naive" in lines[0]
    assert open_store(embedded_settings).resolve_alias("periodic", CHALLENGER).version == 1
    assert SqlSeriesStore(embedded_settings).get_family("periodic").champion_version is None


def test_run_training_registers_nothing_when_the_run_fails(tmp_path: Any) -> None:
    family, series = _periodic_family()
    store = MemoryInitializerStore(tmp_path / "mem")
    from mamlctl.stages.train import plan_training

    data = plan_training(family, series, make_config(iterations=2, meta_batch=2, hidden=(8,)))

    def explode(*_: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_training(data, store, on_progress=explode)
    assert [r.status for r in store.runs.values()] == ["FAILED"]
    assert store.versions == {}
