"""In-memory implementations of the ports, for tests and the evaluation.

They keep the semantics of the real ones that a stage can observe: a run ends FINISHED, FAILED
or KILLED; only a FINISHED run's initializer can be registered; the first version of a family
becomes champion and later ones challenger unless promoted; a version that is not eligible is
registered as challenger; aliases resolve to versions; ``load`` hands the loader a folder
holding exactly what the run logged under the initializer artifact.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mamlctl.domain import (
    CHALLENGER,
    CHAMPION,
    AdaptedModelRecord,
    Family,
    InitializerRef,
    NewModel,
    Series,
    registered_model_name,
)
from mamlctl.errors import NotFoundError, StoreError
from mamlctl.ports import INITIALIZER_ARTIFACT

T = TypeVar("T")


@dataclass
class MemoryRun:
    """A run whose params, metrics and artifacts live in a dict and a temporary folder."""

    run_id: str
    family: str
    root: Path
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str = "RUNNING"
    #: ``(name, digest, context, frame)`` of each :meth:`log_dataset`
    datasets: list[tuple[str, str | None, str, Any]] = field(default_factory=list)
    stale_ended: tuple[str, ...] = ()

    def finish_best_effort(self, log: Callable[[Any], None]) -> str | None:
        log(self)
        self.status = "FINISHED"
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({str(k): str(v) for k, v in params.items()})

    def log_config(self, config: Any, *, prefix: str = "") -> None:
        from mamlctl.registry.mlflow_runs import flatten_params

        self.log_params(flatten_params(config, prefix=prefix))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(str(key), []).append((int(step), float(value)))

    def log_artifact(self, local_path: Path, *, artifact_path: str | None = None) -> None:
        dst = self.root / (artifact_path or "")
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, dst / Path(local_path).name)

    def log_artifacts(self, local_dir: Path, *, artifact_path: str | None = None) -> None:
        shutil.copytree(local_dir, self.root / (artifact_path or ""), dirs_exist_ok=True)

    def log_json(self, obj: Any, *, artifact_file: str) -> None:
        path = self.root / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")

    def log_dataset(
        self, frame: Any, *, name: str, digest: str | None = None, context: str = "training"
    ) -> None:
        self.datasets.append((name, digest, context, frame.copy()))

    def __enter__(self) -> MemoryRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.status = "KILLED"
        else:
            self.status = "FAILED"


class MemoryInitializerStore:
    """:class:`~mamlctl.ports.InitializerStore` in memory (artifacts under ``root``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (
            Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mamlctl-mem-"))
        )
        self.runs: dict[str, MemoryRun] = {}
        self.versions: dict[str, list[InitializerRef]] = {}
        self.aliases: dict[str, dict[str, int]] = {}

    def start_run(
        self, *, family: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> MemoryRun:
        run_id = f"mem{len(self.runs) + 1:06d}"
        run = MemoryRun(
            run_id=run_id,
            family=family,
            root=self.root / run_id,
            tags={str(k): str(v) for k, v in (tags or {}).items()},
        )
        run.root.mkdir(parents=True)
        self.runs[run_id] = run
        return run

    def register_initializer(
        self,
        *,
        family: str,
        run_id: str,
        tags: Mapping[str, Any],
        description: str,
        promote: bool = False,
        eligible: bool = True,
        artifact_path: str = INITIALIZER_ARTIFACT,
    ) -> InitializerRef:
        run = self.runs.get(run_id)
        if run is None or run.status != "FINISHED":
            status = "unknown" if run is None else run.status
            raise StoreError(f"run {run_id} ended {status}; only FINISHED runs are registered")
        versions = self.versions.setdefault(family, [])
        ref = InitializerRef(
            family=family,
            registered_model=registered_model_name(family),
            version=len(versions) + 1,
            run_id=run_id,
            source_uri=f"runs:/{run_id}/{artifact_path}",
            created_at=datetime.now(UTC),
        )
        versions.append(ref)
        had_champion = CHAMPION in self.aliases.get(family, {})
        alias = CHAMPION if eligible and (promote or not had_champion) else CHALLENGER
        return self.set_alias(family=family, version=ref.version, alias=alias)

    def set_alias(self, *, family: str, version: int, alias: str = CHAMPION) -> InitializerRef:
        versions = self.versions.get(family, [])
        if not 1 <= version <= len(versions):
            raise NotFoundError(f"{registered_model_name(family)} has no version {version}")
        table = self.aliases.setdefault(family, {})
        table[alias] = version
        if alias == CHAMPION and table.get(CHALLENGER) == version:
            del table[CHALLENGER]
        return self._ref(family, version)

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef:
        version = self.aliases.get(family, {}).get(alias)
        if version is None:
            raise NotFoundError(f"{registered_model_name(family)} has no alias {alias!r}")
        return self._ref(family, version)

    def resolve(self, model: str | InitializerRef) -> InitializerRef:
        """A ref unchanged, or ``models:/<registered model>/<version>``."""
        if isinstance(model, InitializerRef):
            return model
        name, _, version = model.removeprefix("models:/").rpartition("/")
        for family, versions in self.versions.items():
            ok = version.isdigit() and 1 <= int(version) <= len(versions)
            if registered_model_name(family) == name and ok:
                return self._ref(family, int(version))
        raise NotFoundError(f"no model version {model!r}")

    def load(self, model: str | InitializerRef, *, loader: Callable[[Path], T]) -> T:
        if isinstance(model, str):
            raise StoreError("the in-memory store loads by reference, not by URI")
        run_id, _, artifact = (model.source_uri or "").removeprefix("runs:/").partition("/")
        from mamlctl.registry.mlflow_models import initializer_folder

        return loader(initializer_folder(self.runs[run_id].root / artifact))

    def _ref(self, family: str, version: int) -> InitializerRef:
        aliases = tuple(sorted(a for a, v in self.aliases.get(family, {}).items() if v == version))
        return replace(self.versions[family][version - 1], aliases=aliases)


class MemorySeriesStore:
    """:class:`~mamlctl.ports.SeriesStore` over a dict of families and a list of series."""

    def __init__(self, families: Sequence[Family] = (), series: Sequence[Series] = ()) -> None:
        self.families = {f.name: f for f in families}
        self.series = list(series)
        self.initializers: list[InitializerRef] = []

    def get_family(self, name: str) -> Family:
        family = self.families.get(name)
        if family is None:
            raise NotFoundError(f"unknown family {name!r}")
        return family

    def family_series(self, name: str) -> list[Series]:
        self.get_family(name)
        return [s for s in self.series if s.family == name]

    def record_initializer(self, ref: InitializerRef) -> None:
        self.initializers.append(ref)
        family = self.get_family(ref.family)
        if family.alias in ref.aliases:
            self.families[ref.family] = replace(
                family, champion_version=ref.version, champion_run_id=ref.run_id
            )


class MemoryAdaptedModelStore:
    """:class:`~mamlctl.ports.AdaptedModelStore` over families and series held in memory
    (a series' positions are ``0 .. n-1``); recorded models are kept, current and history."""

    def __init__(self, families: Sequence[Family] = (), series: Sequence[Series] = ()) -> None:
        self.families = {f.name: f for f in families}
        self.series = {s.series_id: s for s in series}
        self.models: list[AdaptedModelRecord] = []
        self.initializers: list[InitializerRef] = []

    def get_family(self, name: str) -> Family:
        family = self.families.get(name)
        if family is None:
            raise NotFoundError(f"unknown family {name!r}")
        return family

    def series_ids(self, family: str) -> list[str]:
        self.get_family(family)
        return [sid for sid, s in self.series.items() if s.family == family]

    def current_models(self, family: str) -> list[AdaptedModelRecord]:
        return [m for m in self.models if m.is_current and m.family == family]

    def note_initializer(self, ref: InitializerRef) -> None:
        if all((r.family, r.version) != (ref.family, ref.version) for r in self.initializers):
            self.initializers.append(ref)

    def last_points(self, series_ids: Sequence[str], n: int) -> list[tuple[Any, Any]]:
        import numpy as np

        out = []
        for sid in series_ids:
            if sid not in self.series:
                raise NotFoundError(f"unknown series {sid!r}")
            values = np.asarray(self.series[sid].values, dtype=np.float64)
            start = max(0, values.shape[0] - n)
            out.append((values[start:], np.arange(start, values.shape[0], dtype=np.int64)))
        return out

    def record_models(
        self,
        *,
        ref: InitializerRef,
        support: int,
        window: int,
        horizon: int,
        adapted_at: datetime,
        entries: Sequence[NewModel],
    ) -> None:
        if len({e.series_id for e in entries}) != len(entries):
            raise StoreError("a series appears twice in one batch of adapted models")
        done = {  # already recorded by this job (a retried chunk): skipped, as the SQL store
            m.series_id
            for m in self.models
            if m.is_current and m.initializer_run_id == ref.run_id and m.adapted_at == adapted_at
        }
        entries = [e for e in entries if e.series_id not in done]
        ids = {e.series_id for e in entries}
        new = [
            AdaptedModelRecord(
                series_id=e.series_id,
                family=self.series[e.series_id].family or ref.family,
                registered_model=ref.registered_model,
                initializer_version=ref.version,
                initializer_run_id=ref.run_id,
                path=e.path,
                sha256=e.sha256,
                adapted_at=adapted_at,
                support=support,
                window=window,
                horizon=horizon,
                residual_scale=e.residual_scale,
                threshold=e.threshold,
                metadata=dict(e.metadata),
                support_end=e.support_end,
            )
            for e in entries
        ]
        self.models = [
            replace(m, is_current=False) if m.series_id in ids else m for m in self.models
        ] + new

    def referenced_model_paths(self) -> set[str]:
        return {m.path for m in self.models}
