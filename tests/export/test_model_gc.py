"""``mamlctl gc``: model files no registry row references and older than the grace period go;
referenced and young files stay; ``--dry-run`` deletes nothing.

Oracle: the filesystem before and after, with file ages set by ``os.utime``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.registry import model_files as mf
from mamlctl.registry.model_gc import collect_unreferenced
from mamlctl.settings import Settings

DAY = 86400.0


def _age(root: Path, rel: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(root / rel, (t, t))


def _files(root: Path) -> dict[str, mf.StoredFile]:
    out = {}
    for name, age in (("kept", 2 * DAY), ("old", 2 * DAY), ("young", 60.0)):
        stored = mf.write_model_file(root, family="f", series_id=name, data=name.encode())
        _age(root, stored.relpath, age)
        out[name] = stored
    return out


def test_collect_removes_only_old_unreferenced_files(tmp_path: Path) -> None:
    files = _files(tmp_path)
    dry = collect_unreferenced(
        tmp_path, referenced=[files["kept"].relpath], grace_s=DAY, dry_run=True
    )
    assert [c.relpath for c in dry.removed] == [files["old"].relpath]
    assert (dry.kept_referenced, dry.kept_young) == (1, 1)
    assert sorted(mf.iter_model_files(tmp_path)) == sorted(f.relpath for f in files.values())
    done = collect_unreferenced(tmp_path, referenced=[files["kept"].relpath], grace_s=DAY)
    assert [c.relpath for c in done.removed] == [files["old"].relpath]
    assert done.removed_bytes == len(b"old")
    assert sorted(mf.iter_model_files(tmp_path)) == sorted(
        [files["kept"].relpath, files["young"].relpath]
    )


def test_cli_gc_dry_run_then_collect(sqlite_url: str, tmp_settings: Settings) -> None:
    files = _files(tmp_settings.models_dir)  # the registry references none of them
    runner = CliRunner()
    dry = runner.invoke(app, ["gc", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True
    assert sorted(r["relpath"] for r in doc["removed"]) == sorted(
        [files["kept"].relpath, files["old"].relpath]
    )
    assert len(list(mf.iter_model_files(tmp_settings.models_dir))) == 3
    done = runner.invoke(app, ["gc", "--grace", "1h"])
    assert done.exit_code == 0, done.stderr
    assert "removed 2 model file(s)" in done.stdout
    assert list(mf.iter_model_files(tmp_settings.models_dir)) == [files["young"].relpath]


def test_cli_gc_bad_grace_and_missing_home_are_one_line(tmp_settings: Settings) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["gc", "--grace", "soon"])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1
    missing = runner.invoke(app, ["gc"])
    assert missing.exit_code == 1 and "no mamlctl home" in missing.stderr
    assert not tmp_settings.home.exists()
