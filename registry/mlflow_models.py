"""Registered models and aliases: one registered model per family (``maml-<family>``), a new
version per training run, promotion by moving an alias. Never "latest", never stages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlctl.domain import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME_PREFIX,
    InitializerRef,
    registered_model_name,
)
from mamlctl.errors import ConfigError, NotFoundError, StoreError
from mamlctl.ports import INITIALIZER_ARTIFACT
from mamlctl.registry.mlflow_client import translate_errors
from mamlctl.registry.mlflow_runs import FINISHED

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

#: Registered models of mamlctl families start with this; ``models list`` shows only these.
MODEL_PREFIX = MODEL_NAME_PREFIX
#: Run metrics whose name starts with this are the validation metrics shown by ``models list``.
VALIDATION_PREFIX = "val_"
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")
_MODELS_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class InitializerVersion:
    """A registered version with what ``models list`` shows about it."""

    ref: InitializerRef  # carries created_at and the run's final validation metrics
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    run_status: str | None = None


def models_uri(family: str, *, alias: str = CHAMPION) -> str:
    """``models:/maml-<family>@<alias>``: the only way later stages name an initializer."""
    return f"models:/{registered_model_name(family)}@{alias}"


def validate_alias(alias: str) -> str:
    """MLflow's alias rules: a name, not ``latest`` and not ``v<N>`` (those mean versions)."""
    if not _ALIAS_RE.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(
            f"invalid alias {alias!r}: use letters, digits, '_' or '-', not 'latest' or 'v<N>'"
        )
    return alias


def initializer_folder(folder: Path) -> Path:
    """The initializer folder inside a downloaded version: ``folder`` itself for a version whose
    source is a run's ``initializer/`` artifact (before the pyfunc flavor), else, for an MLflow
    Model folder (``MLmodel`` present), the path its ``python_function`` flavor records for the
    ``initializer`` artifact (``artifacts/initializer``)."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return folder
    from mlflow.models import Model

    flavor = Model.load(str(mlmodel)).flavors.get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(INITIALIZER_ARTIFACT)
    if not entry:
        raise StoreError(f"MLflow Model at {folder} has no '{INITIALIZER_ARTIFACT}' artifact")
    return folder / str(entry["path"])


def _family_of(mv: ModelVersion) -> str:
    tags = dict(mv.tags or {})
    return tags.get("family") or str(mv.name).removeprefix(MODEL_PREFIX)


def _to_ref(mv: ModelVersion) -> InitializerRef:
    return InitializerRef(
        family=_family_of(mv),
        registered_model=str(mv.name),
        version=int(mv.version),
        run_id=str(mv.run_id or ""),
        aliases=tuple(sorted(mv.aliases or ())),
        source_uri=str(mv.source) if mv.source else None,
        created_at=datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, tz=UTC)
        if mv.creation_timestamp
        else None,
    )


class ModelRegistry:
    """Register, alias, list, resolve and download initializers through an explicit client."""

    def __init__(self, client: MlflowClient, *, uri: str, registry_uri: str) -> None:
        self._client = client
        self._uri = uri
        self._registry_uri = registry_uri

    # --- registration -------------------------------------------------------------------------
    def ensure_registered_model(self, family: str, *, description: str | None = None) -> str:
        from mlflow.exceptions import MlflowException

        name = registered_model_name(family)
        with translate_errors(self._uri):
            try:
                self._client.create_registered_model(
                    name,
                    tags={"family": family, "managed_by": "mamlctl"},
                    description=description
                    or f"MAML-meta-learned forecasting initializers of the '{family}' family.",
                )
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        return name

    def register_initializer(
        self,
        *,
        family: str,
        run_id: str,
        artifact_path: str,
        tags: Mapping[str, Any],
        description: str,
        promote: bool = False,
        eligible: bool = True,
    ) -> InitializerRef:
        """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``maml-<family>``.

        The run must have ended FINISHED (a failed or killed run is never registered). The
        first version of a family becomes ``champion``; later ones ``challenger`` unless
        ``promote``, which makes the new version ``champion``. A version that is not
        ``eligible`` (it lost to seasonal naive on its own held-out series) is always
        registered as ``challenger``: moving ``champion`` to it is left to a person.
        """
        with translate_errors(self._uri):
            run = self._client.get_run(run_id)
        if run.info.status != FINISHED:
            raise StoreError(
                f"run {run_id} ended {run.info.status}; only FINISHED runs are registered"
            )
        name = self.ensure_registered_model(family)
        version_tags = {str(k): str(v) for k, v in tags.items()}
        version_tags.setdefault("family", family)
        with translate_errors(self._uri):
            had_champion = CHAMPION in self._aliases_of_model(name)
            mv = self._client.create_model_version(
                name,
                source=f"runs:/{run_id}/{artifact_path}",
                run_id=run_id,
                tags=version_tags,
                description=description,
                await_creation_for=0,
            )
        alias = CHAMPION if eligible and (promote or not had_champion) else CHALLENGER
        return self.set_alias(family=family, version=int(mv.version), alias=alias)

    def _aliases_of_model(self, name: str) -> dict[str, int]:
        model = self._client.get_registered_model(name)
        return {str(a): int(v) for a, v in (model.aliases or {}).items()}

    # --- aliases ------------------------------------------------------------------------------
    def set_alias(self, *, family: str, version: int, alias: str = CHAMPION) -> InitializerRef:
        """Point ``alias`` at ``version``. Promoting a challenger to champion drops its
        ``challenger`` alias (it is no longer challenging anything)."""
        validate_alias(alias)
        name = registered_model_name(family)
        with translate_errors(self._uri):
            try:
                self._client.get_model_version(name, str(version))
            except Exception as err:
                if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                    raise NotFoundError(
                        f"{name} has no version {version}; see `mamlctl models list "
                        f"--family {family}`"
                    ) from None
                raise
            self._client.set_registered_model_alias(name, alias, str(version))
            if alias == CHAMPION and self._aliases_of_model(name).get(CHALLENGER) == version:
                self._client.delete_registered_model_alias(name, CHALLENGER)
            return _to_ref(self._client.get_model_version(name, str(version)))

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef:
        """The version ``alias`` points at, whoever moved it (CLI, API or the MLflow UI)."""
        return _to_ref(self._version_by_alias(registered_model_name(family), alias))

    def _version_by_alias(self, name: str, alias: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        with translate_errors(self._uri):
            try:
                return self._client.get_model_version_by_alias(name, alias)
            except MlflowException as err:
                if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise NotFoundError(
                        f"no version of {name} has alias '{alias}'; train one with `mamlctl "
                        f"train` or move the alias with `mamlctl promote`"
                    ) from None
                raise

    def resolve_uri(self, uri: str) -> InitializerRef:
        """Resolve ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
        match = _MODELS_URI_RE.match(uri)
        if match is None:
            raise ConfigError(
                f"not a model URI: {uri!r}; expected models:/<name>@<alias> or models:/<name>/<N>"
            )
        name = match["name"]
        if match["alias"]:
            return _to_ref(self._version_by_alias(name, match["alias"]))
        with translate_errors(self._uri):
            return _to_ref(self._client.get_model_version(name, match["version"]))

    # --- listing ------------------------------------------------------------------------------
    def list_versions(self, *, family: str | None = None) -> list[InitializerVersion]:
        """Versions of one family, or of every ``maml-*`` model, newest first per model."""
        with translate_errors(self._uri):
            if family is not None:
                name = registered_model_name(family)
                try:
                    self._client.get_registered_model(name)
                except Exception as err:
                    if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                        raise NotFoundError(
                            f"no registered model {name}; train one with `mamlctl train "
                            f"--family {family}`"
                        ) from None
                    raise
                names = [name]
            else:
                models = self._client.search_registered_models(
                    filter_string=f"name LIKE '{MODEL_PREFIX}%'", max_results=1000
                )
                names = sorted(str(m.name) for m in models)
            out: list[InitializerVersion] = []
            for name in names:
                escaped = name.replace("'", "\\'")
                versions = self._client.search_model_versions(
                    filter_string=f"name = '{escaped}'", max_results=10000
                )
                # search results do not carry aliases in every store: take them from the model
                by_version: dict[int, list[str]] = {}
                for alias, version in self._aliases_of_model(name).items():
                    by_version.setdefault(version, []).append(alias)
                for mv in sorted(versions, key=lambda v: -int(v.version)):
                    aliases = tuple(sorted(by_version.get(int(mv.version), ())))
                    out.append(self._describe(mv, aliases=aliases))
        return out

    def _describe(self, mv: ModelVersion, *, aliases: tuple[str, ...]) -> InitializerVersion:
        metrics: dict[str, float] = {}
        run_status: str | None = None
        if mv.run_id:
            try:
                run = self._client.get_run(mv.run_id)
            except Exception as err:  # a deleted run must not break the listing
                if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            else:
                run_status = run.info.status
                metrics = {
                    k: float(v)
                    for k, v in sorted(run.data.metrics.items())
                    if k.startswith(VALIDATION_PREFIX)
                }
        return InitializerVersion(
            ref=replace(_to_ref(mv), metrics=metrics, aliases=aliases),
            description=str(mv.description or ""),
            tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
            run_status=run_status,
        )

    # --- loading ------------------------------------------------------------------------------
    def download(self, ref: InitializerRef, dst: Path) -> Path:
        """Download the version's artifact directory under ``dst``; returns its local path."""
        if not ref.source_uri:
            raise StoreError(f"{ref.registered_model} v{ref.version} has no artifact source")
        dst.mkdir(parents=True, exist_ok=True)
        with translate_errors(self._uri):
            if ref.source_uri.startswith("runs:/"):
                run_id, _, path = ref.source_uri.removeprefix("runs:/").partition("/")
                local = self._client.download_artifacts(run_id, path, str(dst))
            else:  # a version registered by hand (e.g. in the UI) from another kind of source
                from mlflow.artifacts import download_artifacts

                local = download_artifacts(
                    artifact_uri=ref.source_uri,
                    dst_path=str(dst),
                    tracking_uri=self._uri,
                    registry_uri=self._registry_uri,
                )
        return initializer_folder(Path(local))
