"""A person promotes a model in the MLflow UI and live scoring follows (issue 8).

Real processes, real browser: ``mamlctl ui`` (MLflow's server and UI over the test store),
``mamlctl serve`` (hot reload from the registry DB) and ``mamlctl watch`` (following the
``champion`` alias through the UI's tracking server). Headless Debian chromium, driven by
Playwright, opens ``maml-sines``' page, moves ``champion`` to version 2 with the UI's own alias
editor (clicks and typing) and the test then waits, bounded, until every served series answers
with version 2 and forecasts equal to onnxruntime on the newly recorded files. Screenshots of
the registry page before and after land in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from local_processes import Proc, free_port, mamlctl_argv, start, wait_http

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
TINY = ["--iterations", "12", "--meta-batch", "4", "--hidden", "16,16", "--query", "6"]
#: How long the served version may take to follow the alias (watch poll + re-adaptation of
#: six series + server reload), generous for a loaded CI machine.
FOLLOW_TIMEOUT_S = 240.0
UI_TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium "
        "(run scripts/browser-deps.sh)",
    ),
]


def _cli(*args: str) -> dict[str, Any]:
    from typer.testing import CliRunner

    from mamlctl.cli.app import app

    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _score_all(base: str, windows: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    import httpx

    items = [{"series_id": sid, "window": w} for sid, w in windows.items()]
    response = httpx.post(f"{base}/v1/score", json={"items": items}, timeout=10.0)
    response.raise_for_status()
    return {r["series_id"]: r for r in response.json()["results"]}


def _version_row(page: Any) -> Any:
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 2", exact=True))
    row.wait_for(timeout=UI_TIMEOUT_MS)
    return row


def _move_champion_in_ui(page: Any, ui: str, *, shots: Path) -> None:
    """Open the model page, edit version 2's aliases in the UI's modal, save."""
    from playwright.sync_api import expect

    page.goto(f"{ui}/#/models/maml-sines", wait_until="domcontentloaded")
    row = _version_row(page)
    page.screenshot(path=str(shots / "ui-promotion-before.png"), full_page=True)
    # Version 2 is the challenger: its Aliases cell holds "@ challenger" and an edit button
    # (a version without aliases shows an "Add" button instead).
    aliases_cell = row.get_by_role("cell").filter(has=page.get_by_role("status", name="challenger"))
    if aliases_cell.count():
        aliases_cell.get_by_role("button").click()
    else:
        row.get_by_role("button", name="Add").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("alias for model version 2", timeout=UI_TIMEOUT_MS)
    box = dialog.get_by_role("combobox")
    box.click()
    box.press_sequentially("champion", delay=30)
    box.press("Enter")
    # the UI warns that champion leaves version 1
    expect(dialog).to_contain_text("version 1", timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(shots / "ui-promotion-editor.png"))
    dialog.get_by_role("button", name="Save aliases").click()
    expect(dialog).to_be_hidden(timeout=UI_TIMEOUT_MS)
    # a fresh load of the page (the SPA caches the model) shows champion on version 2 now
    page.reload(wait_until="domcontentloaded")
    row = _version_row(page)
    expect(row.get_by_role("status", name="champion")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(shots / "ui-promotion-after.png"), full_page=True)


def test_champion_moved_in_the_ui_reaches_live_scoring(sines_home: Any, tmp_path: Path) -> None:
    pytest.importorskip("playwright", reason="pip install playwright (scripts/browser-deps.sh)")
    import onnxruntime as ort
    from playwright.sync_api import sync_playwright

    from mamlctl.registry import queries as q
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.mlflow_store import open_store

    settings = sines_home.settings
    family = sines_home.family
    # two registered versions of a tiny family: v1 champion (adapted, serving), v2 challenger
    v1 = _cli("train", "--family", "sines", *TINY, "--no-baseline", "--seed", "0")
    if v1["baseline_gate"] is not None:  # a tiny run lost to seasonal naive: a person promotes
        assert v1["aliases"] == ["challenger"]
        assert _cli("promote", "--family", "sines", "--version", "1")["version"] == 1
    v2 = _cli("train", "--family", "sines", *TINY, "--no-baseline", "--seed", "1")
    assert (v1["version"], v2["version"], v2["aliases"]) == (1, 2, ["challenger"])
    assert open_store(settings).resolve_alias("sines").version == 1
    assert _cli("adapt", "--family", "sines")["adapted"] == 6

    shots = ARTIFACTS
    shots.mkdir(exist_ok=True)
    logs = tmp_path / "logs"
    ui_port, serve_port = free_port(), free_port()
    ui, base = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{serve_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAMLCTL_", "MLFLOW_"))}
    env.update({"MAMLCTL_HOME": str(settings.home), "OMP_NUM_THREADS": "1"})
    procs: list[Proc] = []
    try:
        procs.append(start("ui", mamlctl_argv("ui", "--port", str(ui_port)), env=env, log_dir=logs))
        procs.append(
            start(
                "serve",
                mamlctl_argv("serve", "--port", str(serve_port), "--reload-interval", "500ms"),
                env=env,
                log_dir=logs,
            )
        )
        wait_http(f"{ui}/health", proc=procs[0])
        wait_http(f"{base}/readyz", proc=procs[1])
        # watch follows the alias through the UI's tracking server
        procs.append(
            start(
                "watch",
                mamlctl_argv("watch", "--interval", "1s", "--json"),
                env={**env, "MAMLCTL_TRACKING_URI": ui},
                log_dir=logs,
            )
        )
        with open_registry(settings) as factory, factory() as session:
            windows = {
                sid: q.last_points(session, sid, family.window)[0].tolist()
                for sid in sorted(sines_home.values)
            }
        before = _score_all(base, windows)
        assert {r["lineage"]["initializer_version"] for r in before.values()} == {1}

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                _move_champion_in_ui(page, ui, shots=shots)
            finally:
                browser.close()
        moved = time.monotonic()
        # the UI moved the alias in the store (not the test)
        assert open_store(settings).resolve_alias("sines").version == 2

        deadline = moved + FOLLOW_TIMEOUT_S
        after = before
        while time.monotonic() < deadline:
            after = _score_all(base, windows)
            if {r["lineage"]["initializer_version"] for r in after.values()} == {2}:
                break
            for proc in procs:
                assert proc.alive(), proc.log_tail()
            time.sleep(0.5)
        else:
            served = sorted({r["lineage"]["initializer_version"] for r in after.values()})
            pytest.fail(
                f"server still answers versions {served} "
                f"{FOLLOW_TIMEOUT_S:.0f} s after the UI move\n"
                + "\n".join(p.log_tail() for p in procs)
            )
        followed_s = time.monotonic() - moved
        # the watch finishes its job (MLflow run, champion mirrored in the registry DB) just
        # after the rows the server reloads from are committed
        watch_log = procs[2].log_path
        while '"kind": "promoted"' not in watch_log.read_text():
            assert time.monotonic() < deadline, procs[2].log_tail()
            time.sleep(0.5)
        assert '"version": 2' in watch_log.read_text()

        # oracle: onnxruntime on the files the registry now records as current (version 2)
        with open_registry(settings) as factory, factory() as session:
            current = {r.series_id: r for r in q.current_adapted_models(session, "sines")}
            assert q.get_family(session, "sines").champion_version == 2
        for sid, result in after.items():
            rec = current[sid]
            assert rec.initializer_version == 2
            assert result["lineage"]["model_sha256"] == rec.sha256
            session_ = ort.InferenceSession(str(settings.models_dir / rec.path))
            window = np.asarray(windows[sid], dtype=np.float32)[None, :]
            forecast, sigma = session_.run(None, {"window": window})
            served = np.asarray(result["forecast"], dtype=np.float32)
            np.testing.assert_array_equal(served, forecast[0])  # bit for bit
            np.testing.assert_array_equal(np.asarray(result["sigma"], dtype=np.float32), sigma[0])
            assert result["forecast"] != before[sid]["forecast"]  # a different model answers
        (shots / "ui-promotion-timing.json").write_text(
            json.dumps({"seconds_from_ui_save_to_all_series_on_v2": round(followed_s, 2)})
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
        for proc in procs:
            shutil.copyfile(proc.log_path, shots / f"ui-promotion-{proc.name}.log")
