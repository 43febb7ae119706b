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

    inits = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    flipped: set[str] = set()
    changed = False
    axes_name = "mamlctl_batched_linear_axes"
    nodes: list[onnx.NodeProto] = []
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
            nodes.append(node)
            continue
        array = numpy_helper.to_array(inits[weight])
        if array.ndim != 2:
            nodes.append(node)
            continue
        as_stored = bool(attrs.get("transB", 0))  # [out, in] already
        stored = np.ascontiguousarray((array if as_stored else array.T)[None], dtype="<f4")
        inits[weight].CopyFrom(numpy_helper.from_array(stored, weight))
        if not as_stored:
            flipped.add(weight)
        changed = True
        out = node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{out}.batched_linear" if bias else out
        nodes += [
            helper.make_node("Unsqueeze", [node.input[0], axes_name], [f"{out}.x3"]),
            helper.make_node("MatMul", [weight, f"{out}.x3"], [f"{out}.y3"]),
            helper.make_node("Squeeze", [f"{out}.y3", axes_name], [product]),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out]))
    if changed:
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([2], dtype="<i8"), axes_name)
        )
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return flipped
