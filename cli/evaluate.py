"""``mamlctl evaluate m4`` and ``mamlctl evaluate nab``: mamlctl against baselines on public data.

Both write their tables and plots under ``--out`` and log params, metrics, tables and plots to
an MLflow run (experiment ``mamlctl-evaluate-m4-<subset>`` / ``mamlctl-evaluate-nab`` in the
store the settings name) unless ``--no-mlflow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mamlctl.registry.mlflow_runs import TrackedRun

DATA_HELP = "Folder with the data (the M4 or NAB folder itself, or its parent)."


def _log_run(experiment: str, params: dict[str, Any], metrics: dict[str, float], out: Path) -> str:
    """Log to MLflow through the project's store; returns the run id."""
    from mamlctl.cli.output import load_settings
    from mamlctl.registry.mlflow_store import open_store

    settings = load_settings()
    settings.ensure_home()
    store = open_store(settings)
    run: TrackedRun
    with store.start_run(family=experiment, tags={"kind": "evaluation"}) as run:
        run.log_config(params)
        run.log_metrics(metrics, step=0)
        for name in ("results.md", "results.json", "nab_scores.md", "nab_scores.json"):
            if (out / name).is_file():
                run.log_artifact(out / name, artifact_path="tables")
        if (out / "plots").is_dir():
            run.log_artifacts(out / "plots", artifact_path="plots")
        if (out / "forecasts").is_dir():
            run.log_artifacts(out / "forecasts", artifact_path="forecasts")
    return str(run.run_id)


def register(app: typer.Typer) -> None:
    evaluate = typer.Typer(
        help="Evaluate mamlctl against baselines on M4 and NAB.", no_args_is_help=True
    )
    app.add_typer(evaluate, name="evaluate")

    @evaluate.command("m4")
    def m4(
        subset: Annotated[str, typer.Option("--subset", help="hourly or weekly.")],
        data: Annotated[Path, typer.Option("--data", help=DATA_HELP, envvar="MAMLCTL_M4_DATA")],
        out: Annotated[Path, typer.Option("--out", help="Output folder (tables, forecasts).")],
        history: Annotated[
            int | None,
            typer.Option(
                "--history",
                help="Every series the product adapts and forecasts holds only its last N "
                "points (every method sees the same N).",
            ),
        ] = None,
        protocol: Annotated[
            str,
            typer.Option(
                "--protocol",
                help="family: every series (training included) holds N points; new-series: "
                "each fold's series join an initializer trained on the other folds' full "
                "histories.",
            ),
        ] = "family",
        folds: Annotated[
            int, typer.Option("--folds", help="Folds of the new-series protocol (>= 2).")
        ] = 3,
        iterations: Annotated[
            int,
            typer.Option(
                "--iterations",
                help="Meta-iterations of each `train` (fixed, so a rerun gives the same result; "
                "default: train's).",
            ),
        ] = 3000,
        window: Annotated[
            int | None,
            typer.Option(
                "--window",
                help="The family's input window L, as `families create -L` sets it (default: "
                "the interval's; series need L points to be served).",
            ),
        ] = None,
        limit: Annotated[
            int | None, typer.Option("--limit", help="Only the first N series (quick runs).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
        no_stats: Annotated[
            bool, typer.Option("--no-stats", help="Skip statsforecast AutoETS and AutoTheta.")
        ] = False,
        no_mlflow: Annotated[
            bool, typer.Option("--no-mlflow", help="Do not log the evaluation to MLflow.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Run the M4 protocol on a subset through the product: ingest, families assign, train,
        adapt and export in fresh homes under --out, forecasts from the exported files by the
        server's runtime; scored with sMAPE, MASE and OWA beside the baselines."""
        import json
        import os
        import time

        import numpy as np
        import torch

        from mamlctl.cli.output import emit_json, print_table, progress
        from mamlctl.errors import InputError
        from mamlctl.evaluation.eval_plots import plot_m4_examples
        from mamlctl.evaluation.m4 import baseline_methods, load_subset, run_m4
        from mamlctl.evaluation.m4_product import ProductOptions, ProductRun, run_product

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        if protocol not in ("family", "new-series"):
            raise InputError(f"--protocol must be family or new-series, got {protocol!r}")
        options = ProductOptions(
            protocol=protocol,  # type: ignore[arg-type]
            history=history,
            folds=folds,
            iterations=iterations,
            seed=seed,
            window=window,
        )
        if iterations < 1:
            raise InputError(f"--iterations must be >= 1, got {iterations}")
        began = time.perf_counter()
        dataset = load_subset(data, subset)
        if limit is not None:
            if limit < 1:
                raise InputError(f"--limit must be >= 1, got {limit}")
            dataset = dataset.select(limit)
        out.mkdir(parents=True, exist_ok=True)
        product: list[ProductRun] = []
        with progress(transient=True) as bar:
            task = bar.add_task("evaluate", total=None, info="")

            def on_method(name: str) -> None:
                bar.update(task, description=f"method {name}", info="")

            def on_step(name: str) -> None:
                bar.update(task, info=f"home {name}")

            def mamlctl_method(_shown: list[np.ndarray], _h: int) -> np.ndarray:
                run = run_product(dataset, options, workdir=out / "homes", on_step=on_step)
                product.append(run)
                return run.forecasts

            methods = dict(
                baseline_methods(dataset.subset, statsforecast=not no_stats),
                mamlctl=mamlctl_method,
            )
            run = run_m4(dataset, methods, history=history, out_dir=out, on_method=on_method)
        shown = dataset.histories if history is None else [x[-history:] for x in dataset.histories]
        rng = np.random.default_rng(0)
        picks = sorted(rng.choice(len(shown), size=min(4, len(shown)), replace=False).tolist())
        plot_m4_examples(
            out / "plots",
            ids=dataset.ids,
            histories=shown,
            actual=dataset.actual,
            forecasts={
                m: run.forecasts[m]
                for m in ("mamlctl", "seasonal_naive", "auto_theta")
                if m in run.forecasts
            },
            picks=picks,
            tail=min(4 * dataset.subset.horizon, 240),
        )
        wall = time.perf_counter() - began
        summary: dict[str, Any] = {
            "subset": run.subset,
            "history": run.history,
            "protocol": protocol,
            "n_series": run.n_series,
            "wall_s": round(wall, 1),
            "options": {"folds": folds, "iterations": iterations, "seed": seed, "window": window},
            "product": product[0].summary(),
            "results": [
                {
                    "method": r.method,
                    "smape": r.smape,
                    "mase": r.mase,
                    "owa": r.owa,
                    "wall_s": r.wall_s,
                }
                for r in run.results
            ],
        }
        if not no_mlflow:
            metrics = {
                f"{r.method}.{m}": getattr(r, m)
                for r in run.results
                for m in ("smape", "mase", "owa")
            }
            metrics["wall_s"] = wall
            metrics["unserved"] = float(product[0].unserved)
            summary["mlflow_run_id"] = _log_run(
                f"evaluate-m4-{run.subset}",
                {"subset": run.subset, "history": run.history, **summary["options"]},
                metrics,
                out,
            )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if as_json:
            emit_json(summary)
            return
        track = "full history" if history is None else f"last {history} points"
        for home in summary["product"]["homes"]:
            gate = "" if home["baseline_gate"] is None else " (not champion: lost to s-naive)"
            typer.echo(
                f"{home['name']}: v{home['version']} trained on {home['series_train']} series in "
                f"{home['train_s']} s{gate}; {home['series_adapted']} served "
                f"({home['zero_shot']} zero-shot), adapt {home['adapt_s']} s"
            )
        if product[0].unserved:
            typer.echo(f"unserved (filled with seasonal naive): {product[0].unserved} series")
        print_table(
            f"M4 {run.subset}, {run.n_series} series, {track}, {protocol} ({wall:.0f} s)",
            ["method", "sMAPE", "MASE", "OWA", "wall s"],
            [
                (r.method, f"{r.smape:.3f}", f"{r.mase:.3f}", f"{r.owa:.3f}", f"{r.wall_s:.1f}")
                for r in sorted(run.results, key=lambda r: r.owa)
            ],
        )

    @evaluate.command("nab")
    def nab(
        data: Annotated[Path, typer.Option("--data", help=DATA_HELP, envvar="MAMLCTL_NAB_DATA")],
        out: Annotated[Path, typer.Option("--out", help="Output folder (NAB results layout).")],
        iterations: Annotated[
            int,
            typer.Option("--iterations", help="Meta-iterations of each `train` (fixed, seeded)."),
        ] = 300,
        batch: Annotated[
            int, typer.Option("--batch", help="Observations per POST /v1/observe.")
        ] = 256,
        readapt_days: Annotated[
            float,
            typer.Option(
                "--readapt-days",
                help="Run the adapt stage again every this many days of each file's "
                "data, on the points stored so far (0: adapt once, on the probation).",
            ),
        ] = 0.0,
        flag: Annotated[
            str,
            typer.Option("--flag", help="The server's flag rule (serve --flag): rank or z."),
        ] = "rank",
        folds: Annotated[
            int, typer.Option("--folds", help="Files are scored by initializers of other folds.")
        ] = 4,
        baselines: Annotated[
            bool,
            typer.Option(
                "--baselines/--no-baselines",
                help="Also run windowedGaussian and the null detector.",
            ),
        ] = True,
        limit: Annotated[
            int | None, typer.Option("--limit", help="Only the first N files (quick runs).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
        no_mlflow: Annotated[
            bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Run mamlctl as a streaming detector over the NAB corpus and score it with NAB's
        scoring (standard, reward-low-FP, reward-low-FN); writes NAB's results layout.

        Through the served path: per fold a fresh home under --out/homes, the
        files' probations ingested, an initializer trained on the other folds' files
        (--iterations), adapted, and the remaining rows streamed through POST /v1/observe;
        each row's score is m / (1 + m) of the answer's magnitude m."""
        import json
        import os
        import time

        import torch

        from mamlctl.cli.output import emit_json, print_table, progress
        from mamlctl.errors import InputError
        from mamlctl.evaluation.eval_plots import plot_nab_example
        from mamlctl.evaluation.nab import load_corpus, null_detector, run_nab, windowed_gaussian
        from mamlctl.evaluation.nab_data import probationary_length, read_results
        from mamlctl.evaluation.nab_served import FoldReport, ServedOptions, served_detector

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        served = ServedOptions(
            folds=folds,
            iterations=iterations,
            seed=seed,
            batch=batch,
            readapt_days=readapt_days,
            flag=flag,
        )
        served.check()
        torch.set_num_threads(1)
        began = time.perf_counter()
        corpus = load_corpus(data)
        if limit is not None:
            if limit < 1:
                raise InputError(f"--limit must be >= 1, got {limit}")
            corpus = corpus[:limit]
        if len(corpus) < served.folds:
            raise InputError(f"{len(corpus)} files cannot be split into {served.folds} folds")
        with progress(transient=True) as bar:
            task = bar.add_task("nab", total=len(corpus), info="")

            def on_file(name: str, key: str) -> None:
                if name == "mamlctl":
                    bar.advance(task)
                bar.update(task, description=f"{name}", info=key)

            def on_step(info: str) -> None:
                bar.update(task, info=info)

            folds_done: list[FoldReport] = []
            detect = served_detector(
                corpus, served, workdir=out / "homes", reports=folds_done, on_step=on_step
            )
            detectors = {"mamlctl": detect}
            if baselines:
                detectors["windowedGaussian"] = windowed_gaussian
                detectors["null"] = null_detector
            run = run_nab(corpus, detectors, out_dir=out, on_file=on_file)
        for series in corpus[:: max(1, len(corpus) // 4)][:4]:
            plot_nab_example(
                out / "plots" / (series.key.replace("/", "__").removesuffix(".csv") + ".png"),
                key=series.key,
                values=series.values,
                scores=read_results(out, "mamlctl", series.key),
                windows=series.windows,
                probation=probationary_length(len(series)),
            )
        wall = time.perf_counter() - began
        summary: dict[str, Any] = {
            "files": len(corpus),
            "wall_s": round(wall, 1),
            "config": {
                "folds": folds,
                "iterations": iterations,
                "seed": seed,
                "batch": batch,
                "readapt_days": readapt_days,
                "flag": flag,
            },
            "scores": {
                name: {p: r.score for p, r in rep.results.items()}
                for name, rep in run.reports.items()
            },
            "detect_wall_s": run.wall_s,
        }
        summary["folds"] = [
            {
                "name": r.name,
                "files": r.files,
                "trained": r.trained,
                "adapted": r.adapted,
                "zero_shot": r.zero_shot,
                "readapted": r.readapted,
                "answers": dict(r.answers),
                "train_s": round(r.train_s, 1),
                "adapt_s": round(r.adapt_s, 1),
                "stream_s": round(r.stream_s, 1),
            }
            for r in folds_done
        ]
        if not no_mlflow:
            metrics = {
                f"{name}.{p}": s for name, d in summary["scores"].items() for p, s in d.items()
            }
            metrics["wall_s"] = wall
            summary["mlflow_run_id"] = _log_run("evaluate-nab", summary["config"], metrics, out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if as_json:
            emit_json(summary)
            return
        profiles = list(next(iter(run.reports.values())).results)
        print_table(
            f"NAB, {len(corpus)} files, served path ({wall:.0f} s)",
            ["detector", *profiles, "wall s"],
            [
                (
                    name,
                    *(f"{rep.results[p].score:.2f}" for p in profiles),
                    f"{run.wall_s[name]:.1f}",
                )
                for name, rep in sorted(
                    run.reports.items(), key=lambda kv: -kv[1].results[profiles[0]].score
                )
            ],
        )
