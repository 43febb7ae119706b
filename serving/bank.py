"""Weight banks: one onnxruntime graph serving every series of one model architecture.

A per-series ONNX file (the contract of :mod:`mamlctl.maml.export`) is a graph ``window [B, L]
-> forecast [B, H], sigma [B, H]`` whose per-series numbers (weights, ``loc``, ``scale``,
``residual_scale``) are initializers. Thousands of such files share one graph and differ only
in those numbers, so instead of one session per series the server builds ONE "bank" graph per
structure:

* every float initializer whose values differ between the group's files is stacked into a bank
  ``[N, ...]`` (row ``i`` = series ``i``) that is fed to the session as an input (onnxruntime
  wraps a contiguous numpy array without copying it, so a 400 MB bank costs nothing per run);
* the bank graph takes ``window [B, L]`` and ``row [B] int64``, ``Gather``-s each request row's
  numbers and computes the original graph with batched operators:

  ============================  ==========================================================
  original op (banked input)    bank graph
  ============================  ==========================================================
  elementwise (Add, Mul, ...)   Gather -> ``[B, 1.., *s]`` (pre-reshaped bank), broadcast
  MatMul ``x @ W``              ``Unsqueeze(x) [B,1,in] @ W[B,in,out]`` -> Squeeze
  Gemm ``x @ W^T + b``          transposed bank, batched MatMul, then ``+ b[B, out]``
  Conv1d ``W [Co, Ci, k]``      im2col: one ``Gather`` of the k dilated taps -> ``[B, Ci*k,
                                T]``, batched MatMul with ``W [B, Co, Ci*k]``, ``+ b[B,Co,1]``
  MatMulInteger ``x @ Q``       ``Unsqueeze(x) [B,1,in] @ Q[B,in,out]`` -> Squeeze: the int8
                                deltas of ``adapt --weights int8-delta`` stay 1 byte each
  op on weights only            folded in numpy over the whole bank at build time
  ============================  ==========================================================

The bank graph is derived from the file's own graph (not re-implemented from the model config),
so any architecture made of these operators banks, and the numbers are computed in the same
order as the file computes them: elementwise steps give bit-identical results. Files written by
mamlctl's export hold each per-series linear layer in the *batched linear form*
``W [1, out, in] @ Unsqueeze(x) [R, in, 1] -> Squeeze`` (see
:func:`mamlctl.maml.onnx_binding.batched_linear_form`); the bank runs it as ``W [B, out, in]
@ x [B, in, 1]``, which onnxruntime computes with the same kernel, so a served forecast equals
the file's output for that window bit for bit (tested for every batch size and the batch
session's threads). Other files (a ``Gemm`` with a per-series weight, a Conv) may differ from
the file in the last bits (tests bound it at 1e-6 of the series' scale). A graph
using a banked number in any other way raises :class:`BankUnsupported`; the caller then serves
that group with one session per series (see :mod:`mamlctl.serving.runtime`).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from mamlctl.serving.bank_rewrite import (
    BANK_PREFIX,
    ROW,
    WINDOW,
    BankUnsupported,
    Rewriter,
)
from mamlctl.serving.layout import RAW_DTYPES

__all__ = [
    "BANK_PREFIX",
    "ROW",
    "WINDOW",
    "BankBuilder",
    "BankGraph",
    "BankUnsupported",
    "build_bank",
    "initializer_arrays",
    "normalise_constants",
    "stack_rows",
    "structure_key",
    "template_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class BankGraph:
    """A bank graph and its banks. ``model`` has inputs ``window``, ``row`` and ``bank.*``."""

    model: onnx.ModelProto
    banks: dict[str, npt.NDArray[Any]] = field(repr=False)
    n_rows: int
    window: int
    outputs: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.banks.values())


# ----------------------------------------------------------------------------- file parsing


def normalise_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``Constant`` nodes holding a tensor into initializers (in place; returns model).

    Exporters put some per-series numbers in Constant nodes and others in initializers; after
    this every number lives in an initializer, so the structure key ignores values.
    """
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr["value"].t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return model


def structure_key(model: onnx.ModelProto, *, template_id: str | None = None) -> str:
    """Files with equal keys have the same graph and bank together.

    Default: sha256 of everything but the initializer values. ``template_id`` (the exporter's
    ``mamlctl.template_id`` metadata: the sha256 of its template with every per-series byte
    zeroed, so equal ids mean equal graphs) replaces the graph hash; initializer names, types
    and shapes are still part of the key.
    """
    graph = model.graph
    digest = hashlib.sha256()
    if template_id:
        digest.update(f"template:{template_id}".encode())
        for init in graph.initializer:
            digest.update(f"{init.name}|{init.data_type}|{tuple(init.dims)}".encode())
        return digest.hexdigest()
    for node in graph.node:
        digest.update(node.SerializeToString())
    for vi in (*graph.input, *graph.output):
        digest.update(vi.SerializeToString())
    for init in graph.initializer:
        digest.update(f"{init.name}|{init.data_type}|{tuple(init.dims)}".encode())
    for opset in model.opset_import:
        digest.update(f"{opset.domain}:{opset.version}".encode())
    return digest.hexdigest()


def initializer_arrays(model: onnx.ModelProto) -> dict[str, npt.NDArray[Any]]:
    """Every initializer as a numpy array (copies: the proto may be freed afterwards)."""
    return {
        init.name: np.array(numpy_helper.to_array(init), copy=True)
        for init in model.graph.initializer
    }


class BankBuilder:
    """Stacks the numbers of files sharing one structure, row by row, without a second copy.

    A number stays a single value while every file added so far carries the same bytes for it
    (compared as raw bytes: one ``memcmp``): body layers that head-only adaptation leaves at the
    initializer's values are never stacked. The first file whose bytes differ turns it into an
    array ``[capacity, ...]`` allocated with ``np.empty`` (pages never written are never
    resident, so a generous capacity costs no memory), rows so far filled with the shared
    value; each later file's values are written straight into its row.
    """

    def __init__(self, template: onnx.ModelProto, *, capacity: int) -> None:
        self.template = template
        self.capacity = capacity
        self.n = 0
        self.stacks: dict[str, npt.NDArray[Any]] = {}
        self.first: dict[str, tuple[bytes | None, npt.NDArray[Any]]] = {}
        self.populated: dict[str, int] = {}
        self.buffers: dict[str, mmap.mmap] = {}

    def _populate(self, name: str, row: int) -> None:
        """Fault in the pages of ``name``'s stack up to ``row`` ahead of writing, in 8 MiB
        steps (one ``madvise`` per step instead of one page fault per 4 KiB page: the faults
        of a 500 MB bank cost seconds on a virtual machine)."""
        stack = self.stacks[name]
        end = (row + 1) * stack.strides[0]
        done = self.populated[name]
        if end <= done:
            return
        buf = self.buffers.get(name)
        if buf is not None:
            step = max(_POPULATE_STEP, end - done)
            size = min(done + step, len(buf)) - done
            with contextlib.suppress(OSError, ValueError):  # no MADV_POPULATE_WRITE: faults
                buf.madvise(_MADV_POPULATE_WRITE, done, size)
            self.populated[name] = done + size
        else:
            self.populated[name] = stack.nbytes

    def add(self, model: onnx.ModelProto) -> int:
        """Append ``model``'s initializers as the next row; returns the row index."""
        row = self._next_row()
        for init in model.graph.initializer:
            raw = _raw_bytes(init)  # one access: each access to a bytes field copies it
            self._put(row, init.name, raw, lambda init=init, raw=raw: _fast_array(init, raw))
        self.n += 1
        return row

    def add_raw(
        self, data: bytes, raws: Iterable[tuple[str, int, int, Any, tuple[int, ...]]]
    ) -> int:
        """Append a file's numbers read straight from its bytes: ``raws`` gives each
        initializer's ``(name, start, stop, dtype, shape)`` in ``data`` (see
        :mod:`mamlctl.serving.layout`); returns the row index."""
        row = self._next_row()
        stacks, first_of = self.stacks, self.first
        for name, start, stop, dtype, shape in raws:
            # the two common cases without slicing ``data`` (a slice is a copy: ~400 MB of
            # copies over 10k head-only files): a stacked number is written from a view of the
            # file, a number still equal to the first file's is compared in place
            stack = stacks.get(name)
            if stack is not None:
                self._populate(name, row)
                count = (stop - start) // dtype.itemsize
                stack[row] = np.frombuffer(data, dtype, count, start).reshape(shape)
                continue
            first = first_of.get(name)
            if (
                first is not None
                and first[0] is not None
                and len(first[0]) == stop - start
                and data.startswith(first[0], start)
            ):
                continue

            def value(
                start: int = start, stop: int = stop, dtype: Any = dtype, shape: Any = shape
            ) -> Any:
                count = (stop - start) // dtype.itemsize
                return np.frombuffer(data, dtype, count, start).reshape(shape)

            self._put(row, name, data[start:stop], value)
        self.n += 1
        return row

    def _next_row(self) -> int:
        if self.n >= self.capacity:
            raise BankUnsupported("bank capacity exceeded")
        return self.n

    def _put(self, row: int, name: str, raw: bytes | None, value: Any) -> None:
        """Row ``row`` of number ``name``: its raw bytes (None when not raw) and a callable
        giving its array (called only when needed)."""
        stack = self.stacks.get(name)
        if stack is not None:
            self._populate(name, row)
            stack[row] = value()
            return
        first = self.first.get(name)
        if first is None:
            self.first[name] = (raw, np.array(value(), copy=True))
            return
        if raw is not None and raw == first[0]:
            return
        arr = value()
        if raw is None and np.array_equal(arr, first[1]):
            return
        if arr.shape != first[1].shape or arr.dtype != first[1].dtype:
            raise BankUnsupported(f"number {name!r} changes shape or type between files")
        stack, buf = _reserve((self.capacity, *arr.shape), arr.dtype)
        self.stacks[name] = stack
        if buf is not None:
            self.buffers[name] = buf
        self.populated[name] = 0
        self._populate(name, row)
        stack[:row] = first[1]
        stack[row] = arr

    def build(self) -> BankGraph:
        """The bank graph of the rows added so far (see :func:`build_bank`)."""
        stacked = {name: arr[: self.n] for name, arr in self.stacks.items()}
        for name, (_, value) in self.first.items():
            if name not in stacked:  # equal in every file: a stride-0 view, no copy
                stacked[name] = np.broadcast_to(value, (self.n, *value.shape))
        self.stacks, self.first, self.populated, self.buffers = {}, {}, {}, {}
        return build_bank(self.template, stacked)


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_POPULATE_STEP = 8 << 20


def _reserve(
    shape: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[npt.NDArray[Any], mmap.mmap | None]:
    """An uninitialised array in its own anonymous mapping (pages resident only once written
    or populated; ``np.empty`` as a fallback) and that mapping."""
    size = int(np.prod(shape)) * dtype.itemsize
    if size < _POPULATE_STEP or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype=dtype), None
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=dtype).reshape(shape), buf


def _raw_bytes(init: onnx.TensorProto) -> bytes | None:
    """The raw little-endian bytes of a float32/int64/int8/uint8 initializer stored inline,
    else None."""
    if int(init.data_type) not in RAW_DTYPES or init.HasField("data_location"):
        return None
    raw: bytes = init.raw_data
    return raw or None


def _fast_array(init: onnx.TensorProto, raw: bytes | None = None) -> npt.NDArray[Any]:
    """A read-only view of a raw float32/int64 initializer (``numpy_helper`` otherwise);
    ``raw``: its :func:`_raw_bytes`, when the caller already has them."""
    if raw is None:
        raw = _raw_bytes(init)
    if raw is not None:
        dtype = RAW_DTYPES[int(init.data_type)]
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(init.dims))
    return numpy_helper.to_array(init)


def stack_rows(rows: Sequence[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    """``[{name: value}]`` per file -> ``{name: [N, ...]}`` (tests and small groups)."""
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def _all_rows_equal(arr: npt.NDArray[Any], chunk: int = 512) -> bool:
    """Whether every row equals row 0, in chunks (no full-size temporary; stops early)."""
    first = arr[:1]
    for start in range(1, arr.shape[0], chunk):
        if not np.array_equal(
            arr[start : start + chunk],
            np.broadcast_to(first, (min(chunk, arr.shape[0] - start), *arr.shape[1:])),
        ):
            return False
    return True


def template_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without initializer data (only names, types and shapes survive)."""
    template = onnx.ModelProto()
    template.CopyFrom(model)
    for init in template.graph.initializer:
        init.ClearField("raw_data")
        for name in ("float_data", "double_data", "int32_data", "int64_data"):
            init.ClearField(name)
    return template


def build_bank(template: onnx.ModelProto, stacked: Mapping[str, npt.NDArray[Any]]) -> BankGraph:
    """Bank graph for files sharing ``template``'s structure.

    ``template`` is any one of the files (its initializer data is ignored); ``stacked`` maps
    every initializer name to the files' values stacked in row order ``[N, ...]`` (see
    :class:`BankBuilder`, :func:`stack_rows`). Numbers equal in every file stay constants; the
    others become banks. Raises :class:`BankUnsupported`.
    """
    graph = template.graph
    inputs = [vi.name for vi in graph.input]
    if inputs != [WINDOW]:
        raise BankUnsupported(f"graph inputs are {inputs}, expected [{WINDOW!r}]")
    window_shape = _value_ranks_input(template)
    names = [init.name for init in graph.initializer]
    if not names or set(names) != set(stacked):
        raise BankUnsupported("stacked numbers do not match the template's initializers")
    n_rows = int(next(iter(stacked.values())).shape[0])
    if n_rows == 0:
        raise BankUnsupported("no series to bank")
    banks: dict[str, npt.NDArray[Any]] = {}
    shared: dict[str, npt.NDArray[Any]] = {}
    per_row = _per_row_weights(graph, stacked)
    for name in names:
        arr = stacked[name]
        if name in per_row:  # gathered even when equal everywhere: see _per_row_weights
            banks[name] = np.ascontiguousarray(arr)
        elif (arr.ndim and arr.strides[0] == 0) or _all_rows_equal(arr):
            shared[name] = np.array(arr[0], copy=True)
        elif arr.dtype.kind == "f" or arr.dtype == np.int8:  # int8: quantized weight deltas
            banks[name] = arr
        else:
            raise BankUnsupported(f"non-float initializer {name!r} differs between files")
    rewriter = Rewriter(template, banks, shared)
    rewriter.run()
    outputs = tuple(vi.name for vi in graph.output)
    for out in outputs:
        if out not in rewriter.batched:
            raise BankUnsupported(f"output {out!r} does not depend on the window")
    used = {i for node in rewriter.nodes for i in node.input}
    initializers = [
        numpy_helper.from_array(np.asarray(arr), name)
        for name, arr in rewriter.shared.items()
        if name in used
    ]
    feeds = {k: v for k, v in rewriter.feeds.items() if k in used}
    bank_inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(arr.dtype), [None, *arr.shape[1:]]
        )
        for name, arr in feeds.items()
    ]
    new_graph = helper.make_graph(
        rewriter.nodes,
        f"{graph.name or 'model'}_bank",
        [
            helper.make_tensor_value_info(WINDOW, TensorProto.FLOAT, ["batch", window_shape]),
            helper.make_tensor_value_info(ROW, TensorProto.INT64, ["batch"]),
            *bank_inputs,
        ],
        list(graph.output),
        initializers,
    )
    model = helper.make_model(new_graph, opset_imports=list(template.opset_import))
    model.ir_version = template.ir_version
    return BankGraph(model=model, banks=feeds, n_rows=n_rows, window=window_shape, outputs=outputs)


def _per_row_weights(graph: onnx.GraphProto, stacked: Mapping[str, npt.NDArray[Any]]) -> set[str]:
    """Weights ``[1, out, in]`` of the export's batched linear form (a per-series layer).

    The file computes ``[1, out, in] @ [R, in, 1]``; the bank computes ``[B, out, in] @ [B, in,
    1]`` with the same kernel, hence the same bits. They are gathered per row even in the rare
    group where every file holds the same values (one series, say), so that the bank keeps
    running the file's kernel."""
    found: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[0] in stacked:
            arr = stacked[node.input[0]]
            if arr.ndim == 4 and arr.shape[1] == 1 and arr.dtype.kind == "f":
                found.add(node.input[0])
    return found


def _value_ranks_input(template: onnx.ModelProto) -> int:
    dims = template.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise BankUnsupported("window input is not [batch, L] with a static L")
    if template.graph.input[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise BankUnsupported("window input is not float32")
    return int(dims[1].dim_value)
