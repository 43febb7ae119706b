"""Serving fixtures: contract files on disk, an app over them, a synchronous ASGI client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_models import Spec, write_series

from mamlctl.domain import AdaptedModelRecord
from mamlctl.serving.app import ScoringApp, ServeOptions, create_app
from mamlctl.serving.source import StaticSource
from mamlctl.settings import Settings

MLP = Spec(kind="mlp", head="mean", window=12, horizon=4)
CONV = Spec(kind="conv", head="gaussian", window=16, horizon=3)


class Client:
    """Synchronous calls into an ASGI app (no network, no lifespan: tests load explicitly)."""

    def __init__(self, app: Any, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=self.headers
            ) as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@dataclass
class Served:
    app: ScoringApp
    client: Client
    settings: Settings
    records: list[AdaptedModelRecord]
    source: StaticSource

    def record(self, series_id: str) -> AdaptedModelRecord:
        return next(r for r in self.records if r.series_id == series_id)

    def file(self, series_id: str) -> bytes:
        return (self.settings.models_dir / self.record(series_id).path).read_bytes()


@pytest.fixture
def make_served(tmp_path: Path) -> Callable[..., Served]:
    def make(
        *,
        token: str | None = None,
        options: ServeOptions | None = None,
        extra: list[AdaptedModelRecord] | None = None,
        load: bool = True,
    ) -> Served:
        settings = Settings(home=tmp_path / "home", api_token=token)
        models = settings.models_dir
        records = write_series(models, MLP, [f"m{i}" for i in range(5)], seed=1)
        records += write_series(models, CONV, [f"c{i}" for i in range(3)], seed=2, family="conv")
        records += extra or []
        source = StaticSource(records, models_dir=models)
        app = create_app(settings, source, options=options or ServeOptions(reload=False))
        if load:
            assert app.holder.reload(force=True)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return Served(app, Client(app, headers), settings, records, source)

    return make


@pytest.fixture
def served(make_served: Callable[..., Served]) -> Served:
    return make_served()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> ScoringApp:
    """The app the fuzz tests hammer (one per module): two MLP series, one conv series of
    another family, small batch and body limits, loaded."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    models = home / "models"
    records = write_series(models, MLP, ["m0", "m1"], seed=5)
    records += write_series(models, CONV, ["c0"], seed=6, family="conv")
    scoring = create_app(
        Settings(home=home),
        StaticSource(records, models_dir=models),
        options=ServeOptions(reload=False, max_batch=16, max_body_bytes=64 * 1024),
    )
    assert scoring.holder.reload(force=True)
    return scoring
