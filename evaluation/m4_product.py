"""M4 through the product: the stages a user runs, in fresh homes, scored from the served files.

Per home (a temporary ``MAMLCTL_HOME``: SQLite registry, embedded MLflow, models folder)::

    ingest (store_series) -> families create + assign -> train (stages.train, fixed iterations)
      -> adapt + export (the adapt stage, the version just trained) -> score (stages.score: the
      server's runtime on the exported files, from each series' last L values)

Protocols (``history`` N: every series the initializer *adapts and forecasts* holds only its
last N points; ``None`` = the full history):

* ``family``: one home; every series of the subset, truncated to N, is ingested, trains the
  family's initializer and is adapted from it (what a user with N points per series gets).
* ``new-series``: the series are split into ``folds`` folds by sha256 of their id; for each
  fold a home trains the initializer on the *other* folds' full histories, then the fold's
  series join the trained family (ingest + assign, truncated to N) and are adapted alone, no
  retraining: how a new series is served.

The family is the calendar family of the subset's interval (hourly: P=24, L=96, H=48; weekly:
no cycle, L=52, H=13) with the product's defaults. A version that loses to seasonal naive on its
held-out series is not champion (the baseline gate): the evaluation adapts from the version it
trained all the same, and reports the gate. A series the product leaves without a forecast
(fewer than L points, or no model) is counted in ``unserved`` and filled with seasonal naive so
that the M4 aggregates stay defined; the target is that there are none.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mamlctl.domain import Family
from mamlctl.errors import InputError
from mamlctl.evaluation.m4 import M4Data

Protocol = Literal["family", "new-series"]
FloatArray = np.ndarray
#: Sampling interval of each subset's series, seconds.
INTERVAL = {"hourly": 3600.0, "weekly": 7 * 86400.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductOptions:
    protocol: Protocol = "family"
    history: int | None = None
    folds: int = 3
    iterations: int = 3000
    seed: int = 0
    #: the family's input window L (None: the product's default for the interval)
    window: int | None = None


@dataclass(slots=True, kw_only=True)
class HomeReport:
    """What one home (one trained initializer) did."""

    name: str
    n_train: int
    n_adapted_series: int
    version: int
    aliases: tuple[str, ...]
    gate: str | None
    val_mase: float
    val_seasonal_naive_mase: float
    train_s: float
    adapt_s: float
    zero_shot: int
    unserved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductRun:
    forecasts: FloatArray  # [S, H], data.ids order
    homes: tuple[HomeReport, ...]

    @property
    def unserved(self) -> int:
        return sum(len(h.unserved) for h in self.homes)

    @property
    def zero_shot(self) -> int:
        return sum(h.zero_shot for h in self.homes)

    def summary(self) -> dict[str, Any]:
        return {
            "unserved": self.unserved,
            "zero_shot": self.zero_shot,
            "homes": [
                {
                    "name": h.name,
                    "series_train": h.n_train,
                    "series_adapted": h.n_adapted_series,
                    "version": h.version,
                    "aliases": list(h.aliases),
                    "baseline_gate": h.gate,
                    "val_mase": h.val_mase,
                    "val_seasonal_naive_mase": h.val_seasonal_naive_mase,
                    "train_s": round(h.train_s, 1),
                    "adapt_s": round(h.adapt_s, 1),
                    "zero_shot": h.zero_shot,
                    "unserved": len(h.unserved),
                }
                for h in self.homes
            ],
        }


def subset_family(data: M4Data, *, window: int | None = None) -> Family:
    """The calendar family of the subset's interval, with the product's defaults (and the
    window ``families create -L`` would give it)."""
    from mamlctl.timeseries.families import family_for, with_window

    interval = INTERVAL[data.subset.name]
    period = data.subset.season if data.subset.season > 1 else None
    family = family_for(period, interval)
    if window is not None:
        family = with_window(family, window)
    if family.horizon != data.subset.horizon:
        raise InputError(
            f"family {family.name} forecasts H={family.horizon}, M4 {data.subset.name} "
            f"scores {data.subset.horizon}"
        )
    return family


def fold_of(series_id: str, folds: int) -> int:
    """The fold of a series: sha256 of its id, independent of order and seed."""
    return int(hashlib.sha256(series_id.encode()).hexdigest()[:8], 16) % folds


def run_product(
    data: M4Data,
    options: ProductOptions,
    *,
    workdir: Path,
    on_step: Callable[[str], None] | None = None,
) -> ProductRun:
    """Forecast every series of ``data`` through the product (see the module doc)."""
    if options.history is not None and options.history < 1:
        raise InputError(f"--history must be >= 1, got {options.history}")
    if options.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {options.iterations}")
    family = subset_family(data, window=options.window)
    shown = {
        sid: (x if options.history is None else x[-options.history :])
        for sid, x in zip(data.ids, data.histories, strict=True)
    }
    full = dict(zip(data.ids, data.histories, strict=True))
    step = on_step or (lambda _: None)
    homes: list[HomeReport] = []
    served: dict[str, np.ndarray] = {}
    if options.protocol == "family":
        plan = [("family", list(data.ids), list(data.ids))]
    elif options.protocol == "new-series":
        if options.folds < 2:
            raise InputError(f"--folds must be >= 2 for new series, got {options.folds}")
        by_fold = [
            [sid for sid in data.ids if fold_of(sid, options.folds) == f]
            for f in range(options.folds)
        ]
        plan = [
            (f"fold{f}", [s for g, ids in enumerate(by_fold) if g != f for s in ids], by_fold[f])
            for f in range(options.folds)
            if by_fold[f]
        ]
    else:
        raise InputError(f"unknown protocol {options.protocol!r}; use family or new-series")
    for name, train_ids, target_ids in plan:
        step(name)
        train_values = {
            sid: (shown[sid] if options.protocol == "family" else full[sid]) for sid in train_ids
        }
        report, forecasts = _one_home(
            workdir / name,
            family,
            train_values,
            {sid: shown[sid] for sid in target_ids},
            options=options,
            interval=INTERVAL[data.subset.name],
            name=name,
        )
        homes.append(report)
        served.update(forecasts)
    from mamlctl.timeseries.baselines import seasonal_naive

    h = data.subset.horizon
    out = np.empty((len(data.ids), h), dtype=np.float64)
    for i, sid in enumerate(data.ids):
        if sid in served:
            out[i] = served[sid]
        else:
            out[i] = seasonal_naive([shown[sid]], h, m=data.subset.season)[0]
    return ProductRun(forecasts=out, homes=tuple(homes))


def _one_home(
    home: Path,
    family: Family,
    train_values: dict[str, np.ndarray],
    target_values: dict[str, np.ndarray],
    *,
    options: ProductOptions,
    interval: float,
    name: str,
) -> tuple[HomeReport, dict[str, np.ndarray]]:
    """Train on ``train_values``, then adapt and score ``target_values`` (which, for the
    ``new-series`` protocol, join the family after training)."""
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.stages.score import forecast_series

    from .product_home import adapt_home, home_settings, ingest_values, servable, train_home

    settings = home_settings(home)
    joining = {sid: v for sid, v in target_values.items() if sid not in train_values}
    ingest_values(settings, family, train_values, interval, source="m4")

    began = time.perf_counter()
    outcome, store = train_home(
        settings, family.name, iterations=options.iterations, seed=options.seed
    )
    train_s = time.perf_counter() - began

    if joining:  # new series join the trained family: ingest + assign, no retraining
        ingest_values(settings, family, joining, interval, source="m4")
    began = time.perf_counter()
    adapt_home(
        settings,
        store,
        family.name,
        [sid for sid in target_values if servable(target_values[sid], family)],
        version=outcome.ref.version,
    )
    adapt_s = time.perf_counter() - began
    with transaction(settings) as session:
        records = q.current_adapted_models(session, family.name)
    result = forecast_series(records, models_dir=settings.models_dir, histories=target_values)
    forecasts = {
        sid: result.forecast[i].astype(np.float64) for i, sid in enumerate(result.series_ids)
    }
    report = HomeReport(
        name=name,
        n_train=outcome.n_train,
        n_adapted_series=len(result.series_ids),
        version=outcome.ref.version,
        aliases=outcome.ref.aliases,
        gate=outcome.gate,
        val_mase=outcome.metrics["val_mase"],
        val_seasonal_naive_mase=outcome.metrics["val_seasonal_naive_mase"],
        train_s=train_s,
        adapt_s=adapt_s,
        zero_shot=sum(1 for v in result.adaptation.values() if v == "zero-shot"),
        unserved=dict(result.missing),
    )
    return report, forecasts
