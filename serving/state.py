"""The immutable serving state: which series are served, by which runtime row, with what lineage.

A state is built off the request path (:func:`build_state`) from the registry's current adapted
models and never mutated afterwards; hot reload builds a new one and swaps a single reference,
so a request that started on the old state finishes on it.

Loading a model file: its path must lie below the models folder and its bytes must hash to the
sha256 the registry recorded (:func:`mamlctl.registry.model_files.open_verified`'s rules, applied
by :class:`~mamlctl.serving.model_reader.VerifiedReader` with the folders resolved once), its
``mamlctl.series_id`` metadata must name the series of the row and its input must be the
contract's ``window [batch, L]``. Files that fail are listed in :attr:`ServingState.failures`
(their records in :attr:`~ServingState.failed_records`, which the server re-tries on every poll:
:func:`recovered`). A reload never drops a working model: when the new file of a series fails,
the series keeps the previous state's runtime row (its entry carries ``load_error`` and the
lineage of the file it still runs); a series with no previous model answers 404 with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import orjson

from mamlctl.contract import key as contract_key
from mamlctl.contract import parse_band
from mamlctl.domain import ADAPTATION_KEY, AdaptedModelRecord
from mamlctl.errors import MamlctlError
from mamlctl.registry.model_files import open_verified
from mamlctl.serving.bank import (
    BankBuilder,
    BankUnsupported,
    normalise_constants,
    structure_key,
    template_of,
)
from mamlctl.serving.layout import Layout, layout_of, tail_metadata
from mamlctl.serving.model_reader import VerifiedReader, prefetch
from mamlctl.serving.runtime import BankRuntime, Runtime, SessionsRuntime, make_session
from mamlctl.serving.shards import Shard

log = logging.getLogger("mamlctl.serving")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesEntry:
    """How one series is served, and the lineage every response about it names."""

    series_id: str
    family: str
    group: int
    row: int
    window: int
    horizon: int
    threshold: float
    residual_scale: float
    #: The series' normalisation scale (the file's ``scale``): the ranking score's unit.
    scale: float
    registered_model: str
    initializer_version: int
    initializer_run_id: str
    adapted_at: str
    sha256: str
    #: Pre-rendered ``lineage`` object of responses (built once per state, not per request).
    lineage: dict[str, Any] = field(repr=False)
    #: ``lineage`` serialised once (responses embed it as is).
    lineage_json: orjson.Fragment = field(repr=False)
    #: ``{"series_id", "threshold", "lineage"}`` serialised once (binary responses' meta).
    summary_json: bytes = field(repr=False)
    #: ``[row]`` as int64, ready to feed a single-row ``run``.
    row_array: npt.NDArray[np.int64] = field(repr=False)
    #: Why the series' current file failed to load, when it is served by an older model.
    load_error: str | None = None
    #: The file's calibrated prediction band ``((level, multiplier), ...)`` (its ``band``
    #: metadata), None for Gaussian bands (see :func:`mamlctl.contract.band_multiplier`).
    band: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingState:
    """Everything a request needs; immutable once built."""

    entries: Mapping[str, SeriesEntry]
    runtimes: tuple[Runtime, ...]
    fingerprint: str
    generation: int
    loaded_at: datetime
    load_seconds: float
    failures: Mapping[str, str]
    #: The current records whose files failed (re-tried on later polls).
    failed_records: Mapping[str, AdaptedModelRecord] = field(default_factory=dict)
    #: Current records in the source (served, or failed); a shard counts only its own.
    n_records: int = 0
    #: This server's shard (``serve --shard I/N``); None: it serves every series.
    shard: Shard | None = None

    @property
    def n_series(self) -> int:
        return len(self.entries)

    @property
    def n_stale(self) -> int:
        """Series served by the previous model because their current file failed."""
        return sum(1 for sid in self.failures if sid in self.entries)

    def summary(self) -> dict[str, Any]:
        kinds = [r.kind for r in self.runtimes]
        return {
            "generation": self.generation,
            "series": self.n_series,
            "bank_groups": kinds.count("bank"),
            "session_groups": kinds.count("sessions"),
            "bank_bytes": sum(r.nbytes for r in self.runtimes),
            "failures": len(self.failures),
            "stale": self.n_stale,
            "records": self.n_records,
            "loaded_at": self.loaded_at.isoformat(),
            "load_seconds": round(self.load_seconds, 4),
            **({} if self.shard is None else {"shard": self.shard.label}),
        }


def empty_state() -> ServingState:
    return ServingState(
        entries={},
        runtimes=(),
        fingerprint="",
        generation=0,
        loaded_at=datetime.now(UTC),
        load_seconds=0.0,
        failures={},
    )


@dataclass(slots=True)
class _Loaded:
    record: AdaptedModelRecord
    meta: dict[str, str]
    window: int


def _window_of(model: onnx.ModelProto) -> int:
    inputs = model.graph.input
    if len(inputs) != 1 or inputs[0].name != "window":
        raise MamlctlError("model file does not have the single input 'window'")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise MamlctlError("model input 'window' is not [batch, L] with a fixed L")
    return int(dims[1].dim_value)


def _load_one(record: AdaptedModelRecord, data: bytes) -> tuple[_Loaded, onnx.ModelProto]:
    try:
        model = onnx.load_from_string(data)
    except Exception:  # protobuf raises DecodeError, onnx may raise others
        raise MamlctlError(f"model file {record.path!r} is not an ONNX model") from None
    meta = {p.key: p.value for p in model.metadata_props}
    item = _loaded(record, meta, _window_of(model))
    normalise_constants(model)
    return item, model


def _loaded(record: AdaptedModelRecord, meta: dict[str, str], window: int) -> _Loaded:
    """The file's claims checked against the registry row: its series and window length."""
    named = meta.get(contract_key("series_id"))
    if named != record.series_id:
        raise MamlctlError(
            f"model file {record.path!r} belongs to series {named!r}, not {record.series_id!r}"
        )
    if window != record.window:
        raise MamlctlError(
            f"model file {record.path!r} takes {window} points, the registry says {record.window}"
        )
    return _Loaded(record=record, meta=meta, window=window)


def _exact(data: bytes) -> bytes:
    """A copy of exactly ``len(data)`` bytes: orjson's output keeps its growth buffer (2-4 KiB
    for a 300-byte document), 80 MB over 10k series."""
    return bytes(memoryview(data))


_MAX_LAYOUTS = 8


def _by_layout(
    layouts: list[Layout], record: AdaptedModelRecord, data: bytes
) -> tuple[_Loaded, Layout] | None:
    """The file read through a known byte layout (same checks as :func:`_load_one`), or None
    when no layout fits and the file needs the full parse."""
    for layout in layouts:
        if not layout.match(data):
            continue
        (key, window) = layout.info
        meta = tail_metadata(data, layout)
        if meta is None:
            return None
        if meta.get(contract_key("template_id")) != key[0]:
            # same framing, another graph id: int8-delta files of another initializer (their
            # base weights are raw data); that structure's own layout may follow
            continue
        return _loaded(record, meta, window), layout
    return None


def _group_key(model: onnx.ModelProto, template_id: str | None) -> Any:
    """:func:`structure_key`, as a plain tuple when the exporter's template id is there (the
    same information without hashing strings: ~10x cheaper per file at 10k files)."""
    if not template_id:
        return structure_key(model)
    return (template_id, *((i.name, i.data_type, *i.dims) for i in model.graph.initializer))


def _entry(item: _Loaded, *, group: int, row: int, generation: int) -> SeriesEntry:
    rec, meta = item.record, item.meta

    def pick(key: str, fallback: Any) -> str:
        return meta.get(contract_key(key), str(fallback))

    registered = pick("registered_model", rec.registered_model)
    run_id = pick("initializer_run_id", rec.initializer_run_id)
    version = int(pick("initializer_version", rec.initializer_version))
    adapted_at = pick("adapted_at", rec.adapted_at.isoformat())
    # "adapted" or "zero-shot" (the family initializer, un-adapted): the file's word, else the
    # row's; files and rows from before zero-shot models existed are adapted
    adaptation = pick(ADAPTATION_KEY, rec.adaptation)
    lineage = {
        "family": rec.family,
        "registered_model": registered,
        "initializer_version": version,
        "initializer_run_id": run_id,
        "adapted_at": adapted_at,
        "adaptation": adaptation,
        "model_sha256": rec.sha256,
        "generation": generation,
    }
    return SeriesEntry(
        series_id=rec.series_id,
        family=rec.family,
        group=group,
        row=row,
        window=item.window,
        horizon=rec.horizon,
        threshold=float(rec.threshold),
        residual_scale=float(rec.residual_scale),
        scale=float(pick("scale", rec.residual_scale)),
        registered_model=registered,
        initializer_version=version,
        initializer_run_id=run_id,
        adapted_at=adapted_at,
        sha256=rec.sha256,
        lineage=lineage,
        lineage_json=orjson.Fragment(_exact(orjson.dumps(lineage))),
        summary_json=_summary(rec.series_id, float(rec.threshold), lineage),
        row_array=np.array([row], dtype=np.int64),
        band=parse_band(meta.get(contract_key("band"))),
    )


def _summary(series_id: str, threshold: float, lineage: dict[str, Any]) -> bytes:
    doc = {"series_id": series_id, "threshold": threshold, "lineage": lineage}
    return _exact(orjson.dumps(doc))


def build_state(
    records: Iterable[AdaptedModelRecord],
    *,
    models_dir: Path,
    fingerprint: str,
    generation: int,
    batch_threads: int = 1,
    previous: ServingState | None = None,
    shard: Shard | None = None,
) -> ServingState:
    """Load, verify and bank every record's model file (of ``shard``'s series only, when
    given: :mod:`mamlctl.serving.shards`); see the module docstring.

    ``batch_threads`` > 1 gives each bank a second session with that many intra-op threads
    for large batches (:class:`BankRuntime`). A series whose file fails keeps its entry (and
    runtime) from ``previous``, the state being replaced."""
    start = time.perf_counter()
    records = list(records) if shard is None else [r for r in records if shard.owns(r.series_id)]
    builders: dict[Any, BankBuilder] = {}
    groups: dict[Any, list[_Loaded]] = {}
    failures: dict[str, str] = {}
    failed_records: dict[str, AdaptedModelRecord] = {}
    layouts: list[Layout] = []  # byte layouts of the structures met (see serving.layout)
    for record, data in prefetch(models_dir, records):
        try:
            if isinstance(data, MamlctlError):
                raise data
            hit = _by_layout(layouts, record, data)
            if hit is not None:  # the common case: only the metadata tail is parsed
                item, layout = hit
                key = layout.info[0]
                builders[key].add_raw(data, layout.raws)
                groups[key].append(item)
                continue
            item, model = _load_one(record, data)
        except MamlctlError as err:
            failures[record.series_id] = str(err)
            failed_records[record.series_id] = record
            log.error("series %s: its model file failed to load: %s", record.series_id, err)
            continue
        template_id = item.meta.get(contract_key("template_id"))
        key = _group_key(model, template_id)
        builder = builders.get(key)
        if builder is None:
            builder = builders[key] = BankBuilder(template_of(model), capacity=len(records))
            if template_id and len(layouts) < _MAX_LAYOUTS:
                layout = layout_of(data, model, (key, item.window))
                if layout is not None:
                    layouts.append(layout)
        builder.add(model)  # row index == position in groups[key]
        groups.setdefault(key, []).append(item)
        del model

    runtimes: list[Runtime] = []
    entries: dict[str, SeriesEntry] = {}
    for key, items in groups.items():
        runtime = _runtime_for(
            builders.pop(key), items, models_dir=models_dir, batch_threads=batch_threads
        )
        group = len(runtimes)
        runtimes.append(runtime)
        for row, item in enumerate(items):
            entries[item.record.series_id] = _entry(
                item, group=group, row=row, generation=generation
            )
    if previous is not None:
        _keep_previous(previous, failures, entries, runtimes, generation=generation)
    _release_free_memory()
    return ServingState(
        entries=entries,
        runtimes=tuple(runtimes),
        fingerprint=fingerprint,
        generation=generation,
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - start,
        failures=failures,
        failed_records=failed_records,
        n_records=len(records),
        shard=shard,
    )


def _keep_previous(
    previous: ServingState,
    failures: Mapping[str, str],
    entries: dict[str, SeriesEntry],
    runtimes: list[Runtime],
    *,
    generation: int,
) -> None:
    """Failed series that ``previous`` served keep its model: its runtime joins the new state
    (once, whatever the number of series kept), the entry points at its new group number."""
    moved: dict[int, int] = {}
    for sid, why in failures.items():
        old = previous.entries.get(sid)
        if old is None:
            continue
        group = moved.get(old.group)
        if group is None:
            group = moved[old.group] = len(runtimes)
            runtimes.append(previous.runtimes[old.group])
        lineage = {**old.lineage, "generation": generation}
        entries[sid] = replace(
            old,
            group=group,
            lineage=lineage,
            lineage_json=orjson.Fragment(_exact(orjson.dumps(lineage))),
            summary_json=_summary(sid, old.threshold, lineage),
            load_error=why,
        )
        log.warning("series %s: still serving its previous model (sha256 %s)", sid, old.sha256[:12])


def recovered(state: ServingState, models_dir: Path) -> bool:
    """Whether a failed record's file now loads (restored, or fixed in place): the poller
    rebuilds then, although the source did not change. Reads only the failed files."""
    if not state.failed_records:
        return False
    reader = VerifiedReader(models_dir)
    for record in state.failed_records.values():
        try:
            _load_one(record, reader.read(record.path, record.sha256))
        except MamlctlError:
            continue
        return True
    return False


def _release_free_memory() -> None:
    """Hand the heap freed by loading (10k file buffers and protobufs, partly in the reader
    threads' malloc arenas) back to the OS: otherwise it stays in the server's RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _runtime_for(
    builder: BankBuilder, items: list[_Loaded], *, models_dir: Path, batch_threads: int
) -> Runtime:
    try:
        return BankRuntime.from_bank(builder.build(), batch_threads=batch_threads)
    except BankUnsupported as err:
        log.warning(
            "serving %d series with one session each (graph cannot bank: %s)", len(items), err
        )
    blobs = [open_verified(models_dir, it.record.path, sha256=it.record.sha256) for it in items]
    return SessionsRuntime(
        sessions=[make_session(b) for b in blobs],
        window=items[0].window,
        model_bytes=sum(len(b) for b in blobs),
    )
