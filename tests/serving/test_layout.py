"""Byte layouts (:mod:`mamlctl.serving.layout`) against their oracle, the full parse.

A state built with layouts must equal the state built with every file parsed (same entries,
same banks bit for bit, same failures and messages), and a file that only *looks* like its
group's files (another graph, an extra field after the metadata, a changed template id, a
series id that does not match) must take the full parse.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from serving_models import Spec, write_series

from mamlctl.domain import AdaptedModelRecord
from mamlctl.serving import layout as lay
from mamlctl.serving import state as st

MLP = Spec(kind="mlp", window=12, horizon=4)
OTHER = Spec(kind="mlp", window=12, horizon=4, hidden=6)  # same contract, other graph


def _stamp(
    models: Path, rec: AdaptedModelRecord, *, template: str, extra: bytes = b""
) -> AdaptedModelRecord:
    """Give ``rec``'s file a template id (as the exporter does), optionally append bytes."""
    path = models / rec.path
    model = onnx.load_from_string(path.read_bytes())
    entry = model.metadata_props.add()
    entry.key, entry.value = "mamlctl.template_id", template
    data = model.SerializeToString() + extra
    path.write_bytes(data)
    return dataclasses.replace(rec, sha256=hashlib.sha256(data).hexdigest())


def _records(models: Path) -> list[AdaptedModelRecord]:
    recs = [
        _stamp(models, r, template="t1")
        for r in write_series(models, MLP, [f"m{i}" for i in range(6)], seed=3)
    ]
    recs += [
        _stamp(models, r, template="t2") for r in write_series(models, OTHER, ["o0", "o1"], seed=4)
    ]
    # one file of the first structure with a second graph appended after its metadata
    odd = write_series(models, MLP, ["odd"], seed=5)[0]
    extra_graph = onnx.ModelProto()
    extra_graph.graph.name = "appended"
    recs.append(_stamp(models, odd, template="t1", extra=extra_graph.SerializeToString()))
    # a first-structure file claiming another template id, and one naming another series
    recs.append(_stamp(models, write_series(models, MLP, ["claims"], seed=6)[0], template="t9"))
    wrong = _stamp(models, write_series(models, MLP, ["wrong"], seed=7)[0], template="t1")
    recs.append(dataclasses.replace(wrong, series_id="victim"))
    return recs


def _build(models: Path, recs: list[AdaptedModelRecord]) -> st.ServingState:
    return st.build_state(recs, models_dir=models, fingerprint="f", generation=1)


def test_layouts_give_the_state_of_the_full_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    recs = _records(models)
    calls: list[str] = []
    original = st._load_one

    def counted(record: AdaptedModelRecord, data: bytes):  # type: ignore[no-untyped-def]
        calls.append(record.series_id)
        return original(record, data)

    monkeypatch.setattr(st, "_load_one", counted)
    fast = _build(models, recs)
    parsed_with_layouts = list(calls)
    monkeypatch.setattr(st, "_MAX_LAYOUTS", 0)
    calls.clear()
    full = _build(models, recs)
    assert len(calls) == len(recs)  # without layouts every file is parsed
    # with layouts: the first file of each structure and the odd ones are parsed ("victim"
    # matches the layout and fails its series check without a parse)
    assert set(parsed_with_layouts) == {"m0", "o0", "odd", "claims"}
    assert fast.failures == full.failures
    assert "belongs to series 'wrong'" in fast.failures["victim"]
    assert fast.entries.keys() == full.entries.keys()
    for sid, entry in fast.entries.items():
        other = full.entries[sid]
        assert (entry.group, entry.row, entry.lineage) == (other.group, other.row, other.lineage)
    assert len(fast.runtimes) == len(full.runtimes)
    for a, b in zip(fast.runtimes, full.runtimes, strict=True):
        assert a.banks.keys() == b.banks.keys()  # type: ignore[attr-defined]
        for name in a.banks:  # type: ignore[attr-defined]
            assert np.array_equal(a.banks[name], b.banks[name])  # type: ignore[attr-defined]
    rows = np.arange(len([e for e in fast.entries.values() if e.group == 0]), dtype=np.int64)
    window = np.linspace(-2, 2, 12, dtype=np.float32)[None].repeat(len(rows), 0)
    for a, b in zip(
        fast.runtimes[0].run(window, rows), full.runtimes[0].run(window, rows), strict=True
    ):
        assert np.array_equal(a, b)


def test_layout_refuses_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    models = tmp_path / "models"
    rec = _stamp(models, write_series(models, MLP, ["a"], seed=1)[0], template="t1")
    data = (models / rec.path).read_bytes()
    model = onnx.load_from_string(data)
    layout = lay.layout_of(data, model, "info")
    assert layout is not None and layout.match(data)
    assert lay.tail_metadata(data, layout)["mamlctl.series_id"] == "a"  # type: ignore[index]
    names = [r[0] for r in layout.raws]
    assert sorted(names) == sorted(i.name for i in model.graph.initializer)
    for name, start, stop, dtype, shape in layout.raws:
        init = next(i for i in model.graph.initializer if i.name == name)
        got = np.frombuffer(data, dtype, (stop - start) // dtype.itemsize, start).reshape(shape)
        assert np.array_equal(got, onnx.numpy_helper.to_array(init))
    flipped = bytearray(data)
    flipped[layout.framing[1][0]] ^= 1  # one framing byte between two raw blocks
    assert not layout.match(bytes(flipped))
    assert not layout.match(data[: layout.tail - 1])
    with_constant = onnx.load_from_string(data)
    with_constant.graph.node.append(onnx.helper.make_node("Constant", [], ["c"], value_float=1.0))
    assert lay.layout_of(with_constant.SerializeToString(), with_constant, "x") is None
