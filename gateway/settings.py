"""One settings object. Every field reads from the environment as GATEWAY_<NAME>.

A leaf module: imports nothing from the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _data_root() -> Path:
    """Where the default profiles/ and mappings/ are: the checkout when running from one (`pip install -e .`,
    the tests), else the copies an installed wheel carries in gateway/_shipped (setup.py puts them there)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "profiles").is_dir() and (checkout / "mappings").is_dir():
        return checkout
    return package / "_shipped"


PROJECT_ROOT = _data_root()

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./var/gateway.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    database_url: str = DEFAULT_SQLITE_URL
    host: str = "127.0.0.1"
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses or
    # networks, "*" for any): the client address in audit events and token back-off comes from them.
    forwarded_allow_ips: str = "127.0.0.1"
    port: int = 8080
    mllp_port: int = 2575
    # Public base URL of the FHIR API (e.g. https://gw.example.org/fhir). Empty: taken from each request.
    base_url: str = ""
    # Bodies above this are refused with 413 before they are read into memory.
    max_body_bytes: int = 16 * 1024 * 1024
    # SMART Backend Services recommends access tokens live no longer than five minutes.
    token_ttl_seconds: int = 300
    # Key-encryption key(s) sealing the token signing keys in the database: base64 of 32 bytes; several,
    # comma-separated, while changing it (the first seals, all open). Empty: the key file below.
    key_encryption_key: str = ""
    # Used (and created with mode 0600, with a warning) when key_encryption_key is empty.
    key_encryption_key_file: Path = Path("./var/key-encryption.key")
    # How long a process may go on trusting what it read about a client (removed, disabled) and about
    # the signing keys (rotated): the bound on revocation across processes.
    auth_cache_seconds: float = 2.0
    # Failed token requests allowed per client id / per source address before back-off (429) starts.
    auth_failures_per_client: int = 5
    auth_failures_per_address: int = 20
    # The back-off doubles from 1 s up to this.
    auth_backoff_max_seconds: float = 300.0
    # Threads that hash client secrets (scrypt, ~16 MiB and tens of ms each), off the event loop.
    auth_hash_workers: int = 2
    # scrypt cost for client secrets, log2 of N (10-18): 14 is ~16 MiB and tens of ms per check. Stored
    # hashes carry their own cost, so raising it later keeps older secrets working. The test suite uses 10.
    secret_hash_cost: int = Field(default=14, ge=10, le=18)
    # argon2id memory for people's passwords, log2 of KiB (10-20): 16 is 64 MiB, argon2-cffi's default (with
    # its 3 passes and 4 lanes). Stored hashes carry their parameters. Below 16 only for tests (10).
    password_hash_cost: int = Field(default=16, ge=10, le=20)
    # Console sessions (people who log in): ended after this long without a request, and this long after
    # the login whatever happens.
    session_idle_minutes: float = Field(default=30, gt=0)
    session_max_hours: float = Field(default=12, gt=0)
    # Failed logins in a row before an account is locked; the lock lasts 1 minute, doubling with each
    # further failure up to login_lockout_max_minutes.
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_max_minutes: float = Field(default=60, gt=0)
    default_page_size: int = 20
    max_page_size: int = 1000
    # Results pulled in by _include/_revinclude per page, at most.
    max_included: int = 1000
    # Bounds on one search, refused with 400 past them (gateway/fhir/query.py SearchLimits says why):
    # parameters, comma-separated values in one parameter, values in all, and _offset.
    search_max_parameters: int = 50
    search_max_values: int = 100
    search_max_total_values: int = 1000
    search_max_offset: int = 1_000_000
    profiles_dir: Path = PROJECT_ROOT / "profiles"
    mappings_dir: Path = PROJECT_ROOT / "mappings"
    # Hosts or networks that subscriber endpoints may use although loopback, private or plain http.
    subscription_allowlist: str = ""
    # How long a failing subscriber is retried (exponential backoff) before its subscription goes to error.
    subscription_retry_horizon_seconds: float = 72 * 3600
    # How often the deliverer looks for due retries, heartbeats and other processes' events.
    delivery_poll_seconds: float = 1.0
    # pa-expiring: an approved authorization whose period ends within this many days fires the topic.
    pa_expiring_days: int = 30
    # $worklist: a denied authorization is listed as appealable for this many days after the denial (60: the
    # shortest common window, Medicaid managed care's; Medicare allows 65, ACA plans 180).
    pa_appeal_days: int = 60
    # Payers' PAS endpoints, auth, timeouts, retries (YAML; see gateway/pa/payers.py). Empty: none.
    payers_file: Path | None = None
    # How often the prior-authorization worker sends due retries, polls pended requests and runs timers.
    pa_worker_seconds: float = 30.0
    # EHR FHIR servers to pull from: where, how to authenticate, what, how often (YAML; see
    # gateway/ehr/upstreams.py). Empty: none.
    upstreams_file: Path | None = None
    # Bulk Data $export served here: resources per ndjson file, and how long a finished export's files stay.
    export_file_resources: int = Field(1000, ge=1, le=100_000)
    export_retention_hours: float = Field(24.0, gt=0)
    # How often monitoring calendars are swept for labs past due plus grace (lab-overdue Tasks).
    monitoring_sweep_seconds: float = 3600.0
    # Subscription topics (SubscriptionTopic JSON); default: profiles_dir/topics.
    topics_dir: Path | None = None
    # Time zone for HL7 v2 times written without an offset whose sender's site file sets no `timezone`: an
    # IANA name (America/Chicago) or a UTC offset (-06:00, -0600, Z). Checked at start (mapping/zones.py).
    hl7_default_offset: str = "Z"
    # MLLP frames larger than this are answered with an AR and discarded.
    mllp_max_bytes: int = 5 * 1024 * 1024
    # 0 disables the MLLP listener (HTTP and file ingest still work).
    mllp_enabled: bool = True
    # Open MLLP connections at most; one more is closed at once (and logged). With mllp_max_bytes this
    # bounds the memory partial frames can hold (50 x 5 MiB).
    mllp_max_connections: int = 50
    # Bytes that unfinished frames of all connections may hold together; past it, connections in the
    # middle of a frame are not read until others complete (small messages still flow).
    mllp_max_buffered_bytes: int = 64 * 1024 * 1024
    # A connection with nothing to read for this long is closed.
    mllp_idle_timeout_seconds: float = 300.0
    # A frame must arrive whole within this long of its start block; else it is dropped and the
    # connection closed (a sender trickling bytes cannot hold a buffer forever).
    mllp_frame_timeout_seconds: float = 60.0
    # Caps on one HL7 v2 message, after unescaping (gateway/adapters/hl7v2/er7.py Limits); a message
    # over one is refused with an AR (an NM value over the digit cap: AE) naming the segment and field.
    hl7_max_segments: int = 2000
    hl7_max_fields: int = 300
    hl7_max_repetitions: int = 500
    hl7_max_components: int = 100
    hl7_max_line_skip: int = 100
    hl7_max_number_digits: int = 18
    hl7_max_decoded_bytes: int = 16 * 1024 * 1024
    # HL7 v2 messages at least this long are tokenized, translated and validated in a worker process
    # (shorter ones take a few milliseconds and stay in the event loop).
    hl7_offload_bytes: int = 8 * 1024
    # JSON Bundles at least this long are parsed in a worker process.
    json_offload_bytes: int = 1024 * 1024
    # Worker processes for CPU-heavy parsing (HL7 v2, payer files, large JSON), the time one task may
    # take before its worker is replaced, and the memory (bytes of data segment) each worker may use.
    workers: int = 1
    worker_timeout_seconds: float = 60.0
    worker_memory_bytes: int = 1024 * 1024 * 1024
    # Entries in one transaction or batch Bundle at most (413 beyond), and the size of a Bundle's
    # answer: GET entries past it are answered 413 (batch) or fail the transaction.
    bundle_max_entries: int = 500
    bundle_max_response_bytes: int = 16 * 1024 * 1024
    # HTTP: request headers must arrive whole within this long of the first byte (slowloris); and
    # connections plus requests in progress at most (uvicorn answers 503 beyond).
    http_header_timeout_seconds: float = 10.0
    http_max_concurrency: int = 200
    # `gateway serve`'s event loop and HTTP/1.1 parser: uvloop and httptools (libuv and llhttp, native)
    # spend a fraction of the CPU of asyncio's pure-Python loop and h11 per request and per MLLP frame;
    # asyncio and h11 remain as a fallback (README: Configuration).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    http_parser: Literal["httptools", "h11"] = "httptools"
    log_level: str = "INFO"
    # `gateway serve` processes sharing the HTTP and MLLP ports (gateway/transports/cluster.py); 0: the
    # number of cores on PostgreSQL, 1 on SQLite (one file, one writer at a time: more processes only wait).
    serve_workers: int = Field(default=0, ge=0)
    # Set by the cluster for its workers: bind with SO_REUSEPORT, no banner, this worker's number.
    reuse_port: bool = False
    banner: bool = True
    worker_index: int = 0
    # text: one human-readable line per entry; json: one JSON object per line (README: Logs).
    log_format: Literal["text", "json"] = "text"
    # OTLP/HTTP endpoint for OpenTelemetry traces (e.g. http://collector:4318/v1/traces); empty: none.
    otel_endpoint: str = ""
    # PostgreSQL connections per process and engine (writer, reader), kept open: pools have no overflow.
    db_pool_size: int = 16
    # PostgreSQL reads (searches) are cancelled after this many seconds (0: never); they answer 503.
    db_statement_timeout_seconds: float = 30.0
    # The live timeline ($timeline?_stream=true): open streams per process and per client; seconds between
    # heartbeats, between looks for other processes' commits, and a write to a reader may wait at most.
    timeline_stream_max: int = 100
    timeline_stream_max_per_client: int = 5
    timeline_stream_heartbeat_seconds: float = 15.0
    timeline_stream_poll_seconds: float = 0.5
    timeline_stream_send_timeout_seconds: float = 30.0
    # AuditEvents older than this are deleted (hourly, in small batches); HIPAA keeps records six years.
    audit_retention_days: int = 2190
    # The pharmacist gauges on /metrics (PDC, time to first dose, alert response, monitoring on time) cover
    # the trailing measures_period_days ending today and are recomputed from the store at most every
    # measures_refresh_seconds (a scrape in between gets the cached figures; 0: every scrape).
    measures_period_days: int = Field(default=365, ge=1, le=3660)
    measures_refresh_seconds: float = Field(default=300.0, ge=0)


def automatic_serve_workers(database_url: str) -> int:
    """Serving processes when none are configured: every core on PostgreSQL, one on SQLite."""
    if not database_url.startswith("postgresql"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (e.g. command-line) values taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
