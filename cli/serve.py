"""``mamlctl serve``: the onnxruntime scoring server (uvicorn, uvloop + httptools).

Imports only typer/stdlib at module level; uvicorn and the app load inside the command. The
server process never imports torch or mlflow.
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated, Any

import typer

from mamlctl.serving import limits

_MAX_BUSY = f"{limits.MAX_BUSY_POLL * 1e3:g}ms"


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """Seconds in ``"2s"``, ``"500ms"``, ``"100us"``, ``"1m"``, ``"1h"`` or a bare number of
    seconds: :func:`mamlctl.timeseries.durations.parse_duration`, the one grammar."""
    from mamlctl.timeseries.durations import parse_duration as parse

    return parse(text, allow_zero=allow_zero)


def _check_port_free(host: str, port: int) -> None:
    """Bind (and release) ``host:port`` the way uvicorn will, so that a busy port is a one-line
    error with exit 1 instead of uvicorn's log line and exit 3."""
    import socket

    from mamlctl.errors import ConfigError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {err.strerror or err} (another server? "
                "pick another --port)"
            ) from None


def http_protocol() -> str:
    """uvicorn's ``http=``: the fast path held to the connection bounds; without the fast path
    (uvicorn's internals moved), the bounded plain protocol; uvicorn's own as the last resort."""
    for path in (
        "mamlctl.serving.fastpath:ScoreHttpProtocol",
        "mamlctl.serving.bounds:BoundedHttpProtocol",
    ):
        module, _, name = path.partition(":")
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return path
    return "httptools"


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
        batch_threads: Annotated[
            int,
            typer.Option(
                min=1,
                max=limits.MAX_BATCH_THREADS,
                help="onnxruntime threads per call of 32 or more rows (single rows always use"
                " one; large requests already run two at a time on worker threads).",
                envvar="MAMLCTL_SERVE_BATCH_THREADS",
            ),
        ] = limits.DEFAULT_BATCH_THREADS,
        busy_poll: Annotated[
            str,
            typer.Option(
                help="Keep polling for this long after each answer instead of sleeping (saves"
                f" the CPU wake-up on the next request; 0 turns it off; at most {_MAX_BUSY}).",
                envvar="MAMLCTL_SERVE_BUSY_POLL",
            ),
        ] = f"{round(limits.DEFAULT_BUSY_POLL * 1e6)}us",
        max_failed_share: Annotated[
            float,
            typer.Option(
                min=0.0,
                max=1.0,
                help="/readyz answers 503 when more than this share of the current models"
                " failed to load (1: never).",
                envvar="MAMLCTL_SERVE_MAX_FAILED_SHARE",
            ),
        ] = limits.DEFAULT_MAX_FAILED_SHARE,
        allow_empty: Annotated[
            bool,
            typer.Option(
                "--allow-empty",
                help="/readyz answers 200 with no model loaded (else 503).",
                envvar="MAMLCTL_SERVE_ALLOW_EMPTY",
            ),
        ] = False,
        flag: Annotated[
            str,
            typer.Option(
                "--flag",
                help="/v1/observe's is_anomaly: rank (rank_score >= 0.5: out of range or a red"
                " anomaly likelihood) or z (z >= the series' calibrated threshold).",
                envvar="MAMLCTL_SERVE_FLAG",
            ),
        ] = "rank",
        max_head_bytes: Annotated[
            int,
            typer.Option(
                min=256,
                help="Largest request line + headers in bytes (more: 431, or 414 for the URL).",
                envvar="MAMLCTL_SERVE_MAX_HEAD_BYTES",
            ),
        ] = limits.DEFAULT_MAX_HEAD_BYTES,
        head_timeout: Annotated[
            str,
            typer.Option(
                help="Time a client has to send a request's head (from connecting or its first"
                " byte); else 408 and close.",
                envvar="MAMLCTL_SERVE_HEAD_TIMEOUT",
            ),
        ] = f"{limits.DEFAULT_HEAD_TIMEOUT:g}s",
        body_timeout: Annotated[
            str,
            typer.Option(
                help="Time a client has to send a request's body after its head; else 408.",
                envvar="MAMLCTL_SERVE_BODY_TIMEOUT",
            ),
        ] = f"{limits.DEFAULT_BODY_TIMEOUT:g}s",
        max_connections: Annotated[
            int,
            typer.Option(
                min=1,
                help="Open connections per worker; the next one is answered 503 and closed.",
                envvar="MAMLCTL_SERVE_MAX_CONNECTIONS",
            ),
        ] = limits.DEFAULT_MAX_CONNECTIONS,
        shard: Annotated[
            str | None,
            typer.Option(
                help="Serve only shard I of N (I from 0): the series that nginx's consistent"
                " hash over --shard-ring maps to entry I (`mamlctl shards nginx-conf`).",
                envvar="MAMLCTL_SERVE_SHARD",
                show_default=False,
            ),
        ] = None,
        shard_ring: Annotated[
            str | None,
            typer.Option(
                help="With --shard: the N shards' upstream addresses, comma-separated, exactly"
                " as the balancer's `server` lines spell them, in the same order.",
                envvar="MAMLCTL_SERVE_SHARD_RING",
                show_default=False,
            ),
        ] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Serve forecasts and anomaly scores of every adapted series over HTTP."""
        from mamlctl.cli.output import load_settings
        from mamlctl.serving.auth import expected_token

        settings = load_settings()  # validate MAMLCTL_* before forking workers
        expected_token(settings)  # an empty MAMLCTL_API_TOKEN: one-line error, not auth off
        interval = parse_duration(reload_interval)
        bounds = limits.ConnectionLimits(
            max_head_bytes=max_head_bytes,
            head_timeout=parse_duration(head_timeout),
            body_timeout=parse_duration(body_timeout),
            max_connections=max_connections,
        )
        busy = parse_duration(busy_poll, allow_zero=True)
        if busy > limits.MAX_BUSY_POLL:
            from mamlctl.errors import ConfigError

            raise ConfigError(f"--busy-poll {busy_poll!r} is over the {_MAX_BUSY} limit")
        if not settings.models_dir.is_dir():
            from mamlctl.errors import NotFoundError

            raise NotFoundError(
                f"models folder {settings.models_dir} does not exist: run `mamlctl adapt` first"
            )
        _check_port_free(host, port)
        _shard_env(settings, shard, shard_ring, host=host, port=port)
        import uvicorn

        from mamlctl.timeseries.durations import format_seconds

        http = http_protocol()
        # durations as plain decimals: the workers (float) and a later `serve` (the duration
        # grammar) read them back; str(float) can give "1e-05", which the grammar refuses
        os.environ["MAMLCTL_SERVE_RELOAD_INTERVAL"] = format_seconds(interval)
        os.environ["MAMLCTL_SERVE_BUSY_POLL"] = format_seconds(busy)
        os.environ["MAMLCTL_SERVE_BATCH_THREADS"] = str(batch_threads)
        os.environ["MAMLCTL_SERVE_MAX_FAILED_SHARE"] = str(max_failed_share)
        os.environ["MAMLCTL_SERVE_ALLOW_EMPTY"] = "1" if allow_empty else "0"
        from mamlctl.timeseries.stream_detector import FLAG_RULES

        if flag not in FLAG_RULES:
            from mamlctl.errors import InputError

            raise InputError(f"--flag must be one of {', '.join(FLAG_RULES)}, got {flag!r}")
        os.environ["MAMLCTL_SERVE_FLAG"] = flag
        # workers share one socket: each takes connections only once its models are loaded
        os.environ["MAMLCTL_SERVE_LOAD_BEFORE_ACCEPT"] = "1" if workers > 1 else "0"
        os.environ["MAMLCTL_SERVE_MAX_HEAD_BYTES"] = str(bounds.max_head_bytes)
        os.environ["MAMLCTL_SERVE_HEAD_TIMEOUT"] = format_seconds(bounds.head_timeout)
        os.environ["MAMLCTL_SERVE_BODY_TIMEOUT"] = format_seconds(bounds.body_timeout)
        os.environ["MAMLCTL_SERVE_MAX_CONNECTIONS"] = str(bounds.max_connections)
        os.environ["MAMLCTL_SERVE_ANNOUNCE"] = f"http://{_host_in_url(host)}:{port}"
        os.environ.pop("MAMLCTL_SERVE_ANNOUNCE_MARKER", None)
        from contextlib import nullcontext

        from mamlctl.serving.metrics import multiprocess_dir

        # several workers: Prometheus values in shared files, so /metrics adds them up
        with multiprocess_dir(os.environ) if workers > 1 else nullcontext() as shared:
            if shared is not None:  # the first worker loaded prints the startup line
                marker = shared / "startup-line"
                marker.unlink(missing_ok=True)
                os.environ["MAMLCTL_SERVE_ANNOUNCE_MARKER"] = str(marker)
            _run_uvicorn(uvicorn, http=http, host=host, port=port, workers=workers, level=log_level)


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _shard_env(
    settings: Any, spec: str | None, ring_text: str | None, *, host: str, port: int
) -> None:
    """Check ``--shard``/``--shard-ring``, hand them to the workers and print the startup
    line: the shard, its ring entry and its share of the registry's current models."""
    from mamlctl.errors import ConfigError, StoreError
    from mamlctl.serving.shards import parse_shard, split_ring

    if not spec:
        if ring_text:
            raise ConfigError("--shard-ring is given without --shard I/N")
        os.environ.pop("MAMLCTL_SERVE_SHARD", None)
        os.environ.pop("MAMLCTL_SERVE_SHARD_RING", None)
        return
    shard = parse_shard(spec, split_ring(ring_text or ""))
    os.environ["MAMLCTL_SERVE_SHARD"] = shard.label
    os.environ["MAMLCTL_SERVE_SHARD_RING"] = ",".join(shard.ring.servers)
    from mamlctl.serving.source import RegistrySource

    source = RegistrySource(settings)
    try:
        ids = [r.series_id for r in source.current()]
        share = f"{sum(map(shard.owns, ids))} of the registry's {len(ids)} current models"
    except StoreError as err:
        share = f"share unknown until the registry answers ({err})"
    finally:
        source.close()
    typer.echo(
        f"mamlctl serve: shard {shard.label} ({shard.ring.servers[shard.index]} in the ring)"
        f" on http://{host}:{port}: {share}",
        err=True,
    )


def _run_uvicorn(
    uvicorn: Any, *, http: str, host: str, port: int, workers: int, level: str
) -> None:
    uvicorn.run(
        "mamlctl.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=http,
        ws="none",  # no websocket endpoint: skip importing a websocket stack at start
        log_level=level,
        access_log=False,
        server_header=False,
        date_header=False,
    )
