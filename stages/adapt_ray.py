"""Adaptation chunks as Ray tasks: ``mamlctl adapt --ray ADDRESS|auto``.

The driver runs :func:`mamlctl.stages.adapt.adapt_family` as in-process: it resolves the
initializer, selects the series, opens the MLflow run and builds the job (initializer, plan,
job hash, start time, run id). Only the chunks move: :class:`RayChunkRunner` ships the job
once (``ray.put``) and submits one Ray task per chunk of ``chunk_series`` series. Each task
calls the same :meth:`~mamlctl.stages.adapt_chunks.ChunkedJob.run` as in-process over the same
ports, built on its worker from the job's settings: it reads its series' last points from the
registry database, adapts them, writes their ONNX files into the model store (a folder every
node sees at the same path, ``MAMLCTL_MODELS_ROOT``) and records the chunk in the registry in
one transaction (per lineage: adapted, zero-shot), then hands its counts, parity sample and
metric sums back (:class:`~mamlctl.stages.adapt_chunks.ChunkOutcome`).

A chunk whose worker dies is retried by Ray (``max_retries``; exceptions raised by the stage
are not retried: they fail the job). Nothing is recorded half: a chunk's rows are one
transaction, written after its files are complete. Nothing is recorded twice: every row of a
job carries the job's start time, and the registry skips a series whose current row is
already this job's (:mod:`mamlctl.registry.bulk_models`), so a retry of a chunk that had
committed before its worker died records nothing again.

``ray`` is imported only here, and only when a runner is called (``pip install
'mamlctl[ray]'``); every node needs mamlctl installed (the same version) and must reach the
registry database (PostgreSQL in a cluster; the embedded SQLite file only when all workers run
on this machine).

Test hook: ``MAMLCTL_TEST_RAY_FAULT=before-record:PATH`` (or ``after-record:PATH``), read by
the driver, makes the first task that creates the file ``PATH`` SIGKILL its own worker process
just before (after) recording its chunk; the retry then has to finish the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlctl.errors import ConfigError, MamlctlError, StoreError, TrainingError

if TYPE_CHECKING:
    from mamlctl.domain import AdaptedModelRecord, InitializerRef
    from mamlctl.settings import Settings
    from mamlctl.stages.adapt import AdaptRequest, Progress
    from mamlctl.stages.adapt_chunks import ChunkedJob, ChunkOutcome

#: Ray retries of a chunk whose worker process died (Ray's own default).
MAX_RETRIES = 3
#: Environment variable of the fault-injection hook (see the module doc).
FAULT_ENV = "MAMLCTL_TEST_RAY_FAULT"
FAULT_PHASES = ("before-record", "after-record")
RAY_EXTRA = "pip install 'mamlctl[ray]'"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What a worker needs to rebuild the driver's job (shipped once per job)."""

    key: str  # the job's identity: run id, job hash, start time
    settings: Settings
    models_dir: Path
    request: AdaptRequest
    initializer: Any
    ref: InitializerRef
    plan: Any
    job_hash: str
    now: datetime
    run_id: str | None
    total: int  # series in the job's selection
    fault: tuple[str, str] | None = None


class RayChunkRunner:
    """Runs a job's chunks as Ray tasks on the cluster at ``address`` (``host:port``, a
    ``ray://`` client address, or ``auto``); a :data:`mamlctl.stages.adapt.ChunkRunner`.

    A context manager: entering connects (a bad or unreachable address fails here, before the
    job opens its MLflow run), leaving disconnects (when it connected)."""

    def __init__(self, address: str, settings: Settings, *, max_retries: int = MAX_RETRIES) -> None:
        self.address = address.strip()
        self.settings = settings
        self.max_retries = max_retries
        self.fault = parse_fault(os.environ.get(FAULT_ENV))
        self._ray: Any = None
        self._owned = False
        #: The last job's chunk phase (see :func:`cluster_stats`); None before one ran.
        self.stats: dict[str, Any] | None = None

    def __enter__(self) -> RayChunkRunner:
        # Ray's driver prints the cluster's events (a worker that died, ...) on sys.stdout,
        # which is the command's output (``--json``): they go to stderr while connected.
        self._stdout = contextlib.redirect_stdout(sys.stderr)
        self._stdout.__enter__()
        try:
            self._ray, self._owned = connect(self.address)
        except BaseException:
            self._stdout.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._owned:
                self._ray.shutdown()
        finally:
            self._ray, self._owned = None, False
            self._stdout.__exit__(None, None, None)

    def __call__(
        self,
        job: ChunkedJob,
        selected: list[str],
        current: dict[str, AdaptedModelRecord],
        progress: Progress | None,
    ) -> dict[str, int]:
        counts = {"adapted": 0, "zero_shot": 0, "up_to_date": 0}
        if not selected:
            return counts
        if self._ray is None:
            raise RuntimeError("a RayChunkRunner runs chunks inside its `with` block")
        spec = JobSpec(
            key=f"{job.run_id}/{job.job_hash}/{job.now.isoformat()}",
            settings=self.settings,
            models_dir=job.models_dir,
            request=job.request,
            initializer=job.initializer,
            ref=job.ref,
            plan=job.plan,
            job_hash=job.job_hash,
            now=job.now,
            run_id=job.run_id,
            total=len(selected),
            fault=self.fault,
        )
        started = time.perf_counter()
        outcomes = _run_tasks(
            self._ray,
            spec,
            selected,
            current,
            step=max(1, job.request.chunk_series),
            max_retries=self.max_retries,
            progress=progress,
        )
        self.stats = cluster_stats(outcomes, seconds=time.perf_counter() - started)
        for outcome in outcomes:  # in selection order: the in-process parity sample
            job.absorb(outcome)
            for k, v in outcome.counts.items():
                counts[k] += v
        return counts


def cluster_stats(outcomes: list[ChunkOutcome], *, seconds: float) -> dict[str, Any]:
    """The chunk phase of a job: its wall time (first task submitted to last result), tasks,
    and per worker process (a retried chunk counts where it finished) its node, tasks, series,
    busy seconds and peak RSS."""
    workers: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        w = outcome.worker
        key = f"{w.get('node_id')}:{w.get('pid')}"
        entry = workers.setdefault(
            key,
            {
                "node": w.get("node"),
                "node_id": w.get("node_id"),
                "pid": w.get("pid"),
                "tasks": 0,
                "series": 0,
                "busy_s": 0.0,
            },
        )
        entry["tasks"] += 1
        entry["series"] += int(w.get("series", 0))
        entry["busy_s"] += float(w.get("seconds", 0.0))
        entry["peak_rss_mb"] = max(entry.get("peak_rss_mb", 0.0), float(w.get("peak_rss_mb", 0)))
    for entry in workers.values():
        entry["busy_s"] = round(entry["busy_s"], 3)
        entry["ms_per_series"] = (
            round(1000 * entry["busy_s"] / entry["series"], 4) if entry["series"] else None
        )
    return {
        "chunk_phase_s": round(seconds, 3),
        "tasks": len(outcomes),
        "workers": sorted(workers.values(), key=lambda e: (str(e["node_id"]), e["pid"] or 0)),
    }


def parse_fault(value: str | None) -> tuple[str, str] | None:
    """The test hook's ``PHASE:PATH`` (None when unset)."""
    if not value:
        return None
    phase, _, path = value.partition(":")
    if phase not in FAULT_PHASES or not path:
        raise ConfigError(f"{FAULT_ENV} must be PHASE:PATH with PHASE one of {FAULT_PHASES}")
    return phase, path


def connect(address: str) -> tuple[Any, bool]:
    """``ray`` connected to the cluster at ``address``; True when this call connected (the
    caller disconnects), False when the process was connected already. An address nobody
    answers at is a one-line :class:`StoreError`, before Ray's own retries."""
    if not address:
        raise ConfigError("--ray needs an address: host:port of the head node, or auto")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"adapt --ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    if address != "auto":
        _check_reachable(address)
    if ray.is_initialized():  # a driver connected already (an embedding program, the tests)
        return ray, False
    import logging

    try:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except Exception as err:  # ConnectionError, RuntimeError, ValueError, ... from ray.init
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise StoreError(
            f"cannot connect to the Ray cluster at {address}: {_first_line(err)} (start one with "
            "`ray start --head`, or check --ray / MAMLCTL_RAY_ADDRESS)"
        ) from None
    cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
    if cpus < 1:
        ray.shutdown()
        raise StoreError(f"the Ray cluster at {address} has no CPU to run adaptation tasks on")
    return ray, True


def _check_reachable(address: str) -> None:
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"invalid Ray address {address!r}: expected host:port of the head node "
            "(e.g. 10.0.0.5:6379), ray://host:port, or auto"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0) as sock:
            answer = b"" if address.startswith("ray://") else _http2_hello(sock)
    except OSError as err:
        raise StoreError(
            f"cannot reach the Ray cluster at {address}: {err.strerror or err} (start one with "
            "`ray start --head`, or check --ray / MAMLCTL_RAY_ADDRESS)"
        ) from None
    # The head's GCS is a gRPC (HTTP/2) server: its first frame is SETTINGS (type 4). Anything
    # else (a database, a web server on that port) would leave ray.init retrying for ever.
    if not address.startswith("ray://") and (len(answer) < 9 or answer[3] != 0x04):
        raise StoreError(
            f"{address} answers, but not as a Ray head node (no gRPC server there): give the "
            "head's GCS port (`ray start --head --port`, 6379 by default)"
        )


def _http2_hello(sock: socket.socket) -> bytes:
    """The first bytes a server answers to an HTTP/2 preface and an empty SETTINGS frame."""
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    data = b""
    with contextlib.suppress(OSError):  # a timeout or a reset: whatever came is the answer
        while len(data) < 9:
            chunk = sock.recv(9 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _run_tasks(
    ray: Any,
    spec: JobSpec,
    selected: list[str],
    current: dict[str, AdaptedModelRecord],
    *,
    step: int,
    max_retries: int,
    progress: Progress | None,
) -> list[ChunkOutcome]:
    """One task per chunk, all submitted at once (Ray queues them on the free CPUs); the
    outcomes in chunk order. A failed task cancels the others and fails the job."""
    spec_ref = ray.put(spec)
    task = ray.remote(run_chunk).options(
        num_cpus=1, max_retries=max_retries, retry_exceptions=False
    )
    pending: dict[Any, tuple[int, int]] = {}
    for index, start in enumerate(range(0, len(selected), step)):
        ids = selected[start : start + step]
        mine = {sid: current[sid] for sid in ids if sid in current}
        pending[task.remote(spec_ref, start, ids, mine)] = (index, len(ids))
    outcomes: dict[int, ChunkOutcome] = {}
    done, total = 0, len(selected)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            index, n = pending.pop(ref)
            try:
                outcomes[index] = ray.get(ref)
            except Exception as err:
                for other in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(other)
                first = selected[index * step]
                raise _task_error(err, first=first, n=n, retries=max_retries) from None
            done += n
            if progress is not None:
                progress(done, total)
    return [outcomes[i] for i in sorted(outcomes)]


def _task_error(err: BaseException, *, first: str, n: int, retries: int) -> MamlctlError:
    """A failed task as one line: the stage's own error as it is, anything else named."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, MamlctlError):
        return cause
    where = f"the chunk of {n} series from {first!r}"
    if cause is not None:
        return TrainingError(
            f"{where} failed on a Ray worker: {type(cause).__name__}: {_first_line(cause)}"
        )
    return TrainingError(
        f"{where} failed on the Ray cluster after {retries} retries: "
        f"{type(err).__name__}: {_first_line(err)}"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


# --- the worker side -------------------------------------------------------------------------

#: The job this worker process holds (its registry engine, initializer and exported ONNX
#: template are reused by every chunk of the job it runs; a new job replaces it). Process
#: state by design: a Ray worker runs many tasks, and exporting the template costs seconds.
_held: dict[str, Any] = {}


def run_chunk(
    spec: JobSpec, start: int, ids: list[str], current: dict[str, AdaptedModelRecord]
) -> ChunkOutcome:
    """A Ray task: the chunk ``ids`` (from index ``start`` of the job's selection) adapted,
    exported and recorded by :meth:`ChunkedJob.run`, as in-process."""
    import resource

    from mamlctl.maml.adaptation import adapt_histories

    started = time.perf_counter()
    job = _job_of(spec)
    counts = job.run(ids, current, adapt_histories, None, offset=start, job_total=spec.total)
    outcome = job.take_outcome(counts)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return dataclasses.replace(
        outcome,
        worker={
            "node": _node(),
            "node_id": _node_id(),
            "pid": os.getpid(),
            "series": len(ids),
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": round(peak_kb / 1024, 1),
        },
    )


def _job_of(spec: JobSpec) -> ChunkedJob:
    if _held.get("key") == spec.key:
        job: ChunkedJob = _held["job"]
        return job
    import torch

    from mamlctl.registry.db import open_registry
    from mamlctl.registry.series_store import SqlAdaptedModelStore
    from mamlctl.stages.adapt_chunks import ChunkedJob

    torch.set_num_threads(1)  # one Ray CPU per task; tiny networks run fastest on one thread
    old = _held.pop("stack", None)
    _held.clear()
    if old is not None:
        old.close()
    if not spec.models_dir.is_dir():
        raise StoreError(
            f"the model store {spec.models_dir} is not visible on Ray node {_node()}: set "
            "MAMLCTL_MODELS_ROOT to a folder every node mounts at the same path"
        )
    stack = contextlib.ExitStack()
    try:
        factory = stack.enter_context(open_registry(spec.settings, migrate=False, create=False))
    except MamlctlError as err:
        stack.close()
        raise type(err)(f"on Ray node {_node()}: {err}") from None
    models: Any = SqlAdaptedModelStore(factory)
    if spec.fault is not None:
        models = _FaultyModels(models, *spec.fault)
    job = ChunkedJob(
        models_dir=spec.models_dir,
        models=models,
        request=spec.request,
        initializer=spec.initializer,
        ref=spec.ref,
        plan=spec.plan,
        job_hash=spec.job_hash,
        now=spec.now,
        run_id=spec.run_id,
    )
    _held.update(key=spec.key, job=job, stack=stack)
    return job


def _node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except Exception:
        return socket.gethostname()


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return None


class _FaultyModels:
    """The registry port with the test hook: the first task to create ``marker`` SIGKILLs its
    own worker process before or after recording its chunk (see the module doc)."""

    def __init__(self, inner: Any, phase: str, marker: str) -> None:
        self._inner = inner
        self._phase = phase
        self._marker = marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def record_models(self, **kwargs: Any) -> None:
        if self._phase == "before-record":
            self._die_once()
        self._inner.record_models(**kwargs)
        if self._phase == "after-record":
            self._die_once()

    def _die_once(self) -> None:
        try:
            fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
