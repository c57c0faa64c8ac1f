"""The live patient timeline: timeline_change (versions per Patient, numbered in commit order) and
timeline_counter (the last number per Patient)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-20 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "timeline_change",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("rid", RowId, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "seq", name=op.f("pk_timeline_change")),
    )
    op.create_table(
        "timeline_counter",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_timeline_counter")),
    )


def downgrade() -> None:
    op.drop_table("timeline_counter")
    op.drop_table("timeline_change")
