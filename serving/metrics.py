"""Prometheus metrics of one app instance (its own registry: several apps never collide).

**Several workers** (``mamlctl serve --workers N``): ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary folder before the workers start, so
prometheus_client (multiprocess mode) keeps every worker's values in files there; a scrape of
``/metrics`` (answered by whichever worker gets it) then reads *all* workers' files through a
``MultiProcessCollector``: counters and histograms are summed over workers (and stay counted
after a worker exits), gauges take the maximum over live workers (every worker loads every
model, so they agree once reloaded). ``process_*`` metrics describe the worker that answered.
With one process the app's own registry is exposed as it is (process metrics included).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: prometheus_client's multiprocess-mode folder variable (read when it is imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets in seconds, dense below a millisecond where single rows land.
LATENCY_BUCKETS = (
    50e-6,
    100e-6,
    150e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.5,
    1.0,
)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    errors: Counter
    latency: Histogram
    rows: Counter
    models_loaded: Gauge
    generation: Gauge
    reloads: Counter
    load_failures: Gauge
    anomalies: Counter
    model_info: Gauge
    shard_info: Gauge
    #: values live in ``PROMETHEUS_MULTIPROC_DIR`` (several workers): count at once, scrape all
    multiprocess: bool = False
    _info_labels: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def create(cls) -> Metrics:
        multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        reg = CollectorRegistry(auto_describe=True)
        if not multiprocess:
            from prometheus_client import PROCESS_COLLECTOR

            reg.register(PROCESS_COLLECTOR)  # process_* of this process
        # multiprocess: the largest over live workers (ignored otherwise)
        gauge_mode: Literal["max"] = "max"
        return cls(
            registry=reg,
            requests=Counter(
                "mamlctl_requests",
                "HTTP requests by endpoint and status code.",
                ("endpoint", "status"),
                registry=reg,
            ),
            errors=Counter(
                "mamlctl_errors",
                "Requests answered with a 4xx/5xx status, by error type.",
                ("endpoint", "type"),
                registry=reg,
            ),
            latency=Histogram(
                "mamlctl_request_seconds",
                "Time inside the app per request.",
                ("endpoint",),
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            rows=Counter("mamlctl_scored_rows", "Windows scored.", registry=reg),
            models_loaded=Gauge(
                "mamlctl_models_loaded",
                "Series with a loaded model.",
                registry=reg,
                multiprocess_mode=gauge_mode,
            ),
            generation=Gauge(
                "mamlctl_state_generation",
                "Generation of the served state.",
                registry=reg,
                multiprocess_mode=gauge_mode,
            ),
            reloads=Counter(
                "mamlctl_reloads", "State reloads by outcome.", ("outcome",), registry=reg
            ),
            load_failures=Gauge(
                "mamlctl_model_load_failures",
                "Current models that failed to load.",
                registry=reg,
                multiprocess_mode=gauge_mode,
            ),
            anomalies=Counter(
                "mamlctl_anomalies",
                "Observations flagged by POST /v1/observe, by family.",
                ("family",),
                registry=reg,
            ),
            model_info=Gauge(
                "mamlctl_model_info",
                "1 for each family and initializer version the server serves series of.",
                ("family", "version"),
                registry=reg,
                multiprocess_mode=gauge_mode,
            ),
            shard_info=Gauge(
                "mamlctl_shard_info",
                "1, labelled with this server's shard (serve --shard I/N) and ring entry.",
                ("shard", "shards", "server"),
                registry=reg,
                multiprocess_mode=gauge_mode,
            ),
            multiprocess=multiprocess,
        )

    def set_model_info(self, served: Iterable[tuple[str, str]]) -> None:
        """1 per served ``(family, initializer version)``; a pair no longer served is removed
        (set to 0 in multiprocess mode, where a value cannot be removed)."""
        now = set(served)
        for gone in self._info_labels - now:
            if self.multiprocess:
                self.model_info.labels(*gone).set(0)
            else:
                self.model_info.remove(*gone)
                self._info_labels.discard(gone)
        for pair in now:
            self.model_info.labels(*pair).set(1)
        self._info_labels.update(now)

    def exposition(self) -> bytes:
        """The text of ``/metrics``: every worker's values in multiprocess mode, else this
        app's registry."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import ProcessCollector
        from prometheus_client.multiprocess import MultiProcessCollector

        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=scrape)  # the answering worker's process_* metrics
        return generate_latest(scrape)


@contextmanager
def multiprocess_dir(env: MutableMapping[str, str]) -> Iterator[Path]:
    """Multiprocess mode for the workers about to be started: ``PROMETHEUS_MULTIPROC_DIR`` in
    ``env`` names a folder emptied of earlier value files (the one already set, else a fresh
    temporary folder, removed again on exit), so counts start at 0 with this server."""
    given = env.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="mamlctl-prometheus-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    env[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        if given is None:
            env.pop(MULTIPROC_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)
