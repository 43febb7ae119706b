"""Serving shards (``serve --shard I/N``): the ring's properties, a sharded app, the CLI.

Oracles: the unsharded app's answers (a shard answers its series byte-for-byte as the server of
every series does); :meth:`Ring.owner` for which shard loads what (the ring itself is checked
against real nginx in ``tests/e2e/test_shards_nginx.py``); set algebra for the shares (disjoint,
union = all); for consistency, the ids that stay put when a server joins the ring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MLP, Client
from serving_models import write_series
from typer.testing import CliRunner

from mamlctl.cli.app import app as cli_app
from mamlctl.errors import ConfigError
from mamlctl.serving import schemas
from mamlctl.serving.app import ServeOptions, create_app
from mamlctl.serving.binary import CONTENT_TYPE, decode_response, encode_request
from mamlctl.serving.shards import Ring, Shard, nginx_conf, parse_shard
from mamlctl.serving.source import StaticSource
from mamlctl.settings import Settings

RING = ("127.0.0.1:8001", "127.0.0.1:8002")
IDS = [f"m{i}" for i in range(24)]


# --------------------------------------------------------------------------------- the ring


def test_the_shares_are_disjoint_cover_every_id_and_are_balanced() -> None:
    ids = [f"series-{i}" for i in range(4000)]
    shards = [parse_shard(f"{i}/3", ["a:1", "b:1", "c:1"]) for i in range(3)]
    shares = [{sid for sid in ids if s.owns(sid)} for s in shards]
    assert sum(map(len, shares)) == len(ids) and set().union(*shares) == set(ids)
    assert all(0.2 < len(share) / len(ids) < 0.47 for share in shares), list(map(len, shares))


def test_a_server_joining_the_ring_takes_about_its_share_from_the_others_only() -> None:
    """Consistent hashing: an id moves only to the new server, and about 1/3 of them move."""
    ids = [f"series-{i}" for i in range(4000)]
    two, three = Ring.of(RING), Ring.of([*RING, "127.0.0.1:8003"])
    moved = [sid for sid in ids if two.owner(sid) != three.owner(sid)]
    assert all(three.owner(sid) == 2 for sid in moved)
    assert 0.2 < len(moved) / len(ids) < 0.47, len(moved)


def test_the_owner_depends_on_the_ring_order_as_nginx_does() -> None:
    """The owner is a ring *entry*: the same servers listed in another order swap the indices
    but keep each id on the same address."""
    forward, backward = Ring.of(RING), Ring.of(RING[::-1])
    for sid in IDS:
        assert forward.servers[forward.owner(sid)] == backward.servers[backward.owner(sid)]


@pytest.mark.parametrize(
    ("spec", "ring", "why"),
    [
        ("2/2", RING, "counts from 0"),
        ("one/two", RING, "is not I/N"),
        ("0/3", RING, "says 3 shards, --shard-ring names 2"),
        ("0/2", (), "needs --shard-ring"),
        ("0/2", ("a:1", "a:1"), "lists a server twice"),
        ("0/2", ("a:1", "b:1; x"), "is not an address"),
    ],
)
def test_bad_shard_settings_fail_in_one_line(spec: str, ring: tuple[str, ...], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_shard(spec, list(ring))


def test_an_empty_key_has_no_owner() -> None:
    shard = parse_shard("0/2", list(RING))
    with pytest.raises(ValueError, match="round-robin"):
        shard.ring.owner("")
    assert not shard.owns("") and not parse_shard("1/2", list(RING)).owns("")


def test_the_nginx_config_lists_the_ring_in_order_and_hashes_the_series_id() -> None:
    text = nginx_conf(Ring.of(RING), listen="127.0.0.1:8080", max_body_bytes=1 << 20)
    assert "hash $mamlctl_series consistent;" in text
    lines = [line.split() for line in text.splitlines()]
    servers = [words[1] for words in lines if words[:1] == ["server"] and words[1] != "{"]
    assert servers == list(RING)
    assert "listen 127.0.0.1:8080;" in text and "client_max_body_size 1048576;" in text


# ----------------------------------------------------------------------------- the app


def _apps(tmp_path: Path) -> tuple[Client, list[Client], list[Shard]]:
    settings = Settings(home=tmp_path / "home")
    records = write_series(settings.models_dir, MLP, IDS, seed=3)
    source = StaticSource(records, models_dir=settings.models_dir)
    options = ServeOptions(reload=False)
    whole = create_app(settings, source, options=options)
    assert whole.holder.reload(force=True)
    shards = [parse_shard(f"{i}/2", list(RING)) for i in range(2)]
    clients = []
    for shard in shards:
        app = create_app(settings, source, options=options, shard=shard)
        assert app.holder.reload(force=True)
        clients.append(Client(app))
    return Client(whole), clients, shards


def _window(seed: int) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).normal(0.0, 1.0, MLP.window)]


def test_each_shard_loads_its_share_and_answers_it_as_the_whole_server(tmp_path: Path) -> None:
    whole, clients, shards = _apps(tmp_path)
    loaded = []
    for client, shard in zip(clients, shards, strict=True):
        ready = client.get("/readyz").json()
        schemas.Ready.model_validate(ready)
        mine = {sid for sid in IDS if shard.owns(sid)}
        assert ready["shard"] == shard.label and ready["series"] == ready["records"] == len(mine)
        loaded.append(set(client.app.holder.state.entries))
        assert loaded[-1] == mine
        text = client.get("/metrics").text
        server = RING[shard.index]
        assert f'mamlctl_shard_info{{server="{server}",shard="{shard.index}",shards="2"}} 1.0' in (
            text
        )
        assert f"mamlctl_models_loaded {float(len(mine))}" in text
    assert not loaded[0] & loaded[1] and loaded[0] | loaded[1] == set(IDS)
    assert "shard" not in whole.get("/readyz").json()
    for k, sid in enumerate(IDS):
        item = {"series_id": sid, "window": _window(k)}
        owner = clients[shards[0].ring.owner(sid)]
        got = owner.post("/v1/score", json=item, headers={"X-Series-Id": sid})
        assert got.status_code == 200 and got.content == whole.post("/v1/score", json=item).content


def test_a_series_of_another_shard_is_a_421_naming_its_owner(tmp_path: Path) -> None:
    whole, clients, shards = _apps(tmp_path)
    theirs = next(sid for sid in IDS if not shards[0].owns(sid))
    mine = next(sid for sid in IDS if shards[0].owns(sid))
    r = clients[0].post("/v1/score", json={"series_id": theirs, "window": _window(0)})
    assert r.status_code == 421, r.text
    (detail,) = r.json()["detail"]
    assert detail["type"] == "misdirected" and detail["loc"] == ["body", "series_id"]
    assert f"shard 1/2 ({RING[1]})" in detail["msg"] and "X-Series-Id" in detail["msg"]
    assert clients[0].get(f"/v1/series/{theirs}").status_code == 421
    assert clients[0].get(f"/v1/series/{mine}").json() == whole.get(f"/v1/series/{mine}").json()
    # an id no shard knows is still "unknown" on its owner, and misdirected elsewhere
    ghost_owner = shards[0].ring.owner("ghost")
    assert clients[ghost_owner].get("/v1/series/ghost").status_code == 404
    assert clients[1 - ghost_owner].get("/v1/series/ghost").status_code == 421
    # a batch spanning shards: the foreign items answer 421 in place, the rest as alone
    items = [{"series_id": sid, "window": _window(k)} for k, sid in enumerate((mine, theirs))]
    results = clients[0].post("/v1/score", json={"items": items}).json()["results"]
    assert results[0] == whole.post("/v1/score", json={"items": items[:1]}).json()["results"][0]
    assert results[1]["error"]["status"] == 421 and results[1]["error"]["type"] == "misdirected"
    # the binary batch format answers the same way
    body = encode_request([mine, theirs], np.array([items[0]["window"], items[1]["window"]]))
    binary = {"content-type": CONTENT_TYPE}
    doc = decode_response(clients[0].post("/v1/score", content=body, headers=binary).content)
    ref = decode_response(whole.post("/v1/score", content=body, headers=binary).content)
    assert np.array_equal(doc["forecast"][0], ref["forecast"][0])
    assert list(doc["status"]) == [200, 421]
    assert doc["meta"]["errors"][0]["error"]["type"] == "misdirected"
    # the Open Inference Protocol names the series in a tensor: a foreign one is a 421 too
    tensors = [
        {"name": "window", "datatype": "FP32", "shape": [1, MLP.window], "data": _window(1)},
        {"name": "series_id", "datatype": "BYTES", "shape": [1], "data": [theirs]},
    ]
    r = clients[0].post("/v2/models/hourly/infer", json={"inputs": tensors})
    assert r.status_code == 421 and "belongs to shard 1/2" in r.json()["error"], r.text
    tensors[1]["data"] = [mine]
    assert clients[0].post("/v2/models/hourly/infer", json={"inputs": tensors}).status_code == 200


# ----------------------------------------------------------------------------- the CLI


def test_shards_owner_and_nginx_conf_commands() -> None:
    runner = CliRunner()
    ring = ",".join(RING)
    out = runner.invoke(cli_app, ["shards", "owner", *IDS[:5], "--shard-ring", ring, "--json"])
    assert out.exit_code == 0, out.output
    expected = Ring.of(RING)
    for row in json.loads(out.stdout)["owners"]:
        assert row["shard"] == expected.owner(row["series_id"])
        assert row["server"] == RING[row["shard"]]
    conf = runner.invoke(cli_app, ["shards", "nginx-conf", "--shard-ring", ring])
    assert conf.exit_code == 0 and conf.stdout == nginx_conf(
        expected, listen="127.0.0.1:8080", max_body_bytes=1 << 20
    )
    bad = runner.invoke(cli_app, ["shards", "nginx-conf", "--shard-ring", "a:1,a:1"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "twice" in bad.output


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--shard", "2/2", "--shard-ring", ",".join(RING)], "counts from 0"),
        (["--shard", "0/2"], "needs --shard-ring"),
        (["--shard-ring", ",".join(RING)], "without --shard"),
    ],
)
def test_serve_refuses_bad_shard_options_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], why: str
) -> None:
    monkeypatch.setenv("MAMLCTL_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    out = CliRunner().invoke(cli_app, ["serve", "--port", "0", *args])
    assert out.exit_code == 1 and out.output.count("\n") == 1 and why in out.output, out.output


def test_observe_on_a_shard_scores_its_series_and_misdirects_the_others(
    seeded_registry: Any,
) -> None:
    """``POST /v1/observe`` routes by the same header: the owner scores (the seasonal-naive
    file's forecast is the value one period back), another shard answers 421 per item."""
    from observe_fixtures import L, record_models

    from mamlctl.serving.source import RegistrySource

    settings = seeded_registry.settings
    ids = [f"s{i}" for i in range(6)]
    record_models(settings, ids)
    shard = parse_shard("0/2", list(RING))
    mine = [sid for sid in ids if shard.owns(sid)]
    theirs = [sid for sid in ids if not shard.owns(sid)]
    assert mine and theirs
    source = RegistrySource(settings)
    try:
        app = create_app(settings, source, options=ServeOptions(reload=False), shard=shard)
        assert app.holder.reload(force=True) and app.observer is not None
        app.observer.sync(app.holder.state)
        client = Client(app)
        item = {"series_id": mine[0], "timestamp": 240, "value": 7.0}
        got = client.post("/v1/observe", json=item, headers={"X-Series-Id": mine[0]})
        assert got.status_code == 200, got.text
        window = np.asarray(seeded_registry.values[mine[0]])[-L:]
        assert got.json()["forecast"] == float(np.float32(window[0]))
        foreign = {"series_id": theirs[0], "timestamp": 240, "value": 7.0}
        r = client.post("/v1/observe", json=foreign)
        assert r.status_code == 421 and r.json()["detail"][0]["type"] == "misdirected", r.text
        both = client.post("/v1/observe", json={"items": [foreign, {**item, "timestamp": 241}]})
        first, second = both.json()["results"]
        assert first["error"]["status"] == 421 and second["status"] == "scored"
    finally:
        source.close()
