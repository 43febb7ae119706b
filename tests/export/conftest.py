"""Shared, session-scoped ONNX templates: each costs one torch.onnx.export (~1-3 s)."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def template_cache() -> Any:
    import torch

    from mamlctl.maml.export import TemplateCache

    torch.set_num_threads(1)
    return TemplateCache()
