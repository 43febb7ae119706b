"""Adapted-model files on disk: content-addressed names, atomic writes, verified opens.

Every per-series ONNX file lives below ``Settings.models_dir`` at a path *relative* to it (the
registry database stores that relative path and the file's sha256)::

    <family-slug>/<series-slug>--<sha256>.onnx

The name carries the content hash, so a new model of a series never overwrites the file the
database currently points at: the previous model stays servable until the row that replaces it
is committed, and a crash between "file written" and "row committed" leaves only an unreferenced
file, never a row pointing at a missing or partial one.

Writes go to a temporary name in the same folder (``.<name>.tmp-<pid>-<token>``), are flushed
and ``fsync``-ed, then renamed into place with :func:`os.replace`; the folder is ``fsync``-ed
once per batch so the renames are durable too. Opens resolve the path, refuse anything that is
not strictly below the models folder (``..``, absolute paths elsewhere, symlinks escaping it),
read the bytes once and check their sha256 against the recorded one before returning them, so
the bytes a caller loads are exactly the bytes that were verified.

This module imports no torch, mlflow or onnx: the scoring server uses it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mamlctl.errors import InputError, IntegrityError, NotFoundError

#: Extension of adapted-model files.
SUFFIX = ".onnx"
_TMP_MARK = ".tmp-"
_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_SLUG_MAX = 80


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """A model file that is complete on disk: relative path, content hash, size in bytes."""

    relpath: str
    sha256: str
    size: int


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def slug(name: str) -> str:
    """A file-name-safe, injective rendering of an identifier (series id, family name).

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; a short hash of the original keeps two
    ids that slug alike (``a/b`` and ``a_b``) apart. Never empty, never starts with a dot.
    """
    if not name:
        raise InputError("cannot name a model file after an empty identifier")
    readable = _SLUG_BAD.sub("_", name).strip("._")[:_SLUG_MAX] or "x"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def model_relpath(*, family: str, series_id: str, sha256: str) -> str:
    """The relative path (POSIX) of a series' model file with content hash ``sha256``."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InputError(f"not a sha256 hex digest: {sha256!r}")
    return f"{slug(family)}/{slug(series_id)}--{sha256}{SUFFIX}"


def resolve_under(models_dir: Path, path: str | os.PathLike[str]) -> Path:
    """The real path of ``path`` (relative to ``models_dir``, or absolute inside it).

    Refuses empty paths, paths that leave ``models_dir`` (``..``, absolute paths elsewhere,
    symlinks pointing out) with :class:`InputError`. Does not require the file to exist.
    """
    raw = os.fspath(path)
    if not raw or "\x00" in raw:
        raise InputError(f"invalid model file path {raw!r}")
    root = Path(models_dir).resolve()
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    real = candidate.resolve()
    if real == root or not real.is_relative_to(root):
        raise InputError(f"model file path {raw!r} is outside the models folder {root}")
    return real


def open_verified(models_dir: Path, path: str | os.PathLike[str], *, sha256: str) -> bytes:
    """Read a model file below ``models_dir`` and return its bytes once their sha256 matches.

    Raises :class:`InputError` for a path outside the folder, :class:`NotFoundError` for a
    missing file, :class:`IntegrityError` when the content does not match ``sha256``.
    """
    real = resolve_under(models_dir, path)
    try:
        with open(real, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise NotFoundError(
            f"model file {os.fspath(path)!r} is missing from {models_dir}; re-run mamlctl adapt"
        ) from None
    except IsADirectoryError:
        raise InputError(f"model file path {os.fspath(path)!r} is a folder") from None
    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, sha256.lower()):
        raise IntegrityError(
            f"model file {os.fspath(path)!r} has sha256 {actual[:16]}… but the registry "
            f"recorded {sha256[:16]}…; refusing to load it (re-run mamlctl adapt)"
        )
    return data


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Permissions of every model file written (exported files are read by the scoring server).
MODEL_FILE_MODE = 0o644


def _write_one(final: Path, data: bytes | bytearray | memoryview, *, fsync: bool) -> None:
    tmp = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODEL_FILE_MODE)
    try:
        os.fchmod(fd, MODEL_FILE_MODE)  # whatever the umask: the server may run as another user
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicWriter:
    """Writes model files atomically from a small thread pool, overlapping ``fsync`` waits.

    ::

        with AtomicWriter(models_dir) as writer:
            futures = [writer.submit(family=f, series_id=s, data=blob) for ...]
        stored = [f.result() for f in futures]  # every file complete once the block exits

    Each file is hashed by the caller's thread, written under a temporary name in its final
    folder, ``fsync``-ed and renamed with :func:`os.replace`; every touched folder is
    ``fsync``-ed once when the block exits, so the renames are durable too. At most
    ``max_pending`` writes are queued (bounds memory). A failed write re-raises on exit; the
    files that did complete are whole files (no partial file ever has a final name).
    """

    def __init__(
        self, models_dir: Path, *, workers: int = 4, fsync: bool = True, max_pending: int = 256
    ) -> None:
        self._root = Path(models_dir)
        self._workers = max(1, workers)
        self._fsync = fsync
        self._max_pending = max(1, max_pending)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[StoredFile]] = deque()
        self._folders: set[Path] = set()

    def __enter__(self) -> AtomicWriter:
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mamlctl-write")
        return self

    def submit(
        self, *, family: str, series_id: str, data: bytes | bytearray | memoryview
    ) -> Future[StoredFile]:
        """Queue one file; returns a future of its :class:`StoredFile`."""
        if self._pool is None:
            raise RuntimeError("AtomicWriter.submit outside its with-block")
        digest = sha256_hex(data)
        rel = model_relpath(family=family, series_id=series_id, sha256=digest)
        final = self._root / rel
        if final.parent not in self._folders:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(final.parent)
        stored = StoredFile(relpath=rel, sha256=digest, size=len(data))
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        future = self._pool.submit(_write_one, final, data, fsync=self._fsync)
        wrapped: Future[StoredFile] = Future()

        def done(f: Future[None]) -> None:
            err = f.exception()
            if err is not None:
                wrapped.set_exception(err)
            else:
                wrapped.set_result(stored)

        future.add_done_callback(done)
        self._pending.append(wrapped)
        return wrapped

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=True)
        first_error: BaseException | None = None
        for f in self._pending:
            err = f.exception()
            if err is not None and first_error is None:
                first_error = err
        self._pending.clear()
        if self._fsync:
            for folder in sorted(self._folders):
                _fsync_dir(folder)
        if first_error is not None and exc is None:
            raise first_error


def write_model_file(
    models_dir: Path,
    *,
    family: str,
    series_id: str,
    data: bytes | bytearray | memoryview,
    fsync: bool = True,
) -> StoredFile:
    """Write one model file atomically at its content-addressed path."""
    return write_many(models_dir, [(family, series_id, data)], fsync=fsync, workers=1)[0]


def write_many(
    models_dir: Path,
    items: Iterable[tuple[str, str, bytes | bytearray | memoryview]],
    *,
    fsync: bool = True,
    workers: int = 4,
) -> list[StoredFile]:
    """Write ``(family, series_id, data)`` items atomically (see :class:`AtomicWriter`);
    returns their records in input order once every file is complete on disk. Writing the same
    content twice rewrites identical bytes at the same name (idempotent)."""
    with AtomicWriter(models_dir, workers=workers, fsync=fsync) as writer:
        futures = [writer.submit(family=f, series_id=s, data=d) for f, s, d in items]
    return [f.result() for f in futures]


def iter_model_files(models_dir: Path) -> Iterable[str]:
    """Relative paths of every complete model file below ``models_dir`` (temps excluded)."""
    root = Path(models_dir)
    if not root.is_dir():
        return
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        if path.is_file() and not path.name.startswith("."):
            yield path.relative_to(root).as_posix()


#: Folder (below the models folder) of the per-family lock files; hidden, so never listed.
LOCKS_DIR = ".locks"


def family_lock_path(models_dir: Path, family: str) -> Path:
    """The lock file serialising clean-ups of one family's folder."""
    return Path(models_dir) / LOCKS_DIR / f"{slug(family)}.lock"


def _writer_alive(name: str) -> bool:
    """Whether the process that named temporary ``name`` (``...tmp-<pid>-<token>``) still runs.
    Unparsable names count as alive (kept)."""
    m = re.search(re.escape(_TMP_MARK) + r"(\d+)-", name)
    if m is None:
        return True
    pid = int(m.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def remove_temporaries(models_dir: Path, *, family: str, timeout_s: float = 120.0) -> list[str]:
    """Delete one family's leftover temporary files (from a killed writer); returns their
    relative paths.

    Runs under the family's ``fcntl`` lock (:func:`family_lock_path`; waits up to
    ``timeout_s``, then :class:`~mamlctl.errors.StoreError`) and touches only the family's own
    folder, so an adaptation of another family writing at the same time is never disturbed.
    A temporary whose writer process is still alive is kept, even in this family.
    """
    from mamlctl.registry.locks import file_lock

    root = Path(models_dir)
    folder = root / slug(family)
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    with file_lock(
        family_lock_path(root, family),
        timeout_s=timeout_s,
        purpose=f"clean-up of family {family}'s model files",
    ):
        for path in sorted(folder.glob(f".*{_TMP_MARK}*")):
            if path.is_file() and not _writer_alive(path.name):
                path.unlink(missing_ok=True)
                removed.append(path.relative_to(root).as_posix())
    return removed


def remove_unreferenced(models_dir: Path, referenced: Iterable[str]) -> list[str]:
    """Delete complete model files no record points at; returns their relative paths.

    ``referenced`` are the relative paths the registry still maps (current and kept models).
    A server that has the old file open is unaffected on POSIX (the inode lives on).
    """
    keep = {PurePosixPath(p).as_posix() for p in referenced}
    removed = []
    for rel in iter_model_files(models_dir):
        if rel not in keep:
            (Path(models_dir) / rel).unlink(missing_ok=True)
            removed.append(rel)
    return removed
