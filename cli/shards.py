"""``mamlctl shards nginx-conf|owner``: the balancer side of ``mamlctl serve --shard I/N``.

Both read the shard ring (``--shard-ring``, the same list and order ``serve`` takes) and
decide as nginx's ``hash ... consistent`` does (:mod:`mamlctl.serving.shards`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mamlctl.serving.shards import Ring

shards_app = typer.Typer(
    name="shards",
    help="Serving shards behind a balancer: the nginx config, which shard owns a series.",
    no_args_is_help=True,
)

RingOpt = Annotated[
    str,
    typer.Option(
        "--shard-ring",
        help="The shards' upstream addresses, comma-separated, in the order of `serve --shard"
        " I/N` (I counts from 0): exactly as the balancer's `server` lines spell them.",
        envvar="MAMLCTL_SERVE_SHARD_RING",
    ),
]


def _ring(text: str) -> Ring:
    from mamlctl.serving.shards import Ring, split_ring

    return Ring.of(split_ring(text))


@shards_app.command("nginx-conf")
def nginx_conf(
    shard_ring: RingOpt,
    listen: Annotated[
        str, typer.Option(help="nginx's `listen` for clients (address:port).")
    ] = "127.0.0.1:8080",
) -> None:
    """Print the nginx `http`-block fragment that routes each request to the shard that loaded
    its series (by the X-Series-Id header, else the id in /v1/series/{id})."""
    from mamlctl.errors import ConfigError
    from mamlctl.serving import limits
    from mamlctl.serving.shards import nginx_conf, valid_address

    if not valid_address(listen):
        raise ConfigError(f"--listen {listen!r} is not an address:port")
    ring = _ring(shard_ring)
    typer.echo(nginx_conf(ring, listen=listen, max_body_bytes=limits.DEFAULT_MAX_BODY), nl=False)


@shards_app.command("owner")
def owner(
    series_ids: Annotated[list[str], typer.Argument(help="Series ids.", show_default=False)],
    shard_ring: RingOpt,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which shard serves each series (what nginx's consistent hash picks)."""
    from mamlctl.cli.output import emit_json
    from mamlctl.errors import InputError

    ring = _ring(shard_ring)
    if any(not sid for sid in series_ids):
        raise InputError("an empty series id has no shard")
    rows = []
    for sid in series_ids:
        index = ring.owner(sid)
        rows.append({"series_id": sid, "shard": index, "server": ring.servers[index]})
    if json_out:
        emit_json({"shards": len(ring.servers), "owners": rows})
        return
    n = len(ring.servers)
    for row in rows:
        typer.echo(f"{row['series_id']}\t{row['shard']}/{n}\t{row['server']}")


def register(app: typer.Typer) -> None:
    app.add_typer(shards_app, name="shards")
