"""Empirical coverage of the product's prediction intervals on held-out values.

The bands are the ones ``mamlctl forecast --level`` writes
(:func:`mamlctl.stages.forecast.interval_bounds` of the served forecast and ``sigma``); this
module only counts how many held-out values fall inside them:

* ``coverage``: the share of held-out values inside the ``level`` % band, over every series and
  step, and per bucket of horizon steps (``1-12``, ``13-24``, ``25-48`` for H = 48);
* ``width``: the mean band width in units of each series' in-sample seasonal-naive error (the
  MASE denominator), so a width of 2 spans twice the typical seasonal-naive miss.

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError

FloatArray = npt.NDArray[np.float64]

__all__ = ["coverage_report", "step_buckets"]


def step_buckets(horizon: int) -> list[tuple[int, int]]:
    """Inclusive 1-based step ranges: ``1-12, 13-24, 25-H`` (cut at H for shorter horizons)."""
    edges = [e for e in (12, 24) if e < horizon]
    starts = [1, *(e + 1 for e in edges)]
    return list(zip(starts, [*edges, horizon], strict=True))


def coverage_report(
    *,
    actual: FloatArray,
    bands: Mapping[float, tuple[FloatArray, FloatArray]],
    scale: FloatArray,
) -> dict[str, Any]:
    """Coverage and width of ``bands[level] = (lo, hi)`` ``[S, H]`` (e.g. the ``yhat-lo-<l>``
    and ``yhat-hi-<l>`` columns of ``forecast --level``) on ``actual`` ``[S, H]``; ``scale``
    ``[S]`` is each series' seasonal-naive in-sample error."""
    from mamlctl.stages.forecast import level_label

    horizon = actual.shape[1]
    out: dict[str, Any] = {"series": int(actual.shape[0]), "horizon": horizon, "levels": {}}
    if scale.shape != actual.shape[:1]:
        raise InputError("scale must hold one value per series")
    for level, (lo, hi) in bands.items():
        if not (lo.shape == hi.shape == actual.shape):
            raise InputError(f"the {level:g} % band must be [S, H] like actual")
        inside = (actual >= lo) & (actual <= hi)
        width = (hi - lo) / scale[:, None]
        out["levels"][level_label(level)] = {
            "nominal": float(level),
            "coverage": round(100.0 * float(inside.mean()), 2),
            "by_step": {
                f"{a}-{b}": round(100.0 * float(inside[:, a - 1 : b].mean()), 2)
                for a, b in step_buckets(horizon)
            },
            "width": round(float(width.mean()), 3),
            "width_by_step": {
                f"{a}-{b}": round(float(width[:, a - 1 : b].mean()), 3)
                for a, b in step_buckets(horizon)
            },
        }
    return out
