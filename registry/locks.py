"""Advisory file locks (``fcntl.flock``) for work that two mamlctl processes must not overlap:
the implicit first-use migration of the embedded database, and the clean-up of a family's
temporary model files.

The lock file is created next to what it guards and never deleted (deleting a lock file while
another process waits on it would let a third one lock a fresh inode). The kernel drops the
lock when the process dies, so a killed command never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mamlctl.errors import StoreError

#: How long a command waits for another one's lock before giving up.
DEFAULT_TIMEOUT_S = 120.0
_POLL_S = 0.05


@contextmanager
def file_lock(
    path: Path, *, shared: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S, purpose: str = ""
) -> Iterator[None]:
    """Hold an exclusive (or ``shared``) lock on ``path`` for the block; waits up to
    ``timeout_s`` and then raises :class:`StoreError` naming the lock file and ``purpose``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    what = f" ({purpose})" if purpose else ""
                    raise StoreError(
                        f"lock {path}{what} is held by another mamlctl process for over "
                        f"{timeout_s:.0f} s; wait for it to finish"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
