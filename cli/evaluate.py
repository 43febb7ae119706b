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
                "--history", help="Few-shot track: every method sees only the last N points."
            ),
        ] = None,
        time_budget: Annotated[
            float,
            typer.Option(
                "--time-budget",
                help="Seconds of training per network (MAML; the pretrained baseline gets half).",
            ),
        ] = 180.0,
        iterations: Annotated[
            int | None,
            typer.Option(
                "--iterations",
                help="Max meta-iterations per network (the time budget still caps it): a run "
                "that reaches it is reproducible whatever the load. Default: the track's.",
            ),
        ] = None,
        no_stats: Annotated[
            bool, typer.Option("--no-stats", help="Skip statsforecast AutoETS and AutoTheta.")
        ] = False,
        no_pretrained: Annotated[
            bool, typer.Option("--no-pretrained", help="Skip the pretrained network baseline.")
        ] = False,
        folds: Annotated[
            int,
            typer.Option(
                "--folds",
                help="With --history: train each series' network on the other folds' full "
                "training histories (k-fold cross-fitting).",
            ),
        ] = 2,
        limit: Annotated[
            int | None, typer.Option("--limit", help="Only the first N series (quick runs).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
        no_mlflow: Annotated[
            bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Run the M4 protocol on a subset: mamlctl (MAML), the pretrained network and the
        baselines, scored with sMAPE, MASE and OWA; writes forecasts, results.md and plots."""
        import os
        import time

        import numpy as np
        import torch

        from mamlctl.cli.output import emit_json, print_table, progress
        from mamlctl.errors import InputError
        from mamlctl.evaluation.eval_plots import plot_m4_examples
        from mamlctl.evaluation.m4 import baseline_methods, load_subset, run_m4
        from mamlctl.evaluation.m4_maml import FitResult, config_for, m4_method

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        if iterations is not None and iterations < 1:
            raise InputError(f"--iterations must be >= 1, got {iterations}")
        began = time.perf_counter()
        dataset = load_subset(data, subset)
        if limit is not None:
            if limit < 1:
                raise InputError(f"--limit must be >= 1, got {limit}")
            dataset = dataset.select(limit)
        if folds < 1:
            raise InputError(f"--folds must be >= 1, got {folds}")
        cfg = config_for(dataset.subset.name, history=history, time_budget_s=time_budget)
        cfg = cfg.model_copy(update={"seed": seed})
        if iterations is not None:
            cfg = cfg.model_copy(update={"max_iterations": iterations})
        k = folds if history is not None else 1
        corpus = dataset.histories if history is not None else None
        fits: list[FitResult] = []
        with progress(transient=True) as bar:
            task = bar.add_task("evaluate", total=None, info="")

            def on_method(name: str) -> None:
                bar.update(task, description=f"method {name}", info="")

            def on_fit(method: str, frac: float) -> None:
                bar.update(task, info=f"training {method} {100 * frac:.0f}%")

            methods = dict(
                baseline_methods(dataset.subset, statsforecast=not no_stats),
                mamlctl=m4_method(
                    cfg, method="maml", corpus=corpus, folds=k, on_progress=on_fit, fits=fits
                ),
            )
            if not no_pretrained:
                pre_cfg = cfg.model_copy(update={"time_budget_s": time_budget / 2})
                methods["pretrained"] = m4_method(
                    pre_cfg,
                    method="pretrained",
                    corpus=corpus,
                    folds=k,
                    on_progress=on_fit,
                    fits=fits,
                )
            run = run_m4(dataset, methods, history=history, out_dir=out, on_method=on_method)
        shown = dataset.histories if history is None else [x[-history:] for x in dataset.histories]
        rng = np.random.default_rng(0)
        picks = sorted(rng.choice(len(shown), size=min(4, len(shown)), replace=False).tolist())
        plotted = {
            m: run.forecasts[m]
            for m in ("mamlctl", "pretrained", "seasonal_naive", "auto_theta")
            if m in run.forecasts
        }
        plot_m4_examples(
            out / "plots",
            ids=dataset.ids,
            histories=shown,
            actual=dataset.actual,
            forecasts=plotted,
            picks=picks,
            tail=min(4 * cfg.horizon, 240),
        )
        wall = time.perf_counter() - began
        training = [
            {
                "method": f.method,
                "iterations": f.iterations,
                "seconds": round(f.elapsed_s, 1),
                "series": f.n_series,
                "capped_by_time": f.iterations < f.config.max_iterations,
            }
            for f in fits
        ]
        summary: dict[str, Any] = {
            "subset": run.subset,
            "history": run.history,
            "n_series": run.n_series,
            "wall_s": round(wall, 1),
            "config": cfg.model_dump(mode="json"),
            "training": training,
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
            for i, t in enumerate(training):
                metrics[f"{t['method']}.iterations.{i}"] = float(t["iterations"])
            summary["mlflow_run_id"] = _log_run(
                f"evaluate-m4-{run.subset}",
                {"subset": run.subset, "history": run.history, "folds": k, **summary["config"]},
                metrics,
                out,
            )
        (out / "summary.json").write_text(__import__("json").dumps(summary, indent=2) + "\n")
        if as_json:
            emit_json(summary)
            return
        track = "full history" if history is None else f"last {history} points"
        for t in training:
            cap = " (stopped by the time budget)" if t["capped_by_time"] else ""
            typer.echo(f"{t['method']}: {t['iterations']} iterations in {t['seconds']} s{cap}")
        print_table(
            f"M4 {run.subset}, {run.n_series} series, {track} ({wall:.0f} s)",
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
        time_budget: Annotated[
            float,
            typer.Option("--time-budget", help="Seconds of meta-training in total (all folds)."),
        ] = 240.0,
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
        scoring: Annotated[
            str,
            typer.Option(
                "--scoring",
                help="likelihood: Numenta's anomaly likelihood, published defaults (untuned); "
                "rolling: the older scores whose settings were chosen on NAB itself.",
            ),
        ] = "likelihood",
        readapt: Annotated[
            bool,
            typer.Option(
                "--readapt/--no-readapt",
                help="likelihood scoring: re-adapt every probation-length rows on the latest ones.",
            ),
        ] = False,
        spatial: Annotated[
            bool,
            typer.Option(
                "--spatial/--no-spatial",
                help="likelihood scoring: NAB Numenta detector's spatial check (value 5% beyond "
                "the past range scores 1).",
            ),
        ] = True,
        no_mlflow: Annotated[
            bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Run mamlctl as a streaming detector over the NAB corpus and score it with NAB's
        scoring (standard, reward-low-FP, reward-low-FN); writes NAB's results layout."""
        import json
        import os
        import time

        import torch

        from mamlctl.cli.output import emit_json, print_table, progress
        from mamlctl.errors import ConfigError, InputError
        from mamlctl.evaluation.eval_plots import plot_nab_example
        from mamlctl.evaluation.nab import load_corpus, null_detector, run_nab, windowed_gaussian
        from mamlctl.evaluation.nab_data import probationary_length, read_results
        from mamlctl.evaluation.nab_maml import NabDetectorConfig, maml_detector

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        began = time.perf_counter()
        corpus = load_corpus(data)
        if limit is not None:
            if limit < 1:
                raise InputError(f"--limit must be >= 1, got {limit}")
            corpus = corpus[:limit]
        try:
            cfg = NabDetectorConfig(
                time_budget_s=time_budget,
                folds=folds,
                seed=seed,
                scoring=scoring,
                readapt=readapt,
                spatial=spatial,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid NAB detector option: {exc}".splitlines()[0]) from None
        if len(corpus) < cfg.folds:
            raise InputError(f"{len(corpus)} files cannot be split into {cfg.folds} folds")
        with progress(transient=True) as bar:
            task = bar.add_task("nab", total=len(corpus), info="")

            def on_file(name: str, key: str) -> None:
                if name == "mamlctl":
                    bar.advance(task)
                bar.update(task, description=f"{name}", info=key)

            def on_fit(method: str, frac: float) -> None:
                bar.update(task, info=f"meta-training {100 * frac:.0f}%")

            detectors = {"mamlctl": maml_detector(corpus, cfg, on_progress=on_fit)}
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
            "config": cfg.model_dump(mode="json"),
            "scores": {
                name: {p: r.score for p, r in rep.results.items()}
                for name, rep in run.reports.items()
            },
            "detect_wall_s": run.wall_s,
        }
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
            f"NAB, {len(corpus)} files ({wall:.0f} s)",
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
