"""The audit trail: audit_event (one row per AuditEvent) and audit_event_ref (its patients and entities)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("subtype", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=255), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    op.create_index(op.f("ix_audit_event_recorded_us"), "audit_event", ["recorded_us"], unique=False)
    op.create_index(
        op.f("ix_audit_event_agent_recorded_us"), "audit_event", ["agent", "recorded_us"], unique=False
    )
    op.create_table(
        "audit_event_ref",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "role", "ref", name=op.f("pk_audit_event_ref")),
    )
    op.create_index(
        op.f("ix_audit_event_ref_role_ref_recorded_us"),
        "audit_event_ref",
        ["role", "ref", "recorded_us"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_event_ref_role_ref_recorded_us"), table_name="audit_event_ref")
    op.drop_table("audit_event_ref")
    op.drop_index(op.f("ix_audit_event_agent_recorded_us"), table_name="audit_event")
    op.drop_index(op.f("ix_audit_event_recorded_us"), table_name="audit_event")
    op.drop_table("audit_event")
