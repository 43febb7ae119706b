"""``mamlctl watch``: follow each family's ``champion`` alias in MLflow; re-adapt when it moves."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated

import typer


def event_json(event: dict[str, object], now: object = None) -> dict[str, object]:
    """A watch event for ``--json``: ``at`` (the loop's monotonic clock) becomes the ISO 8601
    wall-clock time the event is printed at (UTC)."""
    from datetime import UTC, datetime

    stamp = now if isinstance(now, datetime) else datetime.now(UTC)
    return {**event, "at": stamp.isoformat()}


def register(app: typer.Typer) -> None:
    @app.command("watch")
    def watch(
        family: Annotated[
            list[str] | None,
            typer.Option("--family", "-f", help="Family to follow (repeatable); default all."),
        ] = None,
        interval: Annotated[
            str,
            typer.Option(
                "--interval",
                help="Seconds between alias polls, e.g. 5s, 500ms, 1m.",
                envvar="MAMLCTL_WATCH_INTERVAL",
            ),
        ] = "5s",
        alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to follow.")] = "champion",
        backoff_max: Annotated[
            str,
            typer.Option(
                "--backoff-max",
                help="Longest wait between retries while the tracking server is away.",
            ),
        ] = "60s",
        once: Annotated[
            bool, typer.Option("--once", help="Poll once (catch up) and exit, e.g. from cron.")
        ] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON line per event on stdout.")
        ] = False,
        readapt_every: Annotated[
            str | None,
            typer.Option(
                "--readapt-every",
                help="Also re-adapt, from the served version, every series whose model is"
                " older than this (e.g. 1d: daily, on the points that arrived).",
                envvar="MAMLCTL_WATCH_READAPT_EVERY",
            ),
        ] = None,
    ) -> None:
        """Follow the families' ALIAS in the MLflow registry and re-adapt on every move.

        Polls every INTERVAL; when the alias points at another version than the one serving
        (promotion, or rollback to an older one) the family's series are re-adapted from that
        version and `mamlctl serve` hot-reloads them. While the tracking server is away it
        retries with exponential backoff and logs once; a failed re-adaptation leaves the
        previous models serving. With --readapt-every PERIOD it also re-adapts each family's
        series whose model is older than PERIOD from the served version (daily re-adaptation
        on the points observed since); the server keeps their windows. Ctrl-C stops it.
        """
        import json
        import os
        from dataclasses import asdict

        from mamlctl.cli.output import load_settings
        from mamlctl.registry.mlflow_models import validate_alias
        from mamlctl.registry.mlflow_store import MlflowStore, open_store
        from mamlctl.registry.promotion_watch import Backoff, WatchEvent, WatchLoop
        from mamlctl.stages.follow import AdaptingFollower, watched_families
        from mamlctl.timeseries.durations import parse_duration

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        validate_alias(alias)
        every = parse_duration(interval)
        period = parse_duration(readapt_every) if readapt_every is not None else None
        cap = parse_duration(backoff_max)
        settings = load_settings()
        settings.ensure_home()
        only = tuple(family or ())
        watched_families(settings, only)  # unknown family -> one-line error before looping

        current: list[MlflowStore] = []

        def connect() -> MlflowStore:
            store = open_store(settings)
            current[:] = [store]
            return store

        def on_event(event: WatchEvent) -> None:
            if as_json:
                typer.echo(json.dumps(event_json(asdict(event))))

        import torch

        torch.set_num_threads(1)
        loop = WatchLoop(
            connect=connect,
            follower=AdaptingFollower(settings, lambda: current[0]),
            families=lambda: watched_families(settings, only),
            alias=alias,
            interval_s=every,
            backoff=Backoff(initial_s=min(1.0, cap), max_s=cap),
            on_event=on_event,
            readapt_every_s=period,
        )
        with _stderr_log(logging.getLogger("mamlctl.watch")) as log:
            log.info(
                "following %s of %s every %g s (store %s)%s",
                alias,
                ", ".join(only) or "every family",
                every,
                settings.resolved_tracking_uri,
                f"; re-adapting models older than {period:g} s" if period else "",
            )
            loop.run(max_polls=1 if once else None)


@contextlib.contextmanager
def _stderr_log(logger: logging.Logger) -> Iterator[logging.Logger]:
    """One timestamped stderr line per event while the command runs (stdout stays clean for
    --json); the logger is restored afterwards (in-process callers, tests)."""
    from rich.logging import RichHandler

    from mamlctl.cli.output import console

    handler = RichHandler(
        console=console(stderr=True), show_path=False, rich_tracebacks=False, markup=False
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
