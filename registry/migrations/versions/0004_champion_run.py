"""The family mirror names its champion by MLflow run as well as by version number.

A registered model deleted and created again restarts its versions at 1, so the number alone
can name two recorded initializer versions (and listings showed the alias on both).
``families.champion_run_id`` is backfilled where the champion's number names exactly one
recorded version of the family; where it names several it stays NULL (unknown, not guessed)
until the next promotion, training or ``watch`` mirrors the alias again.

Revision ID: 0004_champion_run
Revises: 0003_run_identity
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_champion_run"
down_revision: str | Sequence[str] | None = "0003_run_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("families", sa.Column("champion_run_id", sa.String(64), nullable=True))
    op.execute(
        "UPDATE families SET champion_run_id = ("
        " SELECT MIN(iv.run_id) FROM initializer_versions iv"
        " WHERE iv.family_id = families.id AND iv.version = families.champion_version)"
        " WHERE champion_version IS NOT NULL AND ("
        " SELECT COUNT(*) FROM initializer_versions iv"
        " WHERE iv.family_id = families.id AND iv.version = families.champion_version) = 1"
    )


def downgrade() -> None:
    with op.batch_alter_table("families") as batch:  # SQLite: copy and move
        batch.drop_column("champion_run_id")
