"""Adapt + export N series end to end vs the straightforward per-series way, in the same run.

Family: M4 Hourly shapes (L=96, H=48, K=167 raw points, calibration C=96) with every other
setting taken from ``mamlctl train``'s family defaults (``family_data.resolve``): the MLP
96-64-64-48 with the seasonal-naive skip (m=24), MAE loss, 2 inner steps at 0.3, forecasts
clipped at 0, adaptation scope ``--adapt-scope`` (default: the product default). The weights are
a seeded initialization (meta-training is not what is measured). Series: synthetic, drawn
from the real M4 Hourly training series (a random stretch of a random series, random
level/scale change, small noise), so their shapes are the family's.

Fast path (mamlctl): ``adapt_histories`` (all series and their calibration twins in one
``batch_adapt``) -> template export (once) -> ``export_to_files`` (render each file from the
template, sha256, temp + fsync + rename from 4 writer threads) -> parity on 4 series.
Optionally the registry rows (``--record``: SQLite, ``record_models_bulk``, one transaction per
2,048 series, as the adapt job does).

Baseline (same run, first ``--baseline-n`` series): per series, a fresh module loaded with the
initializer, ``torch.optim.SGD`` for the same steps on the same support pairs, then
``torch.onnx.export`` of the same contract graph to its own file (external_data=False). The
fast path is also timed on exactly those series (with and without the one-off template export)
for the ratio.

Prints one JSON document. Peak RSS is the process' maximum resident set after the fast path
(before the baseline runs); the fast path runs in chunks of 2,048 series, as the adapt job does.

    python benchmarks/bench_adapt_export.py [--n 10000] [--baseline-n 200] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

L, H, K, C, P = 96, 48, 167, 96, 24
M4_TRAIN = Path("/work/shared/data/m4/Hourly-train.csv.gz")


def _setup() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def synthetic_series(n: int, *, seed: int = 0) -> list[np.ndarray]:
    """``n`` series of K + C + 64 points from random stretches of real M4 Hourly series."""
    import pandas as pd

    frame = pd.read_csv(M4_TRAIN, index_col=0)
    real = [row.dropna().to_numpy(np.float64) for _, row in frame.iterrows()]
    need = K + C + 64
    real = [r for r in real if r.shape[0] >= need]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = real[int(rng.integers(len(real)))]
        start = int(rng.integers(0, base.shape[0] - need + 1))
        stretch = base[start : start + need]
        level, spread = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
        mean = stretch.mean()
        series = mean * level + (stretch - mean) * spread
        series = series + rng.normal(0, 0.01 * (stretch.std() + 1e-9), need)
        out.append(series)
    return out


def make_initializer(scope: str | None) -> Any:
    """A seeded initializer carrying exactly what ``mamlctl train`` stores for the family."""
    import dataclasses

    import torch

    from mamlctl.domain import Family
    from mamlctl.maml.family_data import make_config, resolve
    from mamlctl.maml.initializer import Initializer
    from mamlctl.maml.models import build_model

    family = Family(
        name="hourly", period=P, interval_seconds=3600.0, window=L, horizon=H, support=K
    )
    options = {} if scope is None else {"adapt_scope": scope}
    plan = dataclasses.replace(resolve(family, make_config(**options)), nonnegative=True)
    config = plan.model_config()
    torch.manual_seed(0)
    model = build_model(config)
    return Initializer(
        model_config=config,
        params={k: v.detach().clone() for k, v in model.state_dict().items()},
        task_spec={"kind": "window", **plan.task_spec().to_dict()},  # as train stores it
        train_config=plan.initializer_train_config(),
    )


def _ref() -> Any:
    from mamlctl.domain import InitializerRef

    return InitializerRef(
        family="hourly", registered_model="maml-hourly", version=1, run_id="0" * 32
    )


def fast_path(
    init: Any, histories: list[np.ndarray], models_dir: Path, *, template: Any, chunk: int = 2048
) -> dict[str, Any]:
    """The adapt job's numerical path, chunk by chunk as the job runs it (bounded memory)."""
    from mamlctl.maml.adaptation import AdaptConfig, adapt_histories, plan_adaptation
    from mamlctl.maml.export import SeriesBatch
    from mamlctl.stages.export import export_to_files

    plan = plan_adaptation(
        init, window=L, horizon=H, support=K, period=P, config=AdaptConfig(calibration=C)
    )
    adapt_s = export_s = 0.0
    first: Any = None
    stored: list[Any] = []
    rscale: list[np.ndarray] = []
    thr: list[np.ndarray] = []
    when = datetime.now(UTC)
    for start in range(0, len(histories), chunk):
        t0 = time.perf_counter()
        result = adapt_histories(init, histories[start : start + chunk], plan=plan)
        t1 = time.perf_counter()
        batch = SeriesBatch(
            series_ids=tuple(f"S{i}" for i in range(start, start + len(result))),
            params=result.params,
            loc=result.loc,
            scale=result.scale,
            residual_scale=result.residual_scale,
            threshold=result.threshold,
        )
        stored += export_to_files(
            template,
            batch,
            models_dir=models_dir,
            initializer=_ref(),
            support=plan.support,
            adapted_at=when,
        )
        export_s += time.perf_counter() - t1
        adapt_s += t1 - t0
        first = batch if first is None else first  # keep one chunk only (parity), like the job
        rscale.append(result.residual_scale)
        thr.append(result.threshold)
        del result, batch
    return {
        "adapt_s": adapt_s,
        "export_write_s": export_s,
        "total_s": adapt_s + export_s,
        "files": float(len(stored)),
        "bytes_per_file": float(stored[0].size),
        "_batch": first,
        "_stored": stored,
        "_residual_scale": np.concatenate(rscale),
        "_threshold": np.concatenate(thr),
    }


def parity(init: Any, template: Any, batch: Any, stored: Any, models_dir: Path) -> list[float]:
    from mamlctl.maml.onnx_parity import check_parity, template_reference
    from mamlctl.registry.model_files import open_verified

    errors = []
    for i in np.linspace(0, len(batch) - 1, 4).astype(int):
        blob = open_verified(models_dir, stored[i].relpath, sha256=stored[i].sha256)
        ref = template_reference(  # the file's torch twin (int8-delta layers as it computes)
            template,
            init.model(),
            batch.params_of(int(i)),
            loc=float(batch.loc[i]),
            scale=float(batch.scale[i]),
            residual_scale=float(batch.residual_scale[i]),
        )
        stats = check_parity(
            blob, ref, loc=float(batch.loc[i]), scale=float(batch.scale[i]), window=L
        )
        errors.append(stats.max_rel_error)
    return errors


def record_rows(stored: Any, big: dict[str, Any], home: Path) -> float:
    """Record every file in a fresh SQLite registry (one transaction per 2,048 rows)."""
    from mamlctl.domain import Family
    from mamlctl.domain import Series as DSeries
    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.ingest import IncomingSeries, store_series
    from mamlctl.settings import Settings

    settings = Settings(home=home)
    n = len(stored)
    with open_registry(settings) as factory:
        with factory.begin() as s:
            q.upsert_family(
                s,
                Family(
                    name="hourly",
                    period=P,
                    interval_seconds=3600.0,
                    window=L,
                    horizon=H,
                    support=K,
                ),
            )
            store_series(
                s,
                [
                    IncomingSeries(
                        series=DSeries(series_id=f"S{i}", values=np.zeros(L + H)), source="bench"
                    )
                    for i in range(n)
                ],
            )
            q.assign_family(s, "hourly", [f"S{i}" for i in range(n)])
            q.record_initializer_version(s, family="hourly", version=1, run_id="0" * 32)
        from mamlctl.registry.bulk_models import NewModel, record_models_bulk

        entries = [
            NewModel(
                series_id=f"S{i}",
                path=stored[i].relpath,
                sha256=stored[i].sha256,
                residual_scale=float(big["_residual_scale"][i]),
                threshold=float(big["_threshold"][i]),
                support_end=K + C - 1,
                metadata={},
            )
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for start in range(0, n, 2048):  # one transaction per chunk, as the adapt job does
            with factory.begin() as s:
                record_models_bulk(
                    s,
                    registered_model="maml-hourly",
                    initializer_version=1,
                    initializer_run_id="0" * 32,
                    support=K,
                    window=L,
                    horizon=H,
                    adapted_at=datetime.now(UTC),
                    entries=entries[start : start + 2048],
                )
        return time.perf_counter() - t0


def baseline(init: Any, histories: list[np.ndarray], out_dir: Path) -> float:
    """The straightforward way: a torch optimizer loop and torch.onnx.export per series."""
    import torch

    from mamlctl.maml.adaptation import support_tasks
    from mamlctl.maml.models import adapt_names_for, build_model, mae_loss, mse_loss
    from mamlctl.maml.onnx_binding import quiet_export
    from mamlctl.maml.onnx_contract import contract_module

    t0 = time.perf_counter()
    for i, values in enumerate(histories):
        x, y, loc, scale = support_tasks(np.asarray(values)[None, -K:], window=L, horizon=H)
        model = build_model(init.model_config)
        model.load_state_dict(init.params)
        train = init.train_config
        loss_fn = mae_loss if train["loss"] == "mae" else mse_loss
        names = adapt_names_for(init.model_config, train.get("adapt_scope", "all"))
        params = [p for n, p in model.named_parameters() if names is None or n in names]
        opt = torch.optim.SGD(params, lr=float(train["inner_lr"]))
        xs, ys = torch.from_numpy(x[0]), torch.from_numpy(y[0])
        for _ in range(int(train["inner_steps"])):
            opt.zero_grad()
            loss = loss_fn(model(xs), ys)
            loss.backward()
            opt.step()
        wrapper = contract_module(
            model.eval(), horizon=H, head="mean", nonnegative=bool(train["nonnegative"])
        )
        with torch.no_grad():
            wrapper.loc.fill_(float(loc[0]))
            wrapper.scale.fill_(float(scale[0]))
        with quiet_export():
            torch.onnx.export(
                wrapper,
                (torch.zeros(2, L),),
                str(out_dir / f"S{i}.onnx"),
                input_names=["window"],
                output_names=["forecast", "sigma"],
                dynamic_shapes={"window": {0: torch.export.Dim("batch", min=1)}},
                opset_version=18,
                external_data=False,
                dynamo=True,
            )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--baseline-n", type=int, default=200)
    parser.add_argument("--record", action="store_true", help="also time the registry rows")
    parser.add_argument(
        "--adapt-scope", choices=["all", "head"], default=None, help="default: train's default"
    )
    parser.add_argument(
        "--weights",
        choices=["int8-delta", "float32"],
        default="int8-delta",
        help="export format of the adapted layers (as `mamlctl adapt --weights`)",
    )
    args = parser.parse_args()
    _setup()
    from mamlctl.maml.export import template_for_config

    histories = synthetic_series(max(args.n, args.baseline_n))
    init = make_initializer(args.adapt_scope)
    out: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "config": {
            "L": L,
            "H": H,
            "K": K,
            "C": C,
            "model": init.model_config.model_dump(mode="json"),
            "train": init.train_config,
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        template = template_for_config(init.model_config, weights=args.weights)
        template = template.with_base({n: p.numpy() for n, p in init.params.items()})
        out["template_export_s"] = time.perf_counter() - t0
        out["weights"] = args.weights
        # torch, torch.export and onnxscript loaded: the fixed part of the peak
        out["peak_rss_mib_after_template"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )

        big = fast_path(init, histories[: args.n], root / "big", template=template)
        out["n"] = args.n
        out["fast"] = {k: v for k, v in big.items() if not k.startswith("_")}
        out["fast"]["series_per_s"] = args.n / big["total_s"]
        out["parity_max_rel_error"] = max(
            parity(
                init, template, big["_batch"], big["_stored"][: len(big["_batch"])], root / "big"
            )
        )
        if args.record:
            out["record_rows_sqlite_s"] = record_rows(big["_stored"], big, root / "home")
        out["peak_rss_mib_after_fast"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        del big

        if args.baseline_n:
            sub = histories[: args.baseline_n]
            fast_small = []
            for r in range(3):
                fast_small.append(
                    fast_path(init, sub, root / f"small{r}", template=template)["total_s"]
                )
            fast_med = statistics.median(fast_small)
            (root / "base").mkdir()
            base_s = baseline(init, sub, root / "base")
            out["baseline"] = {
                "n": args.baseline_n,
                "per_series_loop_s": base_s,
                "fast_same_series_s_median_of_3": fast_med,
                "ratio": base_s / fast_med,
                "ratio_incl_template_export": base_s / (fast_med + out["template_export_s"]),
            }
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
