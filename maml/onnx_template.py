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

With ``weights="int8-delta"`` (``mamlctl adapt``'s default) each adapted ``Linear`` is bound
to three initializers instead of one (:func:`~mamlctl.maml.onnx_binding.quantized_linear_form`):
the initializer's weight (role ``base``, written once per initializer by
:meth:`OnnxTemplate.with_base`), the int8 delta and its per-row scales (computed from each
series' weights by ``render``). :meth:`OnnxTemplate.quantized_layers` and
:meth:`OnnxTemplate.stored_params` say what a file holds, for its torch twin.

The contract module and its constants live in :mod:`mamlctl.maml.onnx_contract`, the graph
surgery of steps 1-2 in :mod:`mamlctl.maml.onnx_binding`; both are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import numpy.typing as npt

from mamlctl.domain import WeightFormat
from mamlctl.errors import ConfigError, InputError
from mamlctl.maml.onnx_binding import (
    BASE,
    QDELTA,
    QSCALE,
    NotUnique,
    batched_linear_form,
    bind,
    dequantize_rows,
    locate,
    normalise_raw,
    quantize_rows,
    quantized_linear_form,
    quiet_export,
    randomise,
    strip,
)
from mamlctl.maml.onnx_contract import (  # re-exported: the names callers import from here
    INPUT_NAME,
    LOC,
    OPSET,
    OUTPUT_NAMES,
    RESIDUAL_SCALE,
    SCALE,
    Head,
    canonical_json,
    config_hash,
    contract_module,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "INPUT_NAME",
    "LOC",
    "OPSET",
    "OUTPUT_NAMES",
    "RESIDUAL_SCALE",
    "SCALE",
    "WEIGHT_FORMATS",
    "Binding",
    "Head",
    "OnnxTemplate",
    "QuantizedLayer",
    "build_template",
    "canonical_json",
    "config_hash",
    "contract_module",
]


#: Binding roles: the parameter's own float32 values, or (a quantized layer) the initializer's
#: weight it is a delta from, the int8 delta, the delta's per-row float32 scales.
VALUE, BASE_ROLE, QDELTA_ROLE, QSCALE_ROLE = "value", "base", "qdelta", "qscale"

#: Export formats of per-series weights (see :data:`mamlctl.domain.WeightFormat`).
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)


@dataclass(frozen=True, slots=True)
class QuantizedLayer:
    """One int8-delta layer of a file: ``W = base + scale[:, None] * q`` (``[out, in]``), its
    input quantized around a zero point when ``signed`` (see
    :func:`~mamlctl.maml.onnx_binding.quantized_linear_form`)."""

    base: npt.NDArray[np.float32]
    q: npt.NDArray[np.int8]
    scale: npt.NDArray[np.float32]
    signed: bool


@dataclass(frozen=True, slots=True)
class Binding:
    """One patchable byte range of the template: an initializer fed by a parameter."""

    initializer: str
    param: str  # state-dict name of the core module, or LOC/SCALE/RESIDUAL_SCALE
    transpose: bool
    shape: tuple[int, ...]  # the parameter's shape (before transpose)
    offset: int
    nbytes: int
    role: str = VALUE


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
    floor_fraction: float = 0.0  # lower bound relu(fraction * min(window)) when nonnegative
    weights: str = "float32"  # one of WEIGHT_FORMATS
    #: the mean head's per-step sigma growth ``[H]`` (a graph constant; None: none)
    growth: tuple[float, ...] | None = None
    #: ``((level, multiplier), ...)`` of the family's prediction band, written to each file's
    #: ``band`` metadata (not part of the graph; None: no key, Gaussian bands)
    band: tuple[tuple[float, float], ...] | None = None
    #: quantized layers: the initializer's weight per parameter, as stored ([out, in]); set by
    #: :meth:`with_base`, required by :meth:`render` when the template quantizes
    base: Mapping[str, npt.NDArray[np.float32]] | None = None
    #: quantized layers whose input may be negative (quantized around a zero point)
    signed_inputs: frozenset[str] = frozenset()

    @property
    def series_initializers(self) -> tuple[str, ...]:
        """Initializer names that hold per-series values (weights and normalisation)."""
        return tuple(b.initializer for b in self.bindings if b.role != BASE_ROLE)

    @property
    def quantized(self) -> tuple[str, ...]:
        """Parameters stored as int8 deltas from the initializer's values."""
        return tuple(b.param for b in self.bindings if b.role == BASE_ROLE)

    def with_base(self, params: Mapping[str, npt.ArrayLike]) -> OnnxTemplate:
        """This template with the initializer's weights (``params``, state-dict names, torch
        shapes) written in as the base of every quantized layer; the result's ``template_id``
        covers them, so files of different initializers never share a bank. A template
        without quantized layers is returned as it is."""
        bases = [b for b in self.bindings if b.role == BASE_ROLE]
        if not bases:
            return self
        buf = bytearray(self.template_bytes)
        base: dict[str, npt.NDArray[np.float32]] = {}
        for b in bases:
            stored = _stored(b, params)
            base[b.param] = stored
            buf[b.offset : b.offset + b.nbytes] = stored.tobytes()
        structural = bytearray(buf)
        for b in self.bindings:
            if b.role != BASE_ROLE:
                structural[b.offset : b.offset + b.nbytes] = bytes(b.nbytes)
        return dataclasses.replace(
            self,
            template_bytes=bytes(buf),
            template_id=hashlib.sha256(bytes(structural)).hexdigest(),
            base=base,
        )

    def _quantized_of(
        self, params: Mapping[str, npt.ArrayLike]
    ) -> dict[str, tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]]:
        """``param -> (q [out, in] int8, scale [out] float32)`` of every quantized layer."""
        if not self.quantized:
            return {}
        if self.base is None:
            raise ConfigError("this template quantizes weights: call with_base() first")
        out = {}
        for b in self.bindings:
            if b.role == BASE_ROLE:
                out[b.param] = quantize_rows(_stored(b, params) - self.base[b.param])
        return out

    def quantized_layers(self, params: Mapping[str, npt.ArrayLike]) -> dict[str, QuantizedLayer]:
        """What each quantized layer of the file rendered from ``params`` holds, by weight
        parameter (the torch twin of the file, :func:`~mamlctl.maml.onnx_parity.torch_reference`,
        computes the layer from these)."""
        out = {}
        for name, (q, scale) in self._quantized_of(params).items():
            assert self.base is not None
            out[name] = QuantizedLayer(
                base=self.base[name], q=q, scale=scale, signed=name in self.signed_inputs
            )
        return out

    def stored_params(self, params: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]:
        """The parameters a rendered file computes with (torch shapes): ``params`` with every
        quantized weight replaced by its dequantized value (torch references use these)."""
        result = {name: np.asarray(v, dtype=np.float32) for name, v in params.items()}
        by_param = {b.param: b for b in self.bindings if b.role == BASE_ROLE}
        for name, (q, scale) in self._quantized_of(params).items():
            assert self.base is not None
            value = dequantize_rows(self.base[name], q, scale)
            result[name] = value.T if by_param[name].transpose else value
        return result

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
        try:
            quantized = self._quantized_of(params)
            for b in self.bindings:
                if b.role == BASE_ROLE:
                    continue
                if b.role in (QDELTA_ROLE, QSCALE_ROLE):
                    q, qscale = quantized[b.param]
                    value: npt.NDArray[Any] = q.T if b.role == QDELTA_ROLE else qscale
                elif b.param in scalars:
                    value = np.asarray([scalars[b.param]], dtype="<f4")
                else:
                    value = _stored(b, params)
                buf[b.offset : b.offset + b.nbytes] = np.ascontiguousarray(value).tobytes()
        except KeyError as err:
            raise InputError(f"adapted parameters lack {err.args[0]!r}") from None
        buf += _metadata_bytes(metadata)
        return bytes(buf)


def _stored(b: Binding, params: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float32]:
    """Parameter ``b.param`` of ``params`` in the layout its initializer stores."""
    value = np.asarray(params[b.param], dtype="<f4")
    if value.shape != b.shape:
        raise InputError(f"parameter {b.param!r} has shape {value.shape}, expected {b.shape}")
    return np.ascontiguousarray(value.T if b.transpose else value)


def _metadata_bytes(metadata: Mapping[str, str]) -> bytes:
    import onnx

    holder = onnx.ModelProto()
    for key, value in metadata.items():
        entry = holder.metadata_props.add()
        entry.key = key
        entry.value = value
    return bytes(holder.SerializeToString())


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
    floor_fraction: float = 0.0,
    per_series: Collection[str] | None = None,
    weights: str = "float32",
    growth: Sequence[float] | None = None,
) -> OnnxTemplate:
    """Export the contract graph around ``core`` once; see the module docstring.

    ``core`` maps a normalised ``[B, window]`` to ``[B, horizon]`` (mean head) or
    ``[B, 2*horizon]`` (gaussian head). Its values are not used (the template is filled with
    random sentinels); only its structure is. Raises :class:`ConfigError` when the graph cannot
    be patched reliably.

    ``per_series`` names the parameters that differ between series (None: all of them, the
    default adaptation; the last layer for head-only adaptation). Their linear layers are
    written in the batched form of :func:`~mamlctl.maml.onnx_binding.batched_linear_form`, so
    the scoring server's answers equal the file's bit for bit.

    ``weights="int8-delta"`` stores each such layer's weight as an int8 delta from the
    initializer's (:func:`~mamlctl.maml.onnx_binding.quantized_linear_form`): 1 byte per weight
    per series instead of 4. Such a template renders only after :meth:`OnnxTemplate.with_base`.
    """
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weight format {weights!r}; expected one of {WEIGHT_FORMATS}")
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
                floor_fraction=floor_fraction,
                per_series=per_series,
                weights=weights,
                growth=growth,
            )
        except NotUnique as err:  # a 4-byte sentinel collided with other bytes: reseed
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
    floor_fraction: float,
    per_series: Collection[str] | None = None,
    weights: str = "float32",
    growth: Sequence[float] | None = None,
) -> OnnxTemplate:
    import torch

    rng = np.random.default_rng(seed)
    sentinel_core = copy.deepcopy(core).float().eval()
    for p in sentinel_core.parameters():
        p.requires_grad_(False)
    randomise(sentinel_core, rng)
    wrapper = contract_module(
        sentinel_core,
        horizon=horizon,
        head=head,
        nonnegative=nonnegative,
        floor_fraction=floor_fraction,
        growth=growth,
    ).eval()
    scalars = {name: float(rng.uniform(0.5, 2.0)) for name in (LOC, SCALE, RESIDUAL_SCALE)}
    with torch.no_grad():
        for name, value in scalars.items():
            getattr(wrapper, name).fill_(value)

    example = torch.zeros(2, window)
    try:
        with quiet_export():
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
    strip(model)

    values: dict[str, npt.NDArray[np.float32]] = {
        name: p.detach().numpy().copy() for name, p in sentinel_core.named_parameters()
    }
    bound = bind(model, values, prefix="core.")
    scalar_values = {n: np.asarray([v], dtype=np.float32) for n, v in scalars.items()}
    present = {i.name for i in model.graph.initializer}
    # residual_scale is absent from a gaussian graph (sigma comes from the head there).
    scalar_bound = bind(model, {n: v for n, v in scalar_values.items() if n in present}, "")
    wanted = set(values) if per_series is None else set(per_series)
    layers = {name for name, p, _ in bound if p in wanted}
    signed_weights: set[str] = set()
    if weights == "int8-delta":
        flipped, signed_weights = quantized_linear_form(model, layers, rng)
    else:
        flipped = batched_linear_form(model, layers)
    bound = [(name, p, (not t) if name in flipped else t) for name, p, t in bound]
    bound_layers = list(bound)
    present = {i.name for i in model.graph.initializer}
    roles: dict[str, str] = {}  # initializer -> role, for the bound names
    expanded = []
    for name, p, t in bound:
        if name in present:
            expanded.append((name, p, t))
            roles[name] = VALUE
            continue
        for suffix, role in ((BASE, BASE_ROLE), (QDELTA, QDELTA_ROLE), (QSCALE, QSCALE_ROLE)):
            expanded.append((name + suffix, p, t))
            roles[name + suffix] = role
    bound = expanded
    roles.update({name: VALUE for name, _, _ in scalar_bound})
    names = {name for name, _, _ in bound + scalar_bound}
    for required in (LOC, SCALE):
        if required not in names:
            raise ConfigError(f"exported graph lost the {required!r} initializer")
    normalise_raw(model, names)
    serialized = model.SerializeToString()
    offsets = locate(serialized, model, names)

    shapes = {name: tuple(int(d) for d in v.shape) for name, v in values.items()}
    shapes.update({n: (1,) for n in scalars})
    sizes = {i.name: _nbytes(i) for i in model.graph.initializer if i.name in names}
    bindings = tuple(
        sorted(
            (
                Binding(
                    initializer=name,
                    param=param,
                    transpose=transposed,
                    shape=shapes[param],
                    offset=offsets[name],
                    nbytes=sizes[name],
                    role=roles[name],
                )
                for name, param, transposed in bound + scalar_bound
            ),
            key=lambda b: b.offset,
        )
    )
    missing = set(values) - {b.param for b in bindings}
    if missing:  # pragma: no cover - bind raises first
        raise ConfigError(f"parameters without initializer: {sorted(missing)}")

    for b in bindings:
        expected = 4 * int(np.prod(b.shape)) if b.role in (VALUE, BASE_ROLE) else None
        if expected is not None and b.nbytes != expected:
            raise ConfigError(f"initializer {b.initializer!r} does not hold {b.param!r}")
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
        floor_fraction=floor_fraction,
        bindings=bindings,
        param_shapes={n: s for n, s in shapes.items() if n not in scalars},
        weights=weights,
        growth=None if growth is None else tuple(float(g) for g in growth),
        signed_inputs=frozenset(p for name, p, _ in bound_layers if name in signed_weights),
    )
    if verify:
        _self_check(template, core=sentinel_core, rng=rng)
    return template


def _nbytes(init: Any) -> int:
    from onnx import numpy_helper

    return int(numpy_helper.to_array(init).nbytes)


def _self_check(template: OnnxTemplate, *, core: nn.Module, rng: np.random.Generator) -> None:
    """Render fresh random weights and compare onnxruntime with torch (fails loudly)."""
    from mamlctl.maml.onnx_parity import check_parity, template_reference

    # Weights of about 1/sqrt(fan-in), so outputs are O(1); a missed or mis-transposed weight
    # gives O(1) errors, far above the float32 noise this tolerance (1e-4) allows.
    params = {
        name: (rng.normal(0.0, 1.0, size=shape) / np.sqrt(max(1, int(np.prod(shape[1:]))))).astype(
            np.float32
        )
        for name, shape in template.param_shapes.items()
    }
    loc, scale, rscale = 3.0, 2.5, 0.7
    if template.quantized:
        # deltas of a tenth of the weights, as adaptation gives
        template = template.with_base(params)
        params = {n: v * np.float32(1.1) for n, v in params.items()}
    blob = template.render(params, loc=loc, scale=scale, residual_scale=rscale, metadata={})
    reference = template_reference(
        template, core, params, loc=loc, scale=scale, residual_scale=rscale
    )
    stats = check_parity(
        blob, reference, loc=loc, scale=scale, window=template.window, n=64, tolerance=1e-4
    )
    if not stats.passed:
        raise ConfigError(
            "the exported template does not reproduce the torch model after a weight swap "
            f"(max error {stats.max_rel_error:.3g} of scale); the weight mapping is wrong"
        )
