"""The one exception tree of mamlctl.

Every error a user can cause or meet derives from :class:`MamlctlError`. Its message is one
actionable line (what, where, what to do); the CLI prints exactly that line and exits 1, the
HTTP layer maps the classes to status codes. Library code raises these, it never prints.

::

    MamlctlError
    ├── ConfigError          invalid settings or hyperparameters
    ├── InputError           bad user data (files, values, shapes)        -> HTTP 422
    │   └── IngestError      a file that cannot be ingested (names file and series)
    ├── NotFoundError        unknown series, family, model version, file  -> HTTP 404
    ├── StoreError           a backing store (database, MLflow) failed or is unreachable
    │   └── TrackingUnavailableError   the MLflow tracking server did not answer
    ├── IntegrityError       a file whose sha256 does not match its record
    └── TrainingError        meta-training or adaptation could not proceed
"""

from __future__ import annotations


class MamlctlError(Exception):
    """Base of every mamlctl error; ``str(err)`` is a single line meant for the user."""

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would break the CLI's contract.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(MamlctlError):
    """Settings or hyperparameters are invalid."""


class InputError(MamlctlError):
    """User-supplied data is malformed: wrong shape, NaN/inf, non-numeric, too short."""


class IngestError(InputError):
    """A file cannot be ingested. The message names the file, the series and the problem."""


class NotFoundError(MamlctlError):
    """A series, family, model version or file that does not exist."""


class StoreError(MamlctlError):
    """A backing store (registry database, MLflow) failed."""


class TrackingUnavailableError(StoreError):
    """The MLflow tracking server did not answer. The message names the URI."""


class IntegrityError(MamlctlError):
    """A model file's sha256 does not match the registry database."""


class TrainingError(MamlctlError):
    """Meta-training or adaptation could not proceed (too few series, diverged, ...)."""
