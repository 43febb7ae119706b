"""Series keep the observe loop's ranking state (anomaly likelihood statistics, value range).

It depends on past forecasts, so it cannot be rebuilt from the stored points at restart; the
observe loop writes it with the series' counters, in the transaction that stores the points.
NULL: none yet (a fresh state whose range is that of the stored values).

Revision ID: 0005_detector_state
Revises: 0004_champion_run
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_detector_state"
down_revision: str | Sequence[str] | None = "0004_champion_run"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("series", sa.Column("detector_state", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:  # SQLite: copy and move
        batch.drop_column("detector_state")
