"""onnxruntime execution: bank sessions (many series, one graph) and the per-series fallback.

Sessions use one intra-op and one inter-op thread (tiny graphs: threads only add latency;
parallelism comes from uvicorn workers) and ``InferenceSession.run`` with numpy feeds (a
contiguous numpy array is wrapped without a copy, so the banks cost nothing per call).

An option is a bank's *batch session* (``mamlctl serve --batch-threads N``, N > 1): the same
graph with N intra-op threads, used for calls of at least :data:`BATCH_MIN_ROWS` rows. Both
sessions read the same bank arrays (inputs, not copies) and split the rows, not the sums inside
a row, so the numbers are identical (a test holds them equal). It shortens one large call
(int8 bank of the M4 Hourly family, 256 rows: 696 us on one thread, 469 us on two) but it is
off by default: the server scores large requests on worker threads
(:data:`~mamlctl.serving.limits.OFFLOAD_BODY_BYTES`), and two batches running at once on one
thread each beat one at a time on two (measured through the server with 2 connections,
binary batches of 256 rows: 332k rows/s against 304k with a 2-thread session scored on the
event loop, and 257k with both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from mamlctl.serving.bank import ROW, WINDOW, BankGraph

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
OUTPUTS = ["forecast", "sigma"]
BATCH_MIN_ROWS = 32


def make_session(model: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (1 unless for batches), 1 inter-op
    thread, sequential execution."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class Runtime(Protocol):
    """Scores rows of one group: ``windows [B, L] float32``, ``rows [B] int64`` (row ids)."""

    kind: str
    window: int
    n_rows: int

    def run(self, windows: F32, rows: I64) -> tuple[F32, F32]: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(slots=True, kw_only=True)
class BankRuntime:
    """One session of a bank graph; every row of a batch runs in one ``run`` call."""

    session: ort.InferenceSession
    banks: dict[str, npt.NDArray[Any]] = field(repr=False)
    window: int
    n_rows: int
    batch_session: ort.InferenceSession | None = None
    kind: str = "bank"

    _run: Any = field(default=None, repr=False)
    _run_batch: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The C-level run of the session: the Python wrapper re-validates the input names and
        # ownership on every call (~6 us a request); the feeds here are fixed by construction.
        self._run = _c_run(self.session)
        if self.batch_session is not None:
            self._run_batch = _c_run(self.batch_session)

    @classmethod
    def from_bank(cls, bank: BankGraph, *, batch_threads: int = 1) -> BankRuntime:
        from mamlctl.serving.bank_pack import pack_row_gathers

        graph, banks = pack_row_gathers(bank.model, bank.banks)  # fewer nodes, same numbers
        model = graph.SerializeToString()
        batch = make_session(model, threads=batch_threads) if batch_threads > 1 else None
        return cls(
            session=make_session(model),
            banks=banks,
            window=bank.window,
            n_rows=bank.n_rows,
            batch_session=batch,
        )

    def run(self, windows: F32, rows: I64) -> tuple[F32, F32]:
        feeds: dict[str, Any] = dict(self.banks)
        feeds[WINDOW] = windows
        feeds[ROW] = rows
        run = self._run_batch if len(rows) >= BATCH_MIN_ROWS and self._run_batch else self._run
        forecast, sigma = run(OUTPUTS, feeds, None)
        return forecast, sigma

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.banks.values())


def _c_run(session: ort.InferenceSession) -> Any:
    """``run(names, feeds, run_options)`` of the C session, or the wrapper's with that shape."""
    inner = getattr(session, "_sess", None)
    if inner is not None and hasattr(inner, "run"):
        return inner.run
    return lambda names, feeds, _options: session.run(names, feeds)


@dataclass(slots=True, kw_only=True)
class SessionsRuntime:
    """Fallback for graphs that cannot bank: one session per series (row = session index)."""

    sessions: Sequence[ort.InferenceSession]
    window: int
    model_bytes: int
    kind: str = "sessions"

    @property
    def n_rows(self) -> int:
        return len(self.sessions)

    def run(self, windows: F32, rows: I64) -> tuple[F32, F32]:
        order = np.argsort(rows, kind="stable")
        uniq, starts = np.unique(rows[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        forecast: F32 | None = None
        sigma: F32 | None = None
        for row, start, stop in zip(uniq, starts, bounds, strict=True):
            take = order[start:stop]
            f, s = self.sessions[int(row)].run(OUTPUTS, {WINDOW: windows[take]})
            if forecast is None or sigma is None:
                forecast = np.empty((len(rows), f.shape[1]), dtype=np.float32)
                sigma = np.empty((len(rows), s.shape[1]), dtype=np.float32)
            forecast[take] = f
            sigma[take] = s
        if forecast is None or sigma is None:
            raise ValueError("run() needs at least one row")
        return forecast, sigma

    @property
    def nbytes(self) -> int:
        return self.model_bytes
