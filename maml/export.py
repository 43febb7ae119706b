"""Per-series ONNX files: the batch exporter of the file contract.

The contract itself (inputs, outputs, normalisation, the ``mamlctl.*`` metadata keys) is
documented and parsed in the torch-free :mod:`mamlctl.contract`, which the scoring server
imports too; this module renders files that follow it (:func:`build_metadata`) and reads
a serialized file's metadata back (:func:`read_metadata`).

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

from mamlctl.contract import CONTRACT_VERSION, PREFIX, ModelMetadata, band_json, parse_metadata
from mamlctl.domain import ADAPTATION_KEY, ADAPTED, ZERO_SHOT
from mamlctl.errors import InputError
from mamlctl.maml.onnx_contract import OPSET, canonical_json, config_hash

__all__ = [
    "CONTRACT_VERSION",
    "PREFIX",
    "ModelMetadata",
    "SeriesBatch",
    "build_metadata",
    "parse_metadata",
    "read_metadata",
    "render_batch",
]

if TYPE_CHECKING:
    from mamlctl.domain import InitializerRef
    from mamlctl.maml.onnx_template import OnnxTemplate

_LOSS = {"mean": "mse", "gaussian": "gaussian_nll"}


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
        **(
            {}
            if template.band is None
            else {PREFIX + "band": band_json(*zip(*template.band, strict=True))}
        ),
    }


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
        growth: Sequence[float] | None = None,
    ) -> OnnxTemplate:
        """The template of a ``maml.models`` config (``MLPConfig`` / ``ConvConfig``);
        ``per_series``: the parameters adapted per series (None: all); ``weights``: their
        export format (see :func:`~mamlctl.maml.onnx_template.build_template`); ``growth``:
        the mean head's per-step sigma growth (:mod:`mamlctl.maml.horizon_band`)."""
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
            None if growth is None else tuple(float(g) for g in growth),
        )
        if key not in self._templates:
            self._templates[key] = template_for_config(
                config,
                opset=key[1],
                nonnegative=nonnegative,
                floor_fraction=fraction,
                per_series=adapted,
                weights=weights,
                growth=key[6],
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
    growth: Sequence[float] | None = None,
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
        growth=growth,
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
