"""``mamlctl ui``: the MLflow UI on mamlctl's own store, bound to 127.0.0.1."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mamlctl.settings import Settings

HOST = "127.0.0.1"


def ui_command(settings: Settings, *, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line serving the embedded store (pure: no I/O)."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.resolved_tracking_uri,
        "--registry-store-uri",
        settings.resolved_registry_uri,
        # Experiments created in the UI keep their artifacts next to mamlctl's own.
        "--artifacts-destination",
        settings.artifact_root.resolve().as_uri(),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return command


def _require_free_port(port: int) -> None:
    from mamlctl.errors import ConfigError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ConfigError(
                f"port {port} on {HOST} is in use; pass another with --port"
            ) from None


def register(app: typer.Typer) -> None:
    @app.command("ui")
    def ui(
        port: Annotated[
            int,
            typer.Option(
                "--port", "-p", min=1, max=65535, envvar="MAMLCTL_UI_PORT", help="Port to bind."
            ),
        ] = 5000,
    ) -> None:
        """Serve the MLflow UI on the same store mamlctl uses (127.0.0.1 only; Ctrl-C stops it).

        Aliases moved in the UI are what later stages resolve (models:/maml-FAMILY@champion).
        """
        import subprocess

        from mamlctl.cli.output import load_settings

        settings = load_settings()
        tracking = settings.resolved_tracking_uri
        if tracking.startswith(("http://", "https://")):
            typer.echo(f"mamlctl tracks to the MLflow server at {tracking}; open its UI there.")
            return
        settings.ensure_home()
        _require_free_port(port)
        url = f"http://{HOST}:{port}"
        typer.echo(f"MLflow UI on {url} (store {tracking}); Ctrl-C to stop", err=True)
        process = subprocess.Popen(ui_command(settings, port=port))
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the server got the same SIGINT; let it shut down
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            return
        if code != 0:
            from mamlctl.errors import StoreError

            raise StoreError(f"the MLflow UI server exited with status {code}")
