"""``mamlctl adapt``: adapt a family's series from its champion initializer, export, record."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("adapt")
    def adapt(
        family: Annotated[str, typer.Option("--family", "-f", help="Family to adapt.")],
        series: Annotated[
            list[str] | None,
            typer.Option("--series", "-s", help="Only these series (repeatable); default all."),
        ] = None,
        stale_after: Annotated[
            str | None,
            typer.Option(
                "--stale-after",
                help="Only series whose model is older than this (e.g. 24h, 7d) or whose "
                "family champion changed; series without a model are always adapted.",
            ),
        ] = None,
        steps: Annotated[
            int | None,
            typer.Option("--steps", min=1, max=1000, help="Inner steps (default: as trained)."),
        ] = None,
        lr: Annotated[
            float | None,
            typer.Option("--lr", help="Inner learning rate > 0 (default: as trained)."),
        ] = None,
        version: Annotated[
            int | None,
            typer.Option("--version", "-v", min=1, help="Initializer version (default: alias)."),
        ] = None,
        calibration: Annotated[
            int | None,
            typer.Option(
                "--calibration",
                min=4,
                help="Held-out points for residual scale and threshold (default: max(2H, P, 24)).",
            ),
        ] = None,
        adapt_scope: Annotated[
            str | None,
            typer.Option(
                "--adapt-scope",
                help="all or head (last layer only, ANIL); default: as the initializer trained.",
            ),
        ] = None,
        weights: Annotated[
            str,
            typer.Option(
                "--weights",
                help="How files store adapted weights: int8-delta (int8 deltas from the "
                "initializer, a quarter of the serving memory) or float32 (exact).",
            ),
        ] = "int8-delta",
        force: Annotated[
            bool, typer.Option("--force", help="Re-adapt series that are already up to date.")
        ] = False,
        chunk: Annotated[
            int, typer.Option("--chunk", min=1, help="Series adapted and recorded per batch.")
        ] = 2048,
        gc: Annotated[
            bool,
            typer.Option(
                "--gc",
                help="After a successful job, delete the family's model files no registry row "
                "references (as `mamlctl gc`, for this family only).",
            ),
        ] = False,
        gc_grace: Annotated[
            str | None,
            typer.Option(
                "--gc-grace",
                help="With --gc: keep unreferenced files younger than this (default 24h; 0 for "
                "none). Longer than any adaptation job of the family running at the same time.",
            ),
        ] = None,
        ray: Annotated[
            str | None,
            typer.Option(
                "--ray",
                envvar="MAMLCTL_RAY_ADDRESS",
                help="Run the chunks as Ray tasks on this cluster: host:port of its head node, "
                "or auto (needs the ray extra; the registry database and MAMLCTL_MODELS_ROOT "
                "must be reachable from every node).",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Adapt every (or the selected / stale) series of FAMILY from its champion initializer.

        All selected series are adapted together (vectorised), exported to one ONNX file each
        (written atomically under a content-addressed name), then recorded; the previous model
        of a series stays current until its replacement is recorded. The job is logged as an
        MLflow run in the family's experiment. Re-running with nothing new does nothing.
        """
        from mamlctl.cli.output import emit_json, load_settings, progress
        from mamlctl.errors import ConfigError
        from mamlctl.maml.adaptation import AdaptConfig
        from mamlctl.registry.mlflow_store import open_store
        from mamlctl.stages.adapt import AdaptRequest
        from mamlctl.stages.api import run_adaptation
        from mamlctl.timeseries.durations import parse_duration, parse_timedelta

        if ray is not None and not ray.strip():
            raise ConfigError("--ray needs an address: host:port of the head node, or auto")
        if gc_grace is not None and not gc:
            raise ConfigError("--gc-grace needs --gc")
        gc_grace_s = parse_duration(gc_grace or "24h", allow_zero=True) if gc else None

        try:
            config = AdaptConfig(
                steps=steps,
                inner_lr=lr,
                calibration=calibration,
                adapt_scope=adapt_scope,
                weights=weights,
            )
        except ValueError as err:
            raise ConfigError(f"invalid adaptation settings: {err}") from None
        request = AdaptRequest(
            family=family,
            series=tuple(series or ()),
            version=version,
            stale_after=parse_timedelta(stale_after) if stale_after else None,
            force=force,
            chunk_series=chunk,
            gc_grace_s=gc_grace_s,
        )
        settings = load_settings()
        settings.ensure_home()
        store = open_store(settings)
        with progress() as bar:
            task = bar.add_task("adapting", total=None, info="")

            def on_chunk(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, info=f"{done}/{total} series")

            report = run_adaptation(
                settings, store, request, config, progress=on_chunk, ray_address=ray
            )
        for line in report.warnings:
            typer.echo(f"warning: {line}", err=True)
        if as_json:
            emit_json(report)
            return
        if report.stale_runs_ended:
            typer.echo(
                f"ended {len(report.stale_runs_ended)} stale MLflow run(s) KILLED (their process "
                f"was gone): {', '.join(report.stale_runs_ended)}"
            )
        typer.echo(
            f"{report.family}: {report.adapted} adapted, {report.zero_shot} zero-shot, "
            f"{report.up_to_date} up to date, "
            f"{len(report.too_short)} too short (of {report.selected} selected) from "
            f"{report.initializer.registered_model} v{report.initializer.version} "
            f"in {report.seconds:.2f} s; "
            + (f"MLflow run {report.run_id}" if report.run_id else "no MLflow run (nothing to do)")
        )
        if report.cluster is not None:
            workers = report.cluster["workers"]
            typer.echo(
                f"ray: {report.cluster['tasks']} chunk task(s) on {len(workers)} worker(s) of "
                f"{len({w['node_id'] for w in workers})} node(s) in "
                f"{report.cluster['chunk_phase_s']:.2f} s; peak RSS per worker "
                f"{max((w['peak_rss_mb'] for w in workers), default=0):.0f} MB"
            )
        if report.parity:
            worst = max(p["max_rel_error"] for p in report.parity)
            typer.echo(
                f"parity (onnxruntime vs torch, {len(report.parity)} series x 1000 windows): "
                f"max error {worst:.2e} of scale"
            )
        if report.zero_shot:
            typer.echo(
                f"zero-shot (served by the un-adapted initializer until they hold "
                f"{report.plan['support'] + report.plan['calibration']} points): "
                f"{report.zero_shot} series"
            )
        if report.gc is not None:
            typer.echo(
                f"gc: removed {len(report.gc.removed)} unreferenced model file(s) of "
                f"{report.family}, {report.gc.removed_bytes} bytes; kept "
                f"{report.gc.kept_referenced} referenced and {report.gc.kept_young} younger "
                f"than {gc_grace or '24h'}"
            )
        if report.too_short:
            typer.echo(
                f"too short for any model (need one window, {report.plan['window']} points): "
                f"{', '.join(report.too_short[:10])}"
                + (" ..." if len(report.too_short) > 10 else "")
            )
