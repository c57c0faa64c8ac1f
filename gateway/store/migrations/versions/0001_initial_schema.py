"""initial schema: resources, history, search index, API clients

Revision ID: 0001
Revises:
Create Date: 2026-11-23 22:28:23.611479
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "api_client",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_api_client")),
        sa.UniqueConstraint("name", name=op.f("uq_api_client_name")),
    )
    op.create_table(
        "resource",
        sa.Column(
            "rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("rid", name=op.f("pk_resource")),
        sa.UniqueConstraint("res_type", "res_id", name=op.f("uq_resource_res_type_res_id")),
    )
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_resource_res_type_updated_us"), ["res_type", "updated_us"], unique=False
        )

    op.create_table(
        "resource_version",
        sa.Column(
            "rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("rid", "version", name=op.f("pk_resource_version")),
    )
    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_resource_version_res_type_updated_us"), ["res_type", "updated_us"], unique=False
        )

    op.create_table(
        "server_key",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_key")),
    )
    op.create_table(
        "sp_date",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low_us", sa.BigInteger(), nullable=False),
        sa.Column("high_us", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("sp_date", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sp_date_res_type_param_high_us"), ["res_type", "param", "high_us"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sp_date_res_type_param_low_us"), ["res_type", "param", "low_us"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sp_date_rid"), ["rid"], unique=False)

    op.create_table(
        "sp_reference",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
    )
    with op.batch_alter_table("sp_reference", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sp_reference_res_type_param_target_id_target_type_rid"),
            ["res_type", "param", "target_id", "target_type", "rid"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_sp_reference_rid"), ["rid"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sp_reference_target_type_target_id"), ["target_type", "target_id"], unique=False
        )

    op.create_table(
        "sp_string",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column(
            "value",
            sa.String(length=200).with_variant(sa.String(length=200, collation="C"), "postgresql"),
            nullable=False,
        ),
    )
    with op.batch_alter_table("sp_string", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sp_string_res_type_param_value"), ["res_type", "param", "value"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sp_string_rid"), ["rid"], unique=False)

    op.create_table(
        "sp_token",
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column(
            "code",
            sa.String(length=200).with_variant(sa.String(length=200, collation="C"), "postgresql"),
            nullable=False,
        ),
    )
    with op.batch_alter_table("sp_token", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sp_token_res_type_param_code_system_rid"),
            ["res_type", "param", "code", "system", "rid"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_sp_token_rid"), ["rid"], unique=False)

    op.create_table(
        "used_assertion",
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_used_assertion")),
    )


def downgrade() -> None:

    op.drop_table("used_assertion")
    with op.batch_alter_table("sp_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sp_token_rid"))
        batch_op.drop_index(batch_op.f("ix_sp_token_res_type_param_code_system_rid"))

    op.drop_table("sp_token")
    with op.batch_alter_table("sp_string", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sp_string_rid"))
        batch_op.drop_index(batch_op.f("ix_sp_string_res_type_param_value"))

    op.drop_table("sp_string")
    with op.batch_alter_table("sp_reference", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sp_reference_target_type_target_id"))
        batch_op.drop_index(batch_op.f("ix_sp_reference_rid"))
        batch_op.drop_index(batch_op.f("ix_sp_reference_res_type_param_target_id_target_type_rid"))

    op.drop_table("sp_reference")
    with op.batch_alter_table("sp_date", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sp_date_rid"))
        batch_op.drop_index(batch_op.f("ix_sp_date_res_type_param_low_us"))
        batch_op.drop_index(batch_op.f("ix_sp_date_res_type_param_high_us"))

    op.drop_table("sp_date")
    op.drop_table("server_key")
    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resource_version_res_type_updated_us"))

    op.drop_table("resource_version")
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resource_res_type_updated_us"))

    op.drop_table("resource")
    op.drop_table("api_client")
