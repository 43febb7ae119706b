"""The ingest stage: read files, validate every series, then store them in one transaction.

Reading and validation happen before the database is touched, so a bad file anywhere in the
batch leaves the registry exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from mamlctl.registry.ingest import IncomingSeries, IngestMode, IngestSummary, store_series
from mamlctl.timeseries.periodicity import infer_interval
from mamlctl.timeseries.readers import (
    NO_COLUMNS,
    Columns,
    FileFormat,
    SourceFile,
    expand_paths,
    read_file,
)
from mamlctl.timeseries.validation import NanPolicy, OrderPolicy, validate_series


@dataclass(frozen=True, slots=True, kw_only=True)
class FileReport:
    path: str
    format: str
    series: int
    points: int
    interpolated: int
    unordered: int
    interval_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedIngest:
    files: tuple[FileReport, ...]
    batch: tuple[IncomingSeries, ...]
    nan_policy: NanPolicy
    order_policy: OrderPolicy = "strict"

    @property
    def interpolated(self) -> int:
        return sum(f.interpolated for f in self.files)

    @property
    def unordered(self) -> int:
        return sum(f.unordered for f in self.files)


def prepare_ingest(
    paths: Sequence[Path],
    *,
    fmt: FileFormat = "auto",
    interval_seconds: float | None = None,
    nan: NanPolicy = "reject",
    order: OrderPolicy = "strict",
    on_file: Callable[[Path], None] | None = None,
    columns: Columns = NO_COLUMNS,
    series_id: str | None = None,
) -> PreparedIngest:
    """Read and validate every file (no database access). ``interval_seconds`` overrides the
    interval implied by M4 file names and inferred from timestamps; ``columns`` and
    ``series_id`` go to :func:`~mamlctl.timeseries.readers.read_file`."""

    def sources() -> Iterable[SourceFile]:
        for path in expand_paths(paths):
            yield read_file(path, fmt=fmt, columns=columns, series_id=series_id)
            if on_file is not None:
                on_file(path)

    return prepare_sources(sources(), interval_seconds=interval_seconds, nan=nan, order=order)


def prepare_sources(
    sources: Iterable[SourceFile],
    *,
    interval_seconds: float | None = None,
    nan: NanPolicy = "reject",
    order: OrderPolicy = "strict",
) -> PreparedIngest:
    """Validate series already read (files, or frames handed to the Python API)."""
    files: list[FileReport] = []
    batch: list[IncomingSeries] = []
    for src in sources:
        path = src.path
        interpolated = 0
        unordered = 0
        points = 0
        file_interval = interval_seconds if interval_seconds is not None else src.interval_seconds
        for raw in src.series:
            checked = validate_series(raw, source=str(path), nan=nan, order=order)
            interpolated += checked.interpolated
            unordered += checked.unordered
            points += len(checked.series)
            iv = file_interval
            if iv is None:
                iv = infer_interval(checked.series.timestamps)
            batch.append(
                IncomingSeries(series=checked.series, source=str(path), interval_seconds=iv)
            )
        files.append(
            FileReport(
                path=str(path),
                format=src.format,
                series=len(src.series),
                points=points,
                interpolated=interpolated,
                unordered=unordered,
                interval_seconds=file_interval,
            )
        )
    return PreparedIngest(
        files=tuple(files), batch=tuple(batch), nan_policy=nan, order_policy=order
    )


def ingest(
    session: Session,
    prepared: PreparedIngest,
    *,
    mode: IngestMode = "merge",
    on_progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Store a prepared batch in the caller's transaction."""
    return store_series(session, prepared.batch, mode=mode, on_progress=on_progress)
