"""One ``Gather`` for a bank graph's small per-series numbers instead of one per bank.

A bank graph (:mod:`mamlctl.serving.bank`) gathers each bank's rows with its own ``Gather``:
for the int8-delta MLP of ``adapt``'s default that is 12 Gathers in a 54-node graph, nine of
them for 2-D float banks of a few numbers per series (``loc``, ``scale``, the biases, the
quantization scales, ``residual_scale``). onnxruntime's cost per node, not the arithmetic,
dominates a single-row call on the small networks mamlctl serves (about 1.5 us a node on this
project's 2-core box against 14 us for a whole one-node graph; ``benchmarks/RESULTS.md``,
"Where the scoring server's CPU goes").

:func:`pack_row_gathers` concatenates every 2-D float32 bank that is only gathered by ``row``
into one ``[N, sum k]`` bank, gathered once and cut back into the original ``[B, k]`` values
by one ``Split``: nine nodes become two. Gather and Split only move numbers, so every value the
rest of the graph sees is the same, bit for bit, and so are the answers (the serving tests
compare them with each file's own output).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from mamlctl.serving.bank_rewrite import ROW

PACKED = "bank.packed.f32"
_SPLIT_SIZES = "bank.packed.sizes"


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 0


def pack_row_gathers(
    model: onnx.ModelProto, banks: dict[str, npt.NDArray[Any]]
) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[Any]]]:
    """``(model, banks)`` with the 2-D float32 banks gathered by ``row`` packed into one (see
    the module docstring); unchanged when fewer than two such banks exist."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # the caller's model is left as it is
    graph = out.graph
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name in banks:
                uses.setdefault(name, []).append(node)
    packable = [
        name
        for name, nodes in uses.items()
        if banks[name].dtype == np.float32
        and banks[name].ndim == 2
        and all(
            n.op_type == "Gather" and list(n.input) == [name, ROW] and _axis(n) == 0 for n in nodes
        )
    ]
    if len(packable) < 2:
        return model, banks
    sizes = [int(banks[name].shape[1]) for name in packable]
    packed = np.ascontiguousarray(np.concatenate([banks[name] for name in packable], axis=1))
    gathered = f"{PACKED}.rows"
    outputs = [f"{PACKED}.part.{i}" for i in range(len(packable))]
    part_of = dict(zip(packable, outputs, strict=True))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    head = [helper.make_node("Gather", [PACKED, ROW], [gathered], axis=0, name="packed_gather")]
    extra_inits: list[TensorProto] = []
    if opset >= 13:
        extra_inits.append(numpy_helper.from_array(np.array(sizes, np.int64), _SPLIT_SIZES))
        head.append(
            helper.make_node("Split", [gathered, _SPLIT_SIZES], outputs, axis=1, name="packed")
        )
    else:
        head.append(helper.make_node("Split", [gathered], outputs, axis=1, split=sizes))
    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input and node.input[0] in part_of:
            renamed[node.output[0]] = part_of[node.input[0]]
            continue
        kept = onnx.NodeProto()
        kept.CopyFrom(node)
        nodes.append(kept)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    g = graph
    del g.node[:]
    g.node.extend([*head, *nodes])
    for vo in g.output:  # a graph output that was a Gather's value keeps its name
        if vo.name in renamed:
            g.node.append(helper.make_node("Identity", [renamed[vo.name]], [vo.name]))
    kept_inputs = [vi for vi in g.input if vi.name not in part_of]
    del g.input[:]
    g.input.extend(kept_inputs)
    g.input.append(helper.make_tensor_value_info(PACKED, TensorProto.FLOAT, [None, sum(sizes)]))
    g.initializer.extend(extra_inits)
    rest = {name: arr for name, arr in banks.items() if name not in part_of}
    rest[PACKED] = packed
    return out, rest
