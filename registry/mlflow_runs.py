"""One MLflow run as a context manager: params, batched step metrics, artifacts, and an end
status that is never left RUNNING (FINISHED, FAILED on an exception, KILLED on Ctrl-C).

When MLflow itself is gone (``kill -9`` of the process, a tracking server that stopped
answering) the run stays RUNNING; the next run of the family ends it KILLED
(:mod:`mamlctl.registry.run_owner`). Work committed elsewhere before the run ends (an
adaptation job's registry rows) uses :meth:`TrackedRun.finish_best_effort`: MLflow failing
afterwards is a warning, never the job's failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mamlctl.errors import StoreError
from mamlctl.registry.mlflow_client import translate_errors
from mamlctl.registry.run_owner import mark_closed, mark_open

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

# MLflow's per-request limits (mlflow.utils.validation).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


def flatten_params(config: Any, *, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten a (nested) config into MLflow params: ``{"model.hidden": "40", ...}``.

    Accepts mappings, dataclasses and pydantic models; sequences become JSON; None becomes
    ``"None"``. Keys are joined with ``sep`` so every leaf is one param.
    """
    if hasattr(config, "model_dump") and callable(config.model_dump):
        config = config.model_dump()
    elif is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    if not isinstance(config, Mapping):
        if not prefix:
            raise TypeError(f"cannot flatten {type(config).__name__} into params")
        return {prefix: _param_value(config)}
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) or (
            (is_dataclass(value) and not isinstance(value, type)) or hasattr(value, "model_dump")
        ):
            out.update(flatten_params(value, prefix=name, sep=sep))
        else:
            out[name] = _param_value(value)
    return out


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        text = json.dumps(list(value), default=str)
    elif isinstance(value, Path):
        text = str(value)
    else:
        text = str(value)
    if len(text) > _MAX_PARAM_VALUE:
        raise StoreError(
            f"param value of {len(text)} characters exceeds MLflow's {_MAX_PARAM_VALUE}; "
            "log it as an artifact instead"
        )
    return text


class TrackedRun:
    """An open MLflow run. Use as a context manager; library code never uses fluent MLflow.

    Step metrics are buffered and sent with ``log_batch`` when ``flush_every_s`` has passed, the
    buffer reaches MLflow's batch limit, or the run ends. The end status is set on exit: FINISHED
    when the block completes, KILLED on KeyboardInterrupt, FAILED on any other exception (which
    propagates unchanged).
    """

    def __init__(
        self,
        client: MlflowClient,
        *,
        run_id: str,
        experiment_id: str,
        tracking_uri: str,
        flush_every_s: float = 5.0,
        stale_ended: tuple[str, ...] = (),
    ) -> None:
        self._client = client
        self.run_id = run_id
        #: RUNNING runs of dead processes that were ended KILLED before this one started.
        self.stale_ended = stale_ended
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self._flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self.status: str = RUNNING
        mark_open(run_id)

    # --- logging ------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified); chunked to MLflow's 100-per-request limit."""
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        with translate_errors(self.tracking_uri):
            for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                chunk = items[start : start + _MAX_PARAMS_PER_BATCH]
                self._client.log_batch(self.run_id, params=chunk, synchronous=True)

    def log_config(self, config: Any, *, prefix: str = "") -> None:
        """Flatten a config object (see :func:`flatten_params`) and log it as params."""
        self.log_params(flatten_params(config, prefix=prefix))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        with translate_errors(self.tracking_uri):
            for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                chunk = items[start : start + _MAX_PARAMS_PER_BATCH]
                self._client.log_batch(self.run_id, tags=chunk, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Queue step metrics; non-finite values are dropped (MLflow rejects NaN in some stores)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            number = float(value)
            if math.isfinite(number):
                self._pending.append(Metric(str(key), number, now, int(step)))
        if (
            len(self._pending) >= _MAX_METRICS_PER_BATCH
            or time.monotonic() - self._last_flush >= self._flush_every_s
        ):
            self.flush()

    def flush(self) -> None:
        """Send queued metrics now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        with translate_errors(self.tracking_uri):
            for start in range(0, len(pending), _MAX_METRICS_PER_BATCH):
                chunk = pending[start : start + _MAX_METRICS_PER_BATCH]
                self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def log_artifact(self, local_path: Path, *, artifact_path: str | None = None) -> None:
        with translate_errors(self.tracking_uri):
            self._client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_artifacts(self, local_dir: Path, *, artifact_path: str | None = None) -> None:
        """Upload every file under ``local_dir`` (recursively) below ``artifact_path``."""
        with translate_errors(self.tracking_uri):
            self._client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dataset(
        self, frame: Any, *, name: str, digest: str | None = None, context: str = "training"
    ) -> None:
        """Record ``frame`` (a pandas DataFrame, e.g. the series a run saw) as one of the run's
        dataset inputs (``mlflow.log_input`` on the explicit client): its schema, profile and
        ``digest`` (computed by MLflow when None), tagged with ``mlflow.data.context``."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = mlflow.data.from_pandas(frame, name=name, digest=digest)
        entity = Dataset(**dataset.to_dict())
        tags = [InputTag(key="mlflow.data.context", value=context)]
        with translate_errors(self.tracking_uri):
            self._client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=tags)])

    def log_json(self, obj: Any, *, artifact_file: str) -> None:
        """Write ``obj`` as JSON to ``artifact_file`` (e.g. ``"series_ids.json"``) in the run."""
        artifact = Path(artifact_file)
        with tempfile.TemporaryDirectory(prefix="mamlctl-artifact-") as tmp:
            path = Path(tmp) / artifact.name
            path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
            parent = str(artifact.parent) if str(artifact.parent) != "." else None
            self.log_artifact(path, artifact_path=parent)

    # --- lifecycle ----------------------------------------------------------------------------
    def end(self, status: str) -> None:
        """Flush metrics (best effort unless FINISHED) and set the terminal status."""
        try:
            try:
                self.flush()
            except StoreError:
                if status == FINISHED:
                    raise
            self._terminate(status)
        finally:
            mark_closed(self.run_id)  # RUNNING still (MLflow gone): the next run ends it

    def _terminate(self, status: str) -> None:
        # A REST store prints "View run ..." links on stdout; keep stdout for --json output.
        with translate_errors(self.tracking_uri), contextlib.redirect_stdout(sys.stderr):
            self._client.set_terminated(self.run_id, status)
        self.status = status

    def finish_best_effort(self, log: Callable[[TrackedRun], None]) -> str | None:
        """End a run whose work is already committed elsewhere: ``log(self)`` (final metrics,
        artifacts), flush, then FINISHED, none of which may fail the caller. Returns None, or
        one line naming the run and what did not reach MLflow (the caller warns with it)."""
        problem: StoreError | None = None
        try:
            log(self)
            self.flush()
        except StoreError as err:
            problem = err
            self._pending = []
        try:
            self._terminate(FINISHED)
        except StoreError as err:
            problem = problem or err
        finally:
            mark_closed(self.run_id)
        if problem is None:
            return None
        state = (
            "it ended FINISHED without them"
            if self.status == FINISHED
            else "it stays RUNNING until the next run of the family ends it KILLED"
        )
        return (
            f"MLflow run {self.run_id}: the job's results are committed, but its final metrics "
            f"or artifacts could not be logged ({problem}); {state}"
        )

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end(FINISHED)
            return
        status = KILLED if issubclass(exc_type, KeyboardInterrupt) else FAILED
        # The original exception matters more than a failure to record the status; if the
        # server is gone too, the run stays RUNNING there and nothing can be done about it.
        with contextlib.suppress(StoreError):
            self.end(status)
