"""Gateways in step: each running gateway's row of wanted versions and requests in flight.

An adapter version is unloaded only when no live gateway wants it or has a request on it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_peers",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wanted", sa.JSON(), nullable=False),
        sa.Column("draining", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gateway_peers")
