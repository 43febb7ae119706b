"""Task samplers for meta-training: the paper's sine family and time-series window tasks.

A sampler returns a :class:`TaskBatch` of T tasks as float32 tensors
``support_x [T, K, in]``, ``support_y [T, K, out]``, ``query_x [T, Q, in]``, ``query_y [T, Q,
out]``, drawn in one vectorised call (no Python loop over tasks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mamlctl.errors import ConfigError
from mamlctl.timeseries.windows import SeriesPool, WindowTasks, WindowTaskSpec


@dataclass(frozen=True, slots=True)
class TaskBatch:
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def n_tasks(self) -> int:
        return int(self.support_x.shape[0])


class TaskSampler(Protocol):
    def sample(self, n_tasks: int) -> TaskBatch: ...

    def spec(self) -> dict[str, Any]:
        """JSON description of the task distribution (stored with the initializer)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SineTaskSpec:
    """The paper's sine family: y = A sin(x - φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]."""

    support: int = 10
    query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "sine",
            "support": self.support,
            "query": self.query,
            "amplitude": list(self.amplitude),
            "phase": list(self.phase),
            "x_range": list(self.x_range),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SineTaskSpec:
        d = dict(data)
        if d.pop("kind", "sine") != "sine":
            raise ConfigError("not a sine task spec")
        unknown = set(d) - {"support", "query", "amplitude", "phase", "x_range"}
        if unknown:
            raise ConfigError(f"sine task spec: unknown keys {sorted(unknown)}")
        for key in ("amplitude", "phase", "x_range"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


class SineTaskSampler:
    """Vectorised sampler of sine tasks.

    Draws ``block`` meta-batches in one ``torch.rand`` call and hands them out as views (at the
    paper's size the per-call overhead of sampling is a visible share of a meta-iteration).
    """

    def __init__(self, spec: SineTaskSpec, *, seed: int, block: int = 64) -> None:
        self._spec = spec
        self._block = max(1, block)
        self._buffer: TaskBatch | None = None
        self._next = 0
        self._gen = torch.Generator().manual_seed(seed)
        k, q = spec.support, spec.query
        lo = [spec.amplitude[0], spec.phase[0]] + [spec.x_range[0]] * (k + q)
        hi = [spec.amplitude[1], spec.phase[1]] + [spec.x_range[1]] * (k + q)
        self._lo = torch.tensor(lo)
        self._span = torch.tensor(hi) - self._lo

    def spec(self) -> dict[str, Any]:
        return self._spec.to_dict()

    def sample(self, n_tasks: int) -> TaskBatch:
        buf = self._buffer
        if buf is None or self._next >= self._block or buf.support_x.shape[1] != n_tasks:
            buf = self._buffer = self._draw(self._block, n_tasks)
            self._next = 0
        i = self._next
        self._next += 1
        return TaskBatch(buf.support_x[i], buf.support_y[i], buf.query_x[i], buf.query_y[i])

    def _draw(self, blocks: int, n_tasks: int) -> TaskBatch:
        """``blocks`` meta-batches as ``[blocks, T, K, 1]`` tensors."""
        u = torch.rand(blocks, n_tasks, self._lo.shape[0], generator=self._gen)
        u.mul_(self._span).add_(self._lo)
        amp, phase, x = u[..., 0:1], u[..., 1:2], u[..., 2:]
        y = torch.sin(x - phase).mul_(amp)
        k = self._spec.support
        x4, y4 = x.unsqueeze(-1), y.unsqueeze(-1)
        return TaskBatch(x4[:, :, :k], y4[:, :, :k], x4[:, :, k:], y4[:, :, k:])


@dataclass(frozen=True, slots=True)
class SineTestSet:
    """Fixed evaluation tasks: K random support points and the query on a regular grid."""

    amplitude: Tensor
    phase: Tensor
    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


def sine_test_tasks(
    n_tasks: int,
    *,
    k: int,
    seed: int,
    spec: SineTaskSpec | None = None,
    grid_points: int = 100,
) -> SineTestSet:
    """``n_tasks`` fixed sine tasks with ``k`` support points; query on a ``grid_points`` grid.

    The amplitudes and phases depend only on ``seed`` (the same tasks for every K), the support
    points on ``seed`` and ``k``.
    """
    s = spec or SineTaskSpec()
    gen = torch.Generator().manual_seed(seed)
    amp = torch.empty(n_tasks, 1).uniform_(*s.amplitude, generator=gen)
    phase = torch.empty(n_tasks, 1).uniform_(*s.phase, generator=gen)
    gen_k = torch.Generator().manual_seed(seed * 1000 + k)
    sx = torch.empty(n_tasks, k).uniform_(*s.x_range, generator=gen_k)
    grid = torch.linspace(*s.x_range, grid_points).expand(n_tasks, grid_points)
    return SineTestSet(
        amplitude=amp,
        phase=phase,
        support_x=sx.unsqueeze(-1),
        support_y=(amp * torch.sin(sx - phase)).unsqueeze(-1),
        query_x=grid.unsqueeze(-1),
        query_y=(amp * torch.sin(grid - phase)).unsqueeze(-1),
    )


def window_batch_to_torch(tasks: WindowTasks) -> TaskBatch:
    """Numpy window tasks -> a TaskBatch of float32 tensors (no copy where possible)."""
    return TaskBatch(
        torch.from_numpy(tasks.support_x),
        torch.from_numpy(tasks.support_y),
        torch.from_numpy(tasks.query_x),
        torch.from_numpy(tasks.query_y),
    )


class WindowTaskSampler:
    """Meta-training tasks drawn from many series (see :mod:`mamlctl.timeseries.windows`)."""

    def __init__(self, series: Sequence[npt.ArrayLike], spec: WindowTaskSpec, *, seed: int) -> None:
        if spec.query < 1:
            raise ConfigError("meta-training window tasks need at least one query pair")
        self._pool = SeriesPool(series, spec)
        self._spec = spec
        self._rng = np.random.default_rng(seed)

    def spec(self) -> dict[str, Any]:
        return {"kind": "window", **self._spec.to_dict()}

    def sample(self, n_tasks: int) -> TaskBatch:
        return window_batch_to_torch(self._pool.sample(n_tasks, self._rng))
