"""Graph surgery behind :mod:`mamlctl.maml.onnx_template`: quiet export, sentinel weights, and
finding each per-series value's initializer and byte range in the exported graph.

See steps 1-2 of :mod:`mamlctl.maml.onnx_template`'s docstring.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mamlctl.errors import ConfigError

if TYPE_CHECKING:
    import onnx
    from torch import nn

_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
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


def randomise(module: nn.Module, rng: np.random.Generator) -> None:
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-1.0, 1.0, size=tuple(p.shape)).astype("f4")))


def strip(model: onnx.ModelProto) -> None:
    """Remove what the exporter adds for debugging: stack traces (local paths), value_info,
    doc strings, model-level metadata. The graph itself is untouched."""
    model.doc_string = ""
    del model.metadata_props[:]
    model.graph.doc_string = ""
    del model.graph.value_info[:]
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]


def bind(
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


def normalise_raw(model: onnx.ModelProto, names: set[str]) -> None:
    """Store the bound initializers as little-endian ``raw_data`` (the exporter may use
    ``float_data``); patching works on raw bytes."""
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.name in names and not init.raw_data:
            arr = numpy_helper.to_array(init).astype("<f4")
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))


def locate(serialized: bytes, model: onnx.ModelProto, names: set[str]) -> dict[str, int]:
    offsets: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.name not in names:
            continue
        raw = init.raw_data
        first = serialized.find(raw)
        if first < 0 or serialized.find(raw, first + 1) >= 0:
            raise NotUnique(init.name)
        offsets[init.name] = first
    return offsets


class NotUnique(Exception):
    """A sentinel's bytes occur more than once in the serialized graph."""


def _linear_layers(
    model: onnx.ModelProto, weights: Collection[str]
) -> Iterator[
    tuple[onnx.NodeProto, str, npt.NDArray[np.float32], bool, str | None] | onnx.NodeProto
]:
    """Walk the graph's nodes: each ``Gemm`` whose weight initializer is in ``weights`` (used
    once, no ``transA``, ``alpha``/``beta`` 1, a matrix) comes as ``(node, weight, stored
    [out, in] float32, as_stored, bias)``, every other node as itself. ``as_stored``: the
    initializer already holds ``[out, in]`` (``transB``)."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else ""
        if (
            weight not in weights
            or weight not in inits
            or uses.get(weight) != 1
            or attrs.get("transA", 0)
            or float(attrs.get("alpha", 1.0)) != 1.0
            or float(attrs.get("beta", 1.0)) != 1.0
        ):
            yield node
            continue
        array = numpy_helper.to_array(inits[weight])
        if array.ndim != 2:
            yield node
            continue
        as_stored = bool(attrs.get("transB", 0))
        stored = np.ascontiguousarray(array if as_stored else array.T, dtype="<f4")
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        yield node, weight, stored, as_stored, bias


_AXES = "mamlctl_batched_linear_axes"


def _replace_graph(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    drop: Collection[str],
    add: list[onnx.TensorProto],
) -> None:
    """The graph's nodes become ``nodes``; initializers named in ``drop`` go, ``add`` join."""
    keep = [init for init in model.graph.initializer if init.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*keep, *add])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def batched_linear_form(model: onnx.ModelProto, weights: Collection[str]) -> set[str]:
    """Rewrite each linear layer whose weight initializer is in ``weights`` from
    ``Gemm(x, W, b)`` to ``Unsqueeze(x, 2) -> MatMul(W, .) -> Squeeze(2) -> Add(b)``, with the
    ``[out, in]`` weight stored as ``[1, out, in]``; returns the names of the weights whose
    stored layout was transposed by the rewrite (a Gemm without ``transB``).

    Why: the scoring server runs the rows of many series through one batched
    ``MatMul(W [B, out, in], x [B, in, 1])``. onnxruntime computes that with the same kernel as
    this form's ``[1, out, in] @ [R, in, 1]``, so a served forecast is bit-identical to what the
    file gives for the same window (and a file's rows do not depend on how many windows share a
    call), whereas a ``Gemm`` sums in another order than the batched kernel and differs in the
    last bits. Only per-series weights take this form: a weight shared by every series stays a
    ``Gemm``, which the server runs as it is. A ``Gemm`` with ``transA``, ``alpha``/``beta``
    other than 1, or a weight used twice is left as it is.
    """
    from onnx import helper, numpy_helper

    flipped: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    new: list[onnx.TensorProto] = []
    for item in _linear_layers(model, weights):
        if not isinstance(item, tuple):
            nodes.append(item)
            continue
        node, weight, stored, as_stored, bias = item
        new.append(numpy_helper.from_array(stored[None], weight))
        if not as_stored:
            flipped.add(weight)
        out = node.output[0]
        product = f"{out}.batched_linear" if bias else out
        nodes += [
            helper.make_node("Unsqueeze", [node.input[0], _AXES], [f"{out}.x3"]),
            helper.make_node("MatMul", [weight, f"{out}.x3"], [f"{out}.y3"]),
            helper.make_node("Squeeze", [f"{out}.y3", _AXES], [product]),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out]))
    if new:
        axes = numpy_helper.from_array(np.array([2], dtype="<i8"), _AXES)
        _replace_graph(model, nodes, {t.name for t in new}, [*new, axes])
    return flipped


#: Suffixes of the three initializers that replace a quantized layer's weight ``W``.
BASE, QDELTA, QSCALE = ".base", ".qdelta", ".qscale"
#: Activation levels of the delta term: 7 bits, so that onnxruntime's u8 x s8 kernels cannot
#: saturate on any x86 (two products of 127 x 127 fit an int16); a signed input uses 63 steps
#: each side of a zero point of 64, a non-negative one (a ReLU's output) 127 steps.
SIGNED_LEVELS, UNSIGNED_LEVELS, SIGNED_ZERO = 63, 127, 64


def quantized_linear_form(
    model: onnx.ModelProto, weights: Collection[str], rng: np.random.Generator
) -> tuple[set[str], set[str]]:
    """Like :func:`batched_linear_form`, but each per-series weight ``W [out, in]`` is stored as
    the initializer's weight plus an int8 delta with one float32 scale per output row
    (``W = W.base + qscale[:, None] * qdelta``), and the layer computes::

        y = Gemm(x, W.base, b) + qscale * dequant(MatMulInteger(quant(x), qdelta^T))

    where ``quant`` maps each row of ``x`` to 7-bit integers with a per-row scale
    ``s = max|x_row| / levels`` (``QuantizeLinear`` per axis 0) and ``dequant`` multiplies the
    exact int32 sums back by ``s`` (``DequantizeLinear``). The base term is exact float32; only
    the small delta term is computed in integers.

    Why: a series then carries 1 byte per weight instead of 4 (the scoring server holds 10,000
    series in a third of the memory), and the server's batched ``MatMulInteger`` over gathered
    int8 rows is faster than gathering float32 rows. Served answers stay bit-identical to the
    file's: integer sums do not depend on the kernel or the batch, the base is a ``Gemm``
    shared by every series (rows independent of the batch), and the rest is element-wise.

    ``W.base`` ``[out, in]`` float32, ``W.qdelta`` ``[in, out]`` int8 and ``W.qscale`` ``[out]``
    float32 replace ``W`` (random sentinels from ``rng``; the template binds them). Returns
    ``(flipped, signed)``: the weights whose stored layout is transposed against the original
    initializer, and those whose layer input may be negative (not a ``Relu``'s output).
    """
    from onnx import TensorProto, helper, numpy_helper

    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    flipped: set[str] = set()
    signed: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    new: list[onnx.TensorProto] = []
    drop: set[str] = set()
    consts = {
        "mamlctl_q_axes": np.array([1], dtype="<i8"),
        "mamlctl_q_inv_signed": np.array(1.0 / SIGNED_LEVELS, dtype="<f4"),
        "mamlctl_q_inv_unsigned": np.array(1.0 / UNSIGNED_LEVELS, dtype="<f4"),
        "mamlctl_q_zero": np.array(SIGNED_ZERO, dtype=np.uint8),
    }
    for item in _linear_layers(model, weights):
        if not isinstance(item, tuple):
            nodes.append(item)
            continue
        node, weight, stored, as_stored, bias = item
        rows, cols = stored.shape
        drop.add(weight)
        if not as_stored:
            flipped.add(weight)
        new += [
            numpy_helper.from_array(
                rng.uniform(-1.0, 1.0, size=(rows, cols)).astype("<f4"), weight + BASE
            ),
            numpy_helper.from_array(
                rng.integers(-127, 128, size=(cols, rows)).astype("i1"), weight + QDELTA
            ),
            numpy_helper.from_array(
                rng.uniform(0.5, 2.0, size=(rows,)).astype("<f4"), weight + QSCALE
            ),
        ]
        x, out = node.input[0], node.output[0]
        t = f"{out}.q"
        base_inputs = [x, weight + BASE, *([bias] if bias else [])]
        nodes.append(helper.make_node("Gemm", base_inputs, [f"{t}.base"], transB=1))
        if producers.get(x) == "Relu":
            nodes += [
                helper.make_node("ReduceMax", [x, "mamlctl_q_axes"], [f"{t}.max"], keepdims=0),
                helper.make_node("Mul", [f"{t}.max", "mamlctl_q_inv_unsigned"], [f"{t}.s"]),
                helper.make_node("QuantizeLinear", [x, f"{t}.s"], [f"{t}.x"], axis=0),
                helper.make_node("MatMulInteger", [f"{t}.x", weight + QDELTA], [f"{t}.acc"]),
            ]
        else:
            signed.add(weight)
            zero = helper.make_tensor("zero", TensorProto.UINT8, [1], [SIGNED_ZERO])
            nodes += [
                helper.make_node("Abs", [x], [f"{t}.abs"]),
                helper.make_node(
                    "ReduceMax", [f"{t}.abs", "mamlctl_q_axes"], [f"{t}.max"], keepdims=0
                ),
                helper.make_node("Mul", [f"{t}.max", "mamlctl_q_inv_signed"], [f"{t}.s"]),
                helper.make_node("Shape", [f"{t}.s"], [f"{t}.rows"]),
                helper.make_node("ConstantOfShape", [f"{t}.rows"], [f"{t}.zero"], value=zero),
                helper.make_node("QuantizeLinear", [x, f"{t}.s", f"{t}.zero"], [f"{t}.x"], axis=0),
                helper.make_node(
                    "MatMulInteger", [f"{t}.x", weight + QDELTA, "mamlctl_q_zero"], [f"{t}.acc"]
                ),
            ]
        nodes += [
            helper.make_node("DequantizeLinear", [f"{t}.acc", f"{t}.s"], [f"{t}.d"], axis=0),
            helper.make_node("Mul", [f"{t}.d", weight + QSCALE], [f"{t}.ds"]),
            helper.make_node("Add", [f"{t}.base", f"{t}.ds"], [out]),
        ]
    if new:
        new += [numpy_helper.from_array(v, k) for k, v in consts.items()]
        _replace_graph(model, nodes, drop, new)
    return flipped, signed


def quantize_rows(
    delta: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric int8 per row: ``delta [..., out, in]`` -> ``q`` int8 (same shape) and
    ``scale [..., out]`` float32 with ``|delta - scale * q| <= scale / 2`` element-wise and
    ``scale = max |delta row| / 127``. A row whose largest delta is below float32's smallest
    normal number (or zero) is stored as zero (q 0, scale 0)."""
    delta = np.asarray(delta, dtype=np.float32)
    peak = np.max(np.abs(delta), axis=-1)
    peak = np.where(peak < np.finfo(np.float32).tiny, np.float32(0), peak)
    scale = (peak / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(delta / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_rows(
    base: npt.NDArray[np.float32], q: npt.NDArray[np.int8], scale: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``base + scale[..., None] * q`` in float32: the weight a quantized layer computes."""
    return (base + scale[..., None] * q.astype(np.float32)).astype(np.float32)
