"""onnxruntime scoring: runtime, model source, HTTP app. Never imports torch or mlflow.

Modules, in the order a request meets them:

- :mod:`~mamlctl.serving.app`: ``create_app(settings, source, *, options=None)`` -> ASGI app
  (auth, body limit, metrics, the ``POST /v1/score`` fast path, FastAPI for the rest and for
  OpenAPI); ``app_from_env()`` is the uvicorn factory behind ``mamlctl serve``.
- :mod:`~mamlctl.serving.fastpath`: uvicorn's httptools protocol answering ``POST /v1/score``
  straight from the parser (same answer function as the ASGI path; ``mamlctl serve`` uses it).
- :mod:`~mamlctl.serving.busypoll`: keeps the event loop polling for a short window after each
  answer, so the next request does not pay a CPU wake-up (``--busy-poll``).
- :mod:`~mamlctl.serving.limits`: body and batch limits; :mod:`~mamlctl.serving.api`: the
  FastAPI part (``/v1/series``, ``/metrics``, OpenAPI), built after the models load.
- :mod:`~mamlctl.serving.binary`: the binary batch format (``application/octet-stream``).
- :mod:`~mamlctl.serving.scoring`: request bytes -> validated items -> one ``run`` per group ->
  response bytes; anomaly scores from :mod:`mamlctl.timeseries.anomaly`.
- :mod:`~mamlctl.serving.auth`: the bearer token (an empty ``MAMLCTL_API_TOKEN`` refuses to
  start); :mod:`~mamlctl.serving.holder`: the current state and its reload (keeps a series'
  previous model when its new file fails; re-tries failed files on every poll).
- :mod:`~mamlctl.serving.state`: the immutable :class:`ServingState` (series -> runtime row and
  lineage) built by ``build_state(records, models_dir=..., fingerprint=..., generation=...)``.
- :mod:`~mamlctl.serving.shards`: ``serve --shard I/N``: which series a shard loads, by nginx's
  consistent-hash ring over ``--shard-ring`` (exactly as nginx routes them), the 421 of a series
  another shard owns, and the nginx config that routes by series id.
- :mod:`~mamlctl.serving.source`: where records come from (``RegistrySource(settings)`` reads
  the registry database; ``StaticSource(records, models_dir=...)`` for tests and embedding).
- :mod:`~mamlctl.serving.model_reader`, :mod:`~mamlctl.serving.layout`: verified reads of many
  model files, and their numbers read at known byte offsets after the first file of a structure.
- :mod:`~mamlctl.serving.bank` (+ :mod:`~mamlctl.serving.bank_rewrite`): per-series ONNX files
  -> one bank graph per structure.
- :mod:`~mamlctl.serving.runtime`: onnxruntime sessions (1 intra-op, 1 inter-op thread;
  optionally a bank's batch session with ``--batch-threads`` threads for calls of 32+ rows).
  Request bodies of 16 KiB or more are scored on two worker threads (:mod:`~mamlctl.serving.app`).
- :mod:`~mamlctl.serving.schemas`, :mod:`~mamlctl.serving.metrics`: OpenAPI documents and
  Prometheus metrics.
"""
