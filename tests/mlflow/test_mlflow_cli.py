"""``mamlctl models list``, ``mamlctl promote`` and ``mamlctl ui`` through CliRunner, plus the
MLproject entry points checked against the real CLI's options."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml
from local_processes import free_port, stop_process_group, wait_for_health
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.cli.ui import ui_command
from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, MlflowStore, open_store
from mamlctl.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _register(store: MlflowStore, family: str, tmp_path: Path, seed: int) -> str:
    folder = tmp_path / f"init-{seed}"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(bytes([seed]) * 16)
    with store.start_run(family=family) as run:
        run.log_metrics({"val_mase_adapted": 0.5 + seed, "train_loss": 3.0}, step=0)
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    store.register_initializer(
        family=family, run_id=run.run_id, tags={"period": 24}, description=f"seed {seed}"
    )
    return run.run_id


def test_models_list_and_promote_via_cli(backend: str, family: str, tmp_path: Path) -> None:
    store = open_store(Settings())
    run1 = _register(store, family, tmp_path, 1)
    _register(store, family, tmp_path, 2)
    runner = CliRunner()

    listed = runner.invoke(app, ["models", "list", "--family", family, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["aliases"]) for r in rows] == [(2, ["challenger"]), (1, ["champion"])]
    assert rows[1]["run_id"] == run1
    assert rows[1]["metrics"] == {"val_mase_adapted": 1.5}
    assert rows[0]["uri"] == f"models:/maml-{family}/2"

    promoted = runner.invoke(app, ["promote", "--family", family, "--version", "2", "--json"])
    assert promoted.exit_code == 0, promoted.output
    body = json.loads(promoted.stdout)
    assert (body["version"], body["aliases"], body["uri"]) == (
        2,
        ["champion"],
        f"models:/maml-{family}@champion",
    )
    assert store.resolve_alias(family).version == 2

    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "300"})
    assert table.exit_code == 0
    assert f"maml-{family}" in table.stdout and "mase_adapted=2.5" in table.stdout


def test_promote_unknown_version_is_one_line_error(
    backend: str, family: str, tmp_path: Path
) -> None:
    _register(open_store(Settings()), family, tmp_path, 1)
    result = CliRunner().invoke(app, ["promote", "--family", family, "--version", "7"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: maml-{family} has no version 7; see `mamlctl models list --family {family}`"
    ]


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias"])
def test_promote_rejects_reserved_or_malformed_alias(clean_env: Path, alias: str) -> None:
    result = CliRunner().invoke(
        app, ["promote", "--family", "f", "--version", "1", "--alias", alias]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: invalid alias '{alias}'")


def test_models_list_with_server_down_names_the_uri(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["models", "list"])
    assert time.monotonic() - started < 5.0
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0]


def test_ui_command_serves_the_embedded_store(embedded_settings: Settings) -> None:
    command = ui_command(embedded_settings, port=5123)
    home = embedded_settings.home
    assert command[1:4] == ["-m", "mlflow", "server"]
    args = dict(zip(command[4::2], command[5::2], strict=True))
    assert args == {
        "--backend-store-uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "--registry-store-uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "--artifacts-destination": (home / "mlflow" / "artifacts").resolve().as_uri(),
        "--host": "127.0.0.1",
        "--port": "5123",
        "--workers": "1",
    }


def test_ui_refuses_a_busy_port(clean_env: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"error: port {port} on 127.0.0.1 is in use; pass another with --port"
    )


@pytest.mark.slow
def test_ui_shows_versions_registered_by_mamlctl(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    """`mamlctl ui` really serves the embedded store: its REST API lists our champion."""
    family = "uifam"
    _register(open_store(embedded_settings), family, tmp_path, 1)
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mamlctl"), "ui", "--port", str(port)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for_health(uri, timeout_s=120, process=process)
        import urllib.request

        url = f"{uri}/api/2.0/mlflow/registered-models/alias?name=maml-{family}&alias=champion"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["model_version"]["version"] == "1"
    finally:
        stop_process_group(process)


def test_mlproject_entry_points_call_real_cli_options() -> None:
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(spec["entry_points"]) >= {"train", "adapt", "evaluate"}
    root = get_command(app)
    assert isinstance(root, click.Group | TyperGroup)
    for name, entry in spec["entry_points"].items():
        words = entry["command"].split()
        assert words[0] == "mamlctl"
        command = root.commands.get(words[1])
        if command is None:
            pytest.skip(f"`mamlctl {words[1]}` is not built yet")
        rest = words[2:]
        while rest and rest[0] in getattr(command, "commands", {}):
            command = command.commands[rest[0]]  # a sub-command such as `evaluate m4`
            rest = rest[1:]
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        used = {w for w in words if w.startswith("--")}
        assert used <= known, f"{name}: unknown options {used - known}"
        for param in entry.get("parameters", {}):
            assert "{" + param + "}" in entry["command"], f"{name}: {param} unused"
