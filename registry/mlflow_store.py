"""The initializer store: MLflow behind a small protocol.

One experiment and one registered model per family (both named ``maml-<family>``); each
training is a run (:class:`~mamlctl.registry.mlflow_runs.TrackedRun`); a finished run's
initializer directory is registered as a new model version and later stages load it by
``models:/maml-<family>@champion``. Everything goes through an explicit ``MlflowClient``.

Typical use at the edge::

    store = open_store(settings)                      # probes a remote server first
    with store.start_run(family="hourly") as run:     # FINISHED / FAILED / KILLED on exit
        run.log_config(config)
        run.log_metrics({"train_loss": 0.3}, step=1)
        run.log_artifacts(initializer_dir, artifact_path=INITIALIZER_ARTIFACT)
    ref = store.register_initializer(family="hourly", run_id=run.run_id, tags=..., ...)
    params = store.load("models:/maml-hourly@champion", loader=load_initializer)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mamlctl.domain import CHAMPION, InitializerRef, registered_model_name
from mamlctl.errors import IntegrityError, StoreError
from mamlctl.ports import INITIALIZER_ARTIFACT, InitializerStore
from mamlctl.registry.mlflow_client import TrackingTarget, connect, translate_errors
from mamlctl.registry.mlflow_home import reroot_embedded_store
from mamlctl.registry.mlflow_models import InitializerVersion, ModelRegistry, models_uri
from mamlctl.registry.mlflow_runs import TrackedRun
from mamlctl.registry.run_owner import end_stale_runs, owner_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mamlctl.settings import Settings

T = TypeVar("T")


__all__ = [
    "INITIALIZER_ARTIFACT",
    "InitializerStore",
    "InitializerVersion",
    "MlflowStore",
    "TrackedRun",
    "TrackingTarget",
    "experiment_name",
    "models_uri",
    "open_store",
]


def experiment_name(family: str) -> str:
    """The MLflow experiment holding a family's training runs."""
    return registered_model_name(family)


class MlflowStore:
    """:class:`~mamlctl.ports.InitializerStore` on an explicit-URI ``MlflowClient``."""

    def __init__(self, client: MlflowClient, target: TrackingTarget) -> None:
        self.client = client
        self.target = target
        self._registry = ModelRegistry(
            client, uri=target.tracking_uri, registry_uri=target.registry_uri
        )

    @property
    def tracking_uri(self) -> str:
        return self.target.tracking_uri

    # --- runs ---------------------------------------------------------------------------------
    def ensure_experiment(self, family: str) -> str:
        """The family's experiment id, creating it (artifacts under the store's root) if new."""
        name = experiment_name(family)
        with translate_errors(self.tracking_uri):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                from mlflow.exceptions import MlflowException

                try:
                    return str(
                        self.client.create_experiment(
                            name,
                            artifact_location=self.target.experiment_artifact_location(name),
                            tags={"family": family, "managed_by": "mamlctl"},
                        )
                    )
                except MlflowException as err:  # created concurrently by another command
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = self.client.get_experiment_by_name(name)
                    assert experiment is not None
        if experiment.lifecycle_stage != "active":
            raise StoreError(
                f"MLflow experiment {name} at {self.tracking_uri} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`)"
            )
        return str(experiment.experiment_id)

    def start_run(
        self, *, family: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> TrackedRun:
        """Create a RUNNING run in the family's experiment; use the result as a context manager.

        The run is tagged with this host, pid and start time; first, the family's RUNNING runs
        whose process on this host is gone are ended KILLED (``TrackedRun.stale_ended``)."""
        experiment_id = self.ensure_experiment(family)
        stale = end_stale_runs(self.client, experiment_id, tracking_uri=self.tracking_uri)
        run_tags = {"family": family, "mlflow.source.name": "mamlctl", **owner_tags()}
        run_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
        with translate_errors(self.tracking_uri):
            run = self.client.create_run(experiment_id, tags=run_tags, run_name=run_name)
        return TrackedRun(
            self.client,
            run_id=run.info.run_id,
            experiment_id=experiment_id,
            tracking_uri=self.tracking_uri,
            stale_ended=tuple(stale),
        )

    def get_run_status(self, run_id: str) -> str:
        with translate_errors(self.tracking_uri):
            return str(self.client.get_run(run_id).info.status)

    # --- registry -----------------------------------------------------------------------------
    def register_initializer(
        self,
        *,
        family: str,
        run_id: str,
        tags: Mapping[str, Any],
        description: str,
        promote: bool = False,
        eligible: bool = True,
        artifact_path: str = INITIALIZER_ARTIFACT,
    ) -> InitializerRef:
        return self._registry.register_initializer(
            family=family,
            run_id=run_id,
            artifact_path=artifact_path,
            tags=tags,
            description=description,
            promote=promote,
            eligible=eligible,
        )

    def set_alias(self, *, family: str, version: int, alias: str = CHAMPION) -> InitializerRef:
        return self._registry.set_alias(family=family, version=version, alias=alias)

    def resolve_alias(self, family: str, alias: str = CHAMPION) -> InitializerRef:
        return self._registry.resolve_alias(family, alias)

    def resolve(self, model: str | InitializerRef) -> InitializerRef:
        return model if isinstance(model, InitializerRef) else self._registry.resolve_uri(model)

    def list_versions(self, *, family: str | None = None) -> list[InitializerVersion]:
        return self._registry.list_versions(family=family)

    # --- loading ------------------------------------------------------------------------------
    def download(self, model: str | InitializerRef, dst: Path) -> Path:
        """Download a version's initializer directory (``models:/...@alias`` or a ref)."""
        return self._registry.download(self.resolve(model), dst)

    def load(self, model: str | InitializerRef, *, loader: Callable[[Path], T]) -> T:
        """Download into a temporary folder, call ``loader(dir)`` and clean up.

        ``loader`` must read everything it needs into memory (e.g. ``maml.load_initializer``).
        An :class:`~mamlctl.errors.IntegrityError` from the loader (a digest mismatch) is
        raised again naming the model version and run, not the temporary folder.
        """
        ref = self.resolve(model)
        with tempfile.TemporaryDirectory(prefix="mamlctl-init-") as tmp:
            folder = self.download(ref, Path(tmp))
            try:
                return loader(folder)
            except IntegrityError as err:
                detail = str(err).replace(str(folder) + "/", "")
                raise IntegrityError(
                    f"initializer {ref.registered_model} v{ref.version} (run {ref.run_id}, "
                    f"{INITIALIZER_ARTIFACT}/): {detail}"
                ) from None


def open_store(settings: Settings, *, probe_timeout_s: float = 3.0) -> MlflowStore:
    """The store the settings name: embedded SQLite under the home, or a tracking server.

    The embedded store is first re-rooted at this home if it was moved or copied
    (:func:`~mamlctl.registry.mlflow_home.reroot_embedded_store`). A remote server is probed
    first and :class:`~mamlctl.errors.TrackingUnavailableError`
    (naming the URI) is raised within ``probe_timeout_s`` if it does not answer.
    """
    target = TrackingTarget.from_settings(settings)
    if settings.is_embedded_tracking:
        # a moved or copied home: its experiments still name the old home's artifact folder
        reroot_embedded_store(settings.mlflow_dir / "mlflow.db", settings.artifact_root)
    return MlflowStore(connect(target, probe_timeout_s=probe_timeout_s), target)
