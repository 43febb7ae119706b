"""Model configs, forecaster modules, losses and the torch twin of support normalisation.

This module is a contract other stages code against (meta-training, adaptation, ONNX export):

- :class:`MLPConfig` (the paper's 1-40-40-1 ReLU network for sine; any widths/depth) and
  :class:`ConvConfig` (a small causal 1-D convolutional forecaster for series windows), both
  frozen pydantic models that reject unknown keys; :data:`ModelConfig` is their union.
- :func:`build_model` -> ``nn.Module`` whose forward maps ``x: [B, L] float32`` (an already
  normalised window; ``L = input_size`` for the MLP) to ``[B, H]`` (``head="mean"``) or
  ``[B, 2H]`` (``head="gaussian"``: first H columns = mean, next H = log-variance).
  Forward uses only linear/conv/relu/tanh/pad ops: ONNX-exportable, no data-dependent control flow.
- :func:`config_to_dict` / :func:`config_from_dict` (JSON round trip; unknown keys raise
  :class:`~mamlctl.errors.ConfigError`).
- Losses :func:`mse_loss`, :func:`mae_loss` and :func:`gaussian_nll_loss`. Convention used by
  the engine: a loss takes ``pred [..., N, out]`` and ``target [..., N, H]`` and averages over
  the last two axes, broadcasting over leading ones, so the same function gives one task's loss
  (a scalar) or a batch of tasks' losses (``[T]``) without ``vmap``.
- :func:`torch_support_stats`: exactly :func:`mamlctl.timeseries.scaling.support_stats` in torch.

``season_skip = m > 0`` (both configs) makes the network predict the residual to the
seasonal-naive forecast of its own (normalised) input window: ``base[h] = x[L - m + (h mod m)]``
is added to the mean columns, so a network whose last layer is zero forecasts exactly seasonal
naive. It is part of the module: meta-training, adaptation and the ONNX export all follow.

Modules also offer ``forward_batched(params, x)``: the same forward with every parameter carrying
a leading task axis ``T`` and ``x: [T, B, L]``. The engine uses it to run many tasks in one
batched matmul/conv; any other ``nn.Module`` falls back to ``vmap(functional_call)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from torch import Tensor, nn

from mamlctl.errors import ConfigError
from mamlctl.timeseries.scaling import SCALE_FLOOR_REL

Activation = Literal["relu", "tanh"]
Head = Literal["mean", "gaussian"]

#: Log-variance is clamped to this range inside the Gaussian NLL (keeps early training finite).
LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0


_SEASON_SKIP_DOC = (
    "m of the seasonal-naive skip: the network predicts the residual to the seasonal-naive "
    "forecast of its own input window (1 = naive, 0 = off)."
)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_season_skip(m: int, window: int) -> None:
    if m > window:
        raise ValueError(f"season_skip {m} must not exceed the window {window}")


class MLPConfig(_Config):
    """Fully connected network ``input_size -> hidden... -> output_size`` (x2 if gaussian)."""

    kind: Literal["mlp"] = "mlp"
    input_size: int = Field(ge=1)
    hidden: tuple[int, ...] = (40, 40)
    output_size: int = Field(ge=1)
    activation: Activation = "relu"
    head: Head = "mean"
    season_skip: int = Field(default=0, ge=0, description=_SEASON_SKIP_DOC)

    @model_validator(mode="after")
    def _check_hidden(self) -> MLPConfig:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden widths must be >= 1")
        _check_season_skip(self.season_skip, self.input_size)
        return self

    @property
    def horizon(self) -> int:
        return self.output_size

    @property
    def window(self) -> int:
        return self.input_size


class ConvConfig(_Config):
    """Causal dilated 1-D conv stack over the window, a linear read-out plus a linear AR skip.

    ``x [B, L]`` -> ``[B, 1, L]`` -> ``layers`` x (left pad, conv1d(dilation=base**i), act)
    -> flatten ``[B, channels * L]`` -> linear -> ``[B, out]``, plus ``linear(x)`` when ``skip``.
    """

    kind: Literal["conv"] = "conv"
    window: int = Field(ge=1)
    horizon: int = Field(ge=1)
    channels: int = Field(default=16, ge=1)
    kernel_size: int = Field(default=3, ge=1)
    layers: int = Field(default=2, ge=1)
    dilation_base: int = Field(default=2, ge=1)
    skip: bool = True
    activation: Activation = "relu"
    head: Head = "mean"
    season_skip: int = Field(default=0, ge=0, description=_SEASON_SKIP_DOC)

    @model_validator(mode="after")
    def _check_skip(self) -> ConvConfig:
        _check_season_skip(self.season_skip, self.window)
        return self


ModelConfig = Annotated[MLPConfig | ConvConfig, Field(discriminator="kind")]
_CONFIG_ADAPTER: TypeAdapter[MLPConfig | ConvConfig] = TypeAdapter(ModelConfig)


def config_to_dict(config: MLPConfig | ConvConfig) -> dict[str, Any]:
    """JSON-serialisable dict (tuples become lists) that :func:`config_from_dict` reads back.

    ``season_skip`` is left out when off (0), so configs written before it existed keep their
    exact JSON and config hash."""
    data = config.model_dump(mode="json")
    if data.get("season_skip") == 0:
        del data["season_skip"]
    return data


def config_from_dict(data: Mapping[str, Any]) -> MLPConfig | ConvConfig:
    """Parse a model config; a wrong ``kind``, unknown key or bad value raises ConfigError."""
    try:
        return _CONFIG_ADAPTER.validate_python(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid model config at {loc}: {first['msg']}") from None


def output_width(config: MLPConfig | ConvConfig) -> int:
    """Columns the network emits: H for a mean head, 2H for a gaussian head."""
    return config.horizon * (2 if config.head == "gaussian" else 1)


def _act(name: Activation, x: Tensor) -> Tensor:
    return torch.relu(x) if name == "relu" else torch.tanh(x)


def seasonal_base(x: Tensor, horizon: int, m: int) -> Tensor:
    """Seasonal-naive forecast of ``horizon`` steps from windows ``x [..., L]`` with period m:
    ``base[h] = x[L - m + (h mod m)]`` (m = 1: the last value). Slice + Tile + Slice in ONNX."""
    reps = -(-horizon // m)
    return x[..., x.shape[-1] - m :].repeat(*([1] * (x.ndim - 1)), reps)[..., :horizon]


def _add_season_skip(out: Tensor, x: Tensor, config: MLPConfig | ConvConfig) -> Tensor:
    """Add the seasonal-naive base of the input window to the mean columns of ``out``."""
    m = config.season_skip
    if m == 0:
        return out
    h = config.horizon
    base = seasonal_base(x, h, m)
    if config.head == "gaussian":
        return torch.cat([out[..., :h] + base, out[..., h:]], dim=-1)
    return out + base


class MLP(nn.Module):
    """The paper's regression network; parameters are ``layers.<i>.weight`` / ``.bias``."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        sizes = (config.input_size, *config.hidden, output_width(config))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = _act(self.config.activation, h)
        return _add_season_skip(h, x, self.config)

    def forward_batched(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """``params`` each with a leading task axis T; ``x [T, B, in]`` -> ``[T, B, out]``."""
        h = x
        last = len(self.layers) - 1
        for i in range(last + 1):
            w = params[f"layers.{i}.weight"]
            b = params[f"layers.{i}.bias"]
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < last:
                h = _act(self.config.activation, h)
        return _add_season_skip(h, x, self.config)


class ConvForecaster(nn.Module):
    """Small causal conv forecaster (see :class:`ConvConfig`)."""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(1 if i == 0 else c, c, k) for i in range(config.layers)
        )
        self.readout = nn.Linear(c * config.window, output_width(config))
        self.skip = nn.Linear(config.window, output_width(config)) if config.skip else None
        # Start the read-out small so the initial forecast is dominated by the linear skip.
        with torch.no_grad():
            self.readout.weight.mul_(0.1)

    def _pads(self) -> list[tuple[int, int]]:
        k, base = self.config.kernel_size, self.config.dilation_base
        return [((k - 1) * base**i, base**i) for i in range(self.config.layers)]

    def forward(self, x: Tensor) -> Tensor:
        h = x.unsqueeze(1)
        for conv, (pad, dil) in zip(self.convs, self._pads(), strict=True):
            assert isinstance(conv, nn.Conv1d)
            h = F.conv1d(F.pad(h, (pad, 0)), conv.weight, conv.bias, dilation=dil)
            h = _act(self.config.activation, h)
        out: Tensor = self.readout(h.flatten(1))
        if self.skip is not None:
            out = out + self.skip(x)
        return _add_season_skip(out, x, self.config)

    def forward_batched(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Grouped convolution over tasks: ``x [T, B, L]`` -> ``[T, B, out]``."""
        t, b, length = x.shape
        c = self.config.channels
        # [T, B, L] -> [B, T * 1, L]; group g = task g.
        h = x.transpose(0, 1).reshape(b, t, length)
        for i, (pad, dil) in enumerate(self._pads()):
            w = params[f"convs.{i}.weight"]  # [T, C, Cin, k]
            bias = params[f"convs.{i}.bias"]  # [T, C]
            h = F.conv1d(
                F.pad(h, (pad, 0)),
                w.reshape(t * c, w.shape[2], w.shape[3]),
                bias.reshape(t * c),
                dilation=dil,
                groups=t,
            )
            h = _act(self.config.activation, h)
        feats = h.reshape(b, t, c * length).transpose(0, 1)  # [T, B, C*L]
        rw, rb = params["readout.weight"], params["readout.bias"]
        out = torch.baddbmm(rb.unsqueeze(1), feats, rw.transpose(1, 2))
        if self.skip is not None:
            sw, sb = params["skip.weight"], params["skip.bias"]
            out = out + torch.baddbmm(sb.unsqueeze(1), x, sw.transpose(1, 2))
        return _add_season_skip(out, x, self.config)


def head_names(config: MLPConfig | ConvConfig) -> tuple[str, ...]:
    """Parameters of the last linear layer(s), the only ones ``adapt_scope="head"`` (ANIL)
    adapts per series: the MLP's last layer; the conv forecaster's read-out and linear skip."""
    if isinstance(config, MLPConfig):
        last = len(config.hidden)
        return (f"layers.{last}.weight", f"layers.{last}.bias")
    names: tuple[str, ...] = ("readout.weight", "readout.bias")
    return (*names, "skip.weight", "skip.bias") if config.skip else names


def adapt_names_for(config: MLPConfig | ConvConfig, scope: str) -> tuple[str, ...] | None:
    """The engine's ``adapt_names`` for an adaptation scope (None = every parameter)."""
    if scope == "all":
        return None
    if scope == "head":
        return head_names(config)
    raise ConfigError(f"unknown adapt scope {scope!r}; expected 'all' or 'head'")


def build_model(config: MLPConfig | ConvConfig) -> nn.Module:
    """A freshly initialised module for ``config`` (seed torch beforehand for determinism)."""
    if isinstance(config, MLPConfig):
        return MLP(config)
    if isinstance(config, ConvConfig):
        return ConvForecaster(config)
    raise ConfigError(f"unknown model config type {type(config).__name__}")


# --------------------------------------------------------------------------- losses


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the last two axes (examples, outputs); leading axes kept."""
    return (pred - target).pow(2).mean(dim=(-2, -1))


def mae_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error, averaged like :func:`mse_loss` (targets the median; M4 and MASE
    score absolute errors)."""
    return (pred - target).abs().mean(dim=(-2, -1))


def loss_by_name(name: str, *, masked: bool = False) -> Any:
    """``mse`` | ``mae`` | ``gaussian_nll`` -> the loss function; ConfigError otherwise.

    ``masked=True`` gives the variant that ignores NaN targets (partial-horizon pairs, see
    :func:`masked_mse_loss`); the unmasked functions stay the path of fully observed tasks (and
    the engine's fused ``F.mse_loss`` recognises only :func:`mse_loss`)."""
    losses = (
        MASKED_LOSSES
        if masked
        else {
            "mse": mse_loss,
            "mae": mae_loss,
            "gaussian_nll": gaussian_nll_loss,
        }
    )
    if name not in losses:
        raise ConfigError(f"unknown loss {name!r}; expected one of {sorted(losses)}")
    return losses[name]


def split_gaussian(pred: Tensor) -> tuple[Tensor, Tensor]:
    """Split a gaussian head's output ``[..., 2H]`` into (mean, log-variance), each ``[..., H]``."""
    h = pred.shape[-1] // 2
    return pred[..., :h], pred[..., h:]


def gaussian_nll_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Gaussian NLL (with the 0.5 log 2π constant) of a mean/log-variance head, averaged like
    :func:`mse_loss`; the log-variance is clamped to [LOGVAR_MIN, LOGVAR_MAX]."""
    mean, logvar = split_gaussian(pred)
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    nll = 0.5 * (logvar + (target - mean).pow(2) * torch.exp(-logvar) + math.log(2 * math.pi))
    return nll.mean(dim=(-2, -1))


# Masked losses: targets that are NaN (horizon steps past the end of a support stretch or of a
# series) are not observed. Each averages over the OBSERVED entries of the last two axes only
# (a task with none gives 0). The NaN are replaced by the prediction's own value before any
# subtraction, and the per-entry terms multiplied by the 0/1 mask, so no NaN reaches a value or
# a gradient. With no NaN they equal the unmasked losses.


def _observed(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(safe target, 0/1 mask, observed count clamped at 1)`` of a target with NaN holes."""
    mask = ~torch.isnan(target)
    safe = torch.where(mask, target, torch.zeros((), dtype=target.dtype))
    weight = mask.to(pred.dtype)
    count = weight.sum(dim=(-2, -1)).clamp(min=1.0)
    return safe, weight, count


def masked_mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """:func:`mse_loss` over the observed (non-NaN) targets only."""
    safe, weight, count = _observed(pred, target)
    return ((pred - safe).pow(2) * weight).sum(dim=(-2, -1)) / count


def masked_mae_loss(pred: Tensor, target: Tensor) -> Tensor:
    """:func:`mae_loss` over the observed (non-NaN) targets only."""
    safe, weight, count = _observed(pred, target)
    return ((pred - safe).abs() * weight).sum(dim=(-2, -1)) / count


def masked_gaussian_nll_loss(pred: Tensor, target: Tensor) -> Tensor:
    """:func:`gaussian_nll_loss` over the observed (non-NaN) targets only."""
    mean, logvar = split_gaussian(pred)
    safe, weight, count = _observed(mean, target)
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    nll = 0.5 * (logvar + (safe - mean).pow(2) * torch.exp(-logvar) + math.log(2 * math.pi))
    return (nll * weight).sum(dim=(-2, -1)) / count


MASKED_LOSSES = {
    "mse": masked_mse_loss,
    "mae": masked_mae_loss,
    "gaussian_nll": masked_gaussian_nll_loss,
}


def loss_for_head(head: Head) -> Any:
    """The natural loss of a head: MSE for ``mean``, Gaussian NLL for ``gaussian``."""
    return mse_loss if head == "mean" else gaussian_nll_loss


def point_forecast(pred: Tensor, head: Head) -> Tensor:
    """The point forecast (mean) columns of a model output."""
    return split_gaussian(pred)[0] if head == "gaussian" else pred


# --------------------------------------------------------------------------- normalisation


def torch_support_stats(support: Tensor) -> tuple[Tensor, Tensor]:
    """Torch twin of :func:`mamlctl.timeseries.scaling.support_stats` over the last axis.

    ``loc = mean``, ``scale = max(std (population), SCALE_FLOOR_REL * max(1, |loc|))``.
    """
    if support.ndim == 0 or support.shape[-1] == 0:
        raise ValueError("support window is empty")
    loc = support.mean(dim=-1)
    std = support.std(dim=-1, correction=0)
    floor = SCALE_FLOOR_REL * torch.clamp(loc.abs(), min=1.0)
    return loc, torch.maximum(std, floor)
