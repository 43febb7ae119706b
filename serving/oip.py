"""The Open Inference Protocol (KServe v2 REST) beside ``/v1``: one model per family.

::

    GET  /v2/health/live                 200 while the process runs
    GET  /v2/health/ready                200 once the models are loaded (as /readyz)
    GET  /v2/models/{name}               metadata; name = the family or maml-<family>
    GET  /v2/models/{name}/ready         200 when the family has a loaded series
    POST /v2/models/{name}/infer         inputs window FP32 [n, L] and series_id BYTES [n]
                                         (or the request parameter "series_id" for every row)
                                         -> outputs forecast, sigma FP32 [n, H]

The numbers are ``/v1/score``'s: the same validation of each window (length L, finite as
float32) and the same onnxruntime calls (rows grouped by runtime as a ``/v1/score`` batch
groups them), so ``forecast``/``sigma`` equal a batch's ``forecast``/``sigma`` bit for bit.
Tensors come as JSON ``data`` or in the binary tensor extension (``Inference-Header-Content-
Length``, ``binary_data_size``; BYTES elements with a 4-byte little-endian length), and go back
binary when the request asks (``binary_data`` per output or ``binary_data_output``). Errors
are ``{"error": "..."}``: 400 for a bad request, 404 for an unknown model or series, 503 while
loading. Anything else of the protocol (versions, model repository, shared memory) is absent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from mamlctl.domain import MODEL_NAME_PREFIX
from mamlctl.serving.scoring import ClientError, run_groups

if TYPE_CHECKING:
    from mamlctl.serving.app import ScoringApp
    from mamlctl.serving.state import ServingState

HEADER_LENGTH = "inference-header-content-length"
_JSON = "application/json"


class OipError(Exception):
    """An OIP error answer: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class FamilyModel:
    """What the metadata of one family's model says."""

    family: str
    window: int
    horizon: int
    versions: tuple[str, ...]


def _families(state: ServingState) -> dict[str, FamilyModel]:
    """Families of the served series (L, H of their first series; -1 when they differ)."""
    cached = _CACHE.get(id(state))
    if cached is not None and cached[0] is state:
        return cached[1]
    shapes: dict[str, tuple[set[int], set[int], set[str]]] = {}
    for entry in state.entries.values():
        w, h, v = shapes.setdefault(entry.family, (set(), set(), set()))
        w.add(entry.window)
        h.add(entry.horizon)
        v.add(str(entry.initializer_version))
    out = {
        fam: FamilyModel(
            family=fam,
            window=next(iter(w)) if len(w) == 1 else -1,
            horizon=next(iter(h)) if len(h) == 1 else -1,
            versions=tuple(sorted(v, key=int)),
        )
        for fam, (w, h, v) in shapes.items()
    }
    _CACHE.clear()  # one state at a time: the current one
    _CACHE[id(state)] = (state, out)
    return out


_CACHE: dict[int, tuple[Any, dict[str, FamilyModel]]] = {}


def family_of(state: ServingState, name: str) -> FamilyModel:
    """The model ``name`` (a family or ``maml-<family>``), or 404."""
    families = _families(state)
    for candidate in (name, name.removeprefix(MODEL_NAME_PREFIX)):
        if candidate in families:
            return families[candidate]
    raise OipError(404, f"unknown model {name!r}; served: {sorted(families)}")


def metadata(model: FamilyModel, name: str) -> dict[str, Any]:
    L, H = model.window, model.horizon
    return {
        "name": name,
        "versions": list(model.versions),
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "window", "datatype": "FP32", "shape": [-1, L]},
            {"name": "series_id", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "forecast", "datatype": "FP32", "shape": [-1, H]},
            {"name": "sigma", "datatype": "FP32", "shape": [-1, H]},
        ],
    }


# --- requests -------------------------------------------------------------------------------
def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part of an inference request and its binary tail (empty without one)."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise OipError(400, "Inference-Header-Content-Length is not an integer") from None
        if not 0 <= n <= len(body):
            raise OipError(400, "Inference-Header-Content-Length exceeds the body")
        json_part, tail = body[:n], body[n:]
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as err:
        raise OipError(400, f"the request is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise OipError(400, "an inference request needs an 'inputs' list")
    return doc, tail


def _tensors(doc: dict[str, Any], tail: bytes) -> dict[str, tuple[str, list[int], Any]]:
    """``name -> (datatype, shape, JSON data or raw bytes)`` of the request's inputs."""
    out: dict[str, tuple[str, list[int], Any]] = {}
    offset = 0
    for spec in doc["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise OipError(400, "each input needs a 'name'")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise OipError(400, f"input {spec['name']!r}: 'shape' must be a list of sizes")
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise OipError(400, f"input {spec['name']!r}: bad binary_data_size")
            data: Any = tail[offset : offset + size]
            offset += size
        elif "data" in spec:
            data = spec["data"]
        else:
            raise OipError(400, f"input {spec['name']!r} has no data")
        out[spec["name"]] = (str(spec.get("datatype", "")), shape, data)
    return out


def _fp32(name: str, datatype: str, shape: list[int], data: Any) -> npt.NDArray[np.float32]:
    if datatype != "FP32":
        raise OipError(400, f"input {name!r} must be FP32, got {datatype or 'no datatype'}")
    if len(shape) != 2:
        raise OipError(400, f"input {name!r} must have shape [n, L], got {shape}")
    count = shape[0] * shape[1]
    if isinstance(data, bytes):
        if len(data) != 4 * count:
            raise OipError(400, f"input {name!r}: {len(data)} bytes for shape {shape}")
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
    flat = np.asarray(data, dtype=object).ravel()
    if flat.size != count:
        raise OipError(400, f"input {name!r}: {flat.size} values for shape {shape}")
    try:
        values = np.array(
            [float(v) if not isinstance(v, bool) else None for v in flat], dtype=np.float64
        )
    except (TypeError, ValueError):
        raise OipError(400, f"input {name!r}: values must be numbers") from None
    with np.errstate(over="ignore"):
        return values.astype(np.float32).reshape(shape)


def _strings(name: str, datatype: str, shape: list[int], data: Any) -> list[str]:
    if datatype != "BYTES":
        raise OipError(400, f"input {name!r} must be BYTES, got {datatype or 'no datatype'}")
    if isinstance(data, bytes):
        out, i = [], 0
        while i < len(data):
            if i + 4 > len(data):
                raise OipError(400, f"input {name!r}: truncated BYTES element")
            (n,) = struct.unpack_from("<I", data, i)
            out.append(data[i + 4 : i + 4 + n].decode("utf-8", errors="strict"))
            i += 4 + n
    else:
        out = [str(v) for v in np.asarray(data, dtype=object).ravel()]
    if int(np.prod(shape)) != len(out):
        raise OipError(400, f"input {name!r}: {len(out)} strings for shape {shape}")
    return out


def infer(
    state: ServingState, name: str, doc: dict[str, Any], tail: bytes
) -> tuple[bytes, dict[str, str]]:
    """The answer to ``POST /v2/models/{name}/infer``: ``(body, headers)``."""
    model = family_of(state, name)
    tensors = _tensors(doc, tail)
    if "window" not in tensors:
        raise OipError(400, "input 'window' (FP32 [n, L]) is missing")
    windows = _fp32("window", *tensors["window"])
    n = windows.shape[0]
    params = doc.get("parameters") or {}
    if "series_id" in tensors:
        ids = _strings("series_id", *tensors["series_id"])
    elif isinstance(params.get("series_id"), str):
        ids = [params["series_id"]] * n
    else:
        raise OipError(400, "name the series: a BYTES input 'series_id' or parameter 'series_id'")
    if len(ids) != n:
        raise OipError(400, f"{len(ids)} series ids for {n} windows")
    if n == 0:
        raise OipError(400, "no rows to infer")
    entries = []
    for i, sid in enumerate(ids):
        entry = state.entries.get(sid)
        shard = state.shard
        if entry is None and shard is not None and sid and not shard.owns(sid):
            raise OipError(421, shard.misdirected(sid))
        if entry is None or entry.family != model.family:
            raise OipError(404, f"series {sid!r} is not served by model {name!r}")
        if entry.window != windows.shape[1]:
            raise OipError(
                400,
                f"row {i} ({sid}): window has {windows.shape[1]} values, expected {entry.window}",
            )
        entries.append(entry)
    if not np.isfinite(windows).all():
        row = int(np.flatnonzero(~np.isfinite(windows).all(axis=1))[0])
        raise OipError(400, f"row {row} ({ids[row]}): window values must be finite as float32")
    try:
        forecast, sigma = run_groups(state, entries, np.ascontiguousarray(windows))
    except ClientError as err:
        raise OipError(400 if err.status == 422 else err.status, str(err.detail)) from None
    if not (np.isfinite(forecast).all() and np.isfinite(sigma).all()):
        raise OipError(400, "the model's output overflowed float32 for some row")
    return _response(name, model, doc, {"forecast": forecast, "sigma": sigma})


def _response(
    name: str, model: FamilyModel, doc: dict[str, Any], outputs: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    requested = doc.get("outputs")
    all_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    if requested is None:
        wanted = {k: all_binary for k in outputs}
    else:
        wanted = {}
        for spec in requested:
            key = spec.get("name") if isinstance(spec, dict) else None
            if key not in outputs:
                raise OipError(400, f"unknown output {key!r}; outputs: {sorted(outputs)}")
            wanted[key] = bool((spec.get("parameters") or {}).get("binary_data", all_binary))
    docs, blobs = [], []
    for key, binary in wanted.items():
        array = np.ascontiguousarray(outputs[key], dtype=np.float32)
        out: dict[str, Any] = {"name": key, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            blob = array.astype("<f4").tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = array.ravel().tolist()
        docs.append(out)
    header = {"model_name": name, "model_version": model.versions[-1], "outputs": docs}
    if "id" in doc:
        header["id"] = doc["id"]
    head = orjson.dumps(header)
    if not blobs:
        return head, {"content-type": _JSON}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


# --- routes ---------------------------------------------------------------------------------
def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=_JSON)


def register_oip_routes(api: FastAPI, outer: ScoringApp) -> None:
    """Add the ``/v2`` routes (see the module doc) to the inner FastAPI app."""
    holder = outer.holder

    def loaded_state() -> ServingState:
        if not holder.ready:
            raise OipError(503, "models are still loading")
        return holder.state

    @api.exception_handler(OipError)
    async def _oip_error(_: Request, err: OipError) -> Response:
        return _error(err.status, err.message)

    @api.get("/v2/health/live", summary="OIP liveness.", tags=["v2"])
    async def live() -> Response:
        return Response(b'{"live":true}', media_type=_JSON)

    @api.get("/v2/health/ready", summary="OIP readiness (as /readyz).", tags=["v2"])
    async def ready() -> Response:
        status, _ = outer.readiness()
        return Response(orjson.dumps({"ready": status == 200}), status, media_type=_JSON)

    @api.get("/v2/models/{name}", summary="OIP model metadata (one model per family).", tags=["v2"])
    async def model_metadata(name: str) -> Response:
        return Response(
            orjson.dumps(metadata(family_of(loaded_state(), name), name)), media_type=_JSON
        )

    @api.get("/v2/models/{name}/ready", summary="OIP model readiness.", tags=["v2"])
    async def model_ready(name: str) -> Response:
        family_of(loaded_state(), name)
        return Response(orjson.dumps({"name": name, "ready": True}), media_type=_JSON)

    @api.post("/v2/models/{name}/infer", summary="OIP inference: forecast and sigma.", tags=["v2"])
    async def model_infer(name: str, request: Request) -> Response:
        state = loaded_state()
        body = await request.body()
        if len(body) > outer.options.max_body_bytes:
            raise OipError(413, f"request body exceeds {outer.options.max_body_bytes} bytes")
        doc, tail = parse_request(body, request.headers.get(HEADER_LENGTH))
        payload, headers = infer(state, name, doc, tail)
        return Response(payload, headers=headers)
