"""The ``export`` half of the adapt stage: render each adapted series into its ONNX file
(:mod:`mamlctl.maml.export`, pure) and write the files atomically into the models folder
(:mod:`mamlctl.registry.model_files`). ``maml/`` returns bytes; only this edge writes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mamlctl.maml.export import SeriesBatch, render_batch
from mamlctl.registry.model_files import AtomicWriter, StoredFile

if TYPE_CHECKING:
    from mamlctl.domain import InitializerRef
    from mamlctl.maml.onnx_template import OnnxTemplate


def export_to_files(
    template: OnnxTemplate,
    batch: SeriesBatch,
    *,
    models_dir: Path,
    initializer: InitializerRef,
    support: int,
    adapted_at: datetime,
    workers: int = 4,
    fsync: bool = True,
    loss: str | None = None,
) -> list[StoredFile]:
    """Render every series and write its file atomically below ``models_dir``.

    Returns one :class:`~mamlctl.registry.model_files.StoredFile` per series (input order);
    when it returns, every file is complete and durable. Rendering (this thread) overlaps with
    writing (``workers`` threads); memory stays bounded by the writer's queue.
    """
    with AtomicWriter(models_dir, workers=workers, fsync=fsync) as writer:
        futures = [
            writer.submit(family=initializer.family, series_id=sid, data=blob)
            for sid, blob in render_batch(
                template,
                batch,
                initializer=initializer,
                support=support,
                adapted_at=adapted_at,
                loss=loss,
            )
        ]
    return [f.result() for f in futures]
