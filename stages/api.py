"""The Python API: the CLI's stages as functions, re-exported lazily by :mod:`mamlctl`.

::

    import mamlctl

    mamlctl.ingest_frame(df)                  # Nixtla (unique_id, ds, y) or Prophet (ds, y)
    mamlctl.train("hourly", iterations=200)   # meta-train + register (first version: champion)
    mamlctl.adapt("hourly")                   # adapt + export one ONNX file per series
    mamlctl.forecast(["store-1"], level=[80, 95])   # DataFrame unique_id, ds, yhat, ...
    mamlctl.detect(family="hourly")           # DataFrame unique_id, ds, y, yhat, anomaly_...

Every function takes ``home`` (a folder: the embedded registry, MLflow store and models of
``MAMLCTL_HOME``) or ``settings`` (a :class:`~mamlctl.settings.Settings`); with neither, the
settings come from the environment as for the CLI. Errors are the CLI's
(:class:`~mamlctl.errors.MamlctlError` subclasses with a one-line message).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.ports import AdaptInitializerStore
    from mamlctl.settings import Settings
    from mamlctl.stages.adapt import AdaptReport, AdaptRequest, Progress
    from mamlctl.stages.train import TrainOutcome

__all__ = [
    "IngestResult",
    "adapt",
    "detect",
    "forecast",
    "ingest_frame",
    "run_adaptation",
    "train",
]


def _settings(home: str | Path | None, settings: Settings | None) -> Settings:
    from mamlctl.errors import ConfigError
    from mamlctl.settings import Settings

    if home is not None and settings is not None:
        raise ConfigError("give home or settings, not both")
    if settings is not None:
        return settings
    if home is not None:
        return Settings(home=Path(home))
    return Settings.from_env()


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """What :func:`ingest_frame` stored: the series (in frame order), points added, and the
    family each series is in now (None: too short for detection)."""

    series: tuple[str, ...]
    points_added: int
    families: dict[str, str | None]


def ingest_frame(
    df: pd.DataFrame,
    *,
    family: str | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
    id_col: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_id: str | None = None,
    interval: str | None = None,
    nan: str = "reject",
    order: str = "strict",
    mode: str = "merge",
) -> IngestResult:
    """Store the series of a long frame, then put them into a family.

    Columns as ``mamlctl ingest``: Nixtla ``unique_id, ds, y``, Prophet ``ds, y`` (one series,
    id ``series_id``), mamlctl's ``series_id, timestamp, value``; ``id_col``/``time_col``/
    ``value_col`` override. The same strict validation (numbers, timestamps, NaN ``nan``
    policy, ``order``) runs before anything is written; one transaction. ``family`` assigns
    every series to that existing family (``mamlctl families assign``); None detects each
    series' family (``mamlctl families detect``).
    """
    from mamlctl.errors import InputError
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import transaction
    from mamlctl.stages.detect import detect_families
    from mamlctl.stages.ingest import ingest, prepare_sources
    from mamlctl.timeseries.frames import frame_kind, resolve_roles, series_from_frame
    from mamlctl.timeseries.periodicity import parse_interval
    from mamlctl.timeseries.readers import SourceFile

    if nan not in ("reject", "interpolate") or order not in ("strict", "file"):
        raise InputError("nan must be reject|interpolate and order strict|file")
    if mode not in ("merge", "append"):
        raise InputError(f"unknown mode {mode!r}: use merge or append")
    cfg = _settings(home, settings)
    source = "<frame>"
    roles = resolve_roles(
        list(df.columns), source=source, id_col=id_col, time_col=time_col, value_col=value_col
    )
    series = series_from_frame(df, roles, source=source, series_id=series_id, first_line=0)
    kind = frame_kind(roles)
    prepared = prepare_sources(
        [SourceFile(path=Path(source), format=kind, series=series)],
        interval_seconds=parse_interval(interval) if interval else None,
        nan=nan,
        order=order,
    )
    ids = tuple(s.series_id for s in series)
    cfg.ensure_home()
    with transaction(cfg) as session:
        summary = ingest(session, prepared, mode=mode)
        if family is not None:
            q.assign_family(session, family, list(ids))
            families: dict[str, str | None] = dict.fromkeys(ids, family)
        else:
            dets = detect_families(session, series_ids=list(ids))
            families = {d.series_id: (d.family.name if d.family else None) for d in dets}
    return IngestResult(series=ids, points_added=summary.points_added, families=families)


def train(
    family: str,
    *,
    home: str | Path | None = None,
    settings: Settings | None = None,
    promote: bool = False,
    **options: Any,
) -> TrainOutcome:
    """Meta-train ``family``'s initializer and register it (``mamlctl train``).

    ``options`` are the training config's fields (``iterations``, ``seed``, ``hidden``,
    ``inner_steps``, ``time_budget_s``, ...; see ``mamlctl train --help``); an unknown key is
    a :class:`~mamlctl.errors.ConfigError`. Returns the registered version and its metrics.
    """
    import torch

    from mamlctl.maml.family_data import make_config
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.registry.series_store import SqlSeriesStore
    from mamlctl.stages.train import train as train_stage

    config = make_config(**options)
    cfg = _settings(home, settings)
    cfg.ensure_home()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks run fastest on one thread
    try:
        return train_stage(
            family,
            config,
            series_store=SqlSeriesStore(cfg),
            initializer_store=open_store(cfg),
            promote=promote,
        )
    finally:
        torch.set_num_threads(threads)


def adapt(
    family: str,
    *,
    series: Sequence[str] = (),
    version: int | None = None,
    force: bool = False,
    home: str | Path | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> AdaptReport:
    """Adapt ``family``'s series (all, or ``series``) from its champion (or ``version``) and
    export one ONNX file each (``mamlctl adapt``). ``options`` are the adaptation config's
    fields (``steps``, ``inner_lr``, ``calibration``, ``adapt_scope``, ``weights``)."""
    from mamlctl.errors import ConfigError
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.stages.adapt import AdaptRequest

    try:
        config = AdaptConfig(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid adaptation settings: {' '.join(str(err).split())}") from None
    cfg = _settings(home, settings)
    request = AdaptRequest(family=family, series=tuple(series), version=version, force=force)
    return run_adaptation(cfg, open_store(cfg), request, config)


def run_adaptation(
    settings: Settings,
    store: AdaptInitializerStore,
    request: AdaptRequest,
    config: AdaptConfig | None = None,
    *,
    progress: Progress | None = None,
    ray_address: str | None = None,
) -> AdaptReport:
    """The adapt stage (:func:`mamlctl.stages.adapt.adapt_family`) on the real ports the
    settings name: the registry database (opened, and migrated when embedded, for the job),
    ``store`` (e.g. :func:`mamlctl.registry.mlflow_store.open_store`), the models folder.
    ``config``: the adaptation settings (default: ``AdaptConfig()``, ``mamlctl adapt``'s).
    ``ray_address``: run the chunks as Ray tasks on that cluster (``host:port`` or ``auto``,
    :mod:`mamlctl.stages.adapt_ray`); None: in this process."""
    import contextlib

    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.series_store import SqlAdaptedModelStore
    from mamlctl.stages.adapt import adapt_family

    settings.ensure_home()
    with contextlib.ExitStack() as stack:
        runner = None
        if ray_address is not None:  # connect first: a bad address fails before the job
            from mamlctl.stages.adapt_ray import RayChunkRunner

            runner = stack.enter_context(RayChunkRunner(ray_address, settings))
        factory = stack.enter_context(open_registry(settings))
        report = adapt_family(
            request,
            config if config is not None else AdaptConfig(),
            models=SqlAdaptedModelStore(factory),
            initializers=store,
            models_dir=settings.models_dir,
            progress=progress,
            runner=runner,
        )
    if runner is not None and runner.stats is not None:
        import dataclasses

        report = dataclasses.replace(report, cluster=runner.stats)
    return report


def _selection(series: str | Iterable[str] | pd.DataFrame | None) -> tuple[str, ...]:
    if series is None:
        return ()
    if isinstance(series, str):
        return (series,)
    columns = getattr(series, "columns", None)
    if columns is not None:  # a frame: its unique_id (or series_id) column
        from mamlctl.errors import InputError
        from mamlctl.timeseries.frames import resolve_roles

        roles = resolve_roles(list(columns), source="<frame>")
        if roles.id is None:
            raise InputError("the frame has no unique_id/series_id column to select series by")
        col = next(c for c in columns if str(c).strip().lower() == roles.id)
        return tuple(dict.fromkeys(str(v) for v in series[col]))  # type: ignore[index]
    return tuple(dict.fromkeys(str(s) for s in series))


def forecast(
    series: str | Iterable[str] | pd.DataFrame | None = None,
    *,
    family: str | None = None,
    level: str | Sequence[float] | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Forecasts of the stored series (``mamlctl forecast``): ``unique_id, ds, yhat`` and
    ``yhat-lo-<l>``, ``yhat-hi-<l>`` per ``level`` (percent, e.g. ``[80, 95]``).

    ``series``: ids, or a frame whose ``unique_id`` column names them (e.g. the frame just
    ingested); None = every series with a model (of ``family``). Each series is forecast from
    its last L stored points by its current exported model, through the server's runtime.
    """
    from mamlctl.stages.forecast import forecast_frame, load_targets, parse_levels

    levels = parse_levels(level)
    cfg = _settings(home, settings)
    cfg.require_home()
    targets = load_targets(cfg, family=family, series_ids=_selection(series))
    return forecast_frame(targets, models_dir=cfg.models_dir, levels=levels)


def detect(
    series: str | Iterable[str] | pd.DataFrame | None = None,
    *,
    family: str | None = None,
    since: str | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """One-step-ahead anomaly scores of the stored points after each model's support end
    (``mamlctl detect``): ``unique_id, ds, y, yhat, anomaly_score, is_anomaly``."""
    from mamlctl.stages.forecast import detect_frame, load_targets

    cfg = _settings(home, settings)
    cfg.require_home()
    targets = load_targets(cfg, family=family, series_ids=_selection(series))
    return detect_frame(targets, models_dir=cfg.models_dir, since=since)
