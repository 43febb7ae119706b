"""The chunks of one adaptation job: adapt, export to files, then record (see
:mod:`mamlctl.stages.adapt` for the consistency order), plus the parity sample and
the job's summary metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mamlctl.domain import (
    ADAPTATION_KEY,
    ADAPTED,
    ZERO_SHOT,
    AdaptedModelRecord,
    InitializerRef,
    NewModel,
)
from mamlctl.errors import TrainingError
from mamlctl.stages.adapt import META_ADAPT_HASH, META_JOB_RUN, Progress

if TYPE_CHECKING:
    from mamlctl.ports import AdaptedModelStore
    from mamlctl.stages.adapt import AdaptRequest


def up_to_date(
    rec: AdaptedModelRecord | None, *, end: int, mode: str, ref: InitializerRef, job_hash: str
) -> bool:
    """A series' current model is what this job would make: the same support end, initializer
    run, job hash and lineage (a zero-shot model is replaced once its series can adapt)."""
    return (
        rec is not None
        and rec.support_end == end
        and rec.initializer_run_id == ref.run_id
        and rec.metadata.get(META_ADAPT_HASH) == job_hash
        and rec.adaptation == mode
    )


def has_work(
    models: AdaptedModelStore,
    selected: list[str],
    current: dict[str, AdaptedModelRecord],
    *,
    plan: Any,
    ref: InitializerRef,
    job_hash: str,
    force: bool,
    chunk: int = 2048,
) -> bool:
    """Whether a job over ``selected`` would adapt or zero-shot any series (stops at the first
    chunk of ``chunk`` series that holds one), so that a job with nothing to do opens no
    MLflow run."""
    from mamlctl.maml.zero_shot import can_zero_shot

    if force:
        return bool(selected)
    step = max(1, chunk)
    for start in range(0, len(selected), step):
        ids = selected[start : start + step]
        for sid, (values, positions) in zip(
            ids, models.last_points(ids, plan.full_points), strict=True
        ):
            n = int(values.shape[0])
            if n >= plan.min_points:
                mode = ADAPTED
            elif can_zero_shot(n, plan):
                mode = ZERO_SHOT
            else:
                continue  # too short: nothing to record
            end = int(positions[-1])
            if not up_to_date(current.get(sid), end=end, mode=mode, ref=ref, job_hash=job_hash):
                return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkOutcome:
    """One slice of a job, as a worker hands it back (:meth:`ChunkedJob.take_outcome`)."""

    counts: dict[str, int]
    too_short: list[str]
    parity: list[dict[str, Any]]
    quantization_errors: list[float]
    sums: dict[str, float]  # adaptation metric x series, summed (see ChunkedJob.metrics)
    n: int
    #: Where and how the slice ran (a Ray task: node, pid, seconds, peak RSS); {} in-process.
    worker: dict[str, Any] = field(default_factory=dict)


class _Todo:
    """Series of one chunk that take one path (adapted or zero-shot)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.histories: list[np.ndarray] = []
        self.ends: list[int] = []
        self.positions: list[int] = []  # index in the job's selection (parity sampling)

    def add(self, sid: str, values: np.ndarray, end: int, position: int) -> None:
        self.ids.append(sid)
        self.histories.append(values)
        self.ends.append(end)
        self.positions.append(position)


class ChunkedJob:
    """State of one job across chunks: adapt, export, record, parity-check each chunk."""

    def __init__(
        self,
        *,
        models_dir: Path,
        models: AdaptedModelStore,
        request: AdaptRequest,
        initializer: Any,
        ref: InitializerRef,
        plan: Any,
        job_hash: str,
        now: datetime,
        run_id: str | None,
    ) -> None:
        self.models_dir = models_dir
        self.models = models
        self.request = request
        self.initializer = initializer
        self.ref = ref
        self.plan = plan
        self.job_hash = job_hash
        self.now = now
        self.run_id = run_id
        self.too_short: list[str] = []
        self.parity: list[dict[str, Any]] = []
        self.quantization_errors: list[float] = []
        self._based_template: Any = None  # see _based
        self._templates: Any = None  # a TemplateCache, made on first use (see run)
        self._zero_shot_checked = False
        self._sums: dict[str, float] = {}
        self._n = 0

    def take_outcome(self, counts: dict[str, int]) -> ChunkOutcome:
        """What this job object gathered since the last call (its ``run``'s ``counts``, too
        short series, parity sample, metric sums), handed over and reset: a Ray task returns
        it to the driver's job, which :meth:`absorb` s it."""
        out = ChunkOutcome(
            counts=dict(counts),
            too_short=self.too_short,
            parity=self.parity,
            quantization_errors=self.quantization_errors,
            sums=self._sums,
            n=self._n,
        )
        self.too_short, self.parity, self.quantization_errors = [], [], []
        self._sums, self._n = {}, 0
        return out

    def absorb(self, outcome: ChunkOutcome) -> None:
        """Add a chunk's outcome (from :meth:`take_outcome` in a worker) to this job's, in
        selection order: the parity sample stays at most ``parity_sample`` series, plus the
        first zero-shot one, as in-process."""
        self.too_short.extend(outcome.too_short)
        for entry in outcome.parity:
            first_zero_shot = entry["adaptation"] == ZERO_SHOT and not self._zero_shot_checked
            if len(self.parity) < self.request.parity_sample or first_zero_shot:
                self._zero_shot_checked |= entry["adaptation"] == ZERO_SHOT
                self.parity.append(entry)
        self.quantization_errors.extend(outcome.quantization_errors)
        for k, v in outcome.sums.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += outcome.n

    def metrics(self) -> dict[str, float]:
        from mamlctl.maml.onnx_parity import ParityStats, summarise

        out = {k: v / self._n for k, v in self._sums.items()} if self._n else {}
        stats = [
            ParityStats(**{k: v for k, v in p.items() if k not in ("series_id", "adaptation")})
            for p in self.parity
        ]
        out.update(summarise(stats))
        if self.quantization_errors:
            # max |file - torch with the unquantized weights| / scale over the parity sample
            out["quantization_max_rel_error"] = max(self.quantization_errors)
        return out

    def run(
        self,
        selected: list[str],
        current: dict[str, AdaptedModelRecord],
        adapt_fn: Callable[..., Any],
        progress: Progress | None,
        *,
        offset: int = 0,
        job_total: int | None = None,
    ) -> dict[str, int]:
        """Adapt (or serve zero-shot), export and record ``selected`` chunk by chunk.

        A series with K points or more is adapted by ``adapt_fn`` (calibrated on up to C points
        beyond its support, or with the family prior when fewer than a few are left); one with
        ``L <= n < K`` gets a zero-shot file (the initializer un-adapted, see
        :mod:`mamlctl.maml.zero_shot`) through the same template, recorded with the lineage
        ``zero-shot``; only a series with fewer than L points is too short. A current model is
        up to date when it has the same support end, the same job hash and the same lineage
        this job would give: a zero-shot model is replaced once its series can adapt.

        ``selected`` may be one slice of the job's selection (a Ray task's chunk, see
        :mod:`mamlctl.stages.adapt_ray`): ``offset`` is the index of its first series in the
        selection and ``job_total`` the selection's length, so that the parity sample picks the
        same series as an in-process job.
        """
        from mamlctl.maml.zero_shot import can_zero_shot, zero_shot_histories

        need = self.plan.full_points  # K + C: what calibrating on a series' own points takes
        counts = {"adapted": 0, "zero_shot": 0, "up_to_date": 0}
        total = len(selected)
        whole = total if job_total is None else job_total
        step = max(1, self.request.chunk_series)
        parity_every = max(1, whole // max(1, self.request.parity_sample)) if whole else 1
        for start in range(0, total, step):
            ids = selected[start : start + step]
            todo = {ADAPTED: _Todo(), ZERO_SHOT: _Todo()}
            points = self.models.last_points(ids, need)
            for index, (sid, (values, positions)) in enumerate(zip(ids, points, strict=True)):
                n = int(values.shape[0])
                if n >= self.plan.min_points:  # K: adapted (calibrated on what is left)
                    mode = ADAPTED
                elif can_zero_shot(n, self.plan):
                    mode = ZERO_SHOT
                else:
                    self.too_short.append(sid)
                    continue
                end = int(positions[-1])
                if not self.request.force and up_to_date(
                    current.get(sid), end=end, mode=mode, ref=self.ref, job_hash=self.job_hash
                ):
                    counts["up_to_date"] += 1
                    continue
                todo[mode].add(sid, values, end, offset + start + index)
            for mode, work in todo.items():
                if not work.ids:
                    continue
                if mode == ADAPTED:
                    result = adapt_fn(self.initializer, work.histories, plan=self.plan)
                    self._accumulate(result)
                    extra: list[dict[str, str]] = [{} for _ in work.ids]
                else:
                    result = zero_shot_histories(self.initializer, work.histories, plan=self.plan)
                    extra = [
                        {
                            ADAPTATION_KEY: ZERO_SHOT,
                            "support_points": str(int(m)),
                            "calibration_prior": result.prior_source,
                        }
                        for m in result.support_points
                    ]
                self._export_and_record(mode, work, result, extra, parity_every)
                counts["adapted" if mode == ADAPTED else "zero_shot"] += len(work.ids)
            if progress is not None:
                progress(min(start + step, total), total)
        return counts

    def _template(self) -> Any:
        """The job's template (exported on first use: a job with nothing to do skips it)."""
        from mamlctl.maml.export import TemplateCache
        from mamlctl.maml.models import adapt_names_for

        if self._templates is None:
            self._templates = TemplateCache()
        config = self.initializer.model_config
        template = self._templates.get(
            config,
            nonnegative=self.plan.nonnegative,
            floor_fraction=self.plan.floor_fraction,
            per_series=adapt_names_for(config, self.plan.adapt_scope),
            weights=self.plan.weights,
            growth=None if self.plan.band is None else self.plan.band.growth,
        )
        if template.quantized:  # int8 deltas from this initializer's weights
            template = self._based(template)
        if self.plan.band is not None:  # the band's multipliers, in every file's metadata
            template = replace(template, band=self.plan.band.table())
        return template

    def _export_and_record(
        self,
        mode: str,
        work: _Todo,
        result: Any,
        extra: list[dict[str, str]],
        parity_every: int,
    ) -> None:
        """Steps 2-3 of the consistency order for one batch: files first, then the rows."""
        from mamlctl.maml.export import SeriesBatch
        from mamlctl.stages.export import export_to_files

        template = self._template()
        batch = SeriesBatch(
            series_ids=tuple(work.ids),
            params=result.params,
            loc=result.loc,
            scale=result.scale,
            residual_scale=result.residual_scale,
            threshold=result.threshold,
            adaptation=mode,
        )
        stored = export_to_files(
            template,
            batch,
            models_dir=self.models_dir,
            initializer=self.ref,
            support=self.plan.support,
            adapted_at=self.now,
            workers=self.request.workers,
            loss=self.plan.loss,
        )
        self._check_parity(template, batch, stored, work.positions, parity_every)
        entries = [
            NewModel(
                series_id=sid,
                path=file.relpath,
                sha256=file.sha256,
                residual_scale=float(result.residual_scale[i]),
                threshold=float(result.threshold[i]),
                support_end=work.ends[i],
                metadata={
                    META_ADAPT_HASH: self.job_hash,
                    META_JOB_RUN: self.run_id or "",
                    "loc": repr(float(result.loc[i])),
                    "scale": repr(float(result.scale[i])),
                    **extra[i],
                },
            )
            for i, (sid, file) in enumerate(zip(work.ids, stored, strict=True))
        ]
        self.models.record_models(
            ref=self.ref,
            support=self.plan.support,
            window=self.plan.window,
            horizon=self.plan.horizon,
            adapted_at=self.now,
            entries=entries,
        )

    def _based(self, template: Any) -> Any:
        """``template.with_base`` of this job's initializer (computed once per job)."""
        if self._based_template is None:
            base = {n: p.detach().cpu().numpy() for n, p in self.initializer.params.items()}
            self._based_template = template.with_base(base)
        return self._based_template

    def _accumulate(self, result: Any) -> None:
        from mamlctl.maml.adaptation import summarise

        n = len(result)
        for k, v in summarise(result).items():
            self._sums[k] = self._sums.get(k, 0.0) + v * n
        self._n += n

    def _check_parity(
        self, template: Any, batch: Any, stored: Any, positions: list[int], every: int
    ) -> None:
        """Parity of the sampled series (every ``every``-th of the selection, at most
        ``parity_sample``), plus the job's first zero-shot file (an un-adapted model is
        checked like an adapted one)."""
        from mamlctl.maml.onnx_parity import check_parity, template_reference
        from mamlctl.registry.model_files import open_verified

        for i in range(len(batch)):
            sampled = not positions[i] % every and len(self.parity) < self.request.parity_sample
            first_zero_shot = batch.adaptation == ZERO_SHOT and not self._zero_shot_checked
            if not (sampled or first_zero_shot):
                continue
            if batch.adaptation == ZERO_SHOT:
                self._zero_shot_checked = True
            blob = open_verified(self.models_dir, stored[i].relpath, sha256=stored[i].sha256)
            loc, scale = float(batch.loc[i]), float(batch.scale[i])
            params, core = batch.params_of(i), self.initializer.model()
            numbers = {"loc": loc, "scale": scale, "residual_scale": float(batch.residual_scale[i])}
            # the file against its torch twin (int8-delta layers computed as the file does)
            reference = template_reference(template, core, params, **numbers)
            stats = check_parity(blob, reference, loc=loc, scale=scale, window=template.window)
            if template.quantized:  # and against the unquantized adapted model
                exact = template_reference(template, core, params, **numbers, as_stored=False)
                drift = check_parity(blob, exact, loc=loc, scale=scale, window=template.window)
                self.quantization_errors.append(drift.max_rel_error)
            if stats.max_rel_error > max(stats.tolerance, 2 * stats.resolution):
                raise TrainingError(
                    f"exported model of {batch.series_ids[i]} differs from torch by "
                    f"{stats.max_rel_error:.3g} of its scale (limit {stats.tolerance}); "
                    "nothing recorded for this chunk"
                )
            self.parity.append(
                {"series_id": batch.series_ids[i], "adaptation": batch.adaptation} | stats.as_dict()
            )
