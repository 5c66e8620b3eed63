"""Adapter versions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(200), nullable=False),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("store_path", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_snapshot_id", sa.String(200), nullable=True),
        sa.Column("changelog", sa.Text(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_adapter_versions_name_version"),
        sa.UniqueConstraint("name", "sha256", name="uq_adapter_versions_name_sha256"),
    )


def downgrade() -> None:
    op.drop_table("adapter_versions")
