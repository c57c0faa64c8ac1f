"""Bulk Data $export: export_job (one kick-off: who asked, what, its progress and the lease of the process
building it), export_file (its ndjson parts); upstream_checkpoint.export_url and export_state (the
puller's first load by $export: the status URL to resume from, and whether it finished)

Revision ID: 0015
Revises: 0014
Create Date: 2027-02-02 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_job",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=True),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("since_us", sa.BigInteger(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("transaction_us", sa.BigInteger(), nullable=True),
        sa.Column("finished_us", sa.BigInteger(), nullable=True),
        sa.Column("expires_us", sa.BigInteger(), nullable=True),
        sa.Column("type_index", sa.Integer(), nullable=False),
        sa.Column("after_rid", sa.BigInteger(), nullable=True),
        sa.Column("written", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_job")),
    )
    op.create_index("ix_export_job_status", "export_job", ["status", "created_us"])
    op.create_table(
        "export_file",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_export_file")),
    )
    with op.batch_alter_table("upstream_checkpoint") as batch:
        batch.add_column(sa.Column("export_url", sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column("export_state", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upstream_checkpoint") as batch:
        batch.drop_column("export_state")
        batch.drop_column("export_url")
    op.drop_table("export_file")
    op.drop_index("ix_export_job_status", table_name="export_job")
    op.drop_table("export_job")
