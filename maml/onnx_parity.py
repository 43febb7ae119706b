"""Parity of an exported per-series ONNX model with its torch twin.

The oracle is the torch contract module (:func:`mamlctl.maml.onnx_template.contract_module`)
loaded with the same parameters and normalisation. Both run in float32 on ``n`` random windows
drawn around the series' level (``loc + scale * N(0, 1)``); the statistic is the maximum absolute
difference of ``forecast`` and ``sigma`` divided by the series' ``scale``, required ``<= 1e-5``.

onnxruntime runs with one intra-op and one inter-op thread, sequential execution, one ``run``
over all windows, exactly as a scoring process would.

A float32 forecast near ``loc`` cannot be resolved finer than one ulp of ``|loc|``: for a series
whose level is more than ~80 times its scale, one-ulp rounding differences already exceed 1e-5 of
the scale. ``ParityStats.resolution`` reports that floor (ulp of the largest output / scale) so
such a failure is recognisable as float32 representation, not a wrong graph.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mamlctl.errors import ConfigError, InputError

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn

    from mamlctl.maml.onnx_contract import Head

F32 = npt.NDArray[np.float32]
#: ``window [n, L] float32 -> (forecast [n, H], sigma [n, H])`` in raw units.
Reference = Callable[[F32], tuple[F32, F32]]
#: Contract tolerance: max abs error relative to the series' scale.
TOLERANCE = 1e-5


@dataclass(frozen=True, slots=True, kw_only=True)
class ParityStats:
    """Outcome of one parity check (errors of forecast and sigma, relative to ``scale``)."""

    n_windows: int
    max_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    resolution: float
    tolerance: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_session(model: bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session with one intra-op and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def torch_reference(
    core: nn.Module,
    params: Mapping[str, npt.ArrayLike],
    *,
    loc: float,
    scale: float,
    residual_scale: float,
    horizon: int,
    head: Head,
    nonnegative: bool = False,
    floor_fraction: float = 0.0,
    quantized: Mapping[str, Any] | None = None,
    growth: Sequence[float] | None = None,
) -> Reference:
    """The torch twin of a rendered file: ``core`` with ``params`` inside the contract wrapper.

    ``quantized`` (``OnnxTemplate.quantized_layers``): the int8-delta layers of the file, by
    weight parameter; each such ``nn.Linear`` then computes what the file's layer computes (see
    :func:`mamlctl.maml.onnx_binding.quantized_linear_form`), written here independently in
    torch: the base weight in float32, the delta term from per-row 7-bit inputs."""
    import torch

    from mamlctl.maml.onnx_contract import contract_module

    module = copy.deepcopy(core).float().eval()
    state = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    module.load_state_dict(state, strict=True)
    for name, layer in (quantized or {}).items():
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if not isinstance(owner, torch.nn.Linear) or not name.endswith("weight"):
            raise ConfigError(f"quantized parameter {name!r} is not an nn.Linear weight")
        owner.register_forward_hook(_quantized_linear_hook(layer))
    wrapper = contract_module(
        module,
        horizon=horizon,
        head=head,
        nonnegative=nonnegative,
        floor_fraction=floor_fraction,
        growth=growth,
    ).eval()
    with torch.no_grad():
        wrapper.loc.fill_(loc)
        wrapper.scale.fill_(scale)
        wrapper.residual_scale.fill_(residual_scale)

    def run(windows: F32) -> tuple[F32, F32]:
        with torch.no_grad():
            forecast, sigma = wrapper(torch.from_numpy(np.ascontiguousarray(windows)))
        return forecast.numpy(), sigma.numpy()

    return run


def template_reference(
    template: Any,
    core: nn.Module,
    params: Mapping[str, npt.ArrayLike],
    *,
    loc: float,
    scale: float,
    residual_scale: float,
    as_stored: bool = True,
) -> Reference:
    """The torch twin of the file ``template`` renders from ``params`` (an ``OnnxTemplate``):
    ``as_stored`` (default) computes with what the file stores -- its int8-delta layers as the
    file computes them (their hooks replace those layers' weights); ``as_stored=False`` with
    ``params`` themselves (the unquantized adapted model, to measure what quantization
    changes)."""
    return torch_reference(
        core,
        params,
        quantized=template.quantized_layers(params) if as_stored else None,
        loc=loc,
        scale=scale,
        residual_scale=residual_scale,
        horizon=template.horizon,
        head=template.head,
        nonnegative=template.nonnegative,
        floor_fraction=template.floor_fraction,
        growth=template.growth,
    )


def _quantized_linear_hook(layer: Any) -> Any:
    """A forward hook replacing an ``nn.Linear``'s output with the int8-delta layer's."""
    import torch

    from mamlctl.maml.onnx_binding import SIGNED_LEVELS, SIGNED_ZERO, UNSIGNED_LEVELS

    base = torch.as_tensor(np.asarray(layer.base, dtype=np.float32))
    q = torch.as_tensor(np.asarray(layer.q, dtype=np.float64))  # [out, in], exact integers
    qscale = torch.as_tensor(np.asarray(layer.scale, dtype=np.float32))
    levels = SIGNED_LEVELS if layer.signed else UNSIGNED_LEVELS
    inv = torch.tensor(1.0 / levels, dtype=torch.float32)

    def hook(module: Any, inputs: Any, _output: Any) -> Any:
        (x,) = inputs
        peak = (x.abs() if layer.signed else x).amax(dim=-1)
        s = peak * inv  # [R]
        ratio = torch.where((s > 0).unsqueeze(-1), x / s.unsqueeze(-1), torch.zeros_like(x))
        low = -SIGNED_ZERO if layer.signed else 0
        levels_x = torch.clamp(torch.round(ratio), low, 255 + low)  # QuantizeLinear saturates
        acc = levels_x.double() @ q.T  # the exact integer sums of MatMulInteger
        delta = (acc.float() * s.unsqueeze(-1)) * qscale
        return torch.nn.functional.linear(x, base, module.bias) + delta

    return hook


def random_windows(*, loc: float, scale: float, window: int, n: int, seed: int) -> F32:
    """``n`` windows of length ``window`` around the series' level, float32."""
    rng = np.random.default_rng(seed)
    return (loc + scale * rng.standard_normal((n, window))).astype(np.float32)


def check_parity(
    model: bytes,
    reference: Reference,
    *,
    loc: float,
    scale: float,
    window: int,
    n: int = 1000,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> ParityStats:
    """Run ``model`` (serialized ONNX) and ``reference`` on ``n`` random windows; compare."""
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"parity needs a positive finite scale, got {scale}")
    windows = random_windows(loc=loc, scale=scale, window=window, n=n, seed=seed)
    session = ort_session(model)
    got_forecast, got_sigma = session.run(None, {"window": windows})
    ref_forecast, ref_sigma = reference(windows)
    err = np.concatenate(
        [
            np.abs(np.asarray(got_forecast, np.float64) - ref_forecast).ravel(),
            np.abs(np.asarray(got_sigma, np.float64) - ref_sigma).ravel(),
        ]
    )
    if not np.all(np.isfinite(err)):
        max_abs = float("inf")
        mean_abs = float("inf")
    else:
        max_abs = float(err.max())
        mean_abs = float(err.mean())
    largest = float(np.max(np.abs(ref_forecast))) if ref_forecast.size else 0.0
    resolution = float(np.spacing(np.float32(largest))) / scale
    max_rel = max_abs / scale
    return ParityStats(
        n_windows=n,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        mean_rel_error=mean_abs / scale,
        resolution=resolution,
        tolerance=tolerance,
        passed=bool(max_rel <= tolerance),
    )


def summarise(stats: list[ParityStats]) -> dict[str, float]:
    """Aggregate parity statistics for logging (e.g. as MLflow metrics of an adapt job)."""
    if not stats:
        return {"parity_checked": 0.0}
    return {
        "parity_checked": float(len(stats)),
        "parity_failed": float(sum(not s.passed for s in stats)),
        "parity_max_rel_error": max(s.max_rel_error for s in stats),
        "parity_mean_rel_error": float(np.mean([s.mean_rel_error for s in stats])),
        "parity_max_resolution": max(s.resolution for s in stats),
    }
