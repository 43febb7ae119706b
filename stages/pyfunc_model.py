"""The initializer as an MLflow Model: a ``python_function`` flavor over the initializer folder.

``train`` logs, beside the run's ``initializer/`` artifact, an MLflow Model folder ``model/``
(see :func:`save_pyfunc_model`) and registers *that* as the model version::

    model/MLmodel                       python_function flavor, signature, input example,
                                        model config (the family's shape), requirements
    model/pyfunc_code.py                the model's code (MLflow's models from code,
                                        :mod:`mamlctl.stages.pyfunc_code`): it names an
                                        :class:`InitializerForecaster`; nothing is pickled
    model/artifacts/initializer/        the initializer folder, byte for byte as ``initializer/``
                                        (weights.safetensors, initializer.json, family.json)

so ``mlflow.pyfunc.load_model("models:/maml-<family>@champion").predict(df)`` works with
nothing but the package installed (no registry database, no settings), and
``mlflow models serve -m models:/maml-<family>@champion --env-manager local`` answers
``/invocations`` with the same frame.

**predict** takes a Nixtla long frame ``unique_id, ds, y`` (any order; sorted by ``ds`` per
series) and does what ``mamlctl adapt`` then ``mamlctl forecast`` do, in memory:

* a series with K points or more is adapted by :func:`mamlctl.maml.adaptation.adapt_histories`
  (on its last K + C points, calibrated on up to C of them), with the plan of
  :func:`~mamlctl.maml.adaptation.plan_adaptation` for the family's L, H, K, P and
  ``AdaptConfig()`` (the ``adapt`` command's defaults);
* one with ``L <= n < K`` is served zero-shot (:func:`mamlctl.maml.zero_shot.zero_shot_histories`);
* one with fewer than L points is an error naming it.

The forecast from the series' last L values is the exported file's contract computed in torch
(:func:`mamlctl.maml.onnx_contract.contract_module`'s arithmetic, float32), so it equals what the
scoring server answers for the adapted model up to the file's weight storage (exact for
``--weights float32``). The answer is ``unique_id, ds, yhat`` plus ``yhat-lo-<l>``/
``yhat-hi-<l>`` for each level (``params={"level": [80, 95]}``, else the model config's
``level``), Gaussian around ``yhat`` with the served sigma, as :mod:`mamlctl.stages.forecast`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mamlctl.errors import InputError
from mamlctl.ports import INITIALIZER_ARTIFACT
from mamlctl.stages.forecast import interval_bounds, level_label, parse_levels

with warnings.catch_warnings():
    # mlflow.types.responses warns about its own `Any` hints when first imported (MLflow 3.x)
    warnings.filterwarnings("ignore", message="Any type hint is inferred", category=UserWarning)
    import mlflow.pyfunc

if TYPE_CHECKING:
    from mamlctl.domain import Family
    from mamlctl.maml.adaptation import AdaptConfig
    from mamlctl.maml.initializer import Initializer

#: Artifact folder of a training run that holds the MLflow Model (the version's source).
MODEL_ARTIFACT = "model"
#: Key of the initializer folder in the pyfunc model's ``artifacts``.
ARTIFACT_KEY = INITIALIZER_ARTIFACT
INPUT_COLUMNS = ("unique_id", "ds", "y")


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyShape:
    """What adaptation needs to know of the family (the pyfunc model config)."""

    family: str
    period: int | None
    window: int
    horizon: int
    support: int
    interval_seconds: float | None = None

    @classmethod
    def of(cls, family: Family) -> FamilyShape:
        return cls(
            family=family.name,
            period=family.period,
            window=family.window,
            horizon=family.horizon,
            support=family.support,
            interval_seconds=family.interval_seconds,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FamilyShape:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in config.items() if k in names})


class InitializerForecaster(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """The pyfunc model: see the module doc. State is read in :meth:`load_context`."""

    def __init__(self) -> None:
        self._initializer: Initializer | None = None
        self._shape: FamilyShape | None = None
        self._levels: tuple[float, ...] = ()

    def load_context(self, context: Any) -> None:
        from mamlctl.maml.initializer import load_initializer

        self._initializer = load_initializer(context.artifacts[ARTIFACT_KEY])
        config = dict(context.model_config or {})
        self._shape = FamilyShape.from_config(config)
        self._levels = parse_levels(config.get("level") or ())

    # a DataFrame hint: MLflow infers no signature from it (the explicit one is used)
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self._initializer is None or self._shape is None:
            self.load_context(context)
        assert self._initializer is not None and self._shape is not None
        levels = self._levels
        if params and params.get("level") is not None:
            levels = parse_levels(list(params["level"]))
        return forecast_long_frame(self._initializer, model_input, shape=self._shape, levels=levels)


def forecast_long_frame(
    initializer: Initializer,
    frame: pd.DataFrame,
    *,
    shape: FamilyShape,
    levels: Sequence[float] = (),
    config: AdaptConfig | None = None,
) -> pd.DataFrame:
    """Adapt (or zero-shot) every series of ``frame`` and forecast H steps; see module doc."""
    import pandas as pd

    from mamlctl.maml.adaptation import AdaptConfig, adapt_histories, plan_adaptation
    from mamlctl.maml.zero_shot import can_zero_shot, zero_shot_histories

    plan = plan_adaptation(
        initializer,
        window=shape.window,
        horizon=shape.horizon,
        support=shape.support,
        period=shape.period,
        config=config or AdaptConfig(),
    )
    ids, histories, stamps = _split(frame)
    n = np.array([h.shape[0] for h in histories], dtype=np.int64)
    for sid, size in zip(ids, n, strict=True):
        if size < plan.window:
            raise InputError(
                f"series {sid!r} has {size} points; forecasting needs at least L = {plan.window}"
            )
    adapted = np.flatnonzero(n >= plan.min_points)
    zero = np.array([i for i in range(len(ids)) if can_zero_shot(int(n[i]), plan)], dtype=np.int64)
    H = plan.horizon
    yhat = np.empty((len(ids), H), dtype=np.float64)
    sigma = np.empty((len(ids), H), dtype=np.float64)
    for idx, fn in ((adapted, adapt_histories), (zero, zero_shot_histories)):
        if idx.size == 0:
            continue
        result = fn(initializer, [histories[i][-plan.full_points :] for i in idx], plan=plan)
        windows = np.stack([histories[i][-plan.window :] for i in idx]).astype(np.float32)
        yhat[idx], sigma[idx] = contract_forecast(
            initializer,
            result.params,
            windows,
            loc=result.loc,
            scale=result.scale,
            residual_scale=result.residual_scale,
            nonnegative=plan.nonnegative,
            floor_fraction=plan.floor_fraction,
            growth=None if plan.band is None else plan.band.growth,
        )
    band = None if plan.band is None else plan.band.table()
    parts: list[pd.DataFrame] = []
    for i, sid in enumerate(ids):
        cols: dict[str, Any] = {
            "unique_id": sid,
            "ds": _future(stamps[i], H, shape.interval_seconds, sid),
            "yhat": yhat[i],
        }
        for level in levels:
            lo, hi = interval_bounds(yhat[i], sigma[i], level, band)
            cols[f"yhat-lo-{level_label(level)}"] = lo
            cols[f"yhat-hi-{level_label(level)}"] = hi
        parts.append(pd.DataFrame(cols))
    columns = ["unique_id", "ds", "yhat"] + [
        f"yhat-{side}-{level_label(level)}" for level in levels for side in ("lo", "hi")
    ]
    if not parts:
        return pd.DataFrame({c: [] for c in columns})
    return pd.concat(parts, ignore_index=True)[columns]


def contract_forecast(
    initializer: Initializer,
    params: Mapping[str, npt.NDArray[np.float32]],
    windows: npt.NDArray[np.float32],
    *,
    loc: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    residual_scale: npt.NDArray[np.float64],
    nonnegative: bool,
    floor_fraction: float,
    growth: Sequence[float] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(forecast, sigma)`` ``[N, H]`` of N per-series models on their raw windows ``[N, L]``:
    the exported file's contract (normalise, core, de-normalise, lower bound, sigma) in float32
    torch, vectorised over series with :func:`mamlctl.maml.engine.batched_forward`."""
    import torch

    from mamlctl.maml.engine import batched_forward

    model = initializer.model()
    horizon = int(initializer.model_config.horizon)
    p = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in params.items()}
    w = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))  # [N, L]
    loc32 = torch.from_numpy(loc.astype(np.float32))[:, None]
    scale32 = torch.from_numpy(scale.astype(np.float32))[:, None]
    with torch.no_grad():
        z = (w - loc32) / scale32
        out = batched_forward(model)(p, z[:, None, :])[:, 0, :]  # [N, out]
        forecast = out[:, :horizon] * scale32 + loc32
        if nonnegative and floor_fraction == 0.0:
            forecast = torch.relu(forecast)
        elif nonnegative:
            low = torch.relu(w.amin(dim=1, keepdim=True) * float(floor_fraction))
            forecast = torch.maximum(forecast, low)
        if initializer.model_config.head == "gaussian":
            sigma = torch.exp(0.5 * out[:, horizon:].clamp(-10.0, 10.0)) * scale32
        else:
            rs = torch.from_numpy(residual_scale.astype(np.float32))[:, None]
            sigma = rs.expand_as(forecast)
            if growth is not None:  # the family's per-step growth (maml.horizon_band)
                sigma = sigma * torch.tensor(list(growth), dtype=torch.float32)
    return forecast.double().numpy(), sigma.double().numpy()


def _split(frame: Any) -> tuple[list[str], list[npt.NDArray[np.float64]], list[Any]]:
    """Per series (in order of first appearance): id, values and stamps sorted by ``ds``."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a DataFrame with columns {list(INPUT_COLUMNS)}")
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"input frame lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    df = frame[list(INPUT_COLUMNS)].copy()
    df["unique_id"] = df["unique_id"].astype(str)
    if df["ds"].dtype == object:  # JSON input: ISO text or integers
        try:
            df["ds"] = pd.to_numeric(df["ds"])
        except (TypeError, ValueError):
            df["ds"] = pd.to_datetime(df["ds"])
    y = pd.to_numeric(df["y"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(y)):
        bad = df["unique_id"].to_numpy()[~np.isfinite(y)][0]
        raise InputError(f"series {bad!r} has a missing or non-finite y")
    df["y"] = y
    ids = list(dict.fromkeys(df["unique_id"].tolist()))
    by_id = {
        str(sid): (g["y"].to_numpy(dtype=np.float64), g["ds"].to_numpy())
        for sid, g in df.sort_values("ds", kind="stable").groupby("unique_id", sort=False)
    }
    return ids, [by_id[s][0] for s in ids], [by_id[s][1] for s in ids]


def _future(stamps: Any, horizon: int, interval_seconds: float | None, sid: str) -> Any:
    """``horizon`` stamps after the last: positions + k, or last time + k * interval (the
    family's, else the series' median step), as :func:`mamlctl.stages.forecast.future_ds`."""
    k = np.arange(1, horizon + 1, dtype=np.int64)
    if stamps.dtype.kind in "iu":
        return stamps[-1] + k
    ts = stamps.astype("datetime64[us]")
    step = interval_seconds
    if step is None and ts.shape[0] >= 2:
        step = float(np.median(np.diff(ts).astype(np.int64))) / 1e6
    if step is None or not step > 0:
        raise InputError(f"series {sid!r}: no sampling interval to place future timestamps")
    return ts[-1] + k * np.timedelta64(round(step * 1e6), "us")


def example_frame(series: Sequence[Any], *, points: int, limit: int = 1) -> pd.DataFrame:
    """The input example: the last ``points`` points of the first ``limit`` series."""
    import pandas as pd

    parts = []
    for s in list(series)[:limit]:
        values = np.asarray(s.values, dtype=np.float64)[-points:]
        if s.timestamps is not None:
            ds: Any = np.asarray(s.timestamps)[-values.shape[0] :].astype("datetime64[us]")
        else:
            ds = np.arange(len(s) - values.shape[0], len(s), dtype=np.int64)
        parts.append(pd.DataFrame({"unique_id": str(s.series_id), "ds": ds, "y": values}))
    return pd.concat(parts, ignore_index=True)


def save_pyfunc_model(
    path: Path,
    *,
    initializer_dir: Path,
    family: Family,
    example: pd.DataFrame,
) -> Path:
    """Write the MLflow Model folder at ``path`` (see module doc); returns it.

    The signature names the input columns (``ds`` a datetime or a long, as in ``example``) and
    the point-forecast columns (the interval columns depend on ``level``, a parameter: a list
    of percentages, default none); ``example`` is checked to forecast before it is saved."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from mamlctl.maml.initializer import load_initializer

    shape = FamilyShape.of(family)
    forecast_long_frame(load_initializer(initializer_dir), example, shape=shape)  # it runs
    ds_type = "datetime" if example["ds"].dtype.kind == "M" else "long"
    signature = ModelSignature(
        inputs=Schema(
            [ColSpec("string", "unique_id"), ColSpec(ds_type, "ds"), ColSpec("double", "y")]
        ),
        outputs=Schema(
            [ColSpec("string", "unique_id"), ColSpec(ds_type, "ds"), ColSpec("double", "yhat")]
        ),
        params=ParamSchema([ParamSpec("level", "double", [], (-1,))]),
    )
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # from code: no pickle
        artifacts={ARTIFACT_KEY: str(initializer_dir)},
        signature=signature,
        input_example=example,
        model_config={**asdict(shape), "level": []},
        pip_requirements=[f"mlflow=={mlflow.__version__}", "mamlctl[train]"],
    )
    return path
