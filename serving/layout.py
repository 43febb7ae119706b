"""Reading the 2nd..Nth file of one structure without parsing it: byte layouts.

Files that share a graph are serialized alike: protobuf writes the fields of a message in field
order, so two files whose graphs differ only in initializer *values* have identical bytes
everywhere but inside the initializers' ``raw_data`` and in the trailing ``metadata_props``
(field 14, written last). A :class:`Layout`, taken from one fully parsed file, records where the
raw data lie and keeps every other byte before the metadata (the "framing"). A later file
*matches* when its framing bytes are identical -- then its protobuf parse would give the same
graph, the same initializer names, types and shapes, with the raw data at the same offsets (all
length prefixes are part of the framing) -- and its tail holds nothing but metadata. Its numbers
are then read as zero-copy views of the file's bytes and only the tail is parsed (~3 us instead
of ~100 us of parsing, copying and hashing the graph per file at 10,000 files).

Anything unusual -- a Constant node, an initializer not stored as inline float32, int64, int8
or uint8 ``raw_data``, fields out of order, a tail with more than metadata -- means no layout,
and such files take the full parse of :mod:`mamlctl.serving.state`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

_GRAPH, _METADATA = 7, 14  # ModelProto fields
_INITIALIZER = 5  # GraphProto field
_RAW_DATA, _DATA_LOCATION = 9, 14  # TensorProto fields
#: Initializer types whose inline ``raw_data`` is read as numbers (here and by the banks of
#: :mod:`mamlctl.serving.bank`), with their little-endian numpy types.
RAW_DTYPES: dict[int, np.dtype[Any]] = {
    int(onnx.TensorProto.FLOAT): np.dtype("<f4"),
    int(onnx.TensorProto.INT64): np.dtype("<i8"),
    int(onnx.TensorProto.INT8): np.dtype("i1"),
    int(onnx.TensorProto.UINT8): np.dtype("u1"),
}


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, key offset, value start, value end)`` of a message's fields."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, pos)
        elif wire == 1:
            stop = pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            stop = pos + size
        elif wire == 5:
            stop = pos + 4
        else:
            raise _Malformed
        if stop > end:
            raise _Malformed
        yield number, at, pos, stop
        pos = stop


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one structure's numbers lie in its files (see the module docstring)."""

    #: ``(start, stop, bytes)``: every byte before the metadata that is not raw data
    framing: tuple[tuple[int, int, bytes], ...]
    #: ``(initializer name, start, stop, dtype, shape)`` of each raw data block, in file order
    raws: tuple[tuple[str, int, int, Any, tuple[int, ...]], ...]
    #: where the metadata (the tail) starts
    tail: int
    #: anything the caller attaches (group key, window, ...)
    info: Any

    def match(self, data: bytes) -> bool:
        """Whether ``data`` has this layout (framing bytes identical)."""
        if len(data) < self.tail:
            return False
        # bytes.startswith at an offset: one memcmp, no copy (a memoryview comparison goes
        # element by element); ``expected`` is exactly ``stop - start`` bytes long
        return all(data.startswith(expected, start) for start, _, expected in self.framing)


def layout_of(data: bytes, model: onnx.ModelProto, info: Any) -> Layout | None:
    """The layout of ``data`` (a file) given its parse ``model``, or None when it has none."""
    if any(node.op_type == "Constant" for node in model.graph.node):
        return None
    inits = {init.name: init for init in model.graph.initializer}
    for init in inits.values():
        if int(init.data_type) not in RAW_DTYPES or init.HasField("data_location"):
            return None
    view = memoryview(data)
    try:
        return _walk(view, inits, info)
    except _Malformed:
        return None


def _walk(view: memoryview, inits: dict[str, onnx.TensorProto], info: Any) -> Layout | None:
    graph: tuple[int, int] | None = None
    tail = None
    for number, at, start, stop in _fields(view, 0, len(view)):
        if number == _METADATA:
            if tail is None:
                tail = at
            continue
        if tail is not None:  # another field after the metadata: not the usual order
            return None
        if number == _GRAPH:
            if graph is not None:
                return None
            graph = (start, stop)
    if graph is None:
        return None
    if tail is None:
        tail = len(view)
    raws: list[tuple[str, int, int, Any, tuple[int, ...]]] = []
    for number, _, start, stop in _fields(view, *graph):
        if number != _INITIALIZER:
            continue
        name, raw = None, None
        for field, _, s, e in _fields(view, start, stop):
            if field == 8:
                name = bytes(view[s:e]).decode()
            elif field == _RAW_DATA:
                raw = (s, e)
            elif field == _DATA_LOCATION:
                return None
        if name is None or raw is None or name not in inits:
            return None
        init = inits[name]
        dtype = RAW_DTYPES[int(init.data_type)]
        shape = tuple(int(d) for d in init.dims)
        if raw[1] - raw[0] != dtype.itemsize * math.prod(shape):
            return None
        raws.append((name, raw[0], raw[1], dtype, shape))
    if sorted(r[0] for r in raws) != sorted(inits) or len(raws) != len(inits):
        return None
    framing, pos = [], 0
    for _, start, stop, _, _ in raws:
        framing.append((pos, start, bytes(view[pos:start])))
        pos = stop
    framing.append((pos, tail, bytes(view[pos:tail])))
    return Layout(framing=tuple(framing), raws=tuple(raws), tail=tail, info=info)


def tail_metadata(data: bytes, layout: Layout) -> dict[str, str] | None:
    """The metadata of a matching file, or None when its tail holds anything else."""
    try:
        tail = onnx.ModelProto.FromString(data[layout.tail :])
    except Exception:  # protobuf's DecodeError and friends
        return None
    if [field.name for field, _ in tail.ListFields()] not in (["metadata_props"], []):
        return None
    return {p.key: p.value for p in tail.metadata_props}
