"""The ``train`` and ``register`` stages: a family's series -> a registered initializer version.

::

    SeriesStore.get_family + family_series -> plan + held-out split   (maml.family_data, pure)
      -> train_family: MAML with a callback, pretrained baseline, validation vs seasonal naive
      -> artifacts (initializer, ONNX, PNG, series ids)                  (maml.family_artifacts)
      -> InitializerStore run FINISHED -> registered version + alias -> SeriesStore record

Every input error is raised by :func:`plan_training`, before a run exists. **The baseline gate**:
a version whose held-out MASE after adaptation is worse than seasonal naive's on the same
held-out series is registered (its run and metrics are kept) but never made champion
automatically, not even with ``promote``; :attr:`TrainOutcome.gate` says why in one line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mamlctl.domain import CHAMPION, Family, InitializerRef, Series
from mamlctl.maml.family_data import FamilyTrainConfig, resolve
from mamlctl.maml.family_split import FamilyData, prepare
from mamlctl.maml.family_training import FamilyTrainingResult, ProgressFn, train_family
from mamlctl.ports import (
    INITIALIZER_ARTIFACT,
    MODEL_ARTIFACT,
    InitializerStore,
    RunLog,
    SeriesStore,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainOutcome:
    ref: InitializerRef
    run_id: str
    metrics: dict[str, float]
    iterations: int
    elapsed_s: float
    n_train: int
    n_validation: int
    fingerprint: str
    #: None when the version may be champion; else the one-line reason it may not.
    gate: str | None = None


def plan_training(family: Family, series: list[Series], config: FamilyTrainConfig) -> FamilyData:
    """Resolve defaults and split the data; every input error is raised here, before MLflow."""
    return prepare(family, series, resolve(family, config))


def baseline_gate(metrics: Mapping[str, float]) -> str | None:
    """Why a version may not become champion (it loses to seasonal naive on its own held-out
    series), or None when it may."""
    ours, naive = metrics.get("val_mase"), metrics.get("val_seasonal_naive_mase")
    if ours is None or naive is None or not ours > naive:
        return None
    return (
        f"held-out MASE {ours:.3f} is worse than seasonal naive's {naive:.3f}: registered as "
        "challenger, not champion (move the alias yourself with `mamlctl promote` if you want it)"
    )


def train(
    family: str,
    config: FamilyTrainConfig,
    *,
    series_store: SeriesStore,
    initializer_store: InitializerStore,
    promote: bool = False,
    on_progress: ProgressFn | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> TrainOutcome:
    """The whole stage: read the family's series, train, register, record."""
    fam = series_store.get_family(family)
    data = plan_training(fam, series_store.family_series(family), config)
    return run_training(
        data,
        initializer_store,
        promote=promote,
        on_progress=on_progress,
        run_tags=run_tags,
        record=series_store.record_initializer,
    )


def run_training(
    data: FamilyData,
    store: InitializerStore,
    *,
    promote: bool = False,
    on_progress: ProgressFn | None = None,
    run_tags: Mapping[str, str] | None = None,
    record: Callable[[InitializerRef], None] | None = None,
) -> TrainOutcome:
    """Train inside a run, log artifacts, register the version, then ``record`` it.

    A crash or Ctrl-C ends the run FAILED / KILLED and nothing is registered or recorded.
    ``record`` (e.g. the registry-database insert) runs only after registration succeeded.
    """
    from mamlctl.maml.family_artifacts import write_artifacts
    from mamlctl.stages.pyfunc_model import example_frame, save_pyfunc_model

    plan = data.plan
    family = plan.family
    run_name = f"train-{family.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    with store.start_run(family=family.name, run_name=run_name, tags=dict(run_tags or {})) as run:
        run.log_config(plan.as_params())
        run.log_params({"data.fingerprint": data.fingerprint, "data.n_train": len(data.train)})
        run.log_params({"data.n_validation": len(data.validation.series_ids)})
        run.log_dataset(
            training_series_frame(data),
            name=f"{family.name}-series",
            digest=data.fingerprint,
            context="training",
        )
        result = train_family(data, on_metrics=_metric_logger(run), on_progress=on_progress)
        with tempfile.TemporaryDirectory(prefix="mamlctl-train-") as tmp:
            paths = write_artifacts(result, Path(tmp))
            run.log_artifacts(paths.initializer_dir, artifact_path=INITIALIZER_ARTIFACT)
            run.log_artifact(paths.onnx, artifact_path="onnx")
            run.log_artifact(paths.plot, artifact_path="plots")
            run.log_artifact(paths.series_ids, artifact_path=None)
            model_dir = save_pyfunc_model(
                Path(tmp) / MODEL_ARTIFACT,
                initializer_dir=paths.initializer_dir,
                family=family,
                example=example_frame(data.train, points=2 * family.support),
            )
            run.log_artifacts(model_dir, artifact_path=MODEL_ARTIFACT)
    metrics = result.metrics
    gate = baseline_gate(metrics)
    ref = store.register_initializer(
        family=family.name,
        run_id=run.run_id,
        tags={
            "family": family.name,
            "period": family.period if family.period is not None else "none",
            "K": plan.support_points,
            "window": plan.window,
            "horizon": plan.horizon,
            "architecture": plan.config.architecture,
            "data_fingerprint": data.fingerprint,
            "baseline_gate": "passed" if gate is None else "lost to seasonal naive",
        },
        description=_description(result),
        promote=promote,
        eligible=gate is None,
        artifact_path=MODEL_ARTIFACT,
    )
    ref = replace(ref, metrics={k: v for k, v in metrics.items() if k.startswith("val_")})
    if record is not None:
        record(ref)
    return TrainOutcome(
        ref=ref,
        run_id=run.run_id,
        metrics=metrics,
        iterations=result.iterations,
        elapsed_s=result.elapsed_s,
        n_train=len(data.train),
        n_validation=len(data.validation.series_ids),
        fingerprint=data.fingerprint,
        gate=gate,
    )


def training_series_frame(data: FamilyData) -> Any:
    """The run's dataset input: one row per series it saw (``series_id``, ``role`` train or
    validation, ``n_points``) and the data fingerprint."""
    import pandas as pd

    rows = [(s.series_id, "train", len(s)) for s in data.train]
    held = data.validation
    rows += [
        (sid, "validation", len(h)) for sid, h in zip(held.series_ids, held.histories, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=["series_id", "role", "n_points"])
    frame["fingerprint"] = data.fingerprint
    return frame


def _metric_logger(run: RunLog) -> Callable[[int, Mapping[str, float]], None]:
    def log(step: int, metrics: Mapping[str, float]) -> None:
        run.log_metrics(metrics, step=step)

    return log


def _description(result: FamilyTrainingResult) -> str:
    plan, m = result.data.plan, result.metrics
    method = "first-order MAML" if plan.config.first_order else "MAML"
    pre = m.get("val_pretrained_mase")
    return (
        f"{method} initializer for family {plan.family.name} (P={plan.family.period}, "
        f"L={plan.window}, H={plan.horizon}, K={plan.support_points}), {result.iterations} "
        f"iterations on {len(result.data.train)} series. Held-out MASE after "
        f"{plan.config.inner_steps} step(s): {m['val_mase']:.3f} (pretrained "
        f"{'n/a' if pre is None else f'{pre:.3f}'}, seasonal naive "
        f"{m['val_seasonal_naive_mase']:.3f}). Data fingerprint {result.data.fingerprint}."
    )


def is_champion(ref: InitializerRef) -> bool:
    return CHAMPION in ref.aliases
