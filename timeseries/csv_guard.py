"""Guards run on a CSV file's raw bytes before pandas parses it.

* :func:`scan_lines` streams the file once (gzip too) in 1 MiB blocks: every line at most
  :data:`MAX_LINE_BYTES`, no NUL byte anywhere (pandas' C parser cuts a field at NUL, which
  merged the ids ``A\\0B`` and ``A``). A one-line file of millions of fields fails within the
  first blocks instead of being tokenised into gigabytes.
* :func:`field_count_error` finds the first record with more fields than the header, so the
  error names its line (pandas only warns, or infers an index from it).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from mamlctl.errors import IngestError

#: Longest CSV line accepted (bytes, newline excluded): the widest M4 row is ~80 KB.
MAX_LINE_BYTES = 1 << 20
_SCAN_BLOCK = 1 << 20


def open_binary(path: Path) -> Any:
    """The file's bytes, gunzipped for ``.gz`` names."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def scan_lines(path: Path) -> None:
    """Stream the raw bytes once: every line at most MAX_LINE_BYTES, no NUL byte anywhere.

    Runs before the parser, so a one-line file of millions of fields fails within the first
    couple of blocks instead of being tokenised into gigabytes.
    """

    def too_long(line: int) -> IngestError:
        return IngestError(
            f"{path}: line {line} is longer than {MAX_LINE_BYTES >> 20} MiB; is this a CSV file?"
        )

    line = 1  # number of the line the current block starts in
    run = 0  # bytes of that line seen before the current block
    try:
        with open_binary(path) as fh:
            while block := fh.read(_SCAN_BLOCK):
                arr = np.frombuffer(block, dtype=np.uint8)
                nul = np.flatnonzero(arr == 0)
                nl = np.flatnonzero(arr == 10)
                if nul.size:
                    at = line + int(np.searchsorted(nl, nul[0]))
                    raise IngestError(f"{path}: line {at} contains a NUL byte")
                if nl.size == 0:
                    run += len(block)
                else:
                    if run + int(nl[0]) > MAX_LINE_BYTES:
                        raise too_long(line)
                    if nl.size > 1:
                        gaps = np.diff(nl) - 1
                        k = int(np.argmax(gaps))
                        if int(gaps[k]) > MAX_LINE_BYTES:
                            raise too_long(line + k + 1)
                    line += int(nl.size)
                    run = len(block) - int(nl[-1]) - 1
                if run > MAX_LINE_BYTES:
                    raise too_long(line)
    except (OSError, EOFError) as err:
        raise IngestError(f"{path}: cannot read file: {' '.join(str(err).split())}") from None


def field_count_error(path: Path) -> IngestError | None:
    """The first record whose field count differs from the header's (csv module, quotes
    honoured), as an error naming its line; None when every record agrees."""
    import csv
    import io

    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            return None
        for row in reader:
            if row and len(row) > len(header):
                return IngestError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                    f"{len(header)}"
                )
    return None
