"""Per-series ONNX files: the contract the scoring server relies on, and the batch exporter.

Contract of an adapted-model file (version 1)
=============================================

One self-contained ONNX file per series, usable without mamlctl:

* **input** ``window``: float32 ``[batch, L]``, the RAW most recent ``L`` values, oldest first;
  ``batch`` is dynamic (any >= 1).
* **outputs**
  - ``forecast``: float32 ``[batch, H]``, the next ``H`` values in raw units;
  - ``sigma``: float32 ``[batch, H]``, the scale for anomaly scoring in raw units: for a
    ``gaussian`` head ``exp(0.5 * clamp(logvar, -10, 10)) * scale``; for a ``mean`` head the
    series' ``residual_scale`` broadcast.
* **normalisation inside the graph**: ``z = (window - loc) / scale``;
  ``forecast = core(z)[:, :H] * scale + loc``, then for a non-negative family
  ``max(forecast, relu(floor_fraction * min(window)))`` (a single Relu node when the fraction
  is 0, see :mod:`mamlctl.maml.onnx_contract`). ``loc`` and ``scale`` are the series' support
  statistics (:func:`mamlctl.timeseries.scaling.support_stats` over the K points it was adapted
  on), stored as float32 initializers ``loc`` and ``scale`` of shape ``[1]``; a mean head also
  has a ``residual_scale`` ``[1]`` initializer.
* opset :data:`~mamlctl.maml.onnx_template.OPSET` (>= 17), one file, weights inside (no
  external data), ``onnx.checker.check_model`` passes, no debug metadata (no stack traces).
* **metadata_props** (all strings, keys prefixed ``mamlctl.``):

  ========================  ==============================================================
  ``contract``              contract version, ``"1"``
  ``series_id``             the series
  ``family``                its family
  ``registered_model``      MLflow registered model of the initializer (``maml-<family>``)
  ``initializer_version``   MLflow model version (integer)
  ``initializer_run_id``    MLflow run that produced the initializer
  ``adapted_at``            ISO 8601 UTC, e.g. ``2026-11-26T15:04:05.123456+00:00``
  ``support``               K, points the model was adapted on (a zero-shot file: the
                            family's K all the same; the row records the points it saw)
  ``window``                L, input length
  ``horizon``               H, output length
  ``head``                  ``mean`` or ``gaussian``
  ``loss``                  ``mse``, ``mae`` or ``gaussian_nll`` (adaptation's loss)
  ``nonnegative``           ``"1"`` when ``forecast`` is bounded below in raw units, else ``"0"``
  ``floor_fraction``        the bound is ``relu(floor_fraction * min(window))``; ``0`` (and
                            files without the key) clip at 0
  ``config_hash``           sha256 of the canonical JSON of ``model_config``
  ``model_config``          the model config JSON (``maml.models.config_to_dict``)
  ``loc``, ``scale``        normalisation constants (also in the graph)
  ``residual_scale``        residual std in raw units on points the adaptation did not fit
  ``threshold``             anomaly threshold on ``|actual - forecast| / sigma``
  ``template_id``           sha256 of the graph with per-series values zeroed: files with the
                            same id share one graph and differ only in the initializers below
                            (int8-delta files: the initializer's base weights are part of
                            the graph, so files of two initializers have different ids)
  ``series_initializers``   JSON list of initializer names holding per-series values
  ``adaptation``            ``adapted`` (the parameters were adapted to the series) or
                            ``zero-shot`` (the family initializer's parameters, un-adapted:
                            the series held one window but fewer than K + C points, see
                            :mod:`mamlctl.maml.zero_shot`; ``loc``/``scale`` are then the
                            statistics of its last ``min(n, K)`` points and ``residual_scale``
                            and ``threshold`` the family's calibration prior). Files without
                            the key are adapted.
  ========================  ==============================================================

Floats are written with ``repr`` (exact round trip). :func:`parse_metadata` reads them back from
``onnx`` ``metadata_props`` or onnxruntime's ``custom_metadata_map`` without importing torch.

Exporting is template-based (:mod:`mamlctl.maml.onnx_template`): one ``torch.onnx.export`` per
model config, then each series' values are written into a copy of the serialized template.
Adapted layers are stored as float32 (exact) or, by default, as int8 deltas from the
initializer's weights with one float32 scale per output row (``adapt --weights``; see
:func:`mamlctl.maml.onnx_binding.quantized_linear_form`): the file is still a plain ONNX model,
and what it computes is what the server computes, bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mamlctl.domain import ADAPTATION_KEY, ADAPTED, ZERO_SHOT
from mamlctl.errors import InputError
from mamlctl.maml.onnx_contract import OPSET, canonical_json, config_hash

if TYPE_CHECKING:
    from mamlctl.domain import InitializerRef
    from mamlctl.maml.onnx_template import OnnxTemplate

PREFIX = "mamlctl."
CONTRACT_VERSION = "1"
_LOSS = {"mean": "mse", "gaussian": "gaussian_nll"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMetadata:
    """The parsed ``mamlctl.*`` metadata of an adapted-model file."""

    contract: str
    series_id: str
    family: str
    registered_model: str
    initializer_version: int
    initializer_run_id: str
    adapted_at: datetime
    support: int
    window: int
    horizon: int
    head: str
    loss: str
    config_hash: str
    model_config: dict[str, Any]
    loc: float
    scale: float
    residual_scale: float
    threshold: float
    template_id: str
    series_initializers: tuple[str, ...]
    nonnegative: bool = False
    floor_fraction: float = 0.0
    adaptation: str = ADAPTED


def build_metadata(
    template: OnnxTemplate,
    *,
    series_id: str,
    initializer: InitializerRef,
    adapted_at: datetime,
    support: int,
    loc: float,
    scale: float,
    residual_scale: float,
    threshold: float,
    loss: str | None = None,
    adaptation: str = ADAPTED,
) -> dict[str, str]:
    """The ``metadata_props`` of one series' file (keys with the ``mamlctl.`` prefix)."""
    if adapted_at.tzinfo is None:
        raise InputError("adapted_at must be timezone-aware (UTC)")
    if adaptation not in (ADAPTED, ZERO_SHOT):
        raise InputError(f"adaptation must be {ADAPTED!r} or {ZERO_SHOT!r}, got {adaptation!r}")
    return {
        PREFIX + "contract": CONTRACT_VERSION,
        PREFIX + "series_id": series_id,
        PREFIX + "family": initializer.family,
        PREFIX + "registered_model": initializer.registered_model,
        PREFIX + "initializer_version": str(int(initializer.version)),
        PREFIX + "initializer_run_id": initializer.run_id,
        PREFIX + "adapted_at": adapted_at.astimezone(UTC).isoformat(),
        PREFIX + "support": str(int(support)),
        PREFIX + "window": str(template.window),
        PREFIX + "horizon": str(template.horizon),
        PREFIX + "head": template.head,
        PREFIX + "loss": loss or _LOSS[template.head],
        PREFIX + "nonnegative": "1" if template.nonnegative else "0",
        PREFIX + "floor_fraction": repr(float(template.floor_fraction)),
        PREFIX + "config_hash": template.config_hash,
        PREFIX + "model_config": canonical_json(template.model_config),
        PREFIX + "loc": repr(float(loc)),
        PREFIX + "scale": repr(float(scale)),
        PREFIX + "residual_scale": repr(float(residual_scale)),
        PREFIX + "threshold": repr(float(threshold)),
        PREFIX + "template_id": template.template_id,
        PREFIX + "series_initializers": json.dumps(list(template.series_initializers)),
        PREFIX + ADAPTATION_KEY: adaptation,
    }


def parse_metadata(props: Mapping[str, str]) -> ModelMetadata:
    """Parse ``mamlctl.*`` metadata (a dict, e.g. onnxruntime's ``custom_metadata_map``)."""
    try:

        def get(key: str) -> str:
            return props[PREFIX + key]

        adapted_at = datetime.fromisoformat(get("adapted_at"))
        if adapted_at.tzinfo is None:
            raise ValueError("adapted_at has no timezone")
        return ModelMetadata(
            contract=get("contract"),
            series_id=get("series_id"),
            family=get("family"),
            registered_model=get("registered_model"),
            initializer_version=int(get("initializer_version")),
            initializer_run_id=get("initializer_run_id"),
            adapted_at=adapted_at,
            support=int(get("support")),
            window=int(get("window")),
            horizon=int(get("horizon")),
            head=get("head"),
            loss=get("loss"),
            config_hash=get("config_hash"),
            model_config=json.loads(get("model_config")),
            loc=float(get("loc")),
            scale=float(get("scale")),
            residual_scale=float(get("residual_scale")),
            threshold=float(get("threshold")),
            template_id=get("template_id"),
            series_initializers=tuple(json.loads(get("series_initializers"))),
            nonnegative=props.get(PREFIX + "nonnegative", "0") == "1",
            floor_fraction=float(props.get(PREFIX + "floor_fraction", "0.0")),
            adaptation=_adaptation(props.get(PREFIX + ADAPTATION_KEY, ADAPTED)),
        )
    except KeyError as err:
        raise InputError(f"model file lacks metadata key {err.args[0]!r}") from None
    except ValueError as err:
        raise InputError(f"model file has malformed mamlctl metadata: {err}") from None


def _adaptation(value: str) -> str:
    if value not in (ADAPTED, ZERO_SHOT):
        raise ValueError(f"adaptation is {value!r}, not {ADAPTED!r} or {ZERO_SHOT!r}")
    return value


def read_metadata(model: bytes | Path) -> ModelMetadata:
    """Parse the metadata of a serialized model (bytes, or a path to read) with ``onnx``."""
    import onnx

    proto = onnx.load_from_string(model if isinstance(model, bytes) else Path(model).read_bytes())
    return parse_metadata({p.key: p.value for p in proto.metadata_props})


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesBatch:
    """Adapted values of N series of one family, stacked on a leading axis.

    ``params[name]`` is ``[N, *param_shape]`` float32 (e.g. ``batch_adapt``'s output as numpy);
    ``loc``, ``scale``, ``residual_scale``, ``threshold`` are ``[N]``; ``adaptation`` is the
    lineage every file of the batch records (``adapted`` or ``zero-shot``).
    """

    series_ids: tuple[str, ...]
    params: Mapping[str, npt.NDArray[np.float32]]
    loc: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    residual_scale: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    adaptation: str = ADAPTED

    def __post_init__(self) -> None:
        n = len(self.series_ids)
        arrays: list[tuple[str, npt.NDArray[Any]]] = [
            ("loc", self.loc),
            ("scale", self.scale),
            ("residual_scale", self.residual_scale),
            ("threshold", self.threshold),
            *self.params.items(),
        ]
        for name, arr in arrays:
            if arr.shape[:1] != (n,):
                raise InputError(f"{name} has leading size {arr.shape[:1]}, expected ({n},)")
        bad = ~np.isfinite(self.scale) | (self.scale <= 0)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"series {self.series_ids[i]!r} has a non-positive scale")

    def __len__(self) -> int:
        return len(self.series_ids)

    def params_of(self, i: int) -> dict[str, npt.NDArray[np.float32]]:
        return {name: arr[i] for name, arr in self.params.items()}


def render_batch(
    template: OnnxTemplate,
    batch: SeriesBatch,
    *,
    initializer: InitializerRef,
    support: int,
    adapted_at: datetime,
    loss: str | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(series_id, serialized ONNX)`` for every series of ``batch``, lazily."""
    missing = set(template.param_shapes) - set(batch.params)
    if missing:
        raise InputError(f"adapted parameters lack {sorted(missing)}")
    for i, series_id in enumerate(batch.series_ids):
        loc, scale = float(batch.loc[i]), float(batch.scale[i])
        rscale, thr = float(batch.residual_scale[i]), float(batch.threshold[i])
        if not all(math.isfinite(v) for v in (loc, rscale, thr)):
            raise InputError(f"series {series_id!r} has non-finite loc/residual/threshold")
        metadata = build_metadata(
            template,
            series_id=series_id,
            initializer=initializer,
            adapted_at=adapted_at,
            support=support,
            loc=loc,
            scale=scale,
            residual_scale=rscale,
            threshold=thr,
            loss=loss,
            adaptation=batch.adaptation,
        )
        yield (
            series_id,
            template.render(
                batch.params_of(i),
                loc=loc,
                scale=scale,
                residual_scale=rscale,
                metadata=metadata,
            ),
        )


class TemplateCache:
    """Templates by (config hash, opset, lower bound): one ``torch.onnx.export`` each."""

    def __init__(self) -> None:
        self._templates: dict[tuple[Any, ...], OnnxTemplate] = {}

    def get(
        self,
        config: Any,
        *,
        opset: int | None = None,
        nonnegative: bool = False,
        floor_fraction: float = 0.0,
        per_series: Collection[str] | None = None,
        weights: str = "float32",
    ) -> OnnxTemplate:
        """The template of a ``maml.models`` config (``MLPConfig`` / ``ConvConfig``);
        ``per_series``: the parameters adapted per series (None: all); ``weights``: their
        export format (see :func:`~mamlctl.maml.onnx_template.build_template`)."""
        from mamlctl.maml.models import config_to_dict

        fraction = float(floor_fraction) if nonnegative else 0.0
        adapted = None if per_series is None else tuple(sorted(per_series))
        key = (
            config_hash(config_to_dict(config)),
            opset or OPSET,
            nonnegative,
            fraction,
            adapted,
            weights,
        )
        if key not in self._templates:
            self._templates[key] = template_for_config(
                config,
                opset=key[1],
                nonnegative=nonnegative,
                floor_fraction=fraction,
                per_series=adapted,
                weights=weights,
            )
        return self._templates[key]


def template_for_config(
    config: Any,
    *,
    opset: int | None = None,
    seed: int = 0,
    nonnegative: bool = False,
    floor_fraction: float = 0.0,
    per_series: Collection[str] | None = None,
    weights: str = "float32",
) -> OnnxTemplate:
    """Build the template of a ``maml.models`` config (exports once; ~1 s)."""
    import torch

    from mamlctl.maml.models import build_model, config_to_dict
    from mamlctl.maml.onnx_template import build_template

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        core = build_model(config)
    return build_template(
        core,
        model_config=config_to_dict(config),
        window=int(config.window),
        horizon=int(config.horizon),
        head=config.head,
        opset=opset or OPSET,
        seed=seed,
        nonnegative=nonnegative,
        floor_fraction=floor_fraction,
        per_series=per_series,
        weights=weights,
    )


def stack_params(per_series: Sequence[Mapping[str, Any]]) -> dict[str, npt.NDArray[np.float32]]:
    """Stack per-series parameter dicts (numpy or torch) into ``[N, ...]`` float32 arrays."""
    if not per_series:
        return {}
    names = list(per_series[0])
    return {
        name: np.stack([np.asarray(_numpy(p[name]), dtype=np.float32) for p in per_series])
        for name in names
    }


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
