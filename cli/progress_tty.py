"""A progress bar only where someone watches: a rich bar on a terminal's stderr, else a no-op
with the same ``add_task``/``update`` calls (pipes, CI logs and the CLI runner stay clean)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def add_task(self, description: str, **kwargs: Any) -> int:
        return 0

    def update(self, task_id: int, **kwargs: Any) -> None:
        return None


def tty_progress() -> Any:
    """``mamlctl.cli.output.progress()`` when stderr is a terminal, else a silent stand-in."""
    if sys.stderr.isatty():
        from mamlctl.cli.output import progress

        return progress()
    return _NoProgress()
