"""``mamlctl demo``: the whole pipeline on real data shipped in the package, in about a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _default_home() -> Path:
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("~/.mamlctl-demo").expanduser() / stamp


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        home: Annotated[
            Path | None,
            typer.Option(
                "--home",
                help="Fresh folder for the demo's state (default: ~/.mamlctl-demo/<UTC time>).",
            ),
        ] = None,
        keep_server: Annotated[
            bool,
            typer.Option("--keep-server", help="Keep the scoring server running (Ctrl-C stops)."),
        ] = False,
        train_seconds: Annotated[
            float,
            typer.Option("--train-seconds", help="Meta-training budget in seconds.", min=0.1),
        ] = 20.0,
        iterations: Annotated[
            int | None,
            typer.Option(
                "--iterations",
                min=1,
                help="Fixed meta-iterations instead of the time budget (deterministic).",
            ),
        ] = None,
        actual_steps: Annotated[
            int,
            typer.Option(
                "--actual-steps", min=1, help="Observed values sent with each window (<= H)."
            ),
        ] = 1,
        windows: Annotated[
            int, typer.Option("--windows", help="Normal windows scored (plus one anomaly).")
        ] = 4,
        anomaly_factor: Annotated[
            float,
            typer.Option("--anomaly-factor", help="The injected anomaly multiplies one actual."),
        ] = 3.0,
        latency_requests: Annotated[
            int, typer.Option("--latency-requests", help="Requests timed for the latency line.")
        ] = 200,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
        ] = False,
    ) -> None:
        """Run the pipeline on 60 real M4 Hourly series shipped in the package.

        Ingest, detect families, meta-train the largest family (short budget), register it in
        MLflow as champion, adapt and export one ONNX model per series, start the scoring
        server, score a few windows (one with an injected anomaly) and print what happened and
        how to continue. Nothing is downloaded; everything lives under --home.
        """
        from mamlctl.cli.demo_flow import DemoOptions, Stages, run_demo
        from mamlctl.cli.output import emit_json, progress

        options = DemoOptions(
            home=home if home is not None else _default_home(),
            train_seconds=train_seconds,
            iterations=iterations,
            actual_steps=actual_steps,
            normal_windows=windows,
            anomaly_factor=anomaly_factor,
            latency_requests=latency_requests,
        )
        with progress(transient=False) as bar:
            current: list[Any] = []

            def start(name: str, total: int | None) -> None:
                current[:] = [bar.add_task(name, total=total, info="")]

            def advance(done: int, total: int, info: str) -> None:
                bar.update(current[0], completed=done, total=total, info=info)

            def finish(info: str) -> None:
                task = current[0]
                total = bar.tasks[task].total or 1
                bar.update(task, total=total, completed=total, info=info)

            summary, server = run_demo(options, Stages(start, advance, finish))
        try:
            if as_json:
                emit_json(summary)
            else:
                _render(summary)
            if keep_server:
                typer.echo(f"scoring server on {server.url} (Ctrl-C stops it)", err=True)
                try:
                    server.wait()
                except KeyboardInterrupt:  # the normal way to end --keep-server
                    typer.echo("scoring server stopped", err=True)
        finally:
            server.stop()


def _render(s: dict[str, Any]) -> None:
    from mamlctl.cli.output import console, print_table

    out = console()
    t, a = s["trained"], s["adapted"]
    out.print(f"[bold]mamlctl demo[/bold] finished in {s['total_seconds']:.1f} s; home {s['home']}")
    print_table(
        "families detected",
        ["family", "period", "L", "H", "K", "series"],
        [
            (f["name"], f["period"] or "none", f["window"], f["horizon"], f["support"], f["series"])
            for f in s["families"]
        ],
    )
    pre = t["val_pretrained_mase"]
    out.print(
        f"meta-trained [bold]{t['registered_model']}[/bold] v{t['version']} "
        f"({', '.join(t['aliases'])}) in MLflow run {t['run_id']}: {t['iterations']} "
        f"iterations, {t['train_seconds']:.1f} s on {t['series_train']} series; held-out MASE "
        f"{t['val_mase']:.3f} (pretrained {'n/a' if pre is None else f'{pre:.3f}'}, seasonal "
        f"naive {t['val_seasonal_naive_mase']:.3f})"
    )
    out.print(
        f"adapted and exported {a['series']} ONNX models from v{a['initializer_version']} in "
        f"{a['seconds']:.1f} s (adapt run {a['run_id']}, parity max error "
        f"{a['parity_max_rel_error']:.1e} of scale)"
    )
    print_table(
        f"scored by {s['server']['url']} (forecast of the next {len(s['scores'][0]['forecast'])} "
        "values; the first shown against the actual)",
        ["series", "forecast", "actual", "anomaly score", "flag", "model"],
        [
            (
                r["series_id"] + (" (injected)" if r["injected_anomaly"] else ""),
                ", ".join(f"{v:.1f}" for v in r["forecast"][: len(r["actual"])]),
                ", ".join(f"{v:.1f}" for v in r["actual"]),
                ", ".join(f"{v:.3f}" for v in r["anomaly_score"]),
                "ANOMALY" if any(r["is_anomaly"]) else "ok",
                f"{r['registered_model']} v{r['initializer_version']}",
            )
            for r in s["scores"]
        ],
    )
    lat = s["latency"]
    out.print(
        f"latency over {int(lat['requests'])} sequential requests: p50 {lat['p50_ms']:.2f} ms, "
        f"p90 {lat['p90_ms']:.2f} ms (client round trip on loopback)"
    )
    out.print("[bold]continue[/bold]:")
    for line in s["next"]:
        out.print(f"  {line}", markup=False)
