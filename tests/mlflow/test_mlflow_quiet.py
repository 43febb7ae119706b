"""MLflow's own INFO lines stay out of mamlctl's output (issue 16: "MLflow's INFO lines do not
leak into mamlctl's output"); ``MAMLCTL_MLFLOW_LOG_LEVEL=INFO`` brings them back.

Oracle: the real command's stderr on a fresh home, where MLflow creates its database and
logs "Creating initial MLflow database tables..." at INFO."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from local_processes import mamlctl_argv


def _models_list(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    home.mkdir()  # an existing, empty home (a missing one is an error)
    run_env = {**os.environ, "MAMLCTL_HOME": str(home), **env}
    run_env.pop("MAMLCTL_TRACKING_URI", None)
    return subprocess.run(
        mamlctl_argv("models", "list"), env=run_env, capture_output=True, text=True, timeout=120
    )


def test_a_fresh_home_prints_no_mlflow_info_lines(tmp_path: Path) -> None:
    quiet = _models_list(tmp_path / "a")
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO mlflow" not in quiet.stderr + quiet.stdout
    loud = _models_list(tmp_path / "b", MAMLCTL_MLFLOW_LOG_LEVEL="INFO")
    assert loud.returncode == 0, loud.stderr
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in loud.stderr
