"""The graph rewrite behind :mod:`mamlctl.serving.bank`: a per-series graph -> a bank graph.

Walks the file's nodes once, classifying every value as *batched* (depends on the window: axis
0 is the request batch), *dynamic* (a shape computed from the window), *bank* (depends only on
per-series numbers) or *shared* (the same in every file), and emits:

* shared and dynamic nodes unchanged;
* weight-only nodes folded over the whole bank in numpy (Transpose, Reshape, elementwise, ...);
* batched nodes that read a banked number rewritten with ``Gather(bank, row)`` and batched
  operators (see the table in :mod:`mamlctl.serving.bank`).

Anything else raises :class:`BankUnsupported`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

#: Names of the bank graph's request inputs and the prefix of its bank inputs.
WINDOW = "window"
ROW = "row"
BANK_PREFIX = "bank."

_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "PRelu"})
_FOLD_UNARY: dict[str, Any] = {
    "Identity": lambda a: a,
    "Neg": np.negative,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Abs": np.abs,
    "Reciprocal": np.reciprocal,
    "Relu": lambda a: np.maximum(a, np.zeros((), a.dtype)),
    "Tanh": np.tanh,
}
_FOLD_BINARY: dict[str, Any] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
}
_SHAPE_OPS = frozenset({"Shape", "Size"})


class BankUnsupported(Exception):
    """This graph cannot be turned into a bank graph; serve its series one session each."""


def _value_ranks(model: onnx.ModelProto, arrays: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """Static shape (tuple of int | None per dim) of every value shape inference can type."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
    except Exception as err:  # onnx raises several unrelated types here
        raise BankUnsupported(f"shape inference failed: {err}") from None
    shapes: dict[str, Any] = {}
    graph = inferred.graph
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            )
    for name, arr in arrays.items():
        shapes[name] = tuple(arr.shape)
    return shapes


def _pad_rank(arr: npt.NDArray[Any], rank: int) -> npt.NDArray[Any]:
    """Per-row view ``[N, *s]`` broadcast-aligned to a value of ``rank`` whose axis 0 is batch."""
    per_row = arr.shape[1:]
    while len(per_row) > rank - 1:
        if per_row[0] != 1:
            raise BankUnsupported("a banked number broadcasts along the batch axis")
        per_row = per_row[1:]
    shape = (arr.shape[0], *([1] * (rank - 1 - len(per_row))), *per_row)
    return np.ascontiguousarray(arr.reshape(shape))


class Rewriter:
    def __init__(
        self,
        template: onnx.ModelProto,
        banks: dict[str, npt.NDArray[Any]],
        shared: dict[str, npt.NDArray[Any]],
    ) -> None:
        self.template = template
        self.banks = dict(banks)  # value name -> [N, ...] (grows when folding)
        self.shared = dict(shared)  # value name -> array
        self.shapes = _value_ranks(template, {**shared, **{k: v[0] for k, v in banks.items()}})
        self.nodes: list[onnx.NodeProto] = []
        self.feeds: dict[str, npt.NDArray[Any]] = {}  # bank input name -> padded bank
        self.gathered: dict[tuple[str, int], str] = {}
        self.batched: set[str] = set()
        self.dynamic: set[str] = set()  # shape-like values derived from the window
        self.counter = 0

    # -- helpers
    def _fresh(self, stem: str) -> str:
        self.counter += 1
        return f"bank_rw.{stem}.{self.counter}"

    def _rank(self, name: str) -> int:
        shape = self.shapes.get(name)
        if shape is None:
            raise BankUnsupported(f"rank of value {name!r} is unknown")
        return len(shape)

    def _gather(self, name: str, rank: int, arr: npt.NDArray[Any] | None = None) -> str:
        """Name of ``Gather(bank, row)`` for bank value ``name`` aligned to ``rank``."""
        key = (name if arr is None else self._fresh(name), rank)
        if key in self.gathered:
            return self.gathered[key]
        padded = _pad_rank(self.banks[name] if arr is None else arr, rank)
        feed = f"{BANK_PREFIX}{key[0]}.r{rank}"
        self.feeds[feed] = padded
        out = self._fresh(f"g.{name}")
        self.nodes.append(helper.make_node("Gather", [feed, ROW], [out], axis=0))
        self.gathered[key] = out
        return out

    def _const(self, stem: str, arr: npt.NDArray[Any]) -> str:
        name = self._fresh(stem)
        self.shared[name] = arr
        return name

    # -- classification
    def run(self) -> None:
        graph = self.template.graph
        self.batched.add(WINDOW)
        for node in graph.node:
            kinds = [self._kind(i) for i in node.input if i]
            if node.op_type in _SHAPE_OPS and "batched" in kinds:
                self.nodes.append(node)
                self.dynamic.update(node.output)
            elif "batched" in kinds:
                self._batched_node(node)
                self.batched.update(node.output)
            elif "dynamic" in kinds:
                if "bank" in kinds and node.op_type != "Expand":
                    raise BankUnsupported(f"{node.op_type} mixes a banked number and a shape")
                if node.op_type in ("Expand", "ConstantOfShape"):
                    self._batched_node(node)
                    self.batched.update(node.output)
                else:
                    self.nodes.append(node)
                    self.dynamic.update(node.output)
            elif "bank" in kinds:
                self._fold(node)
            else:
                self.nodes.append(node)

    def _kind(self, name: str) -> str:
        if name in self.batched:
            return "batched"
        if name in self.dynamic:
            return "dynamic"
        if name in self.banks:
            return "bank"
        return "shared"

    # -- weight-only nodes: fold over the bank in numpy
    def _fold(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        ins = list(node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n = next(self.banks[i].shape[0] for i in ins if i in self.banks)

        def per_row(name: str) -> npt.NDArray[Any]:
            if name in self.banks:
                return self.banks[name]
            return self.shared[name][None, ...]

        if op in _FOLD_UNARY and len(ins) == 1:
            out = _FOLD_UNARY[op](per_row(ins[0]))
        elif op in _FOLD_BINARY and len(ins) == 2:
            a, b = per_row(ins[0]), per_row(ins[1])
            rank = max(a.ndim, b.ndim)
            out = _FOLD_BINARY[op](_pad_rank(a, rank), _pad_rank(b, rank))
        elif op == "Transpose":
            a = per_row(ins[0])
            perm = attrs.get("perm", list(reversed(range(a.ndim - 1))))
            out = np.transpose(a, (0, *(p + 1 for p in perm)))
        elif op == "Cast":
            out = per_row(ins[0]).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        elif op in ("Reshape", "Unsqueeze", "Squeeze", "Flatten") and all(
            i in self.banks or i in self.shared for i in ins
        ):
            # shape[1:] of a representative row tells the per-row result shape
            target = self.shapes.get(node.output[0])
            if target is None or None in target:
                raise BankUnsupported(f"{op} of a banked number has an unknown shape")
            out = per_row(ins[0]).reshape((n, *target))
        else:
            raise BankUnsupported(f"cannot fold {op} over banked numbers")
        out = np.ascontiguousarray(out)
        if out.shape[0] != n:
            raise BankUnsupported(f"folding {op} lost the series axis")
        self.banks[node.output[0]] = out

    # -- nodes on batched data with banked numbers
    def _batched_node(self, node: onnx.NodeProto) -> None:
        banked = [i for i in node.input if i in self.banks]
        if not banked:
            self.nodes.append(node)
            return
        op = node.op_type
        if op in _ELEMENTWISE or op == "Expand":
            rank = self._rank(node.output[0])
            inputs = [
                self._gather(i, rank) if i in self.banks and (op != "Expand" or k == 0) else i
                for k, i in enumerate(node.input)
            ]
            if op == "Expand" and node.input[1] in self.banks:
                raise BankUnsupported("Expand to a banked shape")
            self._emit_like(node, inputs)
        elif op == "MatMul":
            self._matmul(node)
        elif op == "MatMulInteger":
            self._matmul_integer(node)
        elif op == "Gemm":
            self._gemm(node)
        elif op == "Conv":
            self._conv(node)
        else:
            raise BankUnsupported(f"{op} takes a banked number as input")

    def _emit_like(self, node: onnx.NodeProto, inputs: Sequence[str]) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(inputs)
        self.nodes.append(new)

    def _batched_matmul(
        self,
        x: str,
        w_bank: npt.NDArray[Any],
        out: str,
        stem: str,
        *,
        op: str = "MatMul",
        zero_points: Sequence[str] = (),
    ) -> None:
        """``out[b] = x[b] @ w_bank[row[b]]`` for ``x`` of rank 2 (``[B, in]``) or 3; ``op``
        ``MatMulInteger`` with its (shared) ``zero_points`` computes the same in integers."""
        rank = self._rank(x)
        if rank < 2:
            raise BankUnsupported(f"{op} of a rank-1 value with a banked matrix")
        w = self._gather(stem, max(rank, 3), w_bank)
        if rank == 2:
            axes = self._const("axes", np.array([1], dtype=np.int64))
            x3 = self._fresh("x3")
            y3 = self._fresh("y3")
            self.nodes.append(helper.make_node("Unsqueeze", [x, axes], [x3]))
            self.nodes.append(helper.make_node(op, [x3, w, *zero_points], [y3]))
            self.nodes.append(helper.make_node("Squeeze", [y3, axes], [out]))
        else:
            self.nodes.append(helper.make_node(op, [x, w, *zero_points], [out]))

    def _batched_matvec(self, x: str, w_bank: npt.NDArray[Any], out: str, stem: str) -> None:
        """``out[b] = w_bank[row[b]] @ x[b]`` for ``x [B, in]`` and a bank ``[N, out, in]``:
        keeps the file's ``[out, in]`` layout (a Gemm with transB), so no transposed copy."""
        if self._rank(x) != 2:
            raise BankUnsupported("Gemm with transB on a value that is not a matrix")
        w = self._gather(stem, 3, w_bank)
        axes = self._const("axes", np.array([2], dtype=np.int64))
        x3 = self._fresh("xcol")
        y3 = self._fresh("ycol")
        self.nodes.append(helper.make_node("Unsqueeze", [x, axes], [x3]))
        self.nodes.append(helper.make_node("MatMul", [w, x3], [y3]))
        self.nodes.append(helper.make_node("Squeeze", [y3, axes], [out]))

    def _matmul(self, node: onnx.NodeProto) -> None:
        a, b = node.input
        if a in self.banks and b not in self.banks:
            self._batched_linear(node)
            return
        if a in self.banks or b not in self.banks:
            raise BankUnsupported("MatMul with a banked left operand")
        w = self.banks[b]
        if w.ndim != 3:
            raise BankUnsupported("MatMul with a banked operand that is not a matrix")
        self._batched_matmul(a, w, node.output[0], b)

    def _matmul_integer(self, node: onnx.NodeProto) -> None:
        """``MatMulInteger(x [B, in], Q)`` with a banked int8 ``Q [in, out]`` (the export's
        int8 deltas): the batched MatMul with ``Q[row]``, zero points passed through. Integer
        sums are exact, so every row equals the file's."""
        a, b, *zero_points = node.input
        if a in self.banks or b not in self.banks or any(z in self.banks for z in zero_points):
            raise BankUnsupported("MatMulInteger with a banked left operand or zero point")
        w = self.banks[b]
        if w.ndim != 3:
            raise BankUnsupported("MatMulInteger of a banked operand that is not a matrix")
        self._batched_matmul(a, w, node.output[0], b, op="MatMulInteger", zero_points=zero_points)

    def _batched_linear(self, node: onnx.NodeProto) -> None:
        """``W [1, out, in] @ x [R, in, 1]``, the export's batched linear form
        (:func:`mamlctl.maml.onnx_binding.batched_linear_form`): ``Gather`` gives ``W [B, out,
        in]`` and the MatMul is the file's own, so each row comes out with the file's bits."""
        w_name, x = node.input
        w = self.banks[w_name]
        if w.ndim != 4 or w.shape[1] != 1 or self._rank(x) != 3:
            raise BankUnsupported("MatMul with a banked left operand")
        before = len(self.nodes)
        gathered = self._gather(w_name, 3)
        if len(self.nodes) == before + 1:
            # Put the Gather before the node that made ``x`` (the file's Unsqueeze): measured
            # on a 256-row batch, onnxruntime runs the graph in 550 us in that order and 880 us
            # with the Gather between the Unsqueeze and the MatMul (same nodes, same numbers).
            gather = self.nodes.pop()
            at = next(
                (i for i in range(before - 1, -1, -1) if x in self.nodes[i].output),
                before,
            )
            self.nodes.insert(at, gather)
        self.nodes.append(helper.make_node("MatMul", [gathered, x], list(node.output)))

    def _gemm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            raise BankUnsupported("Gemm with transA")
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if a in self.banks or self._rank(a) != 2:
            raise BankUnsupported("Gemm with a banked or non-matrix left operand")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        out = node.output[0]
        prod = self._fresh("gemm") if c is not None else out
        if b in self.banks:
            w = self.banks[b]
            if alpha != 1.0:
                w = w * np.asarray(alpha, dtype=w.dtype)
            if attrs.get("transB", 0):
                self._batched_matvec(a, w, prod, b)
            else:
                self._batched_matmul(a, w, prod, b)
        elif c is not None and c in self.banks and beta == 1.0:
            # a shared weight with a per-series bias (the int8-delta export's base term): the
            # gathered bias [B, out] is the Gemm's own C, as [out] is in the file, so each row
            # is computed exactly as the file computes it
            bias = self.banks[c]
            self.nodes.append(
                helper.make_node("Gemm", [a, b, self._gather(c, 2, bias)], [out], **attrs)
            )
            return
        else:
            new = helper.make_node("Gemm", [a, b], [prod], **attrs)
            self.nodes.append(new)
        if c is None:
            return
        if c in self.banks:
            bias = self.banks[c]
            if beta != 1.0:
                bias = bias * np.asarray(beta, dtype=bias.dtype)
            c_in = self._gather(c, 2, bias)
        else:
            c_in = c
            if beta != 1.0:
                c_in = self._const("beta_c", (self.shared[c] * beta).astype(self.shared[c].dtype))
        self.nodes.append(helper.make_node("Add", [prod, c_in], [out]))

    def _conv(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, w_name = node.input[0], node.input[1]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if w_name not in self.banks or x in self.banks:
            raise BankUnsupported("Conv with a banked input that is not the weight")
        w = self.banks[w_name]  # [N, Co, Ci, k]
        if w.ndim != 4 or attrs.get("group", 1) != 1:
            raise BankUnsupported("only 1-D, ungrouped Conv banks")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise BankUnsupported("Conv with auto_pad")
        shape = self.shapes.get(x)
        if shape is None or len(shape) != 3 or shape[2] is None:
            raise BankUnsupported("Conv input length is not static")
        _, co, ci, k = w.shape
        t = int(shape[2])
        (dil,) = attrs.get("dilations", [1])
        (stride,) = attrs.get("strides", [1])
        pad_l, pad_r = attrs.get("pads", [0, 0])
        t_pad = t + pad_l + pad_r
        t_out = (t_pad - dil * (k - 1) - 1) // stride + 1
        src = x
        if pad_l or pad_r:
            pads = self._const("pads", np.array([0, 0, pad_l, 0, 0, pad_r], dtype=np.int64))
            src = self._fresh("xpad")
            self.nodes.append(helper.make_node("Pad", [x, pads], [src]))
        taps = (np.arange(k)[:, None] * dil + np.arange(t_out)[None, :] * stride).astype(np.int64)
        cols4 = self._fresh("cols4")  # [B, Ci, k, T_out]
        self.nodes.append(
            helper.make_node("Gather", [src, self._const("taps", taps)], [cols4], axis=2)
        )
        cols = self._fresh("cols")  # [B, Ci*k, T_out]
        shape_c = self._const("shape", np.array([0, ci * k, t_out], dtype=np.int64))
        self.nodes.append(helper.make_node("Reshape", [cols4, shape_c], [cols]))
        wg = self._gather(w_name, 3, np.ascontiguousarray(w.reshape(w.shape[0], co, ci * k)))
        out = node.output[0]
        prod = self._fresh("conv") if bias_name else out
        self.nodes.append(helper.make_node("MatMul", [wg, cols], [prod]))
        if bias_name:
            if bias_name in self.banks:
                bias = self.banks[bias_name][:, :, None]  # [N, Co, 1]
                b_in = self._gather(bias_name, 3, bias)
            else:
                b_in = self._const("bias", self.shared[bias_name].reshape(co, 1))
            self.nodes.append(helper.make_node("Add", [prod, b_in], [out]))
