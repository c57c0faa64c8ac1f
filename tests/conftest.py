"""Fixtures shared by every test: both database backends, a started gateway per backend, API clients.

PostgreSQL is not optional: the tests fail (they do not skip) when it cannot be reached. Each test
session creates its own throw-away databases next to GATEWAY_TEST_POSTGRES_URL and drops them at the end.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import delete

from gateway.auth.throttle import FailureThrottle
from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.store.tables import (
    INDEX_TABLES,
    PA_TABLES,
    SUBSCRIPTION_TABLES,
    TIMELINE_TABLES,
    alert_candidate,
    hl7_field_coverage,
    hl7_message,
    resource,
    resource_version,
    subscription_generation,
)
from gateway.transports.http.app import create_app

PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# One key-encryption key for the session (in-process gateways, `gateway serve` and CLI children inherit it),
# so that no test writes a key file into the checkout's ./var; the key-file default has tests of its own.
os.environ.setdefault("GATEWAY_KEY_ENCRYPTION_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
BACKENDS = ["sqlite", "postgresql"]


def _find_corpus() -> Path:
    """The shared corpus (real messages written by others; read in place, never copied into the project):
    GATEWAY_CORPUS_DIR, else ../shared/corpus next to the checkout, else the workplace's copy."""
    candidates = [
        os.environ.get("GATEWAY_CORPUS_DIR", ""),
        str(Path(__file__).resolve().parents[2] / "shared" / "corpus"),
        "/work/shared/corpus",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "hl7v2").is_dir():
            return Path(candidate)
    return Path(candidates[1])  # missing: the corpus tests fail and say where they looked


CORPUS = _find_corpus()

# Where most tests wait rather than compute (live servers, MLLP peers, a browser): run first, so that their
# waits overlap the many short tests instead of trailing after them on one worker (the clean-clone suite
# spent its last four minutes on a few of them).
_WAITING_FIRST = ("tests/integration/", "tests/browser/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def waits(item: pytest.Item) -> bool:
        where = item.nodeid
        return where.startswith(_WAITING_FIRST) or item.get_closest_marker("slow") is not None

    items.sort(key=lambda item: not waits(item))  # stable: file order otherwise


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


class PostgresDatabases:
    """Creates and drops throw-away databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    async def create(self) -> str:
        name = f"gw_test_{uuid.uuid4().hex[:12]}"
        try:
            conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url), timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.fail(
                f"PostgreSQL is required for the tests and is not reachable at {self.admin_url} ({exc}). "
                "Start it or point GATEWAY_TEST_POSTGRES_URL at one.",
                pytrace=False,
            )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url))
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest_asyncio.fixture(scope="session")
async def pg_databases() -> AsyncIterator[PostgresDatabases]:
    databases = PostgresDatabases(PG_URL)
    yield databases
    await databases.drop_all()


@pytest_asyncio.fixture(scope="session")
async def database_url_factory(
    pg_databases: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Awaitable[str]]:
    async def make(backend: str) -> str:
        if backend == "postgresql":
            return await pg_databases.create()
        path = tmp_path_factory.mktemp("sqlite") / "gateway.db"
        return f"sqlite+aiosqlite:///{path}"

    return make


# Client secrets hashed at scrypt's lowest allowed cost: every API test registers a client and asks for a
# token, and the default cost (tests/unit/test_auth.py checks it) would be most of the suite's CPU time.
TEST_SECRET_HASH_COST = 10
# People's passwords likewise at argon2id's lowest allowed cost, 1 MiB (tests/unit/test_passwords.py checks
# the default once).
TEST_PASSWORD_HASH_COST = 10


def settings_for(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "secret_hash_cost": TEST_SECRET_HASH_COST,
        "password_hash_cost": TEST_PASSWORD_HASH_COST,
        **overrides,
    }
    return Settings(database_url=database_url, **values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="session")
async def gateways(
    database_url_factory: Callable[[str], Awaitable[str]],
) -> AsyncIterator[dict[str, Gateway]]:
    """One started (migrated) gateway per backend, shared by the API tests of the session."""
    started: dict[str, Gateway] = {}
    for backend in BACKENDS:
        started[backend] = await Gateway.start(
            settings_for(await database_url_factory(backend), subscription_allowlist="127.0.0.0/8")
        )
    yield started
    for gateway in started.values():
        await gateway.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def gateway(gateways: dict[str, Gateway], backend: str) -> AsyncIterator[Gateway]:
    """The backend's gateway with an empty resource store."""
    gw = gateways[backend]
    async with gw.db.write() as conn:
        # hl7_field_coverage too: it counts per sender, and a test reads its sender's counts from zero
        emptied = (*INDEX_TABLES, resource_version, resource, hl7_message, hl7_field_coverage)
        emptied += (*SUBSCRIPTION_TABLES, *PA_TABLES)
        emptied += (*TIMELINE_TABLES, alert_candidate)
        for table in emptied:
            if table is not subscription_generation:
                await conn.execute(delete(table))
    await gw.subscriptions.reload()
    # Failed token requests of earlier tests (all from the test client's one address) start no back-off here.
    gw.auth.client_failures = FailureThrottle(gw.auth.client_failures.policy)
    gw.auth.address_failures = FailureThrottle(gw.auth.address_failures.policy)
    gw.logins.address_failures = FailureThrottle(gw.logins.address_failures.policy)
    yield gw


ClientFactory = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest_asyncio.fixture
async def client_factory(gateway: Gateway) -> AsyncIterator[ClientFactory]:
    """Makes HTTP clients for the in-process app, each holding a token with the given scopes."""
    app = create_app(gateway.settings, gateway)
    opened: list[httpx.AsyncClient] = []

    async def make(scope: str) -> httpx.AsyncClient:
        registered = await gateway.auth.add_client(f"test-{uuid.uuid4().hex[:8]}", scope)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        opened.append(client)
        answer = await client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(registered.client_id, registered.client_secret or ""),
        )
        assert answer.status_code == 200, answer.text
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return client

    yield make
    for client in opened:
        await client.aclose()


# Every resource right, and the HL7 v2 message log (granted only by name). Not `subscriptions/admin`: the
# Subscriptions a test creates belong to this client.
ALL = "system/*.cruds hl7v2/messages.read hl7v2/messages.reprocess"


@pytest_asyncio.fixture
async def api(client_factory: ClientFactory) -> httpx.AsyncClient:
    """A client allowed every resource interaction and the HL7 v2 log."""
    return await client_factory(ALL)
