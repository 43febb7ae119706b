"""The M4 protocol harness for Hourly and Weekly: load, forecast, score, write.

A method is any ``ForecastFn``: ragged histories (what the method may see) and a horizon in,
an ``[S, H]`` forecast matrix out. ``run_m4`` shows every method the same histories (the full
training part, or with ``history=N`` only its last ``N`` points: the few-shot track), scores
the forecasts against the test part with M4's sMAPE, MASE and OWA, and can write

* ``<out>/forecasts/<method>.csv`` in M4's wide format (``id,F1..FH``),
* ``<out>/results.md`` (a markdown table) and ``<out>/results.json``.

The MASE scale is always computed on the full training part: it belongs to the metric, not to
the method, so few-shot and full-history numbers stay comparable. Naive2 (the OWA reference)
always runs on the same histories as the other methods; it is added if not given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mamlctl.errors import InputError, NotFoundError
from mamlctl.timeseries import baselines
from mamlctl.timeseries.metrics import m4_accuracy

FloatArray = npt.NDArray[np.float64]
ForecastFn = Callable[[Sequence[FloatArray], int], FloatArray]

__all__ = [
    "SUBSETS",
    "ForecastFn",
    "M4Data",
    "M4Run",
    "M4Subset",
    "MethodResult",
    "baseline_methods",
    "load_subset",
    "markdown_table",
    "run_m4",
    "write_forecasts",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class M4Subset:
    """A subset's protocol: horizon, MASE period ``m`` as M4 scored it, and the seasonal
    period baselines use (M4's frequency: 24 Hourly, 1 Weekly), and the default few-shot N."""

    name: str
    file_stem: str
    horizon: int
    m: int
    season: int
    few_shot_history: int


SUBSETS: dict[str, M4Subset] = {
    "hourly": M4Subset(
        name="hourly", file_stem="Hourly", horizon=48, m=24, season=24, few_shot_history=48
    ),
    "weekly": M4Subset(
        name="weekly", file_stem="Weekly", horizon=13, m=1, season=1, few_shot_history=104
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class M4Data:
    """A subset's series: ids, full training histories and the test part ``[S, H]``."""

    subset: M4Subset
    ids: tuple[str, ...]
    histories: list[FloatArray]
    actual: FloatArray

    def select(self, n: int) -> M4Data:
        """The first ``n`` series (for quick runs and tests)."""
        return M4Data(
            subset=self.subset,
            ids=self.ids[:n],
            histories=self.histories[:n],
            actual=self.actual[:n],
        )


def _subset(name: str) -> M4Subset:
    try:
        return SUBSETS[name.lower()]
    except KeyError:
        raise InputError(f"unknown M4 subset {name!r}; choose one of {sorted(SUBSETS)}") from None


def load_subset(data_dir: str | Path, subset: str) -> M4Data:
    """Read ``<Subset>-train.csv.gz`` and ``<Subset>-test.csv.gz`` from ``data_dir`` or
    ``data_dir/m4`` (M4's wide CSV: ``V1`` the id, then the values, right-padded)."""
    import pandas as pd

    spec = _subset(subset)
    base = Path(data_dir)
    for root in (base, base / "m4"):
        train_path = root / f"{spec.file_stem}-train.csv.gz"
        test_path = root / f"{spec.file_stem}-test.csv.gz"
        if train_path.is_file() and test_path.is_file():
            break
    else:
        raise NotFoundError(
            f"no {spec.file_stem}-train.csv.gz and {spec.file_stem}-test.csv.gz in {base} "
            f"or {base / 'm4'}"
        )
    try:
        # index_col=False: never infer an index from a row longer than the header
        train = pd.read_csv(train_path, index_col=False)
        test = pd.read_csv(test_path, index_col=False)
        train = train.set_index(train.columns[0])
        test = test.set_index(test.columns[0])
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read M4 {spec.file_stem} files in {root}: {exc}") from exc
    if list(train.index) != list(test.index):
        raise InputError(f"{train_path.name} and {test_path.name} list different series ids")
    if test.shape[1] != spec.horizon or test.isna().to_numpy().any():
        raise InputError(f"{test_path.name} must hold {spec.horizon} values for every series")
    histories = [row.dropna().to_numpy(dtype=np.float64) for _, row in train.iterrows()]
    return M4Data(
        subset=spec,
        ids=tuple(str(i) for i in train.index),
        histories=histories,
        actual=test.to_numpy(dtype=np.float64),
    )


def baseline_methods(subset: M4Subset, *, statsforecast: bool = True) -> dict[str, ForecastFn]:
    """Naive, seasonal naive, Naive2 and (optionally) AutoETS and AutoTheta for ``subset``."""
    m = subset.season
    methods: dict[str, ForecastFn] = {
        "naive": lambda xs, h: baselines.naive(xs, h),
        "seasonal_naive": lambda xs, h: baselines.seasonal_naive(xs, h, m=m),
        "naive2": lambda xs, h: baselines.naive2(xs, h, m=m),
    }
    if statsforecast:
        methods["auto_ets"] = lambda xs, h: baselines.auto_ets(xs, h, m=m)
        methods["auto_theta"] = lambda xs, h: baselines.auto_theta(xs, h, m=m)
    return methods


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodResult:
    """One method's M4 aggregates on a subset and the wall time of its forecasts."""

    method: str
    smape: float
    mase: float
    owa: float
    wall_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class M4Run:
    """The outcome of one protocol run."""

    subset: str
    history: int | None
    n_series: int
    results: tuple[MethodResult, ...]
    forecasts: dict[str, FloatArray]


def run_m4(
    data: M4Data,
    methods: Mapping[str, ForecastFn],
    *,
    history: int | None = None,
    out_dir: str | Path | None = None,
    on_method: Callable[[str], None] | None = None,
) -> M4Run:
    """Forecast with every method on the same (possibly truncated) histories and score them."""
    if history is not None and history < 1:
        raise InputError(f"--history must be >= 1, got {history}")
    shown = data.histories if history is None else [x[-history:] for x in data.histories]
    h = data.subset.horizon
    todo = dict(methods)
    if "naive2" not in todo:
        todo = {**todo, "naive2": baseline_methods(data.subset, statsforecast=False)["naive2"]}

    forecasts: dict[str, FloatArray] = {}
    walls: dict[str, float] = {}
    for name, fn in todo.items():
        if on_method is not None:
            on_method(name)
        start = time.perf_counter()
        fc = np.asarray(fn(shown, h), dtype=np.float64)
        walls[name] = time.perf_counter() - start
        if fc.shape != (len(shown), h) or not np.all(np.isfinite(fc)):
            raise InputError(
                f"method {name} returned forecasts of shape {fc.shape} (need {(len(shown), h)}) "
                "or non-finite values"
            )
        forecasts[name] = fc

    # OWA's denominator is M4's official Naive2, on each series' full training history, also on
    # the few-points tracks: figures stay comparable with the published ones and across N.
    official = (
        forecasts["naive2"]
        if history is None
        else np.asarray(todo["naive2"](data.histories, h), dtype=np.float64)
    )
    results = []
    for name, fc in forecasts.items():
        acc = m4_accuracy(
            data.histories, data.actual, fc, m=data.subset.m, naive2_forecast=official
        )
        assert acc.owa is not None
        results.append(
            MethodResult(
                method=name, smape=acc.smape, mase=acc.mase, owa=acc.owa, wall_s=walls[name]
            )
        )
    run = M4Run(
        subset=data.subset.name,
        history=history,
        n_series=len(shown),
        results=tuple(results),
        forecasts=forecasts,
    )
    if out_dir is not None:
        out = Path(out_dir)
        for name, fc in forecasts.items():
            write_forecasts(out / "forecasts" / f"{name}.csv", data.ids, fc)
        (out / "results.md").write_text(markdown_table(run))
        payload = {
            "subset": run.subset,
            "history": run.history,
            "n_series": run.n_series,
            "results": [asdict(r) for r in run.results],
        }
        (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    return run


def write_forecasts(path: str | Path, ids: Sequence[str], forecasts: FloatArray) -> Path:
    """Write ``id,F1..FH`` rows (M4's submission format)."""
    if len(ids) != forecasts.shape[0]:
        raise InputError(f"{len(ids)} ids for {forecasts.shape[0]} forecast rows")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    header = "id," + ",".join(f"F{k + 1}" for k in range(forecasts.shape[1]))
    lines = [header] + [
        f"{i}," + ",".join(repr(float(v)) for v in row)
        for i, row in zip(ids, forecasts, strict=True)
    ]
    target.write_text("\n".join(lines) + "\n")
    return target


def markdown_table(run: M4Run) -> str:
    """A markdown table of the run, best OWA first."""
    track = "full history" if run.history is None else f"last {run.history} points"
    lines = [
        f"M4 {run.subset}, {run.n_series} series, {track}",
        "",
        "| method | sMAPE | MASE | OWA | wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(run.results, key=lambda r: r.owa):
        lines.append(
            f"| {r.method} | {r.smape:.3f} | {r.mase:.3f} | {r.owa:.3f} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines) + "\n"
