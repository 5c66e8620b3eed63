"""Per-key limits: requests and tokens per minute and concurrent requests, shared by every gateway.

``api_keys.limits`` holds what a key may use (key-wide and per route). ``rate_windows`` counts
requests and tokens per scope and minute; ``rate_leases`` holds one row per request in flight, with
an expiry, so a gateway that dies mid-request cannot leak a concurrency slot for ever.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("limits", sa.JSON(), nullable=True))
    op.create_table(
        "rate_windows",
        sa.Column("scope", sa.String(240), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rate_leases",
        sa.Column("scope", sa.String(240), primary_key=True),
        sa.Column("lease", sa.String(36), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_leases")
    op.drop_table("rate_windows")
    op.drop_column("api_keys", "limits")
