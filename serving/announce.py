"""``mamlctl serve``'s one startup line, printed once per server after its first load::

    mamlctl serve: http://127.0.0.1:8080  60 series, 1 family loaded in 0.84s

The time runs from the app's startup (lifespan) to its models being loaded. With
``--workers N`` each worker loads on its own; the first to finish claims a marker file
(``O_EXCL``), so the server still prints one line.
"""

from __future__ import annotations

import os

from mamlctl.serving.state import ServingState


def startup_line(state: ServingState, address: str, seconds: float) -> str:
    families = len({entry.family for entry in state.entries.values()})
    noun = "family" if families == 1 else "families"
    return (
        f"mamlctl serve: {address}  {state.n_series} series, {families} {noun}"
        f" loaded in {seconds:.2f}s"
    )


def claim(marker: str | None) -> bool:
    """Whether this process is the one to print (always, without a marker)."""
    if marker is None:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:  # an unwritable folder: better a line per worker than none
        return True
    return True
