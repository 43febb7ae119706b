"""The daily adaptation job: champion initializer -> adapted, exported, recorded per-series models.

A stage over three ports (:mod:`mamlctl.ports`): the registry database as an
:class:`~mamlctl.ports.AdaptedModelStore`, the model store as an
:class:`~mamlctl.ports.AdaptInitializerStore`, and the models folder; the caller builds them
(:func:`mamlctl.stages.api.run_adaptation` the real ones; :mod:`mamlctl.stages.memory` has
in-memory twins). The numerical work is
:func:`mamlctl.maml.adaptation.adapt_histories` and :mod:`mamlctl.maml.export`. This module
selects the series and runs the job inside its MLflow run; the per-chunk work (steps 1-3
below, and the parity sample) is :class:`mamlctl.stages.adapt_chunks.ChunkedJob`.

Consistency, in this order for every chunk of series:

1. adapt the chunk (vectorised), render its ONNX files from the family's template;
2. write every file under a content-addressed name (temp + fsync + rename, folder fsync):
   the file a series' current row points at is never touched;
3. only then, in ONE transaction, record the chunk's rows (each new row becomes current and
   the previous one is flipped in the same transaction).

A crash (even ``kill -9``) between 2 and 3 leaves complete but unreferenced files and the
previous models current; a crash inside 2 leaves at most temporaries (removed by the next job).
No row ever points at a missing or partial file. Re-running is idempotent: a series whose current
model came from the same initializer version, the same support points (``support_end``) and the
same adaptation settings (``adapt_hash``) is skipped as up to date unless ``force``.

The MLflow run and the registry cannot disagree about success: the run is started (after
ending the family's RUNNING runs whose process is gone, see
:mod:`mamlctl.registry.run_owner`) before any row is written, and a failure before the last
commit ends it FAILED and fails the job. Once the rows are committed the job has succeeded:
its final metrics, parity artifact and FINISHED status are logged best effort, and if MLflow
fails then, the report carries one warning naming the run (the CLI prints it on stderr).

Zero-shot: a series of the family that holds one input window (L points) but fewer than the
K + C points adaptation needs gets the family initializer, un-adapted, exported and recorded the
same way with the lineage ``zero-shot`` (:mod:`mamlctl.maml.zero_shot`); it is adapted by the
first job that finds it with K + C points. Only a series with fewer than L points is too short.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlctl.domain import CHAMPION, ZERO_SHOT, AdaptedModelRecord, InitializerRef
from mamlctl.errors import InputError

if TYPE_CHECKING:
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.ports import AdaptedModelStore, AdaptInitializerStore, AdaptRun
    from mamlctl.registry.model_gc import GcReport
    from mamlctl.stages.adapt_chunks import ChunkedJob

#: Series parity-checked per job (1,000 random windows each), spread over the selection.
PARITY_SAMPLE = 4
#: Keys this job writes into an adapted-model row's metadata.
META_ADAPT_HASH = "adapt_hash"
META_JOB_RUN = "adapt_run_id"

Progress = Callable[[int, int], None]
#: Runs a job's chunks: ``runner(job, selected, current, progress)`` -> counts (``adapted``,
#: ``zero_shot``, ``up_to_date``). In-process by default (``job.run``); on a Ray cluster
#: :class:`mamlctl.stages.adapt_ray.RayChunkRunner`, whose tasks call ``job.run`` too.
ChunkRunner = Callable[
    ["ChunkedJob", list[str], dict[str, AdaptedModelRecord], Progress | None], dict[str, int]
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptRequest:
    """What to adapt: a family's series (all, or ``series``), from which initializer."""

    family: str
    series: tuple[str, ...] = ()
    version: int | None = None  # None: the family's alias (champion)
    stale_after: timedelta | None = None
    force: bool = False
    chunk_series: int = 2048
    parity_sample: int = PARITY_SAMPLE
    workers: int = 4
    log_to_mlflow: bool = True
    #: After a successful job, collect the family's unreferenced model files older than this
    #: many seconds (``mamlctl gc``'s collection); None: no collection.
    gc_grace_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptReport:
    """Outcome of one job."""

    family: str
    initializer: InitializerRef
    selected: int
    adapted: int
    up_to_date: int
    too_short: tuple[str, ...]  # fewer than L points: no model at all
    seconds: float
    plan: dict[str, Any]
    metrics: dict[str, float]
    parity: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    #: Series served by the un-adapted initializer (L <= points < K + C); not in ``adapted``.
    zero_shot: int = 0
    #: One line each: what went wrong after the job committed (MLflow logging is best effort).
    warnings: tuple[str, ...] = ()
    #: RUNNING runs of the family whose process was gone, ended KILLED before this job.
    stale_runs_ended: tuple[str, ...] = ()
    #: What ``gc_grace_s`` collected (None: not asked).
    gc: GcReport | None = None
    #: Where the chunks ran on a Ray cluster (``adapt --ray``; None: in this process): the
    #: chunk phase's wall time, tasks, and per worker process its node, tasks, series, busy
    #: seconds and peak RSS (:class:`mamlctl.stages.adapt_ray.RayChunkRunner`).
    cluster: dict[str, Any] | None = None


def adapt_hash(initializer: InitializerRef, plan: dict[str, Any]) -> str:
    """Identity of "the same adaptation": initializer version + resolved settings."""
    import json

    doc = {"model": initializer.registered_model, "version": initializer.version, "plan": plan}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def select_series(
    current: dict[str, AdaptedModelRecord],
    candidates: Sequence[str],
    *,
    initializer: InitializerRef,
    stale_after: timedelta | None,
    now: datetime,
) -> list[str]:
    """Series to (re-)adapt: no current model, another initializer (MLflow run), a zero-shot model
    (its series may have gained enough points to adapt: the job skips it as up to date when
    not), or (with ``stale_after``) a model older than that. Without ``stale_after`` every
    candidate."""
    if stale_after is None:
        return list(candidates)
    out = []
    for sid in candidates:
        rec = current.get(sid)
        if (
            rec is None
            or rec.registered_model != initializer.registered_model
            or rec.initializer_run_id != initializer.run_id
            or rec.adapted_at < now - stale_after
            or rec.adaptation == ZERO_SHOT
        ):
            out.append(sid)
    return out


def adapt_family(
    request: AdaptRequest,
    config: AdaptConfig,
    *,
    models: AdaptedModelStore,
    initializers: AdaptInitializerStore,
    models_dir: Path,
    progress: Progress | None = None,
    runner: ChunkRunner | None = None,
) -> AdaptReport:
    """Run one adaptation job (see module doc) over its ports: ``models`` (the registry),
    ``initializers`` (the model store), ``models_dir`` (the model files, an existing folder).
    ``progress(done, total)`` after each chunk. ``runner`` runs the chunks (default: here, in
    this process; :class:`mamlctl.stages.adapt_ray.RayChunkRunner` on a Ray cluster)."""
    from mamlctl.maml.adaptation import adapt_histories, plan_adaptation
    from mamlctl.maml.initializer import load_initializer
    from mamlctl.registry.model_files import remove_temporaries
    from mamlctl.stages.adapt_chunks import ChunkedJob, has_work

    started = time.perf_counter()
    now = datetime.now(UTC)
    store = initializers
    family = models.get_family(request.family)
    if request.version is not None:
        ref = store.resolve(f"models:/{family.registered_model}/{request.version}")
    else:
        ref = store.resolve_alias(family.name, family.alias or CHAMPION)
    if ref.family != family.name:
        raise InputError(f"{ref.registered_model} is not an initializer of {family.name}")
    members = models.series_ids(family.name)
    if request.series:
        unknown = sorted(set(request.series) - set(members))
        if unknown:
            raise InputError(
                f"series {unknown[0]!r} is not in family {family.name} (see `mamlctl series list`)"
            )
        candidates = list(dict.fromkeys(request.series))
    else:
        candidates = members
    current = {r.series_id: r for r in models.current_models(family.name)}
    models.note_initializer(ref)
    initializer = store.load(ref, loader=load_initializer)
    plan = plan_adaptation(
        initializer,
        window=family.window,
        horizon=family.horizon,
        support=family.support,
        period=family.period,
        config=config,
    )
    plan_doc = plan.as_dict()
    job_hash = adapt_hash(ref, plan_doc)
    selected = select_series(
        current, candidates, initializer=ref, stale_after=request.stale_after, now=now
    )
    remove_temporaries(models_dir, family=family.name)

    run_ctx = (
        store.start_run(
            family=family.name,
            run_name=f"adapt-{now:%Y%m%dT%H%M%S}",
            tags={
                "mamlctl.kind": "adapt",
                "mamlctl.registered_model": ref.registered_model,
                "mamlctl.initializer_version": ref.version,
                "mamlctl.initializer_run_id": ref.run_id,
            },
        )
        if request.log_to_mlflow
        and has_work(  # a job with nothing to do opens no run
            models,
            selected,
            current,
            plan=plan,
            ref=ref,
            job_hash=job_hash,
            force=request.force,
            chunk=request.chunk_series,
        )
        else None
    )
    job = ChunkedJob(
        models_dir=models_dir,
        models=models,
        request=request,
        initializer=initializer,
        ref=ref,
        plan=plan,
        job_hash=job_hash,
        now=now,
        run_id=run_ctx.run_id if run_ctx is not None else None,
    )

    def in_process(
        job: ChunkedJob,
        selected: list[str],
        current: dict[str, AdaptedModelRecord],
        progress: Progress | None,
    ) -> dict[str, int]:
        counts: dict[str, int] = job.run(selected, current, adapt_histories, progress)
        return counts

    run_chunks = runner or in_process
    warnings: list[str] = []
    if run_ctx is None:
        counts = run_chunks(job, selected, current, progress)
    else:
        with _failing_run(run_ctx) as run:
            run.log_params(
                {
                    **{f"adapt.{k}": v for k, v in plan_doc.items()},
                    "registered_model": ref.registered_model,
                    "initializer_version": ref.version,
                    "initializer_run_id": ref.run_id,
                    "selected": len(selected),
                    "force": request.force,
                    "stale_after": str(request.stale_after),
                }
            )
            counts = run_chunks(job, selected, current, progress)

        # The registry holds the job's rows now: from here MLflow is best effort.
        def log_results(run: AdaptRun) -> None:
            run.log_metrics(
                {
                    "series_adapted": float(counts["adapted"]),
                    "series_up_to_date": float(counts["up_to_date"]),
                    "series_zero_shot": float(counts["zero_shot"]),
                    "series_too_short": float(len(job.too_short)),
                    "duration_s": time.perf_counter() - started,
                    **job.metrics(),
                },
                step=0,
            )
            if job.parity:
                run.log_json(job.parity, artifact_file="parity.json")

        problem = run_ctx.finish_best_effort(log_results)
        if problem is not None:
            warnings.append(problem)
    collected = (
        None
        if request.gc_grace_s is None
        else _collect_family_files(models, models_dir, family.name, request.gc_grace_s)
    )
    return AdaptReport(
        family=family.name,
        initializer=ref,
        selected=len(selected),
        adapted=counts["adapted"],
        up_to_date=counts["up_to_date"],
        zero_shot=counts["zero_shot"],
        too_short=tuple(job.too_short),
        seconds=time.perf_counter() - started,
        plan=plan_doc,
        metrics=job.metrics(),
        parity=job.parity,
        run_id=job.run_id,
        warnings=tuple(warnings),
        stale_runs_ended=run_ctx.stale_ended if run_ctx is not None else (),
        gc=collected,
    )


def _collect_family_files(
    models: AdaptedModelStore, models_dir: Path, family: str, grace_s: float
) -> GcReport:
    """``mamlctl gc`` for one family's folder, after the job's rows are committed."""
    from mamlctl.registry.model_gc import collect_unreferenced

    return collect_unreferenced(
        models_dir, referenced=models.referenced_model_paths(), grace_s=grace_s, family=family
    )


@contextlib.contextmanager
def _failing_run(run: AdaptRun) -> Iterator[AdaptRun]:
    """The run while the job may still fail: an exception ends it FAILED (KILLED on Ctrl-C)
    and propagates; success leaves it open for its ``finish_best_effort``."""
    try:
        yield run
    except BaseException as exc:
        run.__exit__(type(exc), exc, exc.__traceback__)
        raise
