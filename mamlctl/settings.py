"""Typed settings, built once at the edge (CLI command, app factory) and passed down.

Environment variables use the prefix ``MAMLCTL_`` (``MAMLCTL_HOME``, ``MAMLCTL_DATABASE_URL``,
``MAMLCTL_TRACKING_URI``, ``MAMLCTL_MODELS_ROOT``, ``MAMLCTL_API_TOKEN``).
``MLFLOW_TRACKING_URI`` is honoured when ``MAMLCTL_TRACKING_URI`` is unset. Nothing is created
on disk by constructing a Settings: the home folder is made by :meth:`Settings.ensure_home`,
which the commands that write call.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mamlctl.errors import ConfigError, NotFoundError


def _default_home() -> Path:
    return Path("~/.mamlctl").expanduser()


class Settings(BaseSettings):
    """Where mamlctl keeps its state. Unknown ``MAMLCTL_*`` keys passed explicitly fail."""

    model_config = SettingsConfigDict(env_prefix="MAMLCTL_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=_default_home, description="Folder for embedded state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry database; default: SQLite file in home.",
    )
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else SQLite in home.",
    )
    registry_uri: str | None = Field(
        default=None, description="MLflow model-registry URI; default: the tracking URI."
    )
    models_root: Path | None = Field(
        default=None,
        description="Folder of the adapted model files; default: models/ in home. On a cluster "
        "(adapt --ray) a path every node sees at the same place (a shared folder).",
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required by the scoring server when set."
    )

    # --- derived locations (pure: no I/O) -------------------------------------------------
    @property
    def database_path(self) -> Path:
        return self.home / "registry.db"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_path}"

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def is_embedded_tracking(self) -> bool:
        """True when MLflow runs on the SQLite file under the home (no URI configured)."""
        return not (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))

    @property
    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_tracking_uri

    @property
    def models_dir(self) -> Path:
        """Adapted per-series ONNX files live here; the server opens files only below it
        (``MAMLCTL_MODELS_ROOT``, else ``models/`` in the home)."""
        return self.models_root if self.models_root is not None else self.home / "models"

    @property
    def migration_lock_path(self) -> Path:
        """Lock file serialising the implicit upgrade of the embedded database."""
        return self.home / ".registry.db.lock"

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the environment (``MAMLCTL_*``); a bad value is one
        :class:`ConfigError` naming the variable."""
        from pydantic import ValidationError

        try:
            return cls()
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"invalid setting MAMLCTL_{loc.upper()}: {first['msg']}") from None

    def ensure_home(self) -> None:
        """Create the embedded folders. Called by commands that write, never at import."""
        for path in (self.home, self.mlflow_dir, self.artifact_root, self.models_dir):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot create mamlctl home folder {path}: {err.strerror or err}; "
                    "set MAMLCTL_HOME to a writable folder"
                ) from None

    def require_home(self) -> None:
        """Raise :class:`NotFoundError` when the home does not exist (read-only commands call
        this so that a mistyped MAMLCTL_HOME is an error, not an empty registry)."""
        if not self.home.is_dir():
            raise NotFoundError(
                f"no mamlctl home at {self.home}: check MAMLCTL_HOME, or start with "
                "`mamlctl ingest PATH`"
            )
