"""HL7 v2 log: content hashes (a reused MSH-10 with other content is a new message), unmapped fields,
notes, field coverage per sender

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 03:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("unmapped", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.drop_constraint("uq_hl7_message_sender_control_id", type_="unique")
        batch_op.create_index(
            batch_op.f("ix_hl7_message_sender_control_id"), ["sender", "control_id"], unique=False
        )
    op.create_table(
        "hl7_field_coverage",
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("message_type", sa.String(length=32), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("sender", "message_type", "field", name=op.f("pk_hl7_field_coverage")),
    )


def downgrade() -> None:
    op.drop_table("hl7_field_coverage")
    with op.batch_alter_table("hl7_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_message_sender_control_id"))
        batch_op.create_unique_constraint("uq_hl7_message_sender_control_id", ["sender", "control_id"])
        batch_op.drop_column("notes")
        batch_op.drop_column("unmapped")
        batch_op.drop_column("content_hash")
