"""The Python API: ``import mamlctl`` stays light (PEP 562), and the README's example runs as
written (oracle for the forecasts: the CLI's ``forecast`` on the same home)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
HEAVY = ("pandas", "torch", "mlflow", "onnxruntime", "sqlalchemy")


def test_import_mamlctl_loads_nothing_heavy() -> None:
    code = (
        "import sys, mamlctl; "
        f"print([m for m in {HEAVY!r} if m in sys.modules]); "
        "print(sorted(n for n in mamlctl.__all__ if not n.startswith('_')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == str(["IngestResult", "adapt", "detect", "forecast", "ingest_frame", "train"])


def test_lazy_attribute_resolves_to_the_stage_api() -> None:
    import mamlctl
    from mamlctl.stages import api

    assert mamlctl.forecast is api.forecast and mamlctl.ingest_frame is api.ingest_frame
    with pytest.raises(AttributeError):
        mamlctl.nope  # noqa: B018


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert m is not None, "README lost its api-example block"
    return m.group(1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_readme_example_runs(
    db_settings: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAMLCTL_DATABASE_URL", raising=False)
    ns: dict[str, object] = {}
    exec(compile(readme_example(), str(README), "exec"), ns)
    history, forecasts, scan = ns["history"], ns["forecasts"], ns["scan"]
    assert ns["family"] == "hourly"  # as the README's comment says
    assert isinstance(forecasts, pd.DataFrame) and isinstance(scan, pd.DataFrame)
    assert list(forecasts.columns[:3]) == ["unique_id", "ds", "yhat"]
    assert {"yhat-lo-80", "yhat-hi-95"} <= set(forecasts.columns)
    last = history.groupby("unique_id")["ds"].max()  # type: ignore[attr-defined]
    first = forecasts.groupby("unique_id")["ds"].min()
    assert (first - last == pd.Timedelta(hours=1)).all()
    assert set(scan["unique_id"]) == set(last.index)
    assert len(scan) == len(ns["later"])  # type: ignore[arg-type]
    # the CLI answers the same numbers on the same home
    from typer.testing import CliRunner

    from mamlctl.cli.app import app

    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path / "demo-home"))
    result = CliRunner().invoke(app, ["forecast", "--series", "store-3", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["yhat"] for r in rows] != []
    assert os.path.isdir(tmp_path / "demo-home" / "models")
