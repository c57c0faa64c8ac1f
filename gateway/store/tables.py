"""Database tables. Alembic migrations under `migrations/` create them; this module describes them.

Layout:
- `resource` holds one row per logical resource: its current version number and whether it is deleted.
- `resource_version` holds every version's JSON (history); the current one is joined by (rid, version).
- `sp_*` hold the search index of each resource's *current* version, one row per indexed value,
  keyed by the integer `rid` so the index rows stay small.
- `api_client`, `signing_key`, `used_assertion` back OAuth client credentials.
- `app_user` holds the people who log in: role, Practitioner, argon2id password hash, lockout state.
- `user_session` holds their console sessions, by the SHA-256 of the session id (never the id itself).
- `smart_app` holds the registered SMART apps: public or confidential (scrypt secret hash), exact redirect
  URIs (a JSON array), the scopes they may ask for.
- `upstream_checkpoint` holds, per upstream EHR and resource type, how far the pull has come (the greatest
  `meta.lastUpdated` stored), when it polls next, and which process holds it (a lease) now.
- `export_job` and `export_file` hold the Bulk Data `$export` jobs the gateway serves and their ndjson parts.
- `alert_candidate` indexes the alert Tasks by patient, rule and lab of their result, so that a later result
  finds the alerts it may mark back to normal without reading the patient's whole pile.
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
    text,
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
    Column("disabled_us", BigInteger, nullable=True),
    # Moved on by every disable: tokens carry the generation they were issued under (client_gen).
    Column("token_generation", Integer, nullable=False, server_default="0"),
)

# Access-token signing keys (gateway/auth/keyring.py), sealed under the key-encryption key
# (gateway/auth/key_encryption.py); a retired key's material is erased (wrapped NULL).
signing_key = Table(
    "signing_key",
    metadata,
    Column("kid", String(32), primary_key=True),
    Column("state", String(16), nullable=False),  # current | previous | retired
    Column("wrapped", Text, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("retire_after_us", BigInteger, nullable=True),  # previous: verifies until then
    Column("retired_us", BigInteger, nullable=True),
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
    # SHA-256 of the message's segments: only a re-send with the same content is a duplicate of it.
    Column("content_hash", String(64), nullable=True),
    Column("message_type", String(32), nullable=False),
    Column("source", String(16), nullable=False),  # mllp | http | file
    Column("source_detail", String(500), nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Column("processed_us", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # accepted | error | rejected | quarantined
    Column("ack_code", String(2), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("raw", Text, nullable=False),
    Column("ack", Text, nullable=False),
    Column("errors", Text, nullable=False),  # JSON: [{code, text, segment, field}]
    Column("problems", Text, nullable=False),  # JSON: values that could not be mapped
    Column("unused", Text, nullable=False),  # JSON: segments no mapping read ("ZPI#7")
    Column("unmapped", Text, nullable=True),  # JSON: fields with a value no mapping read ("PID#2-19")
    Column("notes", Text, nullable=True),  # JSON: [{kind: identity-conflict | reused-control-id | ...}]
    Column("resources", Text, nullable=False),  # JSON: "Type/id/_history/n" produced
    Index(None, "sender", "control_id"),
    Index(None, "status", "received_us"),
)

# Per sender and message type, the fields that arrive with a value no mapping reads: what an analyst
# needs to write a site override. Counted in the transaction that logs each message.
hl7_field_coverage = Table(
    "hl7_field_coverage",
    metadata,
    Column("sender", String(255), primary_key=True),
    Column("message_type", String(32), primary_key=True),
    Column("field", String(16), primary_key=True),  # "PID-19"
    Column("messages", BigInteger, nullable=False),  # messages in which it carried an unmapped value
    Column("first_seen_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
    Column("last_message_id", String(36), nullable=False),
)

# -- topic-based subscriptions --------------------------------------------------------------------
# The Subscription resources themselves live in `resource`; these tables hold what delivery needs.

# Event numbering, advanced by writers in the same transaction as the resource that fired the event, so
# numbers are gap-free and survive restarts. Kept apart from `subscription_delivery` so that writers and
# deliverers never wait on each other's row locks.
subscription_counter = Table(
    "subscription_counter",
    metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("last_event", BigInteger, nullable=False),
)

# The outbox: every event of every subscription, by number. `$events` replays from here.
subscription_event = Table(
    "subscription_event",
    metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("focus_type", String(64), nullable=False),
    Column("focus_id", String(64), nullable=False),
    Column("focus_version", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("details", Text, nullable=True),  # JSON: what the topic adds (e.g. the drug-lab rule)
)

# Delivery state per subscription: how far it got, whether it is failing, and who holds it.
subscription_delivery = Table(
    "subscription_delivery",
    metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("delivered", BigInteger, nullable=False),  # highest event number delivered
    Column("secret", String(255), nullable=False),  # HMAC key for the signature header
    Column("owner", String(64), nullable=True),  # client id that created it
    Column("owner_scope", Text, nullable=False),  # that client's scopes: what it may receive
    Column("failures", Integer, nullable=False),  # consecutive failed attempts
    Column("failing_since_us", BigInteger, nullable=True),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("last_sent_us", BigInteger, nullable=True),  # for heartbeats
    Column("lease_owner", String(64), nullable=True),  # process delivering it now (PostgreSQL)
    Column("lease_until_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
)

# Every delivery attempt, successful or not, for `$status` and the delivery log.
delivery_attempt = Table(
    "delivery_attempt",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("sub_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # handshake | heartbeat | event-notification
    Column("first_event", BigInteger, nullable=True),
    Column("last_event", BigInteger, nullable=True),
    Column("started_us", BigInteger, nullable=False),
    Column("duration_us", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False),  # delivered | failed
    Column("http_status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("worker", String(64), nullable=False),
    Index(None, "sub_id", "id"),
)

# Single-use websocket binding tokens ($get-ws-binding-token).
ws_binding_token = Table(
    "ws_binding_token",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("sub_ids", Text, nullable=False),  # JSON list
    Column("expires_us", BigInteger, nullable=False),
)

# Bumped on every Subscription write so that other processes notice and reload their registries.
subscription_generation = Table(
    "subscription_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


SUBSCRIPTION_TABLES = (
    subscription_counter,
    subscription_event,
    subscription_delivery,
    delivery_attempt,
    ws_binding_token,
    subscription_generation,
)

# --- prior authorization ------------------------------------------------------------------------------
# One row per PA Task, kept from the Task's content by a write observer (whatever wrote the Task): what
# the timers (decision due, authorization ending) and the turnaround figures need without parsing Tasks.
pa_tracking = Table(
    "pa_tracking",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("task_version", Integer, nullable=False),
    Column("business_status", String(40), nullable=False),
    # the Task's owner: the insurer reference (Organization/x), or its identifier (system|value) when the
    # owner names it only so
    Column("payer", String(255), nullable=True),
    Column("priority", String(16), nullable=False),
    Column("submitted_us", BigInteger, nullable=True),  # first submission
    Column("due_us", BigInteger, nullable=True),  # decision due (CMS: 72 h expedited, 7 days standard)
    Column("decided_us", BigInteger, nullable=True),  # first decision after the last submission
    Column("auth_end", String(40), nullable=True),  # authorized period end, FHIR date/dateTime
    Column("updated_us", BigInteger, nullable=False),
)

# What ties payers' answers to a PA Task: the gateway's Claim ids and trace numbers, the payer's numbers.
pa_reference = Table(
    "pa_reference",
    metadata,
    Column("kind", String(16), primary_key=True),  # claim | trace | payer
    Column("value", String(255), primary_key=True),
    Column("task_id", String(64), nullable=False, index=True),
)

# Requests to payers ($submit, $inquire), one row each; the id is the Idempotency-Key sent with it. A
# submission's id names the Task and version it submits, so a Task version is submitted at most once; a
# row is claimed (state pending -> sending) before the request goes out, so no two workers or processes
# ever send the same one.
pa_submission = Table(
    "pa_submission",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("task_version", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # submit | inquire
    Column("payer", String(255), nullable=False),  # the payer's name in the configuration
    # pending | sending | sent | failed (retry due) | retried | abandoned | superseded (Task moved on)
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),  # 1 for the first submission of a Task, +1 per retry
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("claim_token", String(40), nullable=True),  # who is sending it: only they may record the outcome
    Column("created_us", BigInteger, nullable=False),
    Column("sent_us", BigInteger, nullable=True),
    Column("duration_us", BigInteger, nullable=True),
    Column("http_status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("body", Text, nullable=False),  # the request Bundle as sent
    Index("ix_pa_submission_due", "state", "next_attempt_us"),
)

# Timer events already raised (overdue, expiring, expired), once per Task and authorization period.
pa_timer_fired = Table(
    "pa_timer_fired",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("key", String(80), primary_key=True),  # what it was about, e.g. the period end or due time
    Column("fired_us", BigInteger, nullable=False),
)

PA_TABLES = (pa_tracking, pa_reference, pa_submission, pa_timer_fired)

# --- the audit trail ----------------------------------------------------------------------------------
# One row per AuditEvent, apart from the FHIR resource store (recording a read must not index resources
# or make versions), written in batches by the audit log's background task (gateway/service/fhirapi/audit.py).
audit_event = Table(
    "audit_event",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("recorded_us", BigInteger, nullable=False),
    Column("type", String(16), nullable=False),  # rest | 110106 export | 110107 import | 110114 login
    Column("subtype", String(64), nullable=True),  # restful interaction, trigger event, notification type
    Column("action", String(1), nullable=False),  # C R U D E
    Column("outcome", Integer, nullable=False),  # 0 | 4 | 8 | 12
    Column("agent", String(255), nullable=True),  # client id, MLLP peer, file name
    Column("address", String(64), nullable=True),  # the agent's IP address
    Column("content", Text, nullable=False),  # the AuditEvent JSON
    Index(None, "recorded_us"),
    Index(None, "agent", "recorded_us"),
)

# The patients and entities of each event, for search by patient or entity, newest first, from the index.
audit_event_ref = Table(
    "audit_event_ref",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("role", String(8), primary_key=True),  # patient | entity
    Column("ref", String(200), primary_key=True),  # Patient/id, Type/id
    Column("recorded_us", BigInteger, nullable=False),
    Index(None, "role", "ref", "recorded_us"),
)

AUDIT_TABLES = (audit_event_ref, audit_event)

# --- the live patient timeline ($timeline?_stream=true) -----------------------------------------------
# One row per version of a timeline type (gateway/pharmacist/timeline.py KINDS) per Patient whose
# compartment it is in, numbered per Patient in commit order: the stream's position and its event ids.
# Written as the writer's transaction's last statements, under numbers from `timeline_counter`, whose row
# lock orders the commits of one Patient's writers (gateway/store/timeline.py).
timeline_change = Table(
    "timeline_change",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("rid", RowId, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
)

timeline_counter = Table(
    "timeline_counter",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("last", BigInteger, nullable=False),  # the highest seq given to this Patient's changes
)

TIMELINE_TABLES = (timeline_change, timeline_counter)

# --- people who log in (gateway/auth/roles.py, gateway/auth/passwords.py) ------------------------------
# `name` as given, unique ignoring case through `name_key` (its casefold, which every lookup uses).
# `password_hash` is argon2id; `failed_logins` and `locked_until_us` back the login lockout.
app_user = Table(
    "app_user",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("name_key", String(64), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("practitioner", String(100), nullable=True),  # Practitioner/ID; required for pharmacists
    Column("password_hash", String(255), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("password_changed_us", BigInteger, nullable=False),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until_us", BigInteger, nullable=True),
)

# A console session: `id_hash` is the SHA-256 (hex) of the random session id the cookie carries, so a copy
# of the table opens no session. `csrf_secret` is what the session's forms must send back.
user_session = Table(
    "user_session",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("csrf_secret", String(64), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
)


smart_app = Table(
    "smart_app",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("confidential", Boolean, nullable=False),
    Column("secret_hash", String(255), nullable=True),  # scrypt, as for API clients; None when public
    Column("redirect_uris", Text, nullable=False),  # JSON array of exact URIs, in registration order
    Column("scope", Text, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("disabled_us", BigInteger, nullable=True),
)

# SMART standalone launch (gateway/service/access/launch.py). Codes and refresh tokens are kept only as
# their SHA-256 (hex). A code is single use (`used_us`); the refresh tokens issued from it form a `family`
# (the code's hash), revoked together when a used code or a rotated-out refresh token comes back.
auth_code = Table(
    "auth_code",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("used_us", BigInteger, nullable=True),
    Column("patient", String(64), nullable=True),  # chosen at launch (launch/patient)
    Column("replayed_us", BigInteger, nullable=True),  # a used code came back: its tokens are dead
)

refresh_token = Table(
    "refresh_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family", String(64), nullable=False, index=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("used_us", BigInteger, nullable=True),  # rotated out: a new token replaced it
    Column("revoked", Boolean, nullable=False),
    Column("patient", String(64), nullable=True),  # chosen at launch (launch/patient)
)

upstream_checkpoint = Table(
    "upstream_checkpoint",
    metadata,
    Column("upstream", String(64), primary_key=True),
    Column("res_type", String(64), primary_key=True),
    Column("last_updated", String(40), nullable=True),  # the upstream's own text: its precision, its zone
    Column("next_poll_us", BigInteger, nullable=False),
    Column("polled_us", BigInteger, nullable=True),  # the last poll that completed, by any process
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("failures", Integer, nullable=False),  # polls failed in a row
    Column("last_error", String(500), nullable=True),  # no patient data: HTTP statuses and exception names
    # On the `$export` pseudo-row only (the first load by Bulk Data): the upstream's status URL while its
    # export runs, and whether the first load finished (`done`) or gave way to the incremental pull.
    Column("export_url", String(2000), nullable=True),
    Column("export_state", String(16), nullable=True),
)

# Bulk Data `$export` jobs this gateway serves (gateway/service/bulk). `types` is a comma list; the
# builder's place is (`type_index`, `after_rid`): the next part starts after that row id of that type.
export_job = Table(
    "export_job",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),  # only this client sees the status and the files
    Column("status", String(16), nullable=False),  # queued | running | done | failed
    Column("request", Text, nullable=False),  # the kick-off URL, for the manifest
    Column("level", String(16), nullable=False),  # system | patient | group
    Column("group_id", String(64), nullable=True),
    Column("types", Text, nullable=False),
    Column("since_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("transaction_us", BigInteger, nullable=True),  # when the builder started: the manifest's time
    Column("finished_us", BigInteger, nullable=True),
    Column("expires_us", BigInteger, nullable=True),  # the job and its files are deleted after this
    Column("type_index", Integer, nullable=False),
    Column("after_rid", BigInteger, nullable=True),
    Column("written", Integer, nullable=False),  # resources written to files so far
    Column("error", String(500), nullable=True),  # no patient data
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Index("ix_export_job_status", "status", "created_us"),
)

export_file = Table(
    "export_file",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),  # 1, 2, ... in the manifest's order
    Column("res_type", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("content", Text, nullable=False),  # ndjson: one resource per line
)


# --- alert candidates (gateway/store/alerts.py) ---------------------------------------------------------
# Derived from the alert Tasks in the transaction that writes them: one row per alert Task and code of its
# focus Observation (one row with lab_code "" when the result has no code or is not there), `live` while
# the alert is open and not marked back-to-normal. A later result looks up the live rows of its patient by
# lab (generic rules) or by rule (drug-lab rules, whose labs the monitoring config names at query time).
# The partial indexes' WHERE is what `alert_candidate.c.live` renders on each backend: SQLite uses a
# partial index only when the query has the very same term.
alert_candidate = Table(
    "alert_candidate",
    metadata,
    Column("task_id", String(64), nullable=False),
    Column("patient", String(200), nullable=False),  # Task.for.reference as written: "Patient/123"
    Column("rule", String(64), nullable=False),  # "" when the Task names no rule
    Column("lab_system", String(255), nullable=True),
    Column("lab_code", String(200), nullable=False),
    Column("live", Boolean, nullable=False),
    Index(None, "task_id"),
    # Partial: most alerts end closed or marked; the lookups read only the live ones.
    Index(
        "ix_alert_candidate_lab",
        "patient",
        "lab_system",
        "lab_code",
        "rule",
        sqlite_where=text("live = 1"),
        postgresql_where=text("live"),
    ),
    Index(
        "ix_alert_candidate_rule",
        "patient",
        "rule",
        sqlite_where=text("live = 1"),
        postgresql_where=text("live"),
    ),
)
