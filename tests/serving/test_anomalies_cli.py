"""``mamlctl anomalies list|show|ack`` on the records an observe run wrote (the answers are
the oracle), and the listing endpoints following the acknowledgement."""

from __future__ import annotations

import json
from typing import Any

import pytest
from observe_fixtures import Served, add_timestamped_series, record_models
from typer.testing import CliRunner

from mamlctl.cli.app import app

runner = CliRunner()


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _cli(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_show_ack(seeded_registry) -> None:  # type: ignore[no-untyped-def]
    settings = seeded_registry.settings
    add_timestamped_series(settings, seeded_registry.values["s0"][:48])
    record_models(settings, ["s0", "s1", "t0"])
    served = Served(settings)
    s0 = seeded_registry.values["s0"]
    got = served.observe(
        {"series_id": "s0", "timestamp": 240, "value": float(s0[216]) + 5.0},  # 50 sigma
        {"series_id": "s1", "timestamp": 240, "value": float(seeded_registry.values["s1"][216])},
        {"series_id": "t0", "timestamp": "2026-03-03T00:00:00+00:00", "value": 100.0},
    )["results"]
    served.close()
    assert [a["is_anomaly"] for a in got] == [True, False, True]
    listed = _cli("anomalies", "list")
    assert [r["id"] for r in listed] == [got[0]["anomaly_id"], got[2]["anomaly_id"]]
    assert listed[0]["series_id"] == "s0" and listed[0]["timestamp"] == 240
    assert listed[1]["timestamp"] == "2026-03-03T00:00:00"
    assert listed[0]["z"] == got[0]["z"] and listed[0]["magnitude"] == got[0]["magnitude"]
    shown = _cli("anomalies", "show", str(got[2]["anomaly_id"]))
    assert shown["value"] == 100.0 and shown["forecast"] == got[2]["forecast"]
    assert shown["status"] == "open" and shown["acknowledged_at"] is None
    acked = _cli("anomalies", "ack", str(got[0]["anomaly_id"]))
    assert acked[0]["status"] == "acknowledged" and acked[0]["acknowledged_at"]
    assert [r["id"] for r in _cli("anomalies", "list", "--status", "open")] == [
        got[2]["anomaly_id"]
    ]
    assert _cli("anomalies", "list", "--series", "t0")[0]["id"] == got[2]["anomaly_id"]
    assert _cli("anomalies", "list", "--family", "sines", "--since", "2999-01-01") == []
    # errors: one line, exit 1, nothing changed
    missing = runner.invoke(app, ["anomalies", "ack", str(got[2]["anomaly_id"]), "999"])
    assert missing.exit_code == 1 and "no anomaly record 999" in missing.output
    assert _cli("anomalies", "show", str(got[2]["anomaly_id"]))["status"] == "open"
    bad = runner.invoke(app, ["anomalies", "list", "--status", "closed"])
    assert bad.exit_code == 1 and "status must be one of" in bad.output
    again = Served(settings)
    doc = again.client.get("/v1/anomalies", params={"status": "acknowledged"}).json()
    assert [r["id"] for r in doc["anomalies"]] == [got[0]["anomaly_id"]]
    again.close()
