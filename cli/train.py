"""``mamlctl train --family NAME``: meta-train the family's initializer, log it to MLflow,
register it as a new version of ``maml-<family>`` and record it in the registry database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mamlctl.stages.train import TrainOutcome


def _parse_hidden(text: str | None) -> tuple[int, ...] | None:
    from mamlctl.errors import ConfigError

    if text is None:
        return None
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"invalid --hidden {text!r}: comma-separated widths, e.g. 64,64"
        ) from None
    if not widths:
        raise ConfigError("invalid --hidden '': give at least one width, e.g. 64,64")
    return widths


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        family: Annotated[str, typer.Option("--family", "-f", help="Family to meta-train.")],
        architecture: Annotated[
            str, typer.Option("--architecture", help="mlp or conv (causal dilated conv).")
        ] = "mlp",
        hidden: Annotated[
            str | None,
            typer.Option("--hidden", help="MLP widths, e.g. 64,64 (default: from L)."),
        ] = None,
        channels: Annotated[int, typer.Option("--channels", help="Conv channels.")] = 16,
        head: Annotated[str, typer.Option("--head", help="mean or gaussian.")] = "mean",
        support: Annotated[
            int | None,
            typer.Option("--support", "-k", help="K raw support points (default: family's K)."),
        ] = None,
        query: Annotated[
            int | None, typer.Option("--query", help="Query pairs per task (default: max(H, P)).")
        ] = None,
        inner_steps: Annotated[
            int | None, typer.Option("--inner-steps", help="Inner gradient steps.")
        ] = None,
        inner_lr: Annotated[
            float | None, typer.Option("--inner-lr", help="Inner learning rate.")
        ] = None,
        first_order: Annotated[
            bool,
            typer.Option("--first-order/--second-order", help="First-order MAML (no Hessian)."),
        ] = False,
        meta_lr: Annotated[
            float | None, typer.Option("--meta-lr", help="Outer (Adam) learning rate.")
        ] = None,
        meta_batch: Annotated[
            int | None, typer.Option("--meta-batch", help="Tasks per meta-iteration.")
        ] = None,
        iterations: Annotated[
            int | None, typer.Option("--iterations", "-n", help="Meta-iterations (maximum).")
        ] = None,
        time_budget: Annotated[
            float | None,
            typer.Option(
                "--time-budget",
                help="Stop meta-training after this many seconds, baseline included "
                "(default 900; the iteration count normally ends training first).",
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of init and task draws.")] = 0,
        holdout: Annotated[
            float | None,
            typer.Option("--holdout", help="Fraction of series held out for validation."),
        ] = None,
        pretrained_baseline: Annotated[
            bool,
            typer.Option(
                "--baseline/--no-baseline",
                help="Also train the pretrained baseline the validation compares against.",
            ),
        ] = True,
        season_skip: Annotated[
            int | None,
            typer.Option(
                "--season-skip",
                help="m of the seasonal-naive skip: the net predicts the residual to seasonal "
                "naive of its window (default: the period when it fits L, else 1; 0 = off).",
            ),
        ] = None,
        loss: Annotated[
            str | None,
            typer.Option("--loss", help="mae (default) or mse; a gaussian head uses its NLL."),
        ] = None,
        nonnegative: Annotated[
            bool | None,
            typer.Option(
                "--nonnegative/--allow-negative",
                help="Bound forecasts below by a fraction of the window minimum, chosen on"
                " held-out series (default: when every training series is >= 0).",
            ),
        ] = None,
        adapt_scope: Annotated[
            str | None,
            typer.Option(
                "--adapt-scope",
                help="Parameters adapted per series: all (default) or head (the last layer, "
                "ANIL; lighter to serve).",
            ),
        ] = None,
        select: Annotated[
            str | None,
            typer.Option(
                "--select",
                help="Initializer registered: best (lowest held-out MASE among the MAML "
                "checkpoints and the pretrained baseline; default) or last (final MAML iterate).",
            ),
        ] = None,
        promote: Annotated[
            bool,
            typer.Option("--promote", help="Make the new version champion (default: challenger)."),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Meta-train FAMILY's MAML initializer on its series and register it in MLflow.

        A deterministic subset of series is held out; the run logs the training loss and the
        held-out error after adaptation vs the pretrained baseline vs seasonal naive. The
        first version of a family becomes champion, later ones challenger unless --promote.
        """
        import os

        from mamlctl.cli.output import emit_json, load_settings, progress
        from mamlctl.maml.family_data import make_config
        from mamlctl.registry.mlflow_store import open_store
        from mamlctl.registry.series_store import SqlSeriesStore
        from mamlctl.stages.train import plan_training, run_training

        config = make_config(
            architecture=architecture,
            hidden=_parse_hidden(hidden),
            channels=channels,
            head=head,
            support=support,
            query=query,
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            first_order=first_order,
            meta_lr=meta_lr,
            meta_batch=meta_batch,
            iterations=iterations,
            time_budget_s=time_budget,
            seed=seed,
            holdout_fraction=holdout,
            pretrained_baseline=pretrained_baseline,
            season_skip=season_skip,
            loss=loss,
            nonnegative=nonnegative,
            adapt_scope=adapt_scope,
            select=select,
        )
        settings = load_settings()
        series_store = SqlSeriesStore(settings)
        fam = series_store.get_family(family)
        # every input error before any run exists
        data = plan_training(fam, series_store.family_series(family), config)
        store = open_store(settings)

        _threads()
        tags = {}
        if os.environ.get("MLFLOW_RUN_ID"):  # started by `mlflow run`: keep the link
            tags["mamlctl.project_run_id"] = os.environ["MLFLOW_RUN_ID"]
        with progress(transient=True) as bar:
            task = bar.add_task(f"train {family}", total=config.iterations, info="")

            def on_progress(done: int, total: int, latest: Any) -> None:
                bar.update(task, completed=done, total=total, info=f"loss {latest['loss']:.4f}")

            outcome = run_training(
                data,
                store,
                promote=promote,
                on_progress=on_progress,
                run_tags=tags,
                record=series_store.record_initializer,
            )
        _render(outcome, as_json=as_json, emit_json=emit_json)


def _threads() -> None:
    """Tiny networks run fastest on one thread (and the machine is shared)."""
    import torch

    torch.set_num_threads(1)


def _render(outcome: TrainOutcome, *, as_json: bool, emit_json: Any) -> None:
    ref, m = outcome.ref, outcome.metrics
    body = {
        "family": ref.family,
        "registered_model": ref.registered_model,
        "version": ref.version,
        "aliases": list(ref.aliases),
        "uri": f"models:/{ref.registered_model}/{ref.version}",
        "run_id": outcome.run_id,
        "iterations": outcome.iterations,
        "train_seconds": round(outcome.elapsed_s, 3),
        "series_train": outcome.n_train,
        "series_validation": outcome.n_validation,
        "data_fingerprint": outcome.fingerprint,
        "baseline_gate": outcome.gate,
        "metrics": m,
    }
    if as_json:
        emit_json(body)
        return
    pre = m.get("val_pretrained_mase")
    typer.echo(
        f"{ref.registered_model} version {ref.version} ({', '.join(ref.aliases) or 'no alias'}) "
        f"from run {outcome.run_id}: {outcome.iterations} iterations in "
        f"{outcome.elapsed_s:.1f} s on {outcome.n_train} series"
    )
    typer.echo(
        f"held-out MASE ({outcome.n_validation} series): adapted {m['val_mase']:.3f}, "
        f"pretrained {'n/a' if pre is None else f'{pre:.3f}'}, "
        f"seasonal naive {m['val_seasonal_naive_mase']:.3f}"
    )
    chosen = int(m.get("selected_iteration", outcome.iterations))
    if chosen != outcome.iterations:
        which = "the pretrained baseline" if chosen < 0 else f"the MAML checkpoint at {chosen}"
        typer.echo(f"registered {which}: the lowest held-out MASE (--select last to keep the end)")
    if outcome.gate is not None:
        typer.echo(f"not champion: {outcome.gate}")
