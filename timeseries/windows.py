"""Time-series window tasks for meta-learning (numpy only; torch conversion lives in maml/).

A *pair* is ``(x, y)`` with ``x`` = L consecutive values (the window) and ``y`` = the next H
values (the horizon). A *task* is one stretch of one series. Two forms, by ``partial``:

**Full pairs** (``partial=False``, initializers written before the partial form)::

    stretch:  v[s], v[s+1], ...
    support:  pairs i = 0 .. K-1,  x = v[s+i : s+i+L],      y = v[s+i+L : s+i+L+H]
    query:    pairs j = 0 .. Q-1,  x = v[q+j : q+j+L],      y = v[q+j+L : q+j+L+H],
              q = s + K + H - 1    (the first query target follows the last support target)

with K = ``support`` pairs covering ``K + L + H - 1`` raw points.

**Partial pairs** (``partial=True``): the support is ``S = K + L`` raw points ``v[s : s+S]``
(``support`` still counts the pairs, K = S - L) and every origin with a full window is a pair,
its horizon cut at the stretch end::

    support:  pairs i = 0 .. K-1,  x = v[s+i : s+i+L],  y[h] = v[s+i+L+h] if i+L+h < S else NaN
    query:    pairs j = 0 .. Q-1,  x = v[s+S+j-L : s+S+j],  y[h] = v[s+S+j+h]  (NaN past the
              series end; a pair with no observed target has its window clamped to the end)

The first query target is the first point after the support, so a task needs only ``S + 1``
points and every series with that many contributes. NaN targets are *unobserved*: meta-training
and adaptation then use the masked losses of :mod:`mamlctl.maml.models`.

In both forms no query *target* is ever a support value (query inputs may reuse support values:
they are the past at forecast time). The task is normalised with
:func:`mamlctl.timeseries.scaling.support_stats` of the raw support points only; query values
never influence the statistics.

:func:`recent_support` gives the K most recent pairs of a series, which is what the daily
per-series adaptation uses; :func:`sample_window_tasks` draws many tasks from many series in one
vectorised gather.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError
from mamlctl.timeseries.scaling import support_stats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowTaskSpec:
    """Shape of a window task: input window L, horizon H, K support and Q query pairs;
    ``partial``: support pairs with horizons cut at the stretch end (see the module doc)."""

    window: int
    horizon: int
    support: int
    query: int
    partial: bool = False

    def __post_init__(self) -> None:
        for name in ("window", "horizon", "support"):
            if getattr(self, name) < 1:
                raise InputError(f"window task spec: {name} must be >= 1")
        if self.query < 0:
            raise InputError("window task spec: query must be >= 0")

    @property
    def support_span(self) -> int:
        """Raw support points: K + L - 1 + H full pairs; K + L partial pairs."""
        if self.partial:
            return self.support + self.window
        return self.support + self.window + self.horizon - 1

    @property
    def query_offset(self) -> int:
        """Offset of the first query window from the stretch start: K + H - 1 (partial: K, so
        the first query target is the first point after the support)."""
        if self.partial:
            return self.support
        return self.support + self.horizon - 1

    @property
    def span(self) -> int:
        """Raw points a whole task (support + query) needs (partial: one query target)."""
        if self.query == 0:
            return self.support_span
        if self.partial:
            return self.support_span + 1
        return self.query_offset + self.query + self.window + self.horizon - 1

    @property
    def full_span(self) -> int:
        """Raw points the task covers when every query target is observed."""
        if self.query == 0:
            return self.support_span
        return self.query_offset + self.query + self.window + self.horizon - 1

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "window": self.window,
            "horizon": self.horizon,
            "support": self.support,
            "query": self.query,
            "partial": self.partial,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, int | bool]) -> WindowTaskSpec:
        """Read :meth:`to_dict`; a dict without ``partial`` (written before it) is full pairs."""
        unknown = set(data) - {"window", "horizon", "support", "query", "partial"}
        if unknown:
            raise InputError(f"window task spec: unknown keys {sorted(unknown)}")
        return cls(
            window=int(data["window"]),
            horizon=int(data["horizon"]),
            support=int(data["support"]),
            query=int(data["query"]),
            partial=bool(data.get("partial", False)),
        )


@dataclass(frozen=True, slots=True)
class WindowTasks:
    """A batch of N normalised window tasks (float32) and where each came from.

    ``support_x [N, K, L]``, ``support_y [N, K, H]``, ``query_x [N, Q, L]``, ``query_y
    [N, Q, H]``; ``loc``/``scale [N]`` (float64) undo the normalisation; ``series_index`` and
    ``start`` locate each stretch.
    """

    support_x: npt.NDArray[np.float32]
    support_y: npt.NDArray[np.float32]
    query_x: npt.NDArray[np.float32]
    query_y: npt.NDArray[np.float32]
    loc: FloatArray
    scale: FloatArray
    series_index: IntArray
    start: IntArray


def _pair_offsets(spec: WindowTaskSpec) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Offsets, relative to the stretch start, of every support/query x and y value."""
    lw, hz = np.arange(spec.window), np.arange(spec.horizon)
    ks = np.arange(spec.support)[:, None]
    qs = spec.query_offset + np.arange(spec.query)[:, None]
    return ks + lw, ks + spec.window + hz, qs + lw, qs + spec.window + hz


def _gather(
    flat: FloatArray,
    base: IntArray,
    spec: WindowTaskSpec,
    *,
    series_index: IntArray,
    start: IntArray,
    end: IntArray | None = None,
) -> WindowTasks:
    """Normalised tasks of stretches starting at ``flat[base]``. Partial specs need ``end``
    (exclusive flat index of each stretch's series end): support targets at offset >= S and
    query targets at or past ``end`` become NaN, query windows are clamped to ``end - 1``."""
    sx_o, sy_o, qx_o, qy_o = _pair_offsets(spec)
    support_raw = flat[base[:, None] + np.arange(spec.support_span)]
    loc, scale = support_stats(support_raw)
    shift, div = loc[:, None, None], scale[:, None, None]

    def norm(offsets: IntArray, *, hidden: npt.NDArray[np.bool_] | None = None) -> F32:
        idx = base[:, None, None] + offsets[None]
        if end is not None:
            idx = np.minimum(idx, end[:, None, None] - 1)
        vals = (flat[idx] - shift) / div
        if hidden is not None:
            vals = np.where(hidden, np.nan, vals)
        out: F32 = vals.astype(np.float32)
        return out

    if not spec.partial:
        return WindowTasks(
            support_x=norm(sx_o),
            support_y=norm(sy_o),
            query_x=norm(qx_o),
            query_y=norm(qy_o),
            loc=loc,
            scale=scale,
            series_index=series_index,
            start=start,
        )
    if end is None:
        raise InputError("partial window tasks need each stretch's series end")
    beyond_support = (sy_o >= spec.support_span)[None]
    beyond_series = base[:, None, None] + qy_o[None] >= end[:, None, None]
    return WindowTasks(
        support_x=norm(sx_o),
        support_y=norm(sy_o, hidden=np.broadcast_to(beyond_support, (base.shape[0], *sy_o.shape))),
        query_x=norm(qx_o),
        query_y=norm(qy_o, hidden=beyond_series),
        loc=loc,
        scale=scale,
        series_index=series_index,
        start=start,
    )


def _as_series(values: npt.ArrayLike, i: int) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InputError(f"series {i}: expected a 1-D array of values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"series {i}: contains NaN or infinite values; clean or impute first")
    return arr


class SeriesPool:
    """Many series concatenated once, ready for repeated vectorised task draws."""

    def __init__(self, series: Sequence[npt.ArrayLike], spec: WindowTaskSpec) -> None:
        arrays = [_as_series(v, i) for i, v in enumerate(series)]
        if not arrays:
            raise InputError("no series given to draw window tasks from")
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.spec = spec
        self.lengths = lengths
        self.n_starts = np.maximum(lengths - spec.span + 1, 0)
        self.total = int(self.n_starts.sum())
        if self.total == 0:
            raise InputError(
                f"no series has the {spec.span} points a window task needs "
                f"(K={spec.support}, Q={spec.query}, L={spec.window}, H={spec.horizon})"
            )
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.flat = np.concatenate(arrays)
        self._cum = np.cumsum(self.n_starts)

    def sample(self, n_tasks: int, rng: np.random.Generator) -> WindowTasks:
        """Uniform over all valid (series, start) pairs, so longer series give more tasks.

        A partial spec's valid starts leave at least one query target after the support."""
        draw = rng.integers(0, self.total, size=n_tasks)
        idx = np.searchsorted(self._cum, draw, side="right").astype(np.int64)
        start = (draw - (self._cum[idx] - self.n_starts[idx])).astype(np.int64)
        return _gather(
            self.flat,
            self.offsets[idx] + start,
            self.spec,
            series_index=idx,
            start=start,
            end=self.offsets[idx] + self.lengths[idx],
        )


def sample_window_tasks(
    series: Sequence[npt.ArrayLike],
    spec: WindowTaskSpec,
    n_tasks: int,
    rng: np.random.Generator,
) -> WindowTasks:
    """Draw ``n_tasks`` tasks from ``series`` in one vectorised gather.

    Every valid stretch (series, start) is equally likely. Series shorter than ``spec.span``
    are skipped; if none is long enough an InputError names the length needed. For repeated
    draws build a :class:`SeriesPool` once.
    """
    return SeriesPool(series, spec).sample(n_tasks, rng)


def recent_support(values: npt.ArrayLike, spec: WindowTaskSpec) -> WindowTasks:
    """The K most recent pairs of one series (support only, Q = 0) as a 1-task batch.

    The support stretch ends at the last value of the series (full pairs: the last support
    target is the last value; partial pairs: the horizons are cut there). Used to adapt a
    series' model.
    """
    arr = _as_series(values, 0)
    need = spec.support_span
    if arr.shape[0] < need:
        rule = "K + L" if spec.partial else "K + L + H - 1"
        raise InputError(f"series has {arr.shape[0]} points; adapting needs {rule} = {need}")
    only_support = WindowTaskSpec(
        window=spec.window,
        horizon=spec.horizon,
        support=spec.support,
        query=0,
        partial=spec.partial,
    )
    start = arr.shape[0] - need
    first = np.array([start], dtype=np.int64)
    return _gather(
        arr,
        first,
        only_support,
        series_index=np.zeros(1, np.int64),
        start=first,
        end=np.array([arr.shape[0]], dtype=np.int64),
    )


def normalise_window(
    window: npt.ArrayLike, loc: float | FloatArray, scale: float | FloatArray
) -> npt.NDArray[np.float32]:
    """Apply a series' support statistics to a window to forecast from."""
    arr = np.asarray(window, dtype=np.float64)
    out: npt.NDArray[np.float32] = (
        (arr - np.asarray(loc)[..., None]) / np.asarray(scale)[..., None]
    ).astype(np.float32)
    return out
