"""Anomaly records of the observe loop (``POST /v1/observe``): table ``anomalies``.

Revision ID: 0002_observations
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_observations"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "anomalies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=True),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("forecast", sa.Double(), nullable=False),
        sa.Column("sigma", sa.Double(), nullable=False),
        sa.Column("z", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("magnitude", sa.Double(), nullable=False),
        sa.Column("replaced", sa.Boolean(), nullable=False),
        sa.Column("registered_model", sa.String(255), nullable=False),
        sa.Column("initializer_version", sa.Integer(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_pk"], ["series.id"], name="fk_anomalies_series_pk_series", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_anomalies"),
        sa.UniqueConstraint("series_pk", "position", name="uq_anomalies_series_pk"),
    )
    op.create_index("ix_anomalies_status", "anomalies", ["status"])
    op.create_index("ix_anomalies_created_at", "anomalies", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_anomalies_created_at", table_name="anomalies")
    op.drop_index("ix_anomalies_status", table_name="anomalies")
    op.drop_table("anomalies")
