"""Bearer-token auth of the scoring server (``MAMLCTL_API_TOKEN``).

One token for every protected path; ``/healthz`` and ``/readyz`` stay open. The scheme name is
case-insensitive (RFC 7235: ``bearer x`` and ``BEARER x`` are ``Bearer x``), the token is
compared in constant time. An empty token is a configuration error, never "auth off": a
deployment that meant to set a secret and set an empty string would otherwise serve everyone.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from mamlctl.errors import ConfigError
from mamlctl.settings import Settings

_SCHEME = b"bearer"


def expected_token(settings: Settings) -> bytes | None:
    """The token requests must carry, or None when ``MAMLCTL_API_TOKEN`` is unset (auth off).

    Raises :class:`ConfigError` when it is set but empty or blank."""
    if settings.api_token is None:
        return None
    token = settings.api_token.get_secret_value()
    if not token.strip():
        raise ConfigError(
            "MAMLCTL_API_TOKEN is set but empty: set a token, or unset it to serve without auth"
        )
    return token.encode()


def authorized(headers: Iterable[tuple[bytes, bytes]], token: bytes) -> bool:
    """Whether the ``authorization`` header (ASGI: lower-case names) is ``Bearer <token>``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() != _SCHEME:
                return False
            return hmac.compare_digest(credentials.strip(b" "), token)
    return False
