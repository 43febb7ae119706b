"""Export a forecaster graph ONCE per (model config, L, H, head) and stamp out per-series files.

``torch.onnx.export`` costs ~0.5-1 s a model. A family's adapted models share one graph and
differ only in their weights, normalisation constants and metadata, so :func:`build_template`
exports the contract graph (see :mod:`mamlctl.maml.export`) once and :meth:`OnnxTemplate.render`
writes a series' values into a copy of its serialized bytes.

How the weights are found and patched, robustly:

1. The module is deep-copied and every parameter, plus ``loc``/``scale``/``residual_scale``, is
   filled with distinct seeded random values before export, so each ONNX initializer's bytes
   identify its source: an initializer is bound to a parameter when its name and value match, or
   failing the name, when its value equals the parameter or the parameter's transpose (the
   exporter may rename or pre-transpose weights). A parameter with no bound initializer (folded
   into another constant) makes the config unexportable as a template: :class:`ConfigError`.
2. The graph is stripped of exporter debris (node stack traces, value_info, doc strings), then
   serialized once. Because every bound initializer's ``raw_data`` is random, its bytes occur
   exactly once in the serialization: their offsets are recorded (uniqueness is checked).
3. ``render`` copies the template bytes, overwrites those byte ranges with a series' float32
   values and appends the ``metadata_props`` entries (concatenated protobuf messages merge, so the
   result parses as the same standard ModelProto ``onnx.save`` would describe).
4. The template verifies itself when built: a second random parameter set is rendered and run
   in onnxruntime against the torch module (the same check as :func:`check_parity`), so a
   mapping that missed a weight fails at build time, never silently per series.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from mamlctl.errors import ConfigError, InputError

if TYPE_CHECKING:
    import onnx
    from torch import Tensor, nn

Head = Literal["mean", "gaussian"]

#: ONNX opset of exported graphs (the contract says >= 17).
OPSET = 18
#: Names of the graph's input and outputs (the server depends on them).
INPUT_NAME = "window"
OUTPUT_NAMES = ("forecast", "sigma")
#: Names of the per-series normalisation initializers inside the graph.
LOC, SCALE, RESIDUAL_SCALE = "loc", "scale", "residual_scale"
#: Clamp of the gaussian head's log-variance, as in training (``maml.models.LOGVAR_*``).
_LOGVAR_RANGE = (-10.0, 10.0)
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): the form hashed into ``config_hash``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(model_config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a model config dict."""
    return hashlib.sha256(canonical_json(dict(model_config)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    """One patchable byte range of the template: an initializer fed by a parameter."""

    initializer: str
    param: str  # state-dict name of the core module, or LOC/SCALE/RESIDUAL_SCALE
    transpose: bool
    shape: tuple[int, ...]  # the parameter's shape (before transpose)
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OnnxTemplate:
    """A serialized contract graph with recorded byte ranges for every per-series value."""

    model_config: dict[str, Any]
    config_hash: str
    template_id: str
    window: int
    horizon: int
    head: Head
    opset: int
    template_bytes: bytes
    nonnegative: bool
    bindings: tuple[Binding, ...]
    param_shapes: dict[str, tuple[int, ...]]

    @property
    def series_initializers(self) -> tuple[str, ...]:
        """Initializer names that hold per-series values (weights and normalisation)."""
        return tuple(b.initializer for b in self.bindings)

    def render(
        self,
        params: Mapping[str, npt.ArrayLike],
        *,
        loc: float,
        scale: float,
        residual_scale: float,
        metadata: Mapping[str, str],
    ) -> bytes:
        """The serialized per-series ONNX model (standard ModelProto bytes).

        ``params``: every parameter of the core module by state-dict name, in its torch shape.
        """
        buf = bytearray(self.template_bytes)
        scalars = {LOC: loc, SCALE: scale, RESIDUAL_SCALE: residual_scale}
        for b in self.bindings:
            if b.param in scalars:
                value: npt.NDArray[Any] = np.asarray([scalars[b.param]], dtype="<f4")
            else:
                try:
                    value = np.asarray(params[b.param], dtype="<f4")
                except KeyError:
                    raise InputError(f"adapted parameters lack {b.param!r}") from None
                if value.shape != b.shape:
                    raise InputError(
                        f"parameter {b.param!r} has shape {value.shape}, expected {b.shape}"
                    )
                if b.transpose:
                    value = value.T
            buf[b.offset : b.offset + b.nbytes] = np.ascontiguousarray(value).tobytes()
        buf += _metadata_bytes(metadata)
        return bytes(buf)


def _metadata_bytes(metadata: Mapping[str, str]) -> bytes:
    import onnx

    holder = onnx.ModelProto()
    for key, value in metadata.items():
        entry = holder.metadata_props.add()
        entry.key = key
        entry.value = value
    return bytes(holder.SerializeToString())


class _Contract:
    """Factory of the torch wrapper implementing the graph contract around a core module."""

    @staticmethod
    def build(core: nn.Module, *, horizon: int, head: Head, nonnegative: bool) -> nn.Module:
        import torch
        from torch import nn

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

            def forward(self, window: Tensor) -> tuple[Tensor, Tensor]:
                z = (window - self.loc) / self.scale
                out = self.core(z)
                mean = out[:, :horizon]
                forecast = mean * self.scale + self.loc
                if nonnegative:  # clip in raw units (one Relu node)
                    forecast = torch.relu(forecast)
                if head == "gaussian":
                    logvar = out[:, horizon:].clamp(*_LOGVAR_RANGE)
                    sigma = torch.exp(0.5 * logvar) * self.scale
                else:
                    sigma = self.residual_scale.expand_as(forecast)
                return forecast, sigma

        return ContractModule()


def contract_module(
    core: nn.Module, *, horizon: int, head: Head, nonnegative: bool = False
) -> nn.Module:
    """The torch twin of an exported file: raw window -> (forecast, sigma) in raw units;
    ``nonnegative`` clips the raw forecast at 0 (sigma is unchanged).

    Set its ``loc``/``scale``/``residual_scale`` buffers (shape ``[1]``) per series.
    """
    return _Contract.build(core, horizon=horizon, head=head, nonnegative=nonnegative)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's progress prints, logs and deprecation warnings (warnings are errors
    in our tests, and the exporter's internals emit some we cannot fix)."""
    saved = [(name, logging.getLogger(name).level) for name in _QUIET_LOGGERS]
    for name, _ in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)


def _randomise(module: nn.Module, rng: np.random.Generator) -> None:
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-1.0, 1.0, size=tuple(p.shape)).astype("f4")))


def _strip(model: onnx.ModelProto) -> None:
    """Remove what the exporter adds for debugging: stack traces (local paths), value_info,
    doc strings, model-level metadata. The graph itself is untouched."""
    model.doc_string = ""
    del model.metadata_props[:]
    model.graph.doc_string = ""
    del model.graph.value_info[:]
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]


def _bind(
    model: onnx.ModelProto, values: Mapping[str, npt.NDArray[np.float32]], prefix: str
) -> list[tuple[str, str, bool]]:
    """Match initializers to source values (name+value first, then value, then transpose)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    arrays = {name: numpy_helper.to_array(init) for name, init in inits.items()}
    bound: list[tuple[str, str, bool]] = []
    used: set[str] = set()
    for param, value in values.items():
        hits: list[tuple[str, bool]] = []
        for name, arr in arrays.items():
            if name in used:
                continue
            if arr.shape == value.shape and np.array_equal(arr, value):
                hits.append((name, False))
            elif value.ndim == 2 and arr.shape == value.T.shape and np.array_equal(arr, value.T):
                hits.append((name, True))
        named = [h for h in hits if h[0] in (prefix + param, param)]
        chosen = named or hits
        if not chosen:
            raise ConfigError(
                f"cannot export this model config as a template: parameter {param!r} has no "
                "initializer of its own in the ONNX graph (folded into a constant?)"
            )
        for name, transposed in chosen:
            used.add(name)
            bound.append((name, param, transposed))
    return bound


def _normalise_raw(model: onnx.ModelProto, names: set[str]) -> None:
    """Store the bound initializers as little-endian ``raw_data`` (the exporter may use
    ``float_data``); patching works on raw bytes."""
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.name in names and not init.raw_data:
            arr = numpy_helper.to_array(init).astype("<f4")
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))


def _locate(serialized: bytes, model: onnx.ModelProto, names: set[str]) -> dict[str, int]:
    offsets: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.name not in names:
            continue
        raw = init.raw_data
        first = serialized.find(raw)
        if first < 0 or serialized.find(raw, first + 1) >= 0:
            raise _NotUnique(init.name)
        offsets[init.name] = first
    return offsets


class _NotUnique(Exception):
    pass


def build_template(
    core: nn.Module,
    *,
    model_config: Mapping[str, Any],
    window: int,
    horizon: int,
    head: Head,
    opset: int = OPSET,
    seed: int = 0,
    verify: bool = True,
    nonnegative: bool = False,
) -> OnnxTemplate:
    """Export the contract graph around ``core`` once; see the module docstring.

    ``core`` maps a normalised ``[B, window]`` to ``[B, horizon]`` (mean head) or
    ``[B, 2*horizon]`` (gaussian head). Its values are not used (the template is filled with
    random sentinels); only its structure is. Raises :class:`ConfigError` when the graph cannot
    be patched reliably.
    """
    if opset < 17:
        raise ConfigError(f"opset {opset} is below the contract's minimum of 17")
    if head not in ("mean", "gaussian"):
        raise ConfigError(f"unknown head {head!r}; expected 'mean' or 'gaussian'")
    if any(True for _ in core.buffers()):
        raise ConfigError("template export supports modules without buffers only")
    last_err: Exception | None = None
    for attempt in range(4):
        try:
            return _build_once(
                core,
                model_config=dict(model_config),
                window=window,
                horizon=horizon,
                head=head,
                opset=opset,
                seed=seed + 7919 * attempt,
                verify=verify,
                nonnegative=nonnegative,
            )
        except _NotUnique as err:  # a 4-byte sentinel collided with other bytes: reseed
            last_err = err
    raise ConfigError(f"could not place unique sentinels in the template ({last_err})")


def _build_once(
    core: nn.Module,
    *,
    model_config: dict[str, Any],
    window: int,
    horizon: int,
    head: Head,
    opset: int,
    seed: int,
    verify: bool,
    nonnegative: bool,
) -> OnnxTemplate:
    import torch

    rng = np.random.default_rng(seed)
    sentinel_core = copy.deepcopy(core).float().eval()
    for p in sentinel_core.parameters():
        p.requires_grad_(False)
    _randomise(sentinel_core, rng)
    wrapper = contract_module(
        sentinel_core, horizon=horizon, head=head, nonnegative=nonnegative
    ).eval()
    scalars = {name: float(rng.uniform(0.5, 2.0)) for name in (LOC, SCALE, RESIDUAL_SCALE)}
    with torch.no_grad():
        for name, value in scalars.items():
            getattr(wrapper, name).fill_(value)

    example = torch.zeros(2, window)
    try:
        with _quiet_export():
            program = torch.onnx.export(
                wrapper,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many internal types
        raise ConfigError(f"torch.onnx.export failed for this model config: {err}") from err
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise ConfigError("torch.onnx.export returned no program")
    model = program.model_proto
    _strip(model)

    values: dict[str, npt.NDArray[np.float32]] = {
        name: p.detach().numpy().copy() for name, p in sentinel_core.named_parameters()
    }
    bound = _bind(model, values, prefix="core.")
    scalar_values = {n: np.asarray([v], dtype=np.float32) for n, v in scalars.items()}
    present = {i.name for i in model.graph.initializer}
    # residual_scale is absent from a gaussian graph (sigma comes from the head there).
    scalar_bound = _bind(model, {n: v for n, v in scalar_values.items() if n in present}, "")
    names = {name for name, _, _ in bound + scalar_bound}
    for required in (LOC, SCALE):
        if required not in names:
            raise ConfigError(f"exported graph lost the {required!r} initializer")
    _normalise_raw(model, names)
    serialized = model.SerializeToString()
    offsets = _locate(serialized, model, names)

    shapes = {name: tuple(int(d) for d in v.shape) for name, v in values.items()}
    shapes.update({n: (1,) for n in scalars})
    bindings = tuple(
        sorted(
            (
                Binding(
                    initializer=name,
                    param=param,
                    transpose=transposed,
                    shape=shapes[param],
                    offset=offsets[name],
                    nbytes=4 * int(np.prod(shapes[param])),
                )
                for name, param, transposed in bound + scalar_bound
            ),
            key=lambda b: b.offset,
        )
    )
    missing = set(values) - {b.param for b in bindings}
    if missing:  # pragma: no cover - _bind raises first
        raise ConfigError(f"parameters without initializer: {sorted(missing)}")

    # Structural identity: the template with every per-series byte range zeroed.
    structural = bytearray(serialized)
    for b in bindings:
        structural[b.offset : b.offset + b.nbytes] = bytes(b.nbytes)
    template = OnnxTemplate(
        model_config=model_config,
        config_hash=config_hash(model_config),
        template_id=hashlib.sha256(bytes(structural)).hexdigest(),
        window=window,
        horizon=horizon,
        head=head,
        opset=opset,
        template_bytes=serialized,
        nonnegative=nonnegative,
        bindings=bindings,
        param_shapes={n: s for n, s in shapes.items() if n not in scalars},
    )
    if verify:
        _self_check(template, core=sentinel_core, rng=rng)
    return template


def _self_check(template: OnnxTemplate, *, core: nn.Module, rng: np.random.Generator) -> None:
    """Render fresh random weights and compare onnxruntime with torch (fails loudly)."""
    from mamlctl.maml.onnx_parity import check_parity, torch_reference

    # Weights of about 1/sqrt(fan-in), so outputs are O(1); a missed or mis-transposed weight
    # gives O(1) errors, far above the float32 noise this tolerance (1e-4) allows.
    params = {
        name: (rng.normal(0.0, 1.0, size=shape) / np.sqrt(max(1, int(np.prod(shape[1:]))))).astype(
            np.float32
        )
        for name, shape in template.param_shapes.items()
    }
    loc, scale, rscale = 3.0, 2.5, 0.7
    blob = template.render(params, loc=loc, scale=scale, residual_scale=rscale, metadata={})
    reference = torch_reference(
        core,
        params,
        loc=loc,
        scale=scale,
        residual_scale=rscale,
        horizon=template.horizon,
        head=template.head,
        nonnegative=template.nonnegative,
    )
    stats = check_parity(
        blob, reference, loc=loc, scale=scale, window=template.window, n=64, tolerance=1e-4
    )
    if not stats.passed:
        raise ConfigError(
            "the exported template does not reproduce the torch model after a weight swap "
            f"(max error {stats.max_rel_error:.3g} of scale); the weight mapping is wrong"
        )
