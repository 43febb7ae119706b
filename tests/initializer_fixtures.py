"""Register a tiny, untrained initializer as a model version without training (seeded MLP, the
``sines`` family's L/H/K): for the adaptation, relocation and run-lifecycle tests. One module at
the tests' root, uniquely named (see ``local_processes.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlctl.settings import Settings

L, H, K = 24, 6, 60


def register_test_initializer(
    settings: Settings,
    tmp: Path,
    *,
    seed: int = 0,
    promote: bool = True,
    season_skip: int = 0,
    train: dict[str, Any] | None = None,
    family: str = "sines",
) -> Any:
    """Log a seeded initializer folder in a FINISHED run and register it; returns its ref."""
    import torch

    from mamlctl.maml.initializer import save_initializer
    from mamlctl.maml.models import MLPConfig, build_model
    from mamlctl.registry.mlflow_store import INITIALIZER_ARTIFACT, open_store

    config = MLPConfig(input_size=L, output_size=H, hidden=(16, 16), season_skip=season_skip)
    torch.manual_seed(seed)
    model = build_model(config)
    folder = save_initializer(
        tmp / f"init-{seed}",
        model_config=config,
        params=dict(model.state_dict()),
        task_spec={"kind": "window", "window": L, "horizon": H, "support": K - L - H + 1},
        train_config={"inner_steps": 2, "inner_lr": 0.05, **(train or {})},
    )
    store = open_store(settings)
    with store.start_run(family=family, run_name="test-init") as run:
        run.log_artifacts(folder, artifact_path=INITIALIZER_ARTIFACT)
    return store.register_initializer(
        family=family, run_id=run.run_id, tags={}, description="test", promote=promote
    )
