"""The file contract of an adapted-model file: what the exporter writes and the server reads.

Torch-free (the standard library and the domain types only): :mod:`mamlctl.maml.export`
renders files that follow it and :mod:`mamlctl.serving` reads them with it, so both sides name
the same keys from one place.

Contract of an adapted-model file (version 1)
=============================================

One self-contained ONNX file per series, usable without mamlctl:

* **input** ``window``: float32 ``[batch, L]``, the RAW most recent ``L`` values, oldest first;
  ``batch`` is dynamic (any >= 1).
* **outputs**
  - ``forecast``: float32 ``[batch, H]``, the next ``H`` values in raw units;
  - ``sigma``: float32 ``[batch, H]``, the scale of each step's error in raw units: for a
    ``gaussian`` head ``exp(0.5 * clamp(logvar, -10, 10)) * scale``; for a ``mean`` head the
    series' ``residual_scale`` times the family's per-step growth (1 at the first step, see
    below), so ``sigma[:, 0]`` is the one-step scale anomaly scoring uses.
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
  ``band``                  optional JSON ``{"levels": [...], "multipliers": [...]}``: the
                            half-width of the ``l`` % prediction band in units of ``sigma``
                            at each level ``l`` (percent), calibrated by ``train`` on held-out
                            series (:func:`band_multiplier`); files without the key draw
                            Gaussian bands (multiplier ``z_{(1+l)/2}``)
  ========================  ==============================================================

A ``mean`` head's ``sigma`` is ``residual_scale * growth[h]``, ``growth`` a constant of the graph
(the family's, from ``train``; 1 for every step in files of initializers without a band, and
always 1 at the first step, so ``sigma[:, 0]`` is the one-step residual scale).

Floats are written with ``repr`` (exact round trip). :func:`parse_metadata` reads them back from
``onnx`` ``metadata_props`` or onnxruntime's ``custom_metadata_map``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mamlctl.domain import ADAPTATION_KEY, ADAPTED, ZERO_SHOT
from mamlctl.errors import InputError

#: Prefix of every metadata key of the contract.
PREFIX = "mamlctl."
CONTRACT_VERSION = "1"


def key(name: str) -> str:
    """The metadata key of a contract field, e.g. ``key("template_id")``."""
    return PREFIX + name


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
    #: ``((level, multiplier), ...)`` of the ``band`` key, or None (Gaussian bands)
    band: tuple[tuple[float, float], ...] | None = None


def parse_metadata(props: Mapping[str, str]) -> ModelMetadata:
    """Parse ``mamlctl.*`` metadata (a dict, e.g. onnxruntime's ``custom_metadata_map``)."""
    try:

        def get(name: str) -> str:
            return props[key(name)]

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
            nonnegative=props.get(key("nonnegative"), "0") == "1",
            floor_fraction=float(props.get(key("floor_fraction"), "0.0")),
            adaptation=_adaptation(props.get(key(ADAPTATION_KEY), ADAPTED)),
            band=parse_band(props.get(key("band"))),
        )
    except KeyError as err:
        raise InputError(f"model file lacks metadata key {err.args[0]!r}") from None
    except ValueError as err:
        raise InputError(f"model file has malformed mamlctl metadata: {err}") from None


def _adaptation(value: str) -> str:
    if value not in (ADAPTED, ZERO_SHOT):
        raise ValueError(f"adaptation is {value!r}, not {ADAPTED!r} or {ZERO_SHOT!r}")
    return value


def band_json(levels: Sequence[float], multipliers: Sequence[float]) -> str:
    """The ``band`` metadata value (canonical JSON, floats exact)."""
    doc = {"levels": [float(v) for v in levels], "multipliers": [float(m) for m in multipliers]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def parse_band(text: str | None) -> tuple[tuple[float, float], ...] | None:
    """``band`` metadata -> ``((level, multiplier), ...)`` sorted by level, or None; levels in
    (0, 100) and multipliers positive and non-decreasing, else ``ValueError``."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        pairs = tuple(
            sorted(
                (float(v), float(m)) for v, m in zip(doc["levels"], doc["multipliers"], strict=True)
            )
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"band {text!r} is malformed ({err})") from None
    mult = [m for _, m in pairs]
    if (
        not pairs
        or not all(0 < v < 100 and math.isfinite(m) and m > 0 for v, m in pairs)
        or any(b < a for a, b in itertools.pairwise(mult))
    ):
        raise ValueError(f"band {text!r} is not a non-decreasing table of positive multipliers")
    return pairs


def band_multiplier(level: float, band: Sequence[tuple[float, float]] | None) -> float:
    """Half-width of the ``level`` % band (a percentage) in units of ``sigma``.

    Without a ``band``: the Gaussian ``z_{(1+l)/2}``. With one: its multiplier, interpolated
    linearly between its levels; outside them the Gaussian quantile times the nearest level's
    ratio ``multiplier / z``. Non-decreasing in ``level`` either way (nested bands).
    """
    from statistics import NormalDist

    def gauss(v: float) -> float:
        return NormalDist().inv_cdf((1 + v / 100) / 2)

    if not band:
        return gauss(level)
    levels = [v for v, _ in band]
    mult = [m for _, m in band]
    if level <= levels[0]:
        return mult[0] / gauss(levels[0]) * gauss(level)
    if level >= levels[-1]:
        return mult[-1] / gauss(levels[-1]) * gauss(level)
    i = bisect.bisect_right(levels, level)
    a, b = levels[i - 1], levels[i]
    return mult[i - 1] + (mult[i] - mult[i - 1]) * (level - a) / (b - a)
