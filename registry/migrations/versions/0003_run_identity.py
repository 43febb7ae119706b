"""Initializer versions are identified by their MLflow run, not by (model, version).

A registered model deleted and created again in MLflow restarts its versions at 1: the number
repeats, the run id does not. The unique key moves from (registered_model, version) to
(registered_model, run_id); (registered_model, version) stays indexed, not unique.

Revision ID: 0003_run_identity
Revises: 0001 (written next to 0002_observations on another branch: re-chained at merge)
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_run_identity"
down_revision: str | Sequence[str] | None = "0002_observations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("initializer_versions") as batch:  # SQLite: copy and move
        batch.drop_constraint("uq_initializer_versions_registered_model", type_="unique")
        batch.create_unique_constraint(
            "uq_initializer_versions_run", ["registered_model", "run_id"]
        )
        batch.create_index("ix_initializer_versions_model_version", ["registered_model", "version"])


def downgrade() -> None:
    """Fails (unique violation) once a re-created model repeated a version number."""
    with op.batch_alter_table("initializer_versions") as batch:
        batch.drop_index("ix_initializer_versions_model_version")
        batch.drop_constraint("uq_initializer_versions_run", type_="unique")
        batch.create_unique_constraint(
            "uq_initializer_versions_registered_model", ["registered_model", "version"]
        )
