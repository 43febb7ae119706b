"""``mamlctl demo``'s stages on the 60 M4 Hourly series shipped in the package.

ingest -> detect families -> meta-train the largest family (short budget) -> register +
champion -> adapt + export -> scoring server (thread) -> score windows, one with an injected
anomaly -> summary. Every stage calls the same library function as its command; this module
only wires them together in one process (imports once, no subprocess start-up costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mamlctl.errors import ConfigError

if TYPE_CHECKING:
    from mamlctl.cli.demo_server import ServerProcess
    from mamlctl.domain import Family
    from mamlctl.settings import Settings

TRAIN_FILE = "m4-Hourly-train-demo.csv.gz"
TEST_FILE = "m4-Hourly-test-demo.csv.gz"
HOURLY_S = 3600.0

#: Stage callbacks: ``start(name, total)``, ``advance(done, total, info)``, ``finish(info)``.
StageStart = Callable[[str, int | None], None]
StageAdvance = Callable[[int, int, str], None]
StageFinish = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """Knobs of the demo (frozen; validated in ``__post_init__``)."""

    home: Path
    train_seconds: float = 20.0
    #: Fixed meta-iterations (deterministic, for tests); None: as many as the budget allows.
    iterations: int | None = None
    actual_steps: int = 1
    normal_windows: int = 4
    anomaly_factor: float = 3.0
    latency_requests: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_seconds <= 0:
            raise ConfigError(f"--train-seconds must be positive, got {self.train_seconds}")
        if not 1 <= self.normal_windows <= 20:
            raise ConfigError(f"--windows must be between 1 and 20, got {self.normal_windows}")
        if self.anomaly_factor <= 1:
            raise ConfigError(f"--anomaly-factor must exceed 1, got {self.anomaly_factor}")
        if self.actual_steps < 1:
            raise ConfigError(f"--actual-steps must be at least 1, got {self.actual_steps}")
        if self.latency_requests < 1:
            raise ConfigError("--latency-requests must be at least 1")


class Stages:
    """Progress reporting seam (the command drives a rich progress display with it)."""

    def __init__(self, start: StageStart, advance: StageAdvance, finish: StageFinish) -> None:
        self.start, self.advance, self.finish = start, advance, finish
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[dict[str, str]]:
        note: dict[str, str] = {"info": ""}
        began = time.perf_counter()
        self.start(name, total)
        yield note
        self.seconds[name] = round(time.perf_counter() - began, 3)
        self.finish(note["info"])


def demo_settings(home: Path) -> Settings:
    """Hermetic settings: everything under ``home``, whatever MAMLCTL_*/MLFLOW_* say."""
    from mamlctl.settings import Settings

    home = home.expanduser().resolve()
    if (home / "registry.db").exists() or (home / "mlflow").exists():
        raise ConfigError(
            f"{home} already holds a mamlctl home; the demo needs a fresh one (pass another "
            "--home or leave it out)"
        )
    settings = Settings(
        home=home,
        database_url=None,
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        registry_uri=None,
        api_token=None,
    )
    settings.ensure_home()
    return settings


def shipped_file(name: str) -> Path:
    """Path of a data file shipped in the package (``mamlctl/data``)."""
    from importlib.resources import files

    resource = files("mamlctl").joinpath("data", name)
    path = Path(str(resource))
    if not path.is_file():
        raise ConfigError(f"demo data {name} is missing from the installed package at {path}")
    return path


def run_demo(options: DemoOptions, stages: Stages) -> tuple[dict[str, Any], ServerProcess]:
    """Run every stage; returns the summary and the still-running server (caller stops it)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    began = time.perf_counter()
    settings = demo_settings(options.home)
    summary: dict[str, Any] = {
        "home": str(settings.home),
        "database_url": settings.resolved_database_url,
        "tracking_uri": settings.resolved_tracking_uri,
    }
    summary["data"] = _ingest(settings, stages)
    families = _detect(settings, stages)
    summary["families"] = [
        {
            "name": f.name,
            "period": f.period,
            "window": f.window,
            "horizon": f.horizon,
            "support": f.support,
            "series": n,
        }
        for f, n in families
    ]
    family = families[0][0]  # the largest
    summary["trained"] = _train(settings, family, options, stages)
    summary["adapted"] = _adapt(settings, family.name, stages)
    server, scoring = _serve_and_score(settings, family, options, stages)
    summary.update(scoring)
    summary["stage_seconds"] = dict(stages.seconds)
    summary["total_seconds"] = round(time.perf_counter() - began, 3)
    summary["next"] = _next_steps(settings, family.name)
    return summary, server


def _ingest(settings: Settings, stages: Stages) -> dict[str, Any]:
    from mamlctl.registry.db import transaction
    from mamlctl.stages.ingest import ingest, prepare_ingest

    path = shipped_file(TRAIN_FILE)
    with stages.stage("ingest M4 Hourly subset") as note:
        prepared = prepare_ingest([path], fmt="m4", interval_seconds=HOURLY_S)
        with transaction(settings) as session:
            result = ingest(session, prepared)
        points = result.points_added
        note["info"] = f"{len(result.results)} series, {points} points"
    return {"file": str(path), "series": len(result.results), "points": points}


def _detect(settings: Settings, stages: Stages) -> list[tuple[Family, int]]:
    from collections import Counter

    from mamlctl.registry.db import transaction
    from mamlctl.registry.family_queries import list_families
    from mamlctl.stages.detect import detect_families

    with stages.stage("detect families") as note, transaction(settings) as session:
        detections = detect_families(session)
        counts = Counter(d.family.name for d in detections if d.family is not None)
        by_name = {f.name: f for f in list_families(session)}
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        note["info"] = ", ".join(f"{name} ({n})" for name, n in ranked)
    if not ranked:
        raise ConfigError("no family detected in the demo data")
    return [(by_name[name], n) for name, n in ranked]


def _train(
    settings: Settings, family: Family, options: DemoOptions, stages: Stages
) -> dict[str, Any]:
    import torch

    from mamlctl.maml.family_data import make_config
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.registry.series_store import SqlSeriesStore
    from mamlctl.stages.train import plan_training, run_training

    torch.set_num_threads(1)
    if options.iterations is not None:
        config = make_config(iterations=options.iterations, seed=options.seed)
    else:
        config = make_config(time_budget_s=options.train_seconds, seed=options.seed)
    series_store = SqlSeriesStore(settings)
    data = plan_training(family, series_store.family_series(family.name), config)
    store = open_store(settings)

    with stages.stage(f"meta-train {family.name} (MAML)", total=config.iterations) as note:
        outcome = run_training(
            data,
            store,
            promote=True,
            record=series_store.record_initializer,
            on_progress=lambda done, total, m: stages.advance(done, total, f"loss {m['loss']:.4f}"),
        )
        note["info"] = (
            f"{outcome.iterations} iterations, {outcome.ref.registered_model} "
            f"v{outcome.ref.version} @{','.join(outcome.ref.aliases)}"
        )
    m = outcome.metrics
    return {
        "family": family.name,
        "registered_model": outcome.ref.registered_model,
        "version": outcome.ref.version,
        "aliases": list(outcome.ref.aliases),
        "run_id": outcome.run_id,
        "iterations": outcome.iterations,
        "train_seconds": round(outcome.elapsed_s, 3),
        "series_train": outcome.n_train,
        "series_validation": outcome.n_validation,
        "val_mase": m.get("val_mase"),
        "val_pretrained_mase": m.get("val_pretrained_mase"),
        "val_seasonal_naive_mase": m.get("val_seasonal_naive_mase"),
    }


def _adapt(settings: Settings, family: str, stages: Stages) -> dict[str, Any]:
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.registry.mlflow_store import open_store
    from mamlctl.stages.adapt import AdaptRequest
    from mamlctl.stages.api import run_adaptation

    store = open_store(settings)
    with stages.stage("adapt + export ONNX per series") as note:
        report = run_adaptation(
            settings,
            store,
            AdaptRequest(family=family),
            AdaptConfig(),
            progress=lambda done, total: stages.advance(done, total, f"{done}/{total} series"),
        )
        note["info"] = f"{report.adapted} series from v{report.initializer.version}"
    return {
        "series": report.adapted,
        "zero_shot": report.zero_shot,
        "too_short": list(report.too_short),
        "initializer_version": report.initializer.version,
        "run_id": report.run_id,
        "seconds": round(report.seconds, 3),
        "parity_max_rel_error": report.metrics.get("parity_max_rel_error"),
    }


def _test_continuations(ids: set[str]) -> dict[str, np.ndarray]:
    from mamlctl.timeseries.readers import read_file

    source = read_file(shipped_file(TEST_FILE), fmt="m4")
    return {s.series_id: np.asarray(s.values) for s in source.series if s.series_id in ids}


def _serve_and_score(
    settings: Settings, family: Family, options: DemoOptions, stages: Stages
) -> tuple[ServerProcess, dict[str, Any]]:
    import httpx

    from mamlctl.cli.demo_server import measure_latency, score, start_server, wait_ready
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry

    with stages.stage("start scoring server") as note:
        server = start_server(settings)
        client = httpx.Client(base_url=server.url, timeout=30.0)
        ready = wait_ready(client)
        note["info"] = f"{server.url}, {ready['series']} series loaded"
    try:
        with stages.stage("score windows") as note:
            with open_registry(settings) as factory, factory() as session:
                served = sorted(r.series_id for r in q.current_adapted_models(session, family.name))
                picks = served[: options.normal_windows + 1]
                windows = {
                    sid: q.last_points(session, sid, family.window)[0].tolist() for sid in picks
                }
            continuation = _test_continuations(set(picks))
            plain = [{"series_id": sid, "window": windows[sid]} for sid in picks]
            # The injected anomaly goes where it is visible: the series whose next value is
            # largest relative to its model's sigma (a 3x spike of a value near 0 is no spike).
            first = [score(client, item) for item in plain]
            ratio = [
                abs(continuation[sid][0]) / r["sigma"][0]
                for sid, r in zip(picks, first, strict=True)
            ]
            target = picks[int(np.argmax(ratio))]
            scores = []
            for sid in picks:
                actual = (
                    continuation[sid][: min(options.actual_steps, family.horizon)]
                    .astype(float)
                    .copy()
                )
                injected = sid == target
                if injected:
                    actual[0] *= options.anomaly_factor
                body = {"series_id": sid, "window": windows[sid], "actual": actual.tolist()}
                result = score(client, body)
                scores.append(
                    {
                        "series_id": sid,
                        "injected_anomaly": injected,
                        "window_last": windows[sid][-1],
                        "actual": actual.tolist(),
                        "forecast": result["forecast"],
                        "sigma": result["sigma"],
                        "anomaly_score": result["anomaly_score"],
                        "is_anomaly": result["is_anomaly"],
                        "threshold": result["threshold"],
                        "registered_model": result["lineage"]["registered_model"],
                        "initializer_version": result["lineage"]["initializer_version"],
                        "model_sha256": result["lineage"]["model_sha256"],
                    }
                )
            latency = measure_latency(client, plain, requests=options.latency_requests)
            flagged = sum(1 for s in scores if any(s["is_anomaly"] or ()))
            note["info"] = f"{len(scores)} windows, {flagged} flagged, p50 {latency['p50_ms']} ms"
    except BaseException:
        client.close()
        server.stop()
        raise
    client.close()
    return server, {
        "server": {"url": server.url, "series_loaded": ready["series"]},
        "scores": scores,
        "latency": latency,
    }


def _next_steps(settings: Settings, family: str) -> list[str]:
    env = f"MAMLCTL_HOME={settings.home}"
    return [
        f"{env} mamlctl ui            # MLflow UI: run, metrics, maml-{family} and its aliases",
        f"{env} mamlctl serve         # the scoring server on 127.0.0.1:8080",
        f"{env} mamlctl watch         # follow champion moves made in the UI",
        f"{env} mamlctl status        # families, versions, adapted models",
    ]
