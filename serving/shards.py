"""Serving shards: which of N servers owns a series, decided exactly as nginx decides it.

``mamlctl serve --shard I/N --shard-ring A,B,...`` loads only the series that the *ring* maps to
its own entry ``I`` (0-based). The ring is nginx's consistent hash, ``hash $key consistent`` of
``ngx_http_upstream_hash_module`` (ketama, compatible with Cache::Memcached::Fast), over the
upstream's ``server`` lines written exactly as ``A``, ``B``, ... (weight 1 each):

* each server ``host:port`` (split at the last ``:``; ``unix:PATH`` has no port) gets 160
  points: ``base = crc32(host + b"\\0" + port)`` and point ``j`` is
  ``crc32(prev as 4 little-endian bytes)`` continued from ``base``, ``prev`` being point ``j-1``
  (0 for the first);
* the points are sorted by value; equal values keep one point (nginx keeps an arbitrary one,
  so a tie between two *different* servers would make the owner ambiguous: :class:`Ring`
  refuses such a list);
* a key goes to the first point at or after ``crc32(key)``, wrapping to the first point; an
  empty key (no header) is spread round-robin by nginx, so it has no owner.

So the balancer routes by the series id (the ``X-Series-Id`` header, or the path of
``GET /v1/series/{id}``) and no shared table is needed: :func:`nginx_conf` prints the upstream
that agrees with ``--shard-ring``. Consistent: adding a server to a ring of N moves about
1/(N+1) of the series (only to the new server); removing one moves only its own series.
The test ``tests/e2e/test_shards_nginx.py`` checks the agreement against real nginx.

A request for a series this shard does not own is answered 421 Misdirected Request naming the
owning shard (per item in a batch), never a 404 that would read as "unknown series".
"""

from __future__ import annotations

import bisect
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from mamlctl.errors import ConfigError

#: nginx's points per unit of weight (``ngx_http_upstream_init_chash``).
POINTS_PER_SERVER = 160
#: The request header a balancer hashes (nginx: ``$http_x_series_id``).
SERIES_HEADER = "X-Series-Id"
_SERVER = re.compile(r"[A-Za-z0-9._:/\[\]-]+")
_SPEC = re.compile(r"(\d+)/(\d+)")


def valid_address(text: str) -> bool:
    """Whether ``text`` reads as one nginx address (host:port, port, [v6]:port, unix:/path):
    nothing that could end or extend a config directive."""
    return bool(_SERVER.fullmatch(text))


def _base_hash(server: str) -> int:
    raw = server.encode()
    if raw[:5].lower() == b"unix:":
        host, port = raw[5:], b""
    else:
        host, sep, port = raw.rpartition(b":")
        if not sep:
            host, port = raw, b""
    return zlib.crc32(port, zlib.crc32(b"\0", zlib.crc32(host)))


@dataclass(frozen=True, slots=True)
class Ring:
    """nginx's consistent-hash ring over ``servers`` (see the module docstring)."""

    servers: tuple[str, ...]
    hashes: tuple[int, ...]
    owners: tuple[int, ...]

    @classmethod
    def of(cls, servers: Sequence[str]) -> Ring:
        servers = tuple(servers)
        if not servers:
            raise ConfigError("a shard ring needs at least one server")
        for name in servers:
            if not valid_address(name):
                raise ConfigError(
                    f"shard ring server {name!r} is not an address as nginx's `server` takes"
                    " it (host:port or unix:/path)"
                )
        if len(set(servers)) != len(servers):
            raise ConfigError(f"shard ring lists a server twice: {', '.join(servers)}")
        points: dict[int, int] = {}
        for index, name in enumerate(servers):
            base, prev = _base_hash(name), 0
            for _ in range(POINTS_PER_SERVER):
                prev = zlib.crc32(prev.to_bytes(4, "little"), base)
                other = points.setdefault(prev, index)
                if other != index:
                    raise ConfigError(
                        f"shard ring servers {servers[other]!r} and {name!r} share a hash point"
                        " (nginx would pick either): change one address or port"
                    )
        order = sorted(points)
        return cls(servers=servers, hashes=tuple(order), owners=tuple(points[h] for h in order))

    def owner(self, key: str) -> int:
        """The index (in :attr:`servers`) of the server nginx sends ``key`` to (a non-empty
        key: nginx spreads requests with an empty one round-robin)."""
        if not key:
            raise ValueError("an empty key has no owner (nginx spreads it round-robin)")
        i = bisect.bisect_left(self.hashes, zlib.crc32(key.encode()))
        return self.owners[i % len(self.hashes)]


@dataclass(frozen=True, slots=True)
class Shard:
    """This server's place in the ring: entry :attr:`index` of :attr:`ring`."""

    index: int
    ring: Ring

    @property
    def count(self) -> int:
        return len(self.ring.servers)

    @property
    def label(self) -> str:
        """``"I/N"``, as ``--shard`` takes it."""
        return f"{self.index}/{self.count}"

    def owns(self, series_id: str) -> bool:
        """Whether the ring maps ``series_id`` here (an empty id: to no shard)."""
        return bool(series_id) and self.ring.owner(series_id) == self.index

    def misdirected(self, series_id: str) -> str:
        """Why this shard does not answer for ``series_id`` (the 421's message)."""
        j = self.ring.owner(series_id)
        return (
            f"series {series_id!r} belongs to shard {j}/{self.count} ({self.ring.servers[j]}),"
            f" not to this shard {self.label}: route by the {SERIES_HEADER} header"
        )


def parse_shard(spec: str, ring: Sequence[str]) -> Shard:
    """``--shard I/N`` with ``--shard-ring`` (N servers, in the balancer's order)."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f"--shard {spec!r} is not I/N (e.g. 0/2: the first of two shards)")
    index, count = int(match[1]), int(match[2])
    if not 0 <= index < count:
        raise ConfigError(f"--shard {spec!r}: the index counts from 0 to N-1")
    if not ring:
        raise ConfigError(
            "--shard needs --shard-ring: the N upstream servers, as the balancer lists them"
        )
    if len(ring) != count:
        raise ConfigError(f"--shard {spec!r} says {count} shards, --shard-ring names {len(ring)}")
    return Shard(index=index, ring=Ring.of(ring))


def split_ring(text: str) -> list[str]:
    """``"a:1, b:2"`` -> ``["a:1", "b:2"]`` (``--shard-ring``'s form)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def nginx_conf(ring: Ring, *, listen: str, max_body_bytes: int) -> str:
    """An nginx ``http``-block fragment (maps, upstream, server) that routes every request to
    the shard :meth:`Ring.owner` names: by ``X-Series-Id``, else by the id in
    ``/v1/series/{id}[/...]``; requests with neither go round-robin. ``max_fails=0``: a shard
    that fails stays its series' only target (a retry on another shard could only answer
    421), so the client sees nginx's 502 instead."""
    servers = "".join(f"    server {name} max_fails=0;\n" for name in ring.servers)
    return f"""\
# mamlctl serving shards: `mamlctl serve --shard I/{len(ring.servers)} --shard-ring \
{",".join(ring.servers)}`
# on each server below (I = its line number, from 0); the order and spelling must match.
map $uri $mamlctl_path_series {{
    ~^/v1/series/(?<mamlctl_sid>[^/]+)(/|$) $mamlctl_sid;
    default "";
}}
map $http_x_series_id $mamlctl_series {{
    "" $mamlctl_path_series;
    default $http_x_series_id;
}}
upstream mamlctl_shards {{
    hash $mamlctl_series consistent;
{servers}    keepalive 32;
}}
server {{
    listen {listen};
    client_max_body_size {max_body_bytes};
    location / {{
        proxy_pass http://mamlctl_shards;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream off;
    }}
}}
"""
