"""Root of the ``mamlctl`` Typer application.

``mamlctl --help`` must stay instant (< 0.5 s): this module and every command module import
only typer/click/stdlib at the top; torch, mlflow, onnxruntime, sqlalchemy and pandas are
imported inside the command functions that need them.

Each command module exposes ``register(app: typer.Typer) -> None``. Domain errors
(:class:`mamlctl.errors.MamlctlError`) become one line on stderr and exit code 1 here, and only
here. Exit code 2 is click's, for usage errors alone; an unexpected bug is one line and exit 1
too.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from mamlctl import __version__
from mamlctl.errors import MamlctlError

#: Command modules under ``mamlctl.cli``, registered in this order (the pipeline's order).
COMMAND_MODULES: tuple[str, ...] = (
    # foundation (registry database, ingest, families)
    "db",
    "ingest",
    "families",
    "series",
    "status",
    # MAML engine
    "experiment",
    # MLflow store: meta-training per family, registered initializers, aliases, UI
    "train",
    "models",
    "promote",
    "ui",
    # per-series adaptation and ONNX export
    "adapt",
    "export",
    "gc",
    "serve",
    "shards",
    # the monitoring loop's records (POST /v1/observe)
    "anomalies",
    # forecasts and anomaly scans from the exported files, as Nixtla frames
    "forecast",
    "detect",
    # one series drawn: history, served forecast and band, flags
    "plot",
    # promotion follows the MLflow alias into live scoring
    "watch",
    # the one-command tour on the data shipped in the package
    "demo",
    # mamlctl against baselines on M4 and NAB
    "evaluate",
)


class _ErrorMappingGroup(TyperGroup):
    """Turns domain errors raised anywhere below into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MamlctlError as err:
            click.echo(f"error: {err}", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            raise typer.Exit(code=130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mamlctl {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="mamlctl",
        cls=_ErrorMappingGroup,
        help="Model registry and MLOps for MAML-meta-learned time-series initializers.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version."
        ),
    ) -> None:
        """Model registry and MLOps for MAML-meta-learned time-series initializers."""

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"mamlctl.cli.{name}")
        module.register(app)
    return app


app = build_app()


def main() -> None:
    """Console-script entry point. Unexpected bugs print one line (exit 1; 2 is for usage
    errors) unless MAMLCTL_DEBUG=1."""
    try:
        app()
    except SystemExit:
        raise
    except Exception as err:  # pragma: no cover - last line of defence
        if os.environ.get("MAMLCTL_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(err).__name__}: {' '.join(str(err).split())} "
            "(set MAMLCTL_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(1)
