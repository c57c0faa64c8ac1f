"""Database tables. Alembic migrations under `migrations/` create them; this module describes them.

Layout:
- `resource` holds one row per logical resource: its current version number and whether it is deleted.
- `resource_version` holds every version's JSON (history); the current one is joined by (rid, version).
- `sp_*` hold the search index of each resource's *current* version, one row per indexed value,
  keyed by the integer `rid` so the index rows stay small.
- `api_client`, `server_key`, `used_assertion` back OAuth client credentials.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias); PostgreSQL gets a BIGINT identity.
RowId = BigInteger().with_variant(Integer(), "sqlite")
# Byte-wise ordering on PostgreSQL so string prefix search can use a btree range scan.
IndexedText = String(200).with_variant(String(200, collation="C"), "postgresql")

resource = Table(
    "resource",
    metadata,
    Column("rid", RowId, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    UniqueConstraint("res_type", "res_id"),
    Index(None, "res_type", "updated_us"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("rid", RowId, primary_key=True, autoincrement=False),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", Text, nullable=True),
    Index(None, "res_type", "updated_us"),
)

sp_token = Table(
    "sp_token",
    metadata,
    Column("rid", RowId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", IndexedText, nullable=False),
    Index(None, "res_type", "param", "code", "system", "rid"),
    Index(None, "rid"),
)

sp_reference = Table(
    "sp_reference",
    metadata,
    Column("rid", RowId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Index(None, "res_type", "param", "target_id", "target_type", "rid"),
    Index(None, "target_type", "target_id"),
    Index(None, "rid"),
)

sp_date = Table(
    "sp_date",
    metadata,
    Column("rid", RowId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low_us", BigInteger, nullable=False),
    Column("high_us", BigInteger, nullable=False),
    Index(None, "res_type", "param", "low_us"),
    Index(None, "res_type", "param", "high_us"),
    Index(None, "rid"),
)

sp_string = Table(
    "sp_string",
    metadata,
    Column("rid", RowId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", IndexedText, nullable=False),
    Index(None, "res_type", "param", "value"),
    Index(None, "rid"),
)

INDEX_TABLES = (sp_token, sp_reference, sp_date, sp_string)

api_client = Table(
    "api_client",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("secret_hash", String(255), nullable=True),
    Column("scope", Text, nullable=False),
    Column("jwks", Text, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False),
)

server_key = Table(
    "server_key",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("created_us", BigInteger, nullable=False),
)

# jti values of accepted private_key_jwt assertions, kept until they expire, to refuse replays.
used_assertion = Table(
    "used_assertion",
    metadata,
    Column("jti", String(255), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("expires_us", BigInteger, nullable=False),
)

# Every HL7 v2 message received, as received, with what became of it (traceability and reprocessing).
hl7_message = Table(
    "hl7_message",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("sender", String(255), nullable=False),  # MSH-3|MSH-4
    Column("control_id", String(255), nullable=False),  # MSH-10
    Column("message_type", String(32), nullable=False),
    Column("source", String(16), nullable=False),  # mllp | http | file
    Column("source_detail", String(500), nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Column("processed_us", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # accepted | error | rejected
    Column("ack_code", String(2), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("raw", Text, nullable=False),
    Column("ack", Text, nullable=False),
    Column("errors", Text, nullable=False),  # JSON: [{code, text, segment, field}]
    Column("problems", Text, nullable=False),  # JSON: values that could not be mapped
    Column("unused", Text, nullable=False),  # JSON: segments no mapping read ("ZPI#7")
    Column("resources", Text, nullable=False),  # JSON: "Type/id/_history/n" produced
    UniqueConstraint("sender", "control_id"),
    Index(None, "status", "received_us"),
)
