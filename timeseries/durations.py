"""The one duration grammar of mamlctl (``serve``, ``watch``, ``adapt --stale-after``, ``gc``).

A duration is a non-negative number followed by an optional unit (a bare number is seconds),
case-insensitive, spaces allowed between them::

    us            microseconds        ms                 milliseconds
    s, sec, second(s)                 m, min, minute(s)  (m is minutes, never months)
    h, hr, hour(s)                    d, day(s)          w, wk, week(s)

e.g. ``90s``, ``30m``, ``5min``, ``1h``, ``1.5h``, ``7d``, ``2w``, ``500ms``, ``100us``. Zero is
refused unless the caller allows it (``0`` with any unit, or bare).
"""

from __future__ import annotations

import re
from datetime import timedelta

from mamlctl.errors import InputError

_UNIT_SECONDS: dict[str, float] = {
    "us": 1e-6, "ms": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "wk": 604800.0, "wks": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$")
EXAMPLES = "90s, 30m, 5min, 1h, 7d, 2w, 500ms"


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """Seconds in ``text`` (see the module doc); :class:`InputError` naming it otherwise."""
    match = _DURATION.match(text.lower())
    if match is None or match.group(2) not in ("", *_UNIT_SECONDS):
        raise InputError(f"invalid duration {text!r}: use e.g. {EXAMPLES}")
    seconds = float(match.group(1)) * _UNIT_SECONDS.get(match.group(2), 1.0)
    if seconds == 0 and not allow_zero:
        raise InputError(f"invalid duration {text!r}: must be positive")
    return seconds


def parse_timedelta(text: str, *, allow_zero: bool = False) -> timedelta:
    """:func:`parse_duration` as a :class:`~datetime.timedelta`."""
    return timedelta(seconds=parse_duration(text, allow_zero=allow_zero))


def format_seconds(seconds: float) -> str:
    """``seconds`` as a plain decimal (``0.00009999999999999999``, never ``1e-05``) that both
    :func:`parse_duration` and ``float()`` read back to the same float: what ``serve`` writes
    into the environment its workers (and a later ``serve``) read."""
    from decimal import Decimal

    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise InputError(f"invalid duration {seconds!r}: must be a finite, non-negative number")
    return format(Decimal(repr(float(seconds))), "f")
