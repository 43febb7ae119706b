"""Names are validated once, at the edge of the domain: family names and series ids that could
escape a folder or be truncated (``/``, ``..``, ``:``, NUL) never reach a path or a row.

Oracle: the list of forbidden pieces in the brief (``/``, ``..``, ``:``, NUL), and the
filesystem (nothing is created outside the home).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from mamlctl.cli.app import app
from mamlctl.domain import (
    Family,
    Series,
    registered_model_name,
    validate_family_name,
    validate_series_id,
)
from mamlctl.errors import InputError
from mamlctl.registry import queries as q
from mamlctl.registry.ingest import IncomingSeries, store_series
from mamlctl.settings import Settings

BAD_FAMILIES = ["../../../../x", "a/b", "..", "a..b", "c:d", "a\x00b", "", " a", "a\\b", ".hidden"]
GOOD_FAMILIES = ["hourly", "1h-p24", "5min-nocycle", "p24", "M4_Hourly.v2"]


@pytest.mark.parametrize("name", BAD_FAMILIES)
def test_bad_family_names_are_refused_everywhere(name: str, sqlite_session: Session) -> None:
    with pytest.raises(InputError, match="invalid family name"):
        validate_family_name(name)
    with pytest.raises(InputError, match="invalid family name"):
        registered_model_name(name)
    fam = Family(name=name, period=24, interval_seconds=3600.0, window=24, horizon=6, support=60)
    with pytest.raises(InputError, match="invalid family name"):
        q.upsert_family(sqlite_session, fam)


@pytest.mark.parametrize("name", GOOD_FAMILIES)
def test_good_family_names_pass(name: str) -> None:
    assert validate_family_name(name) == name


def test_series_ids_without_nul(sqlite_session: Session) -> None:
    assert validate_series_id("a/b c:d") == "a/b c:d"  # slugged where used in paths
    for bad in ("", "a\x00b", "x" * 256):
        with pytest.raises(InputError, match="invalid series id"):
            validate_series_id(bad)
    item = IncomingSeries(series=Series(series_id="a\x00b", values=np.ones(3)), source="t")
    with pytest.raises(InputError, match="invalid series id"):
        store_series(sqlite_session, [item])


def test_cli_families_create_refuses_a_traversing_name(tmp_settings: Settings) -> None:
    home = tmp_settings.home
    result = CliRunner().invoke(
        app, ["families", "create", "../../../../x", "-L", "24", "-H", "6", "-P", "24"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid family name '../../../../x'")
    assert result.stderr.count("\n") == 1
    outside = Path(home).parent
    assert sorted(p.name for p in outside.iterdir() if p.name != "home") == []
