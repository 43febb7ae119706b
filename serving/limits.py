"""Request limits and server knobs shared by the CLI, the app and the OpenAPI schemas.

A module of its own, importing nothing of ours: the cold start (:mod:`mamlctl.serving.app`) does
not import the pydantic request schemas (:mod:`mamlctl.serving.schemas`, built with the FastAPI
part after the models load) just for two numbers, and ``mamlctl serve``'s option defaults come
from here without importing asyncio or onnxruntime when the CLI starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Largest number of items in one batch request (more: 422). Configurable per app.
DEFAULT_MAX_BATCH = 4096
#: Largest request body in bytes (more: 413). Configurable per app.
DEFAULT_MAX_BODY = 1 << 20
#: Seconds the event loop keeps polling after an answer (:mod:`mamlctl.serving.busypoll`).
DEFAULT_BUSY_POLL = 100e-6
MAX_BUSY_POLL = 0.01
#: onnxruntime threads of a bank's batch session (:mod:`mamlctl.serving.runtime`).
DEFAULT_BATCH_THREADS = 1
MAX_BATCH_THREADS = 64
#: ``POST /v1/score`` bodies of at least this many bytes (a binary batch of ~40 rows, a JSON
#: batch of ~20) are scored on a worker thread, so that the event loop reads and answers other
#: requests meanwhile (:mod:`mamlctl.serving.app`); smaller ones are answered in the parser.
OFFLOAD_BODY_BYTES = 16 << 10
#: Worker threads for those large requests.
OFFLOAD_WORKERS = 2
#: ``/readyz`` answers 503 when more than this share of the current models failed to load.
DEFAULT_MAX_FAILED_SHARE = 0.1

#: Connection bounds of ``mamlctl serve``'s HTTP protocol (:mod:`mamlctl.serving.bounds`).
#: A request head (request line + headers) over this many bytes: 431 (414 for the URL alone).
DEFAULT_MAX_HEAD_BYTES = 16 << 10
#: Seconds from a head's first byte (or from connecting) until its end: else 408.
DEFAULT_HEAD_TIMEOUT = 10.0
#: Seconds from a head's end until the end of its body: else 408.
DEFAULT_BODY_TIMEOUT = 30.0
#: Open connections per worker process; the next one is answered 503 and closed.
DEFAULT_MAX_CONNECTIONS = 1024


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """The bounds one connection of the scoring server is held to (defaults above)."""

    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ConnectionLimits:
        """From ``MAMLCTL_SERVE_MAX_HEAD_BYTES``, ``..._HEAD_TIMEOUT``, ``..._BODY_TIMEOUT``
        (seconds) and ``..._MAX_CONNECTIONS`` as ``mamlctl serve`` passes them to its workers."""
        get = environ.get
        return cls(
            max_head_bytes=int(get("MAMLCTL_SERVE_MAX_HEAD_BYTES", DEFAULT_MAX_HEAD_BYTES)),
            head_timeout=float(get("MAMLCTL_SERVE_HEAD_TIMEOUT", DEFAULT_HEAD_TIMEOUT)),
            body_timeout=float(get("MAMLCTL_SERVE_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT)),
            max_connections=int(get("MAMLCTL_SERVE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)),
        )
