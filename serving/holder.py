"""The one mutable reference of the server: :class:`StateHolder` and its reload.

A reload builds a new :class:`~mamlctl.serving.state.ServingState` off the event loop when the
source's fingerprint moved, or when a file that failed at the last load now loads
(:func:`~mamlctl.serving.state.recovered`), and swaps it in as one reference; the previous state
is handed to the build so that a series whose new file fails keeps its model. A reload that
fails as a whole keeps the current state; its error is logged, and ``/readyz`` shows only a
driver-free summary of it (``last_error_public``).
"""

from __future__ import annotations

import logging
import threading

from mamlctl.errors import MamlctlError, StoreError
from mamlctl.serving.metrics import Metrics
from mamlctl.serving.shards import Shard
from mamlctl.serving.source import ModelSource
from mamlctl.serving.state import ServingState, build_state, empty_state, recovered

log = logging.getLogger("mamlctl.serving")


class StateHolder:
    """The one mutable reference: the current :class:`ServingState`."""

    def __init__(
        self,
        source: ModelSource,
        metrics: Metrics,
        *,
        batch_threads: int = 1,
        shard: Shard | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.batch_threads = batch_threads
        #: loads only this shard's series of the source (None: all)
        self.shard = shard
        self.state: ServingState = empty_state()
        self.ready = False
        self.last_error: str | None = None
        #: ``last_error`` as /readyz may show it to anyone: no driver or file text
        self.last_error_public: str | None = None
        self._lock = threading.Lock()  # one build at a time

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild and swap when the source changed (blocking; run it off the event loop)."""
        with self._lock:
            try:
                fingerprint = self.source.fingerprint()
                same = self.ready and fingerprint == self.state.fingerprint
                if same and not force and not recovered(self.state, self.source.models_dir):
                    return False
                records = self.source.current()
                new = build_state(
                    records,
                    models_dir=self.source.models_dir,
                    fingerprint=fingerprint,
                    generation=self.state.generation + 1,
                    batch_threads=self.batch_threads,
                    previous=self.state if self.ready else None,
                    shard=self.shard,
                )
            except Exception as err:  # the poller must survive anything a reload meets
                self.last_error = (
                    str(err) if isinstance(err, MamlctlError) else f"{type(err).__name__}: {err}"
                )
                self.last_error_public = (
                    "registry database unreachable (details in the server log)"
                    if isinstance(err, StoreError)
                    else "loading the models failed (details in the server log)"
                )
                self.metrics.reloads.labels("error").inc()
                log.error(
                    "reload failed, still serving generation %d: %s",
                    self.state.generation,
                    self.last_error,
                    exc_info=not isinstance(err, MamlctlError),
                )
                return False
            self.state = new  # the atomic swap
            self.ready = True
            self.last_error = self.last_error_public = None
            self.metrics.reloads.labels("ok").inc()
            self.metrics.models_loaded.set(new.n_series)
            self.metrics.generation.set(new.generation)
            self.metrics.load_failures.set(len(new.failures))
            self.metrics.set_model_info(
                (e.family, str(e.initializer_version)) for e in new.entries.values()
            )
            log.info("serving generation %d: %s", new.generation, new.summary())
            return True
