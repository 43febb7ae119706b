"""NAB through the served path: the stages a user runs, then ``POST /v1/observe`` row by row.

Files are split into ``folds`` folds (rank of the sorted keys modulo ``folds``, as the older
recipe splits them). Per fold, a fresh home under ``workdir/fold<f>`` (embedded SQLite registry,
embedded MLflow, models folder: :mod:`mamlctl.evaluation.product_home`)::

    each of the fold's files: its probationary rows ingested with their timestamps
      -> family: the calendar family of its interval (rule below)
      -> train (stages.train, --iterations N, --seed S): one initializer per family, trained on
         the OTHER folds' files of the same interval (full values, integer positions, as the
         M4 new-series protocol trains) plus the fold's own probations long enough to train
         (training_need); a probation too short joins the trained family: ingest + assign
      -> adapt + export (stages.adapt, the version just trained) on each file's probation
      -> create_app(settings, RegistrySource) in-process (an ASGI test client, no network)
      -> the rows after the probation, in order, ``POST /v1/observe`` in batches of ``batch``
      -> optionally (``readapt_days`` D > 0) by the data's own clock: the fold's files are
         streamed D days of their data at a time, and after each round the adapt stage runs
         again (``force``, same initializer version) on the points stored so far, and the
         server picks up the new models (its reload + stream sync) before the next round

**Family rule** (per file, from its interval, inferred from its timestamps, and its probation
``p``): the calendar family of the interval with the product's defaults (5min: P=288, L=288,
K=576) when ``p >= K``; else the same family with a smaller window, L' = ``p - P`` rounded down
to a multiple of 8 (``families.with_window``, named ``<family>-L<L'>``) when L' still holds one
period (L' >= P); else the interval's no-cycle family (5min: L=32, K=40), with its window cut
to ``p - H`` if even that does not fit. On NAB: 41 five-minute files keep ``5min``, the two
10-minute files get ``10min-L176`` / ``10min-L224``, seven short five-minute files go to
``5min-nocycle``. Families are not detected (detection on 169-750 points of 5-minute data
either finds the daily cycle or files the series nowhere).

**Per-row score**: a row answered ``scored`` gets the answer's ``rank_score``, the served
detector's ranking score (:mod:`mamlctl.timeseries.stream_detector`: 1 for a value beyond its
series' range by 5%, else the log-scaled anomaly likelihood of the series' recent residuals);
NAB sweeps one threshold over every file's scores, which is what that score is made for.
Probationary rows score 0 (NAB does not score them). A row whose timestamp is not after the
previous row's is what the server refuses or answers as a duplicate (409
``conflict`` / ``out_of_order``, or ``duplicate``): it scores 0, and in the probation it is left
out of the ingest (8 NAB files have such rows, 38 rows in all).

A series with a seasonal-naive in-sample error of 0 (constant, or exactly periodic at lag P)
is left out of training (:func:`trainable`): the train stage's MASE is undefined for it and
it refuses the whole family. Such a file is still scored: its probation joins the family.

The adapt jobs run without their sampled ONNX-torch parity check (``parity_sample=0``): on
``ec2_request_latency_system_failure`` the file differed from torch by 2.06e-5 of its scale
against a limit of 1e-5 (float32 rounding), which aborts the job; parity is the export tests'
business, and the scores here come from the exported files as served.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mamlctl.domain import Family
from mamlctl.errors import InputError

from .nab import fold_of
from .nab_data import NabSeries, probationary_length

if TYPE_CHECKING:
    from mamlctl.settings import Settings

    from .nab import Detector

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "FoldReport",
    "ServedOptions",
    "kept_rows",
    "nab_family",
    "row_score",
    "served_detector",
]

#: Window granularity of the reduced-window families.
WINDOW_STEP = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedOptions:
    folds: int = 4
    iterations: int = 300
    seed: int = 0
    #: observations per ``POST /v1/observe`` request (one series, in order)
    batch: int = 256
    #: re-adapt every this many days of each file's own data (its clock; 0: adapt once)
    readapt_days: float = 0.0
    #: the server's flag rule (``serve --flag``): ``rank`` (its default) or ``z``
    flag: str = "rank"

    def check(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds must be >= 2, got {self.folds}")
        if self.iterations < 1:
            raise InputError(f"--iterations must be >= 1, got {self.iterations}")
        if self.batch < 1:
            raise InputError(f"--batch must be >= 1, got {self.batch}")
        if not (self.readapt_days >= 0 and np.isfinite(self.readapt_days)):
            raise InputError(f"--readapt-days must be >= 0, got {self.readapt_days}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        if self.flag not in ("z", "rank"):
            raise InputError(f"--flag must be z or rank, got {self.flag!r}")


@dataclass(slots=True, kw_only=True)
class FoldReport:
    """What one fold's home did."""

    name: str
    files: int
    trained: list[dict[str, Any]] = field(default_factory=list)
    adapted: int = 0
    zero_shot: int = 0
    readapted: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    train_s: float = 0.0
    adapt_s: float = 0.0
    stream_s: float = 0.0


def row_score(answer: dict[str, Any]) -> float:
    """The NAB score of one ``/v1/observe`` answer: its ``rank_score`` when ``scored``, else
    0."""
    if answer.get("status") != "scored":
        return 0.0
    return float(answer["rank_score"])


def interval_of(series: NabSeries) -> float:
    from mamlctl.timeseries.periodicity import infer_interval

    iv = infer_interval(series.timestamps)
    if iv is None:
        raise InputError(f"{series.key}: no sampling interval can be inferred from its timestamps")
    return float(iv)


def nab_family(interval_seconds: float, probation: int) -> Family:
    """The family of a file of this interval whose probation holds ``probation`` points (the
    rule of the module doc)."""
    from mamlctl.timeseries.families import calendar_period, family_for, with_window

    family: Family = family_for(calendar_period(interval_seconds), interval_seconds)
    if probation >= family.support:
        return family
    smaller: Family
    if family.period is not None:
        window = (probation - family.period) // WINDOW_STEP * WINDOW_STEP
        if window >= family.period:
            smaller = with_window(family, window)
            return replace(smaller, name=f"{family.name}-L{window}")
        family = family_for(None, interval_seconds)
        if probation >= family.support:
            return family
    window = probation - family.horizon
    if window < 2:
        raise InputError(f"a probation of {probation} points is too short for any family")
    smaller = with_window(family, window)
    return replace(smaller, name=f"{family.name}-L{window}")


def trainable(values: FloatArray, family: Family) -> bool:
    """The train stage can use the series: its seasonal-naive in-sample error (lag P, or 1
    without a cycle; before the last H points) is not 0. A constant or exactly periodic
    series (NAB's ``art_flatline``, ``art_daily_no_noise``) has MASE undefined, and the train
    stage refuses the whole family for it."""
    m = family.period or 1
    x = np.asarray(values, dtype=np.float64)[: max(0, values.shape[0] - family.horizon)]
    return x.shape[0] > m and bool(np.mean(np.abs(x[m:] - x[:-m])) > 0)


def kept_rows(timestamps: npt.NDArray[np.datetime64]) -> npt.NDArray[np.bool_]:
    """Rows whose timestamp is after every earlier row's (what the server appends)."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)
    if ts.shape[0] == 0:
        return np.zeros(0, dtype=np.bool_)
    before = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(ts)[:-1]])
    out: npt.NDArray[np.bool_] = ts > before
    return out


def served_detector(
    corpus: Sequence[NabSeries],
    options: ServedOptions,
    *,
    workdir: Path,
    reports: list[FoldReport] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Detector:
    """A ``Detector`` for :func:`mamlctl.evaluation.nab.run_nab`: on a fold's first file its
    home is built and every file of the fold streamed; the scores are then served from there."""
    options.check()
    files = list(corpus)
    folds = fold_of([s.key for s in files], options.folds)
    done: dict[str, FloatArray] = {}
    out = reports if reports is not None else []

    def detect(series: NabSeries, probation: int) -> FloatArray:
        if series.key not in folds:
            raise InputError(f"{series.key} is not in the corpus the detector was built for")
        if series.key not in done:
            f = folds[series.key]
            members = [s for s in files if folds[s.key] == f]
            others = [s for s in files if folds[s.key] != f]
            report, scores = run_fold(
                workdir / f"fold{f}", members, others, options, name=f"fold{f}", on_step=on_step
            )
            out.append(report)
            done.update(scores)
        return done[series.key]

    return detect


def run_fold(
    home: Path,
    members: Sequence[NabSeries],
    others: Sequence[NabSeries],
    options: ServedOptions,
    *,
    name: str,
    on_step: Callable[[str], None] | None = None,
) -> tuple[FoldReport, dict[str, FloatArray]]:
    """One fold's home: train, join, adapt, serve, stream (see the module doc)."""
    from mamlctl.timeseries.families import training_need
    from mamlctl.timeseries.periodicity import interval_label

    from .product_home import adapt_home, home_settings, ingest_values, train_home

    step = on_step or (lambda _: None)
    settings = home_settings(home)
    report = FoldReport(name=name, files=len(members))
    plans: dict[str, tuple[Family, float, list[NabSeries]]] = {}
    kept: dict[str, npt.NDArray[np.bool_]] = {}
    for s in members:
        p = probationary_length(len(s))
        kept[s.key] = kept_rows(s.timestamps[:p])
        iv = interval_of(s)
        fam = nab_family(iv, int(kept[s.key].sum()))
        plans.setdefault(fam.name, (fam, iv, []))[2].append(s)

    store_of: dict[str, Any] = {}
    version_of: dict[str, int] = {}
    for fam_name, (family, iv, targets) in plans.items():
        step(f"{name}: train {fam_name}")
        label = interval_label(iv)
        train_values = {
            f"train:{fam_name}:{o.key}": o.values
            for o in others
            if interval_label(interval_of(o)) == label and trainable(o.values, family)
        }
        own: dict[str, tuple[FloatArray, npt.NDArray[np.datetime64]]] = {}
        joining: dict[str, tuple[FloatArray, npt.NDArray[np.datetime64]]] = {}
        for s in targets:
            p = probationary_length(len(s))
            values = s.values[:p][kept[s.key]]
            stamps = s.timestamps[:p][kept[s.key]]
            fits = values.shape[0] >= training_need(family) and trainable(values, family)
            (own if fits else joining)[s.key] = (
                values,
                stamps,
            )
        if not train_values and not own:
            raise InputError(
                f"{name}: family {fam_name} has no series to train on (no other file of "
                f"interval {label}, and no probation of >= {training_need(family)} points)"
            )
        ingest_values(settings, family, train_values, iv, source="nab-train")
        ingest_values(
            settings,
            family,
            {k: v for k, (v, _) in own.items()},
            iv,
            timestamps={k: t for k, (_, t) in own.items()},
            source="nab",
        )
        began = time.perf_counter()
        outcome, store = train_home(
            settings, fam_name, iterations=options.iterations, seed=options.seed
        )
        report.train_s += time.perf_counter() - began
        store_of[fam_name], version_of[fam_name] = store, outcome.ref.version
        report.trained.append(
            {
                "family": fam_name,
                "window": family.window,
                "support": family.support,
                "version": outcome.ref.version,
                "series_train": outcome.n_train,
                "own_probations": len(own),
                "joined": len(joining),
                "baseline_gate": outcome.gate,
            }
        )
        if joining:  # too short to train: the file's series joins the trained family
            ingest_values(
                settings,
                family,
                {k: v for k, (v, _) in joining.items()},
                iv,
                timestamps={k: t for k, (_, t) in joining.items()},
                source="nab",
            )
        step(f"{name}: adapt {fam_name}")
        began = time.perf_counter()
        adapted = adapt_home(
            settings,
            store,
            fam_name,
            [s.key for s in targets],
            version=outcome.ref.version,
            log_to_mlflow=False,
            parity_sample=0,  # see the module doc
        )
        report.adapt_s += time.perf_counter() - began
        report.adapted += adapted.adapted
        report.zero_shot += adapted.zero_shot
        if adapted.too_short:
            raise InputError(f"{name}: {adapted.too_short[0]} is too short to serve")

    step(f"{name}: serve")
    adapt_before = report.adapt_s
    began = time.perf_counter()
    answers: dict[str, list[dict[str, Any]]] = {s.key: [] for s in members}
    with Serving(settings, max_batch=options.batch, flag=options.flag) as server:
        cursor = {s.key: probationary_length(len(s)) for s in members}
        rounds = 0
        while any(cursor[s.key] < len(s) for s in members):
            for s in members:
                a = cursor[s.key]
                b = len(s) if not options.readapt_days else a + _rows_per_round(s, options)
                got = stream(server.post, s.key, s.timestamps[a:b], s.values[a:b], options.batch)
                answers[s.key] += got
                cursor[s.key] = min(b, len(s))
            rounds += 1
            if options.readapt_days:  # the adapt stage again, on the points stored so far
                began_adapt = time.perf_counter()
                for fam_name, (_, _, targets) in plans.items():
                    live = [s.key for s in targets if cursor[s.key] < len(s)]
                    if live:
                        adapt_home(
                            settings,
                            store_of[fam_name],
                            fam_name,
                            live,
                            version=version_of[fam_name],
                            force=True,
                            log_to_mlflow=False,
                            parity_sample=0,
                        )
                        report.readapted += len(live)
                server.reload()
                report.adapt_s += time.perf_counter() - began_adapt
    save_answers(home / "answers.npz", answers)
    scores: dict[str, FloatArray] = {}
    for s in members:
        p = probationary_length(len(s))
        report.answers.update(a.get("status", "error") for a in answers[s.key])
        out = np.zeros(len(s))
        out[p:] = [row_score(a) for a in answers[s.key]]
        scores[s.key] = out
    report.stream_s = time.perf_counter() - began - (report.adapt_s - adapt_before)
    return report, scores


#: Numeric fields of a ``scored`` answer kept by :func:`save_answers` (NaN for other rows).
ANSWER_FIELDS = (
    "value",
    "forecast",
    "sigma",
    "z",
    "magnitude",
    "is_anomaly",
    "anomaly_likelihood",
    "out_of_range",
    "rank_score",
)


def save_answers(path: Path, answers: dict[str, list[dict[str, Any]]]) -> None:
    """The server's answers of each file after its probation, one ``<key>/<field>`` array per
    field of :data:`ANSWER_FIELDS`, for inspecting a run (the fold's home keeps them)."""
    arrays: dict[str, FloatArray] = {}
    for key, got in answers.items():
        for name in ANSWER_FIELDS:
            arrays[f"{key}/{name}"] = np.array(
                [float(a[name]) if a.get("status") == "scored" else np.nan for a in got]
            )
    np.savez_compressed(path, **arrays)


class Serving:
    """``create_app`` over the home's registry, models loaded and streams synced; ``post``
    goes through an in-process ASGI client."""

    def __init__(self, settings: Settings, *, max_batch: int, flag: str = "rank") -> None:
        self.settings = settings
        self.max_batch = max_batch
        self.flag = flag

    def __enter__(self) -> Serving:
        import httpx

        from mamlctl.serving.app import ServeOptions, create_app
        from mamlctl.serving.source import RegistrySource

        self.source = RegistrySource(self.settings)
        options = ServeOptions(
            reload=False,
            max_batch=max(self.max_batch, 1),
            flag=self.flag,  # type: ignore[arg-type]
        )
        self.app = create_app(self.settings, self.source, options=options)
        if not self.app.holder.reload(force=True) or self.app.observer is None:
            raise InputError("the server loaded no model from the home")
        self.app.observer.sync(self.app.holder.state)
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://mamlctl"
        )
        return self

    def post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One ``POST /v1/observe``; its per-item answers."""
        response = self.loop.run_until_complete(self.client.post("/v1/observe", json=body))
        if response.status_code != 200:
            raise InputError(f"/v1/observe answered {response.status_code}: {response.text}")
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def reload(self) -> None:
        """Pick up models recorded since (what the server's poller does)."""
        assert self.app.observer is not None
        self.app.holder.reload(force=True)
        self.app.observer.sync(self.app.holder.state)

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.source.close()


def _rows_per_round(series: NabSeries, options: ServedOptions) -> int:
    """Rows of ``options.readapt_days`` days of the file's data (its inferred interval)."""
    return max(1, round(options.readapt_days * 86400.0 / interval_of(series)))


def stream(
    post: Callable[[dict[str, Any]], list[dict[str, Any]]],
    series_id: str,
    timestamps: npt.NDArray[np.datetime64],
    values: FloatArray,
    batch: int,
) -> list[dict[str, Any]]:
    """POST the rows in order, ``batch`` per request; one answer per row."""
    stamps = np.datetime_as_string(np.asarray(timestamps, dtype="datetime64[s]"), unit="s")
    answers: list[dict[str, Any]] = []
    for i in range(0, len(values), batch):
        items = [
            {"series_id": series_id, "timestamp": str(t), "value": float(v)}
            for t, v in zip(stamps[i : i + batch], values[i : i + batch], strict=True)
        ]
        answers += post({"items": items})
    return answers
