"""Garbage collection of adapted-model files: delete what no registry row references.

A model file's name carries its content hash, so replacing a series' model leaves the old file
behind (it stays servable until the new row commits). Once no row of ``adapted_models``
(current or history) points at a file and the file is older than a grace period, nothing can
need it: :func:`collect_unreferenced` removes it. The grace period protects a file an
adaptation job has just written but not yet recorded (its transaction commits after the
rename), so ``--grace`` should exceed the longest adaptation job.

Pure file-system work over a set of referenced paths: the caller reads that set from the
database (:func:`mamlctl.registry.model_queries.referenced_model_paths`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mamlctl.registry.model_files import iter_model_files, slug


@dataclass(frozen=True, slots=True, kw_only=True)
class Collected:
    """One unreferenced model file: relative path, size in bytes, age in seconds."""

    relpath: str
    size: int
    age_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    removed: tuple[Collected, ...]
    kept_referenced: int
    kept_young: int
    grace_s: float
    dry_run: bool

    @property
    def removed_bytes(self) -> int:
        return sum(c.size for c in self.removed)


def collect_unreferenced(
    models_dir: Path,
    *,
    referenced: Iterable[str],
    grace_s: float,
    dry_run: bool = False,
    now: float | None = None,
    family: str | None = None,
) -> GcReport:
    """Delete (or with ``dry_run`` only list) the model files below ``models_dir`` that are
    not in ``referenced`` and were last modified more than ``grace_s`` seconds ago; with
    ``family``, only the files of that family's folder."""
    root = Path(models_dir)
    keep = {PurePosixPath(p).as_posix() for p in referenced}
    clock = time.time() if now is None else now
    removed: list[Collected] = []
    kept_referenced = kept_young = 0
    if family is None:
        candidates = list(iter_model_files(root))
    else:
        folder = slug(family)
        candidates = [f"{folder}/{rel}" for rel in iter_model_files(root / folder)]
    for rel in candidates:
        if rel in keep:
            kept_referenced += 1
            continue
        path = root / rel
        try:
            st = path.stat()
        except FileNotFoundError:  # removed concurrently
            continue
        age = clock - st.st_mtime
        if age <= grace_s:
            kept_young += 1
            continue
        if not dry_run:
            path.unlink(missing_ok=True)
        removed.append(Collected(relpath=rel, size=st.st_size, age_s=age))
    return GcReport(
        removed=tuple(removed),
        kept_referenced=kept_referenced,
        kept_young=kept_young,
        grace_s=grace_s,
        dry_run=dry_run,
    )
