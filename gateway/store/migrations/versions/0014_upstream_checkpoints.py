"""EHR FHIR pull: upstream_checkpoint (per upstream and resource type: the greatest meta.lastUpdated stored,
the next poll, the last completed poll, the lease of the process polling it, failures in a row)

Revision ID: 0014
Revises: 0013
Create Date: 2027-01-26 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_checkpoint",
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("last_updated", sa.String(length=40), nullable=True),
        sa.Column("next_poll_us", sa.BigInteger(), nullable=False),
        sa.Column("polled_us", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("upstream", "res_type", name=op.f("pk_upstream_checkpoint")),
    )


def downgrade() -> None:
    op.drop_table("upstream_checkpoint")
