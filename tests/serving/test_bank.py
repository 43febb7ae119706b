"""Bank graphs against their oracle: each series' own ONNX file run by onnxruntime.

Tolerance (stated): ``|bank - file| <= 1e-6 * scale + 4 ulp(|file|)``. The bank multiplies
``x[B,1,in] @ W[B,in,out]`` where the file runs ``Gemm``; onnxruntime's kernels for the two sum
in different orders, so the last bits may differ (measured: ~1e-7 relative). The ulp term is the
float32 resolution of the output itself (a forecast near a large level cannot be finer). Where
the computation order is identical (elementwise steps such as the mean head's sigma, the
per-series-session fallback) the results are bit-identical, and the tests say so.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from serving_models import Spec, make_model_bytes

from mamlctl.serving import bank as bk
from mamlctl.serving.runtime import BankRuntime, SessionsRuntime, make_session

SPECS = [
    Spec(kind="mlp", head="mean"),
    Spec(kind="mlp", head="gaussian", window=20, horizon=5, hidden=16),
    Spec(kind="conv", head="mean", window=16, horizon=3),
    Spec(kind="conv", head="gaussian", window=10, horizon=2, channels=2, kernel=2),
]


def _files(spec: Spec, n: int, seed: int = 0) -> tuple[list[bytes], list[dict[str, float]]]:
    blobs, infos = [], []
    for i in range(n):
        blob, info = make_model_bytes(spec, series_id=f"s{i}", seed=seed * 1000 + i)
        blobs.append(blob)
        infos.append(info)
    return blobs, infos


def _windows(
    infos: list[dict[str, float]], rows: np.ndarray, length: int, rng: np.random.Generator
) -> np.ndarray:
    """Windows around each row's series level: loc + scale * N(0, 1) (as the export parity)."""
    loc = np.array([infos[r]["loc"] for r in rows])[:, None]
    scale = np.array([infos[r]["scale"] for r in rows])[:, None]
    return (loc + scale * rng.normal(size=(len(rows), length))).astype(np.float32)


def _bank(blobs: list[bytes]) -> BankRuntime:
    models = [bk.normalise_constants(onnx.load_from_string(b)) for b in blobs]
    graph = bk.build_bank(models[0], bk.stack_rows([bk.initializer_arrays(m) for m in models]))
    onnx.checker.check_model(graph.model)
    return BankRuntime.from_bank(graph)


def _tolerance(ref: np.ndarray, scale: float) -> np.ndarray:
    return 1e-6 * scale + 4 * np.spacing(np.abs(ref).astype(np.float32))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.head}")
def test_bank_matches_each_series_file(spec: Spec) -> None:
    blobs, infos = _files(spec, 7)
    scales = [info["scale"] for info in infos]
    runtime = _bank(blobs)
    assert runtime.kind == "bank" and runtime.n_rows == 7
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 7, size=200)
    windows = _windows(infos, rows, spec.window, rng)
    forecast, sigma = runtime.run(windows, rows)  # ONE run mixing all series
    worst = 0.0
    for i, blob in enumerate(blobs):
        ref_f, ref_s = make_session(blob).run(None, {"window": windows[rows == i]})
        for got, ref in ((forecast[rows == i], ref_f), (sigma[rows == i], ref_s)):
            err = np.abs(got - ref)
            assert (err <= _tolerance(ref, scales[i])).all()
            worst = max(worst, float((err / scales[i]).max()))
        if spec.head == "mean":  # sigma = residual_scale broadcast: same op order -> exact
            assert np.array_equal(sigma[rows == i], ref_s)
    assert worst < 1e-5  # the export contract's parity bound, for scale


def test_bank_keeps_shared_numbers_as_constants_and_banks_the_rest() -> None:
    blobs, _ = _files(Spec(), 3)
    models = [bk.normalise_constants(onnx.load_from_string(b)) for b in blobs]
    graph = bk.build_bank(models[0], bk.stack_rows([bk.initializer_arrays(m) for m in models]))
    banked = {name.split(".r")[0].removeprefix("bank.") for name in graph.banks}
    assert any("loc" in b for b in banked) and any("scale" in b for b in banked)
    assert all(arr.shape[0] == 3 for arr in graph.banks.values())
    shared = {init.name for init in graph.model.graph.initializer}
    assert "ax" in shared  # the integer slice axis is the same in every file


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(st.integers(0, 4), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_a_rows_result_does_not_depend_on_its_batch_mates(rows: list[int], seed: int) -> None:
    runtime = _BANK_MLP
    rng = np.random.default_rng(seed)
    windows = rng.normal(0, 10, size=(len(rows), 12)).astype(np.float32)
    idx = np.array(rows, dtype=np.int64)
    forecast, sigma = runtime.run(windows, idx)
    for j in range(len(rows)):
        f1, s1 = runtime.run(windows[j : j + 1], idx[j : j + 1])
        assert np.array_equal(f1[0], forecast[j]) and np.array_equal(s1[0], sigma[j])


_BANK_MLP = _bank(_files(Spec(), 5, seed=9)[0])


def _with_unbankable_op(blob: bytes) -> bytes:
    """Route the first layer's weight through an op banks do not support (LpNormalization
    of a constant all-ones tensor times the weight keeps values: weight * 1)."""
    model = onnx.load_from_string(blob)
    graph = model.graph
    w = next(i for i in graph.initializer if i.name == "core.layers.0.weight")
    ones = numpy_helper.from_array(np.ones(tuple(w.dims), np.float32), "ones_w")
    graph.initializer.append(ones)
    node = helper.make_node("Where", ["cond_w", "core.layers.0.weight", "ones_w"], ["w_sel"])
    cond = numpy_helper.from_array(np.ones(tuple(w.dims), bool), "cond_w")
    graph.initializer.append(cond)
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    gemm.input[1] = "w_sel"
    graph.node.insert(0, node)
    return model.SerializeToString()


def test_unbankable_graph_raises_and_the_fallback_is_exact() -> None:
    blobs = [_with_unbankable_op(b) for b in _files(Spec(), 3)[0]]
    models = [bk.normalise_constants(onnx.load_from_string(b)) for b in blobs]
    with pytest.raises(bk.BankUnsupported, match="Where"):
        bk.build_bank(models[0], bk.stack_rows([bk.initializer_arrays(m) for m in models]))
    fallback = SessionsRuntime(sessions=[make_session(b) for b in blobs], window=12, model_bytes=0)
    rng = np.random.default_rng(0)
    windows = rng.normal(0, 5, size=(9, 12)).astype(np.float32)
    rows = np.array([2, 0, 1, 1, 2, 0, 0, 2, 1])
    forecast, sigma = fallback.run(windows, rows)
    for i, blob in enumerate(blobs):
        ref_f, ref_s = make_session(blob).run(None, {"window": windows[rows == i]})
        assert np.array_equal(forecast[rows == i], ref_f)
        assert np.array_equal(sigma[rows == i], ref_s)


def test_structure_key_ignores_values_but_not_structure() -> None:
    a = bk.normalise_constants(onnx.load_from_string(_files(Spec(), 1, seed=1)[0][0]))
    b = bk.normalise_constants(onnx.load_from_string(_files(Spec(), 1, seed=2)[0][0]))
    c = bk.normalise_constants(onnx.load_from_string(_files(Spec(hidden=9), 1)[0][0]))
    assert bk.structure_key(a) == bk.structure_key(b) != bk.structure_key(c)


@pytest.mark.slow
@pytest.mark.parametrize("kind,head", [("mlp", "gaussian"), ("conv", "mean")])
def test_bank_of_real_exported_files(kind: str, head: str) -> None:
    """The files mamlctl's exporter writes (torch.onnx graph, weights stamped per series)."""
    torch = pytest.importorskip("torch")
    models_mod = pytest.importorskip("mamlctl.maml.models")
    template_mod = pytest.importorskip("mamlctl.maml.onnx_template")
    torch.manual_seed(0)
    if kind == "mlp":
        cfg = models_mod.MLPConfig(input_size=24, output_size=6, hidden=(16, 16), head=head)
    else:
        cfg = models_mod.ConvConfig(window=24, horizon=6, channels=3, head=head)
    core = models_mod.build_model(cfg)
    tpl = template_mod.build_template(
        core, model_config=models_mod.config_to_dict(cfg), window=24, horizon=6, head=head
    )
    rng = np.random.default_rng(5)
    blobs, infos = [], []
    for i in range(4):
        params = {
            n: rng.normal(0, 0.3, size=s).astype(np.float32) for n, s in tpl.param_shapes.items()
        }
        scale, loc = float(rng.uniform(0.5, 5)), float(rng.uniform(-20, 20))
        blobs.append(
            tpl.render(
                params,
                loc=loc,
                scale=scale,
                residual_scale=0.3 * scale,
                metadata={"mamlctl.series_id": f"s{i}"},
            )
        )
        infos.append({"loc": loc, "scale": scale})
    scales = [info["scale"] for info in infos]
    runtime = _bank(blobs)
    rows = rng.integers(0, 4, size=64)
    windows = _windows(infos, rows, 24, rng)
    forecast, sigma = runtime.run(windows, rows)
    for i, blob in enumerate(blobs):
        ref_f, ref_s = make_session(blob).run(None, {"window": windows[rows == i]})
        assert (np.abs(forecast[rows == i] - ref_f) <= _tolerance(ref_f, scales[i])).all()
        assert (np.abs(sigma[rows == i] - ref_s) <= _tolerance(ref_s, scales[i])).all()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.head}")
def test_batch_session_threads_give_the_one_thread_numbers(spec: Spec) -> None:
    """Batches of 32+ rows run on the multi-threaded batch session: onnxruntime splits the
    rows, not the sums inside a row, so every number equals the one-thread session's."""
    from mamlctl.serving.runtime import BATCH_MIN_ROWS

    blobs, infos = _files(spec, 9, seed=5)
    models = [bk.normalise_constants(onnx.load_from_string(b)) for b in blobs]
    graph = bk.build_bank(models[0], bk.stack_rows([bk.initializer_arrays(m) for m in models]))
    one = BankRuntime.from_bank(graph)
    two = BankRuntime.from_bank(graph, batch_threads=2)
    assert one.batch_session is None and two.batch_session is not None
    assert two.batch_session.get_session_options().intra_op_num_threads == 2
    rng = np.random.default_rng(11)
    for size in (BATCH_MIN_ROWS - 1, BATCH_MIN_ROWS, 257):
        rows = rng.integers(0, 9, size=size)
        windows = _windows(infos, rows, spec.window, rng)
        for got, ref in zip(two.run(windows, rows), one.run(windows, rows), strict=True):
            assert np.array_equal(got, ref)


@settings(max_examples=20, deadline=None)
@given(
    spec_index=st.integers(0, len(SPECS) - 1),
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_packed_gathers_answer_as_the_unpacked_bank_bit_for_bit(
    spec_index: int, rows: list[int], seed: int
) -> None:
    """Oracle: the bank graph as built (one Gather per bank) in its own session. The runtime
    packs the 2-D float banks into one Gather + Split: fewer nodes, identical numbers."""
    from mamlctl.serving.bank_pack import PACKED, pack_row_gathers

    spec = SPECS[spec_index]
    blobs, infos = _files(spec, 6, seed=spec_index)
    models = [bk.normalise_constants(onnx.load_from_string(b)) for b in blobs]
    graph = bk.build_bank(models[0], bk.stack_rows([bk.initializer_arrays(m) for m in models]))
    packed_model, packed_banks = pack_row_gathers(graph.model, graph.banks)
    float_banks = [n for n, a in graph.banks.items() if a.dtype == np.float32 and a.ndim == 2]
    if len(float_banks) >= 2:
        assert PACKED in packed_banks and not set(float_banks) & set(packed_banks)
        gathers = sum(n.op_type == "Gather" for n in packed_model.graph.node)
        assert gathers <= sum(n.op_type == "Gather" for n in graph.model.graph.node) - 1
    onnx.checker.check_model(packed_model)
    runtime = BankRuntime.from_bank(graph)
    plain = make_session(graph.model.SerializeToString())
    r = np.array(rows, dtype=np.int64)
    windows = _windows(infos, r, spec.window, np.random.default_rng(seed))
    feeds = {**graph.banks, "window": windows, "row": r}
    want = plain.run(["forecast", "sigma"], feeds)
    got = runtime.run(windows, r)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
