"""Per-series normalisation: the one definition shared by training, adaptation, export, serving.

A series (or a task) is normalised by the location and scale of its *support* window only (the
K recent points a model is adapted on), never by points it is asked to forecast. The scale is
floored so a flat support window does not divide by zero::

    loc   = mean(support)
    scale = max(std(support), SCALE_FLOOR_REL * max(1, |loc|))

The torch twin in ``mamlctl.maml`` must implement exactly this formula (a test compares them),
and the exported ONNX graph bakes ``loc`` and ``scale`` in as per-series constants.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Relative floor of the scale, so a constant support window gives a finite, tiny scale.
SCALE_FLOOR_REL = 1e-3


def support_stats(
    support: npt.ArrayLike,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Location and floored scale over the last axis. ``support``: [..., K] -> ([...], [...])."""
    arr = np.asarray(support, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError("support window is empty")
    loc = arr.mean(axis=-1)
    std = arr.std(axis=-1)
    scale = np.maximum(std, SCALE_FLOOR_REL * np.maximum(1.0, np.abs(loc)))
    return loc, scale
