"""``mamlctl promote``: move a family's alias (``champion`` by default) to a model version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mamlctl.domain import InitializerRef
    from mamlctl.settings import Settings


def register(app: typer.Typer) -> None:
    @app.command("promote")
    def promote(
        family: Annotated[str, typer.Option("--family", "-f", help="Family whose model to move.")],
        version: Annotated[
            int, typer.Option("--version", "-v", min=1, help="Registered model version.")
        ],
        alias: Annotated[
            str, typer.Option("--alias", "-a", help="Alias to point at the version.")
        ] = "champion",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    ) -> None:
        """Point ALIAS of maml-FAMILY at VERSION; later stages resolve models:/maml-FAMILY@ALIAS.

        The MLflow registry is the source of truth (moving the alias in the MLflow UI has the
        same effect); when the family is in the registry database and ALIAS is the alias it
        serves, its champion version is mirrored there too.
        """
        from mamlctl.cli.output import emit_json, load_settings
        from mamlctl.registry.mlflow_models import models_uri, validate_alias
        from mamlctl.registry.mlflow_store import open_store

        validate_alias(alias)
        settings = load_settings()
        settings.ensure_home()
        store = open_store(settings)
        ref = store.set_alias(family=family, version=version, alias=alias)
        mirrored = _mirror_in_registry_db(settings, family=family, alias=alias, ref=ref)
        if as_json:
            emit_json(
                {
                    "family": family,
                    "registered_model": ref.registered_model,
                    "version": ref.version,
                    "alias": alias,
                    "aliases": list(ref.aliases),
                    "uri": models_uri(family, alias=alias),
                    "run_id": ref.run_id,
                    "registry_db_updated": mirrored,
                }
            )
            return
        typer.echo(
            f"{ref.registered_model} version {ref.version} is now '{alias}' "
            f"({models_uri(family, alias=alias)}); aliases: {', '.join(ref.aliases)}"
        )


def _mirror_in_registry_db(
    settings: Settings, *, family: str, alias: str, ref: InitializerRef
) -> bool:
    """Record the served version in the registry database if it knows the family."""
    from mamlctl.registry.db import open_registry
    from mamlctl.registry.family_queries import find_family, set_family_champion

    with open_registry(settings) as session_factory, session_factory.begin() as session:
        known = find_family(session, family)
        if known is None or known.alias != alias:
            return False
        set_family_champion(session, family, ref.version, run_id=ref.run_id)
        return True
