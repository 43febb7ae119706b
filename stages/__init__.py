"""The stages: one function per step of the pipeline, over the ports of :mod:`mamlctl.ports`.

``ingest -> detect -> train (+ register) -> adapt (+ export) -> score``. The CLI and the
evaluation are their two callers; each passes the real ports (SQL registry, MLflow, the
models folder) or the in-memory ones (:mod:`mamlctl.stages.memory`).
"""
