"""Where MLflow lives and how to talk to it: explicit URIs, a fast reachability probe, and the
translation of MLflow's exceptions into mamlctl's error tree.

Nothing here touches the global ("fluent") MLflow state: every call goes through an
``MlflowClient`` built with explicit tracking and registry URIs.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mamlctl.errors import InputError, NotFoundError, StoreError, TrackingUnavailableError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mamlctl.settings import Settings

#: MLflow's HTTP client retries for minutes by default (7 retries, backoff factor 2). A CLI must
#: fail within seconds when the server is gone, so these defaults apply unless the user set them.
_FAST_FAIL_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackingTarget:
    """The MLflow stores one mamlctl command talks to.

    ``artifact_root`` is where experiments created by mamlctl keep their artifacts when the
    tracking store is local (SQLite, file); for a tracking server it is None and the server
    decides (normally its ``mlflow-artifacts:/`` proxy).
    """

    tracking_uri: str
    registry_uri: str
    artifact_root: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackingTarget:
        tracking = settings.resolved_tracking_uri
        target = cls(tracking_uri=tracking, registry_uri=settings.resolved_registry_uri)
        if not target.is_remote:
            return cls(
                tracking_uri=tracking,
                registry_uri=settings.resolved_registry_uri,
                artifact_root=settings.artifact_root,
            )
        return target

    @property
    def is_remote(self) -> bool:
        """True for an ``http(s)://`` tracking server."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def experiment_artifact_location(self, experiment_name: str) -> str | None:
        """The artifact location to give a new experiment (None: the server's default)."""
        if self.artifact_root is None:
            return None
        root = self.artifact_root.resolve()
        location = (root / experiment_name).resolve()
        if location.parent != root:  # names are validated upstream; never leave the root
            raise InputError(f"experiment name {experiment_name!r} would leave {root}")
        return location.as_uri()


def apply_fast_fail_defaults() -> None:
    """Make MLflow's HTTP client give up within seconds (user-set variables win).

    Called by :func:`connect` — at the edge, never at import. MLflow reads these variables per
    request, so this is the only way to bound its retries without patching it.
    """
    for key, value in _FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)


def probe(target: TrackingTarget, *, timeout_s: float = 3.0) -> None:
    """Raise :class:`TrackingUnavailableError` naming the URI unless the server answers /health.

    Local stores (SQLite, file) need no probe.
    """
    if not target.is_remote:
        return
    url = target.tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailableError(
            f"MLflow tracking server at {target.tracking_uri} is unreachable ({reason}); start "
            "it, or unset MAMLCTL_TRACKING_URI / MLFLOW_TRACKING_URI to use the embedded store"
        ) from None
    if status != 200:
        raise TrackingUnavailableError(
            f"MLflow tracking server at {target.tracking_uri} answered /health with HTTP {status}"
        )


def quiet_mlflow_logs() -> None:
    """MLflow's own INFO lines ("Creating initial MLflow database tables...", "Validating
    input example...") stay out of mamlctl's output: its loggers report warnings and errors
    only, unless ``MAMLCTL_MLFLOW_LOG_LEVEL`` names another level (e.g. ``INFO`` to debug)."""
    import logging
    import os

    import mlflow  # noqa: F401  (its import installs its handler; set the level after it)

    level = os.environ.get("MAMLCTL_MLFLOW_LOG_LEVEL", "WARNING").upper()
    logging.getLogger("mlflow").setLevel(getattr(logging, level, logging.WARNING))


def connect(target: TrackingTarget, *, probe_timeout_s: float = 3.0) -> MlflowClient:
    """An explicit-URI client, after checking a remote server answers."""
    apply_fast_fail_defaults()
    quiet_mlflow_logs()
    probe(target, timeout_s=probe_timeout_s)
    if target.artifact_root is not None:
        target.artifact_root.mkdir(parents=True, exist_ok=True)
    for uri in (target.tracking_uri, target.registry_uri):
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    with translate_errors(target.tracking_uri):
        return MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:300]


@contextlib.contextmanager
def translate_errors(uri: str) -> Iterator[None]:
    """Turn MLflow / HTTP failures inside the block into mamlctl errors naming ``uri``."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except MlflowException as err:
        message = _first_line(err.message if isinstance(err.message, str) else str(err))
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(message) from err
        lowered = message.lower()
        if "api request to" in lowered and (
            "max retries" in lowered or "connection" in lowered or "timed out" in lowered
        ):
            raise TrackingUnavailableError(
                f"MLflow tracking server at {uri} stopped answering: {message}"
            ) from err
        raise StoreError(f"MLflow at {uri}: {message}") from err
    except RequestException as err:
        raise TrackingUnavailableError(
            f"MLflow tracking server at {uri} stopped answering: {_first_line(str(err))}"
        ) from err
