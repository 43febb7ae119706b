"""``mamlctl serve``: the onnxruntime scoring server (uvicorn, uvloop + httptools).

Imports only typer/stdlib at module level; uvicorn and the app load inside the command. The
server process never imports torch or mlflow.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``"2s"``, ``"500ms"``, ``"1m"`` or a bare number of seconds."""
    from mamlctl.errors import ConfigError

    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 2s, 500ms or 1m")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    seconds = value / 1000 if unit == "ms" else value * 60 if unit == "m" else value
    if seconds <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return seconds


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: Annotated[
            str,
            typer.Option(
                help="Interface to bind (loopback by default).", envvar="MAMLCTL_SERVE_HOST"
            ),
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(min=0, max=65535, help="TCP port.", envvar="MAMLCTL_SERVE_PORT")
        ] = 8080,
        workers: Annotated[
            int, typer.Option(min=1, help="Worker processes (each loads every model).")
        ] = 1,
        reload_interval: Annotated[
            str,
            typer.Option(
                help="How often to poll the registry for new models (e.g. 2s).",
                envvar="MAMLCTL_SERVE_RELOAD_INTERVAL",
            ),
        ] = "2s",
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Serve forecasts and anomaly scores of every adapted series over HTTP."""
        from mamlctl.cli.output import load_settings

        settings = load_settings()  # validate MAMLCTL_* before forking workers
        interval = parse_duration(reload_interval)
        if not settings.models_dir.is_dir():
            from mamlctl.errors import NotFoundError

            raise NotFoundError(
                f"models folder {settings.models_dir} does not exist: run `mamlctl adapt` first"
            )
        import uvicorn

        try:  # the fast path subclasses uvicorn internals; plain httptools if they moved
            from mamlctl.serving.fastpath import ScoreHttpProtocol  # noqa: F401

            http = "mamlctl.serving.fastpath:ScoreHttpProtocol"
        except (ImportError, AttributeError):
            http = "httptools"
        os.environ["MAMLCTL_SERVE_RELOAD_INTERVAL"] = str(interval)
        uvicorn.run(
            "mamlctl.serving.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http=http,
            ws="none",  # no websocket endpoint: skip importing a websocket stack at start
            log_level=log_level,
            access_log=False,
            server_header=False,
            date_header=False,
        )
