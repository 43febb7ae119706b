"""Initial registry schema: families, series, points, initializer versions, adapted models.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "families",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("period", sa.Integer(), nullable=True),
        sa.Column("interval_seconds", sa.Double(), nullable=True),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("support", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("champion_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_families"),
        sa.UniqueConstraint("name", name="uq_families_name"),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("series_id", sa.String(255), nullable=False),
        sa.Column("family_id", sa.Integer(), nullable=True),
        sa.Column("family_origin", sa.String(16), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("interval_seconds", sa.Double(), nullable=True),
        sa.Column("detected_period", sa.Integer(), nullable=True),
        sa.Column("period_strength", sa.Double(), nullable=True),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("first_ts", sa.DateTime(), nullable=True),
        sa.Column("last_ts", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["family_id"],
            ["families.id"],
            name="fk_series_family_id_families",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.UniqueConstraint("series_id", name="uq_series_series_id"),
    )
    op.create_index("ix_series_family_id", "series", ["family_id"])
    op.create_table(
        "points",
        sa.Column("series_pk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=True),
        sa.Column("value", sa.Double(), nullable=False),
        # No foreign key on series_pk, on purpose: see PointRow in registry/tables.py.
        sa.PrimaryKeyConstraint("series_pk", "position", name="pk_points"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "initializer_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("family_id", sa.Integer(), nullable=False),
        sa.Column("registered_model", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["family_id"],
            ["families.id"],
            name="fk_initializer_versions_family_id_families",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_initializer_versions"),
        sa.UniqueConstraint(
            "registered_model", "version", name="uq_initializer_versions_registered_model"
        ),
    )
    op.create_index("ix_initializer_versions_family_id", "initializer_versions", ["family_id"])
    op.create_table(
        "adapted_models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("initializer_version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("adapted_at", sa.DateTime(), nullable=False),
        sa.Column("support", sa.Integer(), nullable=False),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("residual_scale", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("support_end", sa.Integer(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_pk"],
            ["series.id"],
            name="fk_adapted_models_series_pk_series",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["initializer_version_id"],
            ["initializer_versions.id"],
            name="fk_adapted_models_initializer_version_id_initializer_versions",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_adapted_models"),
    )
    op.create_index("ix_adapted_models_series_pk", "adapted_models", ["series_pk"])
    op.create_index(
        "ix_adapted_models_initializer_version_id", "adapted_models", ["initializer_version_id"]
    )
    # At most one current adapted model per series: a partial unique index (SQLite >= 3.8,
    # PostgreSQL), the same predicate on both.
    op.create_index(
        "uq_adapted_models_current",
        "adapted_models",
        ["series_pk"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )


def downgrade() -> None:
    op.drop_index("uq_adapted_models_current", table_name="adapted_models")
    op.drop_index("ix_adapted_models_initializer_version_id", table_name="adapted_models")
    op.drop_index("ix_adapted_models_series_pk", table_name="adapted_models")
    op.drop_table("adapted_models")
    op.drop_index("ix_initializer_versions_family_id", table_name="initializer_versions")
    op.drop_table("initializer_versions")
    op.drop_table("points")
    op.drop_index("ix_series_family_id", table_name="series")
    op.drop_table("series")
    op.drop_table("families")
