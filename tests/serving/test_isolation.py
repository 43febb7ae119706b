"""The serving process never imports torch or mlflow, and works where they are not installed.

A subprocess hides torch, mlflow, onnxscript and scipy behind an import hook (as a serving-only
install ``pip install 'mamlctl[serve]'`` would lack them), builds the app, loads models, scores
one request through the ASGI stack and checks ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import MLP
from serving_models import write_series

SCRIPT = r"""
import asyncio, importlib.abc, json, sys
BLOCKED = ("torch", "mlflow", "onnxscript", "scipy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in a serving-only environment")
        return None
sys.meta_path.insert(0, Block())
import pickle, httpx
import mamlctl.cli.app  # the CLI root with the serve command registered
from mamlctl.cli import serve as _serve_cmd
from mamlctl.serving.app import create_app, app_from_env, ServeOptions
from mamlctl.serving.source import StaticSource, RegistrySource
from mamlctl.settings import Settings
import mamlctl.registry.db, mamlctl.registry.model_queries  # what RegistrySource loads
home, records = sys.argv[1], pickle.loads(bytes.fromhex(sys.argv[2]))
settings = Settings(home=home)
app = create_app(settings, StaticSource(records, models_dir=settings.models_dir),
                 options=ServeOptions(reload=False))
assert app.holder.reload(force=True)
async def go():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/score", json={"series_id": "m0", "window": [1.0] * 12})
        return r.status_code
status = asyncio.run(go())
print(json.dumps({"status": status,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_server_imports_neither_torch_nor_mlflow(tmp_path: Path) -> None:
    import pickle

    home = tmp_path / "home"
    records = write_series(home / "models", MLP, ["m0"], seed=3)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(home), pickle.dumps(records).hex()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "loaded": []}


def test_cold_path_defers_fastapi_and_the_schemas() -> None:
    """What ``mamlctl serve`` imports before /readyz (the HTTP protocol, the app, the state
    loader) leaves FastAPI and the pydantic request schemas to the build after the load."""
    code = (
        "import sys, json; import mamlctl.serving.fastpath, mamlctl.serving.source; "
        "print(json.dumps(sorted(m for m in ('fastapi', 'mamlctl.serving.schemas', "
        "'mamlctl.serving.api') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
