"""Training data snapshots exported from review decisions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("train_sha256", sa.String(64), nullable=False),
        sa.Column("validation_sha256", sa.String(64), nullable=False),
        sa.Column("train_examples", sa.Integer(), nullable=False),
        sa.Column("validation_examples", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("training_snapshots")
