"""Registered SMART apps: smart_app (client id, unique name, public or confidential with a scrypt secret
hash, exact redirect URIs, allowed scopes, disabled flag)

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-11 09:00:00.000000
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
        "smart_app",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("confidential", sa.Boolean(), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("disabled_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_smart_app")),
        sa.UniqueConstraint("name", name=op.f("uq_smart_app_name")),
    )


def downgrade() -> None:
    op.drop_table("smart_app")
