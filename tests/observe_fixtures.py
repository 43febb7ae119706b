"""A served family for the observe-loop tests, built in seconds without torch: the seeded
registry's ``sines`` series (period 24) plus a timestamped one, each served by a seasonal-naive
contract file (``forecast[h] = window[h]``: the value one period earlier; ``sigma`` a constant)
recorded as its current adapted model. The oracle of every forecast is that file run by
onnxruntime on the window. One module at the tests' root, importable from every test folder."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mamlctl.settings import Settings
from mamlctl.timeseries.anomaly import score_from_z

L, H = 24, 6
SIGMA = 0.1
Z_THRESHOLD = 4.0
T0 = datetime(2026, 3, 1)
TS_SERIES = "t0"


def seasonal_naive_bytes(
    series_id: str, *, sigma: float, version: int, lag_shift: int = 0
) -> bytes:
    """``window [B, L]`` -> ``forecast [B, H] = window[:, h + lag_shift]``, ``sigma [B, H]``."""
    weight = np.zeros((H, L), dtype=np.float32)
    for h in range(H):
        weight[h, h + lag_shift] = 1.0
    inits = [
        numpy_helper.from_array(weight, "core.layers.0.weight"),
        numpy_helper.from_array(np.zeros(H, np.float32), "core.layers.0.bias"),
        numpy_helper.from_array(np.array([sigma], np.float32), "residual_scale"),
    ]
    n = helper.make_node
    nodes = [
        n("Gemm", ["window", "core.layers.0.weight", "core.layers.0.bias"], ["forecast"], transB=1),
        n("Shape", ["forecast"], ["fshape"]),
        n("Expand", ["residual_scale", "fshape"], ["sigma"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seasonal_naive",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", L])],
        [
            helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", H]),
            helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch", H]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "series_id": series_id,
        "family": "sines",
        "registered_model": "maml-sines",
        "initializer_version": str(version),
        "initializer_run_id": f"run{version}",
        "adapted_at": datetime(2026, 1, version, tzinfo=UTC).isoformat(),
        "window": str(L),
        "horizon": str(H),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"mamlctl.{key}", value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def record_models(
    settings: Settings, ids: list[str], *, version: int = 1, lag_shift: int = 0
) -> dict[str, Path]:
    """Write and record a current seasonal-naive model per series; their file paths."""
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.model_queries import record_adapted_model, record_initializer_version

    paths: dict[str, Path] = {}
    with open_registry(settings) as factory, factory.begin() as sess:
        record_initializer_version(sess, family="sines", version=version, run_id=f"run{version}")
        for sid in ids:
            blob = seasonal_naive_bytes(sid, sigma=SIGMA, version=version, lag_shift=lag_shift)
            digest = hashlib.sha256(blob).hexdigest()
            rel = f"sines/{sid}--{digest[:16]}.onnx"
            path = settings.models_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            paths[sid] = path
            record_adapted_model(
                sess,
                series_id=sid,
                registered_model="maml-sines",
                initializer_version=version,
                path=rel,
                sha256=digest,
                support=60,
                window=L,
                horizon=H,
                residual_scale=SIGMA,
                threshold=float(score_from_z(Z_THRESHOLD)),
                adapted_at=datetime(2026, 1, version, tzinfo=UTC),
            )
    return paths


def add_timestamped_series(settings: Settings, values: np.ndarray) -> None:
    """Series ``t0``: hourly points from :data:`T0`, in family ``sines``."""
    from mamlctl.domain import Series
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series

    ts = np.array([T0 + timedelta(hours=i) for i in range(len(values))], dtype="datetime64[us]")
    with open_registry(settings) as factory, factory.begin() as sess:
        store_series(
            sess,
            [
                IncomingSeries(
                    series=Series(series_id=TS_SERIES, values=values, timestamps=ts),
                    source="test",
                    interval_seconds=3600.0,
                )
            ],
        )
        q.assign_family(sess, "sines", [TS_SERIES])


def onnx_forecaster(path: Path) -> Any:
    """``window -> (forecast, sigma)`` of step 1 from the file, run by onnxruntime."""
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])

    def forecast(window: np.ndarray) -> tuple[float, float]:
        f, s = session.run(["forecast", "sigma"], {"window": window.astype(np.float32)[None, :]})
        return float(f[0, 0]), float(s[0, 0])

    return forecast


def offline_start(path: Path, stored: np.ndarray, window: int) -> tuple[Any, float]:
    """The detector state a server starts a series with (its last ``window`` stored values, a
    fresh ranking over their range) and the ranking's unit (the file's ``scale``)."""
    from mamlctl.contract import key
    from mamlctl.timeseries.stream_detector import Ranking, StreamState

    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    # the server's rule: the file's scale, else the record's residual scale (SIGMA here)
    scale = session.get_modelmeta().custom_metadata_map.get(key("scale"), SIGMA)
    ranking = Ranking(low=float(stored.min()), high=float(stored.max()))
    return StreamState(stored[-window:].copy(), 0, ranking), float(scale)


def stored_series(settings: Settings, series_id: str) -> Any:
    """The registry's :class:`~mamlctl.domain.Series` (values, timestamps) of ``series_id``."""
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.series_queries import load_series

    with open_registry(settings) as factory, factory() as sess:
        return load_series(sess, series_id)


class Client:
    """Synchronous calls into an ASGI app (no network)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


class Served:
    """The app over the registry (``RegistrySource``), models loaded, streams synced."""

    def __init__(self, settings: Settings, *, flag: str = "z") -> None:
        """``flag``: these tests inject anomalies where the calibrated ``z`` rule is the oracle,
        so they pin it (``serve``'s default is ``rank``; its own tests pass ``flag="rank"``)."""
        from mamlctl.serving.app import ServeOptions, create_app
        from mamlctl.serving.source import RegistrySource

        self.settings = settings
        self.source = RegistrySource(settings)
        options = ServeOptions(reload=False, flag=flag)  # type: ignore[arg-type]
        self.app = create_app(settings, self.source, options=options)
        assert self.app.holder.reload(force=True)
        assert self.app.observer is not None
        self.app.observer.sync(self.app.holder.state)
        self.client = Client(self.app)

    def observe(self, *items: dict[str, Any], status: int = 200) -> Any:
        body = {"items": list(items)} if len(items) != 1 else items[0]
        response = self.client.post("/v1/observe", json=body)
        assert response.status_code == status, response.text
        return response.json()

    def close(self) -> None:
        self.source.close()
