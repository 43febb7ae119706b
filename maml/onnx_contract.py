"""The graph contract of an adapted-model file, as torch and numpy twins.

:func:`contract_module` is the torch module ``torch.onnx.export`` turns into the file's graph
(see :mod:`mamlctl.maml.export` for the contract itself); :func:`apply_floor` is the numpy twin
of its lower bound, used wherever forecasts are scored before a file exists (held-out
validation in ``train``, calibration in ``adapt``).

The lower bound of a non-negative family
========================================

A clip at exactly 0 turns a small under-forecast of a low-count series (values 10-50) into a
forecast of 0, i.e. a one-step sMAPE of 200. The bound is therefore a fraction of the input
window's minimum: ``forecast = max(forecast, relu(floor_fraction * min(window)))``. With
``floor_fraction = 0`` this is the clip at 0 of older files (emitted as the same single Relu
node, so their graphs are unchanged); 1 bounds a forecast by the lowest value of its own
window. The fraction is chosen on held-out training series (see
:mod:`mamlctl.maml.family_data`) and recorded in the initializer and each file's metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from torch import Tensor, nn

Head = Literal["mean", "gaussian"]

#: ONNX opset of exported graphs (the contract says >= 17).
OPSET = 18
#: Names of the graph's input and outputs (the server depends on them).
INPUT_NAME = "window"
OUTPUT_NAMES = ("forecast", "sigma")
#: Names of the per-series normalisation initializers inside the graph.
LOC, SCALE, RESIDUAL_SCALE = "loc", "scale", "residual_scale"
#: Name of the mean head's per-step sigma growth ``[H]`` (a constant of the family's graph).
GROWTH = "sigma_growth"
#: Clamp of the gaussian head's log-variance, as in training (``maml.models.LOGVAR_*``).
_LOGVAR_RANGE = (-10.0, 10.0)


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): the form hashed into ``config_hash``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(model_config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a model config dict."""
    return hashlib.sha256(canonical_json(dict(model_config)).encode()).hexdigest()


def apply_floor(
    forecast: npt.ArrayLike,
    window_min: npt.ArrayLike,
    *,
    nonnegative: bool,
    floor_fraction: float = 0.0,
) -> npt.NDArray[np.float64]:
    """The file's lower bound in numpy: ``forecast`` ``[..., H]`` raw, ``window_min`` ``[...]``
    the minimum of each forecast's raw input window. Unchanged when not ``nonnegative``."""
    fc = np.asarray(forecast, dtype=np.float64)
    if not nonnegative:
        return fc
    if floor_fraction == 0.0:
        return np.maximum(fc, 0.0)
    floor = np.maximum(floor_fraction * np.asarray(window_min, dtype=np.float64), 0.0)
    return np.maximum(fc, floor[..., None])


class _Contract:
    """Factory of the torch wrapper implementing the graph contract around a core module."""

    @staticmethod
    def build(
        core: nn.Module,
        *,
        horizon: int,
        head: Head,
        nonnegative: bool,
        floor_fraction: float,
        growth: Sequence[float] | None,
    ) -> nn.Module:
        import torch
        from torch import nn

        fraction = float(floor_fraction)
        # a per-step growth of the mean head's sigma, a constant of the graph (none: the
        # residual scale for every step, the exact graph of older files)
        grow = None if growth is None or all(g == 1.0 for g in growth) else list(growth)

        class ContractModule(nn.Module):
            loc: Tensor
            scale: Tensor
            residual_scale: Tensor
            core: nn.Module

            def __init__(self) -> None:
                super().__init__()
                self.core = core
                self.register_buffer(LOC, torch.zeros(1))
                self.register_buffer(SCALE, torch.ones(1))
                self.register_buffer(RESIDUAL_SCALE, torch.ones(1))
                if grow is not None:
                    self.register_buffer(GROWTH, torch.tensor(grow, dtype=torch.float32))

            def forward(self, window: Tensor) -> tuple[Tensor, Tensor]:
                z = (window - self.loc) / self.scale
                out = self.core(z)
                mean = out[:, :horizon]
                forecast = mean * self.scale + self.loc
                if nonnegative and fraction == 0.0:  # clip at 0 (one Relu node, older files)
                    forecast = torch.relu(forecast)
                elif nonnegative:  # bound by a fraction of the window's minimum
                    low = torch.relu(window.amin(dim=1, keepdim=True) * fraction)
                    forecast = torch.maximum(forecast, low)
                if head == "gaussian":
                    logvar = out[:, horizon:].clamp(*_LOGVAR_RANGE)
                    sigma = torch.exp(0.5 * logvar) * self.scale
                else:
                    sigma = self.residual_scale.expand_as(forecast)
                    if grow is not None:  # after the expand: never folded with the scale
                        sigma = sigma * getattr(self, GROWTH)
                return forecast, sigma

        return ContractModule()


def contract_module(
    core: nn.Module,
    *,
    horizon: int,
    head: Head,
    nonnegative: bool = False,
    floor_fraction: float = 0.0,
    growth: Sequence[float] | None = None,
) -> nn.Module:
    """The torch twin of an exported file: raw window -> (forecast, sigma) in raw units;
    ``nonnegative`` bounds the raw forecast below by ``relu(floor_fraction * min(window))``
    (0 when ``floor_fraction`` is 0; sigma is unchanged); a mean head's ``sigma`` is
    ``residual_scale * growth`` (``[H]``, see :mod:`mamlctl.maml.horizon_band`) when given.

    Set its ``loc``/``scale``/``residual_scale`` buffers (shape ``[1]``) per series.
    """
    if not 0.0 <= floor_fraction <= 1.0:
        from mamlctl.errors import ConfigError

        raise ConfigError(f"floor fraction {floor_fraction} is outside [0, 1]")
    if growth is not None and (len(growth) != horizon or float(growth[0]) != 1.0):
        from mamlctl.errors import ConfigError

        raise ConfigError(f"sigma growth must have H={horizon} steps and start at 1")
    return _Contract.build(
        core,
        horizon=horizon,
        head=head,
        nonnegative=nonnegative,
        floor_fraction=floor_fraction,
        growth=growth,
    )
