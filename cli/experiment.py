"""``mamlctl experiment sine``: reproduce the paper's sine regression experiment.

Imports only typer/stdlib at module level (``mamlctl --help`` stays instant); torch and
matplotlib are imported inside the command.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

experiment_app = typer.Typer(
    name="experiment",
    help="Reproduce the paper's experiments (sine regression).",
    no_args_is_help=True,
)

_METHOD_NAMES = {
    "maml": "MAML",
    "fomaml": "FOMAML",
    "metasgd": "Meta-SGD",
    "pretrained": "pretrained",
    "scratch": "scratch",
}


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@experiment_app.command("sine")
def sine(
    iterations: Annotated[
        int, typer.Option(min=1, help="Meta-training iterations per method (paper: 70000).")
    ] = 70_000,
    seed: Annotated[int, typer.Option(help="Seed of training tasks, init and test tasks.")] = 0,
    out: Annotated[
        Path,
        typer.Option(help="Folder for the figure (and results.json).", envvar="MAMLCTL_OUT"),
    ] = Path("benchmarks/out/sine"),
    methods: Annotated[
        str,
        typer.Option(help="Comma-separated subset of maml,fomaml,metasgd,pretrained,scratch."),
    ] = "maml,fomaml,metasgd,pretrained,scratch",
    test_tasks: Annotated[
        int, typer.Option(min=2, help="Fixed test tasks per K (paper: 600).")
    ] = 600,
    train_k: Annotated[int, typer.Option(min=1, help="Support points while training.")] = 10,
    threads: Annotated[
        int, typer.Option(min=1, help="Torch intra-op threads (1 is fastest at this size).")
    ] = 1,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="Train the methods in this many processes (results do not change)."
        ),
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Meta-train MAML, FOMAML, Meta-SGD and the baselines on sine tasks; report MSE +- 95% CI
    for K = 5, 10, 20 after 1 and 10 steps, and draw the paper's figure."""
    import torch
    from pydantic import ValidationError

    from mamlctl.cli.output import emit_json, print_table, progress
    from mamlctl.errors import ConfigError
    from mamlctl.maml.sine_experiment import SineExperimentConfig, run_sine_experiment
    from mamlctl.maml.sine_figure import plot_sine_figure

    torch.set_num_threads(threads)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    try:
        config = SineExperimentConfig(
            iterations=iterations,
            seed=seed,
            methods=chosen,
            test_tasks=test_tasks,
            train_k=train_k,
        )
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid experiment option {loc}: {first['msg']}") from None
    trained_methods = [m for m in chosen if m != "scratch"]
    with progress() as bar:
        tasks = {
            m: bar.add_task(_METHOD_NAMES[m], total=iterations, info="") for m in trained_methods
        }

        plain = not sys.stderr.isatty()  # nohup / CI: one line per 10% instead of a bar
        step = max(1, iterations // 10)

        def on_progress(method: str, p: Any) -> None:
            info = f"loss {p.loss:.3f} {p.iteration / max(p.elapsed, 1e-9):.0f} it/s"
            bar.update(tasks[method], completed=p.iteration, info=info)
            if plain and (p.iteration % step < config_log_every or p.iteration == iterations):
                typer.echo(f"{method} {p.iteration}/{iterations} {info}", err=True)

        config_log_every = max(1, min(500, iterations // 20))
        result = run_sine_experiment(config, progress=on_progress, jobs=jobs)
    figure = plot_sine_figure(result, out / "sine_figure.png")
    _save_initializers(result, out / "initializers")
    doc = {
        "results": [
            {
                "method": r.method,
                "k": r.k,
                "steps": r.steps,
                "mse": _finite_or_none(r.mse),
                "ci95": _finite_or_none(r.ci95),
            }
            for r in result.rows
        ],
        "iterations_per_second": result.iterations_per_second,
        "figure": str(figure),
    }
    import json

    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        emit_json(doc)
        return
    print_table(
        f"sine regression, {iterations} iterations, {config.test_tasks} test tasks (MSE +- 95% CI)",
        ["method", "K", "steps", "MSE", "ci95", "diverged"],
        [
            (
                _METHOD_NAMES.get(r.method, r.method),
                r.k,
                r.steps,
                _fmt(r.mse),
                _fmt(r.ci95),
                f"{r.diverged}/{config.test_tasks}" if r.diverged else "",
            )
            for r in result.rows
        ],
    )
    typer.echo(f"MAML meta-iterations/s: {result.iterations_per_second:.0f}")
    typer.echo(f"figure: {figure}")


def _save_initializers(result: Any, folder: Path) -> None:
    """Each trained method's initializer (safetensors + JSON) under ``folder/<method>``."""
    from mamlctl.maml.initializer import save_initializer

    for method, trained in result.trained.items():
        if trained.result is None:
            continue
        spec = {"kind": "sine", "support": result.config.train_k, "query": result.config.train_k}
        save_initializer(
            folder / method,
            model_config=result.model_config,
            params=trained.params,
            task_spec=spec,
            train_config=trained.result.config.model_dump(mode="json"),
            inner_lrs=trained.result.inner_lrs,
            metrics={"final_train_loss": trained.result.losses[-1]},
        )


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")
