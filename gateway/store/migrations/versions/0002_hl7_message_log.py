"""HL7 v2 message log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 23:33:49.255276
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
        "hl7_message",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("control_id", sa.String(length=255), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_detail", sa.String(length=500), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
        sa.Column("processed_us", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("ack", sa.Text(), nullable=False),
        sa.Column("errors", sa.Text(), nullable=False),
        sa.Column("problems", sa.Text(), nullable=False),
        sa.Column("unused", sa.Text(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_message")),
        sa.UniqueConstraint("sender", "control_id", name=op.f("uq_hl7_message_sender_control_id")),
    )
    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hl7_message_status_received_us"), ["status", "received_us"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_message_status_received_us"))

    op.drop_table("hl7_message")
