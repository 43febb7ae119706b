"""Write tiny synthetic NAB corpora in NAB's own layout (``data/<category>/<file>.csv.gz`` and
``labels/combined_windows.json``) for the evaluation tests (a uniquely named module, so it
cannot clash with another test folder's helpers)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: One file: category, name, values, timestamps, and the labelled window as (first, last) row
#: indices (None: no anomaly).
NabFile = tuple[str, str, np.ndarray, Sequence[str], tuple[int, int] | None]


def write_corpus(root: Path, files: Iterable[NabFile]) -> Path:
    """Write ``files`` under ``root`` and return ``root``."""
    windows: dict[str, list[list[str]]] = {}
    for cat, name, values, stamps, window in files:
        labelled = [] if window is None else [[stamps[window[0]], stamps[window[1]]]]
        windows[f"{cat}/{name}.csv"] = [[f"{a}.000000", f"{b}.000000"] for a, b in labelled]
        rows = ["timestamp,value"] + [f"{s},{v}" for s, v in zip(stamps, values, strict=True)]
        (root / "data" / cat).mkdir(parents=True, exist_ok=True)
        (root / "data" / cat / f"{name}.csv.gz").write_bytes(
            gzip.compress("\n".join(rows).encode())
        )
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root
