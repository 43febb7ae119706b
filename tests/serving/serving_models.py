"""Per-series ONNX files following the export contract, built with onnx.helper (no torch).

``window [B, L]`` -> ``forecast [B, H]``, ``sigma [B, H]``; z = (window - loc) / scale; an MLP
(Gemm + Relu, like torch's Linear export) or a causal conv stack (Pad + Conv + Relu, flatten,
Gemm read-out); forecast = core(z) * scale + loc; sigma = residual_scale broadcast (mean head) or
exp(0.5 * clip(logvar)) * scale (gaussian head). Metadata keys as in the contract.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mamlctl.domain import AdaptedModelRecord

OPSET = 18


@dataclass(frozen=True)
class Spec:
    kind: str = "mlp"  # "mlp" | "conv"
    window: int = 12
    horizon: int = 4
    hidden: int = 8
    head: str = "mean"
    channels: int = 3
    kernel: int = 3


def _params(spec: Spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = spec.horizon * (2 if spec.head == "gaussian" else 1)
    f = np.float32
    p: dict[str, np.ndarray] = {}
    if spec.kind == "mlp":
        p["core.layers.0.weight"] = rng.normal(0, 0.4, (spec.hidden, spec.window)).astype(f)
        p["core.layers.0.bias"] = rng.normal(0, 0.1, (spec.hidden,)).astype(f)
        p["core.layers.1.weight"] = rng.normal(0, 0.4, (out, spec.hidden)).astype(f)
        p["core.layers.1.bias"] = rng.normal(0, 0.1, (out,)).astype(f)
    else:
        c, k = spec.channels, spec.kernel
        p["core.convs.0.weight"] = rng.normal(0, 0.5, (c, 1, k)).astype(f)
        p["core.convs.0.bias"] = rng.normal(0, 0.1, (c,)).astype(f)
        p["core.convs.1.weight"] = rng.normal(0, 0.5, (c, c, k)).astype(f)
        p["core.convs.1.bias"] = rng.normal(0, 0.1, (c,)).astype(f)
        p["core.readout.weight"] = rng.normal(0, 0.1, (out, c * spec.window)).astype(f)
        p["core.readout.bias"] = rng.normal(0, 0.1, (out,)).astype(f)
    return p


def _graph(spec: Spec, params: dict[str, np.ndarray], loc: float, scale: float, rs: float):
    f32 = np.float32
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    inits += [
        numpy_helper.from_array(np.array([loc], f32), "loc"),
        numpy_helper.from_array(np.array([scale], f32), "scale"),
    ]
    n = helper.make_node
    nodes = [n("Sub", ["window", "loc"], ["centred"]), n("Div", ["centred", "scale"], ["z"])]
    if spec.kind == "mlp":
        nodes += [
            n("Gemm", ["z", "core.layers.0.weight", "core.layers.0.bias"], ["h0"], transB=1),
            n("Relu", ["h0"], ["a0"]),
            n("Gemm", ["a0", "core.layers.1.weight", "core.layers.1.bias"], ["out"], transB=1),
        ]
    else:
        k = spec.kernel
        inits += [
            numpy_helper.from_array(np.array([1], np.int64), "ax1"),
            numpy_helper.from_array(np.array([0, 0, k - 1, 0, 0, 0], np.int64), "pad0"),
            numpy_helper.from_array(np.array([0, 0, 2 * (k - 1), 0, 0, 0], np.int64), "pad1"),
        ]
        nodes += [
            n("Unsqueeze", ["z", "ax1"], ["x0"]),
            n("Pad", ["x0", "pad0"], ["p0"]),
            n("Conv", ["p0", "core.convs.0.weight", "core.convs.0.bias"], ["c0"], dilations=[1]),
            n("Relu", ["c0"], ["r0"]),
            n("Pad", ["r0", "pad1"], ["p1"]),
            n("Conv", ["p1", "core.convs.1.weight", "core.convs.1.bias"], ["c1"], dilations=[2]),
            n("Relu", ["c1"], ["r1"]),
            n("Flatten", ["r1"], ["flat"], axis=1),
            n("Gemm", ["flat", "core.readout.weight", "core.readout.bias"], ["out"], transB=1),
        ]
    h = spec.horizon
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([h], np.int64), "sh"),
        numpy_helper.from_array(np.array([2 * h], np.int64), "s2h"),
    ]
    nodes += [
        n("Slice", ["out", "s0", "sh", "ax1" if spec.kind == "conv" else "ax"], ["mean"]),
        n("Mul", ["mean", "scale"], ["scaled"]),
        n("Add", ["scaled", "loc"], ["forecast"]),
    ]
    if spec.kind == "mlp":
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    ax = "ax1" if spec.kind == "conv" else "ax"
    if spec.head == "gaussian":
        inits += [
            numpy_helper.from_array(np.array(-10.0, f32), "lo"),
            numpy_helper.from_array(np.array(10.0, f32), "hi"),
            numpy_helper.from_array(np.array(0.5, f32), "half"),
        ]
        nodes += [
            n("Slice", ["out", "sh", "s2h", ax], ["logvar"]),
            n("Clip", ["logvar", "lo", "hi"], ["lv"]),
            n("Mul", ["lv", "half"], ["hlv"]),
            n("Exp", ["hlv"], ["std"]),
            n("Mul", ["std", "scale"], ["sigma"]),
        ]
    else:
        inits.append(numpy_helper.from_array(np.array([rs], f32), "residual_scale"))
        nodes += [
            n("Shape", ["forecast"], ["fshape"]),
            n("Expand", ["residual_scale", "fshape"], ["sigma"]),
        ]
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", spec.window])],
        [
            helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", h]),
            helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch", h]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def config_json(spec: Spec) -> str:
    return json.dumps(spec.__dict__, sort_keys=True, separators=(",", ":"))


def make_model_bytes(
    spec: Spec,
    *,
    series_id: str,
    seed: int,
    family: str = "hourly",
    version: int = 1,
    adapted_at: datetime | None = None,
    threshold: float = 0.99,
) -> tuple[bytes, dict[str, Any]]:
    """Serialized contract file and its lineage fields."""
    rng = np.random.default_rng(seed)
    params = _params(spec, rng)
    loc = float(rng.uniform(-50, 50))
    scale = float(rng.uniform(0.5, 20))
    rs = float(rng.uniform(0.2, 2.0)) * scale
    model = _graph(spec, params, loc, scale, rs)
    at = (adapted_at or datetime(2026, 1, 1, tzinfo=UTC)).isoformat()
    meta = {
        "series_id": series_id,
        "family": family,
        "registered_model": f"maml-{family}",
        "initializer_version": str(version),
        "initializer_run_id": f"run{version}",
        "adapted_at": at,
        "support": "48",
        "window": str(spec.window),
        "horizon": str(spec.horizon),
        "model_config": config_json(spec),
        "config_hash": hashlib.sha256(config_json(spec).encode()).hexdigest(),
        "head": spec.head,
        "threshold": str(threshold),
        "residual_scale": str(rs),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key = f"mamlctl.{key}"
        entry.value = value
    onnx.checker.check_model(model)
    info = {"loc": loc, "scale": scale, "residual_scale": rs, "adapted_at": at}
    return model.SerializeToString(), info


def write_series(
    models_dir: Path,
    spec: Spec,
    series_ids: list[str],
    *,
    seed: int = 0,
    version: int = 1,
    family: str = "hourly",
    adapted_at: datetime | None = None,
    threshold: float = 0.99,
) -> list[AdaptedModelRecord]:
    """Write one file per series below ``models_dir`` and return their records."""
    records = []
    when = adapted_at or datetime(2026, 1, version, tzinfo=UTC)
    for i, sid in enumerate(series_ids):
        blob, info = make_model_bytes(
            spec,
            series_id=sid,
            seed=seed * 100_003 + i,
            family=family,
            version=version,
            adapted_at=when,
            threshold=threshold,
        )
        digest = hashlib.sha256(blob).hexdigest()
        rel = f"{family}/{sid}--{digest[:16]}.onnx"
        path = models_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        records.append(
            AdaptedModelRecord(
                series_id=sid,
                family=family,
                registered_model=f"maml-{family}",
                initializer_version=version,
                initializer_run_id=f"run{version}",
                path=rel,
                sha256=digest,
                adapted_at=when,
                support=48,
                window=spec.window,
                horizon=spec.horizon,
                residual_scale=info["residual_scale"],
                threshold=threshold,
                metadata={"scale": str(info["scale"]), "loc": str(info["loc"])},
            )
        )
    return records
