"""Prometheus metrics of one app instance (its own registry: several apps never collide)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

    @classmethod
    def create(cls) -> Metrics:
        reg = CollectorRegistry(auto_describe=True)
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
                "mamlctl_models_loaded", "Series with a loaded model.", registry=reg
            ),
            generation=Gauge(
                "mamlctl_state_generation", "Generation of the served state.", registry=reg
            ),
            reloads=Counter(
                "mamlctl_reloads", "State reloads by outcome.", ("outcome",), registry=reg
            ),
            load_failures=Gauge(
                "mamlctl_model_load_failures",
                "Current models that failed to load.",
                registry=reg,
            ),
            anomalies=Counter(
                "mamlctl_anomalies",
                "Observations flagged by POST /v1/observe, by family.",
                ("family",),
                registry=reg,
            ),
        )
