"""SMART launch/patient: the patient chosen at launch, kept with the code and the refresh tokens it leads
to (auth_code.patient, refresh_token.patient; none when the app did not ask for launch/patient); and
auth_code.replayed_us, when a used code came back (the access tokens issued from it stop working)

Revision ID: 0013
Revises: 0012
Create Date: 2027-01-19 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_code") as batch:
        batch.add_column(sa.Column("patient", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("replayed_us", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("refresh_token") as batch:
        batch.add_column(sa.Column("patient", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refresh_token") as batch:
        batch.drop_column("patient")
    with op.batch_alter_table("auth_code") as batch:
        batch.drop_column("replayed_us")
        batch.drop_column("patient")
