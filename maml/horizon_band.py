"""The family's prediction band: how the residual scale grows with the horizon step, and how
wide a band must be (in those scales) to cover a level. Computed by ``train`` on its held-out
series; pure numpy.

A ``mean`` head's served ``sigma`` used to be the series' one-step ``residual_scale`` repeated
for all H steps, and ``forecast --level`` drew Gaussian bands from it. On held-out M4 Hourly
those bands covered 62 % (80 % nominal) and 75 % (95 %): errors grow with the step and have
heavier tails than a Gaussian. The band fixes both, from the held-out series' own errors:

* ``growth`` ``[H]``: for each held-out series, its multi-step errors (adapted at the forecast
  origin, as validation does) divided by its one-step residual scale (the per-series rule of
  :mod:`mamlctl.maml.calibration` on its one-step residuals); per step the pooled robust scale
  (1.4826 * median |z|), made non-decreasing over the steps (pool-adjacent-violators), relative
  to step 1. ``growth[0] == 1``: the served ``sigma[:, 0]`` stays the one-step scale the
  anomaly score reads; ``sigma[:, h] = residual_scale * growth[h]``.
* ``multipliers`` at :data:`LEVELS`: the pooled quantiles of ``|z_h| / growth[h]``, so that
  ``forecast -/+ multiplier(l) * sigma`` covers ``l`` % of the held-out errors (for a Gaussian
  they would be ``z_{(1+l)/2}``). Between the grid's levels the multiplier is interpolated,
  outside it the Gaussian quantile is scaled by the nearest grid point's ratio
  (:func:`mamlctl.contract.band_multiplier`), so bands of higher levels are never narrower.

An initializer without a band (older ones, a ``gaussian`` head) keeps the old behaviour: growth
1 and Gaussian multipliers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import TrainingError

FloatArray = npt.NDArray[np.float64]
#: Coverage levels (percent) the band's multipliers are calibrated at.
LEVELS: tuple[float, ...] = (50.0, 60.0, 70.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class HorizonBand:
    """Per-step growth of the residual scale ``[H]`` and band multipliers at ``levels``."""

    growth: tuple[float, ...]
    levels: tuple[float, ...]
    multipliers: tuple[float, ...]

    def table(self) -> tuple[tuple[float, float], ...]:
        """``((level, multiplier), ...)``: the form files and the forecast stage read."""
        return tuple(zip(self.levels, self.multipliers, strict=True))

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "growth": list(self.growth),
            "levels": list(self.levels),
            "multipliers": list(self.multipliers),
        }

    @classmethod
    def from_train_config(cls, train: Mapping[str, Any], *, horizon: int) -> HorizonBand | None:
        """The initializer's ``horizon_band`` (None when it has none); a malformed one is a
        :class:`TrainingError` naming it."""
        doc = train.get("horizon_band")
        if not doc:
            return None
        try:
            band = cls(
                growth=tuple(float(g) for g in doc["growth"]),
                levels=tuple(float(v) for v in doc["levels"]),
                multipliers=tuple(float(m) for m in doc["multipliers"]),
            )
        except (TypeError, KeyError, ValueError):
            raise TrainingError(f"initializer's horizon_band is malformed ({doc!r})") from None
        g, m = np.asarray(band.growth), np.asarray(band.multipliers)
        if (
            g.size != horizon
            or len(band.levels) != m.size
            or not (np.all(np.isfinite(g)) and np.all(g >= 1.0) and g[0] == 1.0)
            or not (np.all(np.isfinite(m)) and np.all(m > 0) and np.all(np.diff(m) >= 0))
        ):
            raise TrainingError(
                f"initializer's horizon_band does not fit H={horizon} (growth: {g.size} steps, "
                "first 1, all >= 1; multipliers positive and non-decreasing)"
            )
        return band


def monotone_fit(values: FloatArray) -> FloatArray:
    """The least-squares non-decreasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values.astype(np.float64):
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def band_from_heldout(
    one_step: FloatArray, errors: FloatArray, scale: FloatArray, *, floor_rel: float = 1e-3
) -> HorizonBand:
    """The band from held-out series: one-step residuals ``[N, C]`` (raw, NaN = none), the
    multi-step errors ``[N, H]`` of forecasts from one origin (raw) and support scales ``[N]``."""
    from mamlctl.timeseries.anomaly import MAD_TO_SIGMA

    abs_r = np.abs(one_step)
    with np.errstate(all="ignore"):
        s1 = np.maximum(MAD_TO_SIGMA * np.nanmedian(abs_r, axis=1), floor_rel * scale)
    keep = np.isfinite(s1) & (s1 > 0) & np.all(np.isfinite(errors), axis=1)
    if not keep.any():
        raise TrainingError("no held-out errors to calibrate the prediction band on")
    z = np.abs(errors[keep]) / s1[keep, None]  # [N, H]
    per_step = np.maximum(MAD_TO_SIGMA * np.median(z, axis=0), 1e-12)
    fit = monotone_fit(per_step)
    growth = fit / fit[0]
    growth[0] = 1.0
    u = (z / growth[None, :]).ravel()
    q = np.quantile(u, np.asarray(LEVELS) / 100.0)
    q = np.maximum.accumulate(np.maximum(q, 1e-6))
    return HorizonBand(
        growth=tuple(float(g) for g in growth),
        levels=LEVELS,
        multipliers=tuple(float(m) for m in q),
    )
