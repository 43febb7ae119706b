"""onnxruntime scoring: runtime, model source, HTTP app. Never imports torch or mlflow.

Modules, in the order a request meets them:

- :mod:`~mamlctl.serving.app`: ``create_app(settings, source, *, options=None)`` -> ASGI app
  (auth, body limit, metrics, the ``POST /v1/score`` fast path, FastAPI for the rest and for
  OpenAPI); ``app_from_env()`` is the uvicorn factory behind ``mamlctl serve``.
- :mod:`~mamlctl.serving.fastpath`: uvicorn's httptools protocol answering ``POST /v1/score``
  straight from the parser (same answer function as the ASGI path; ``mamlctl serve`` uses it).
- :mod:`~mamlctl.serving.binary`: the binary batch format (``application/octet-stream``).
- :mod:`~mamlctl.serving.scoring`: request bytes -> validated items -> one ``run`` per group ->
  response bytes; anomaly scores from :mod:`mamlctl.timeseries.anomaly`.
- :mod:`~mamlctl.serving.state`: the immutable :class:`ServingState` (series -> runtime row and
  lineage) built by ``build_state(records, models_dir=..., fingerprint=..., generation=...)``.
- :mod:`~mamlctl.serving.source`: where records come from (``RegistrySource(settings)`` reads
  the registry database; ``StaticSource(records, models_dir=...)`` for tests and embedding).
- :mod:`~mamlctl.serving.bank`: per-series ONNX files -> one bank graph per structure.
- :mod:`~mamlctl.serving.runtime`: onnxruntime sessions (1 intra-op, 1 inter-op thread).
- :mod:`~mamlctl.serving.schemas`, :mod:`~mamlctl.serving.metrics`: OpenAPI documents and
  Prometheus metrics.
"""
