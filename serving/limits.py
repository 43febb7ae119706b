"""Request limits and server knobs shared by the CLI, the app and the OpenAPI schemas.

A module of its own, importing nothing: the cold start (:mod:`mamlctl.serving.app`) does not
import the pydantic request schemas (:mod:`mamlctl.serving.schemas`, built with the FastAPI
part after the models load) just for two numbers, and ``mamlctl serve``'s option defaults come
from here without importing asyncio or onnxruntime when the CLI starts.
"""

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
