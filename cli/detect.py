"""``mamlctl detect``: score the stored points after each model's support end one step ahead
(``unique_id, ds, y, yhat, anomaly_score, is_anomaly``), as the scoring server scores them.

The stage is :mod:`mamlctl.stages.forecast` (:func:`~mamlctl.stages.forecast.detect_frame`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from mamlctl.cli.forecast import FamilyOpt, JsonOpt, OutOpt, SeriesOpt


def detect_command(
    family: FamilyOpt = None,
    series: SeriesOpt = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only points at or after this ISO 8601 time (an integer position for series "
            "without timestamps).",
        ),
    ] = None,
    anomalies_only: Annotated[
        bool, typer.Option("--anomalies-only", help="Keep only the flagged points.")
    ] = False,
    out: OutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score every stored point after each series' support end from the L points before it:
    anomaly score erf(|y - yhat| / (sigma * sqrt 2)) in [0, 1], flagged at the model's
    calibrated threshold (the server's rule)."""
    from mamlctl.cli.forecast import _check_out, render
    from mamlctl.cli.output import load_settings
    from mamlctl.stages.forecast import detect_frame, load_targets, parse_since

    if since is not None and not since.strip().lstrip("-").isdigit():
        parse_since(since)  # a bad time is one line before anything loads
    if out is not None:
        _check_out(out)
    settings = load_settings()
    settings.require_home()
    targets = load_targets(settings, family=family, series_ids=tuple(series or ()))
    frame = detect_frame(targets, models_dir=settings.models_dir, since=since)
    if anomalies_only:
        frame = frame[frame["is_anomaly"]].reset_index(drop=True)
    render(frame, out=out, json_out=json_out, what="scored points")


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_command)
