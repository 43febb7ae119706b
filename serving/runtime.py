"""onnxruntime execution: bank sessions (many series, one graph) and the per-series fallback.

Sessions use one intra-op and one inter-op thread (tiny graphs: threads only add latency;
parallelism comes from uvicorn workers) and ``InferenceSession.run`` with numpy feeds (a
contiguous numpy array is wrapped without a copy, so the banks cost nothing per call).
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


def make_session(model: bytes) -> ort.InferenceSession:
    """A CPU session with 1 intra-op and 1 inter-op thread, sequential execution."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
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
    kind: str = "bank"

    _run: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The C-level run of the session: the Python wrapper re-validates the input names and
        # ownership on every call (~6 us a request); the feeds here are fixed by construction.
        inner = getattr(self.session, "_sess", None)
        self._run = inner.run if inner is not None and hasattr(inner, "run") else None

    @classmethod
    def from_bank(cls, bank: BankGraph) -> BankRuntime:
        session = make_session(bank.model.SerializeToString())
        return cls(session=session, banks=bank.banks, window=bank.window, n_rows=bank.n_rows)

    def run(self, windows: F32, rows: I64) -> tuple[F32, F32]:
        feeds: dict[str, Any] = dict(self.banks)
        feeds[WINDOW] = windows
        feeds[ROW] = rows
        if self._run is not None:
            forecast, sigma = self._run(OUTPUTS, feeds, None)
        else:
            forecast, sigma = self.session.run(OUTPUTS, feeds)
        return forecast, sigma

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.banks.values())


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
