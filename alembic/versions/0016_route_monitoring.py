"""Routes may set their monitoring: service targets (latency, time to first token, error and
limit budgets) and smaller drift minimums for a quiet route (service.routes.monitoring).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("routes", sa.Column("monitoring", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("routes", "monitoring")
