"""Routes' output contracts: a JSON Schema and a review policy.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("output_schema", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("review_policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("review_policy")
        batch.drop_column("output_schema")
