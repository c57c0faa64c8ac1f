"""Signing keys sealed at rest with key ids (the plain-text `server_key` row moves into `signing_key` as
`k0`, sealed under the key-encryption key); clients get a token generation and a disable time

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 10:00:00.000000
"""

from __future__ import annotations

import base64

import sqlalchemy as sa
from alembic import op

from gateway.auth.key_encryption import KeyEncryptionKey, from_settings
from gateway.auth.keyring import CURRENT, LEGACY_KID
from gateway.settings import get_settings

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LEGACY_KEY_NAME = "access-token-hs256"


def _key_encryption() -> KeyEncryptionKey:
    """The KEK the caller handed over (gateway start, CLI), else the one the environment configures."""
    given = op.get_context().config.attributes.get("key_encryption")  # type: ignore[union-attr]
    if isinstance(given, KeyEncryptionKey):
        return given
    settings = get_settings()
    return from_settings(settings.key_encryption_key, settings.key_encryption_key_file)


def upgrade() -> None:
    with op.batch_alter_table("api_client", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_us", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0"))
    signing_key = op.create_table(
        "signing_key",
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("retire_after_us", sa.BigInteger(), nullable=True),
        sa.Column("retired_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_key")),
    )
    bind = op.get_bind()
    legacy = bind.execute(
        sa.text("SELECT value, created_us FROM server_key WHERE name = :name"), {"name": LEGACY_KEY_NAME}
    ).first()
    if legacy is not None:
        # Tokens signed with it (no kid) stay valid: it becomes the current key k0, sealed.
        sealed = _key_encryption().seal(LEGACY_KID, base64.b64decode(legacy.value))
        op.bulk_insert(
            signing_key,
            [{"kid": LEGACY_KID, "state": CURRENT, "wrapped": sealed, "created_us": int(legacy.created_us)}],
        )
    op.drop_table("server_key")  # the plain text goes with it


def downgrade() -> None:
    server_key = op.create_table(
        "server_key",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_key")),
    )
    bind = op.get_bind()
    current = bind.execute(
        sa.text(
            "SELECT kid, wrapped, created_us FROM signing_key WHERE state = :state ORDER BY created_us DESC"
        ),
        {"state": CURRENT},
    ).first()
    if current is not None and current.wrapped is not None:
        secret, _ = _key_encryption().open(current.kid, current.wrapped)
        op.bulk_insert(
            server_key,
            [
                {
                    "name": LEGACY_KEY_NAME,
                    "value": base64.b64encode(secret).decode(),
                    "created_us": int(current.created_us),
                }
            ],
        )
    op.drop_table("signing_key")
    with op.batch_alter_table("api_client", schema=None) as batch_op:
        batch_op.drop_column("token_generation")
        batch_op.drop_column("disabled_us")
