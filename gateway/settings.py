"""One settings object. Every field reads from the environment as GATEWAY_<NAME>.

A leaf module: imports nothing from the package.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

# The project root when running from a checkout (`pip install -e .`): profiles/ and mappings/ live there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./var/gateway.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    database_url: str = DEFAULT_SQLITE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    mllp_port: int = 2575
    # Public base URL of the FHIR API (e.g. https://gw.example.org/fhir). Empty: taken from each request.
    base_url: str = ""
    # Bodies above this are refused with 413 before they are read into memory.
    max_body_bytes: int = 16 * 1024 * 1024
    # SMART Backend Services recommends access tokens live no longer than five minutes.
    token_ttl_seconds: int = 300
    default_page_size: int = 20
    max_page_size: int = 1000
    # Results pulled in by _include/_revinclude per page, at most.
    max_included: int = 1000
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
    # Payers' PAS endpoints, auth, timeouts, retries (YAML; see gateway/pa/payers.py). Empty: none.
    payers_file: Path | None = None
    # How often the prior-authorization worker sends due retries, polls pended requests and runs timers.
    pa_worker_seconds: float = 30.0
    # Subscription topics (SubscriptionTopic JSON); default: profiles_dir/topics.
    topics_dir: Path | None = None
    # Time zone for HL7 v2 times written without an offset whose sender's site file sets no `timezone`: an
    # IANA name (America/Chicago) or a UTC offset (-06:00, -0600, Z). Checked at start (mapping/zones.py).
    hl7_default_offset: str = "Z"
    # MLLP frames larger than this are answered with an AR and discarded.
    mllp_max_bytes: int = 5 * 1024 * 1024
    # 0 disables the MLLP listener (HTTP and file ingest still work).
    mllp_enabled: bool = True
    log_level: str = "INFO"
    # Database connection pool size per process (PostgreSQL).
    db_pool_size: int = 10
    # AuditEvents older than this are deleted (hourly, in small batches); HIPAA keeps records six years.
    audit_retention_days: int = 2190


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (e.g. command-line) values taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
