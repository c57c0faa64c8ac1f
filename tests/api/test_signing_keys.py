"""Access-token signing keys: encrypted at rest, rotated with an overlap, named by `kid`."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from sqlalchemy import String, Text, inspect, select, text, update

from gateway.auth.key_encryption import KeyEncryptionError, new_key_text
from gateway.service.gateway import Gateway
from gateway.store import migrate
from gateway.store.database import Database
from gateway.transports.http.app import create_app
from tests.conftest import settings_for


def http_client(gateway: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(gateway.settings, gateway))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


async def new_token(gateway: Gateway, http: httpx.AsyncClient) -> str:
    client = await gateway.auth.add_client(f"keys-{uuid.uuid4().hex[:8]}", "system/*.cruds")
    answer = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(client.client_id, client.client_secret or ""),
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def accepted(http: httpx.AsyncClient, token: str) -> bool:
    status = (await http.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})).status_code
    assert status in (200, 401), status
    return status == 200


def _candidates(value: str) -> list[bytes]:
    """What a stored text could be, read as a key: itself, base64 of it, hex of it."""
    found = [value.encode()]
    padded = value + "=" * (-len(value) % 4)
    for decode, text_ in (
        (base64.b64decode, padded),
        (base64.urlsafe_b64decode, padded),
        (binascii.unhexlify, value),
    ):
        with contextlib.suppress(ValueError, binascii.Error):
            found.append(decode(text_))
    return found


def _signs(token: str, key: bytes) -> bool:
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.urlsafe_b64encode(expected).rstrip(b"=").decode(), signature)


async def raw_text_values(gateway: Gateway) -> list[str]:
    """Every text value in every table whose name mentions keys, read straight from the database."""

    def tables(sync_conn: Any) -> dict[str, list[str]]:
        inspector = inspect(sync_conn)
        return {
            name: [c["name"] for c in inspector.get_columns(name) if isinstance(c["type"], (String, Text))]
            for name in inspector.get_table_names()
            if "key" in name
        }

    values: list[str] = []
    async with gateway.db.read() as conn:
        for table, columns in (await conn.run_sync(tables)).items():
            for column in columns:
                rows = await conn.execute(text(f'SELECT "{column}" FROM "{table}"'))
                values += [row[0] for row in rows if isinstance(row[0], str)]
    return values


async def test_the_signing_key_at_rest_is_not_the_key(gateway: Gateway) -> None:
    async with http_client(gateway) as http:
        token = await new_token(gateway, http)
        assert await accepted(http, token)
    values = await raw_text_values(gateway)
    assert values, "no key table found"
    for value in values:
        for candidate in _candidates(value):
            assert not _signs(token, candidate), "a stored value is the signing key in plain text"


async def test_tokens_name_their_key_and_rotation_keeps_old_tokens_until_they_expire(
    gateway: Gateway,
) -> None:
    second = await Gateway.start(settings_for(gateway.settings.database_url))
    try:
        async with http_client(gateway) as here, http_client(second) as there:
            old = await new_token(gateway, here)
            old_kid = jwt.get_unverified_header(old)["kid"]
            rotated = await gateway.auth.rotate_keys()
            assert rotated.previous == old_kid and rotated.current != old_kid
            new = await new_token(gateway, here)
            assert jwt.get_unverified_header(new)["kid"] == rotated.current
            # Both keys verify during the overlap, in this process and in the other one.
            for http in (here, there):
                assert await accepted(http, old)
                assert await accepted(http, new)
            listed = {k.kid: k for k in await gateway.auth.list_keys()}
            assert listed[rotated.current].state == "current"
            assert listed[old_kid].state == "previous"
            assert listed[old_kid].retire_after_us is not None
            overlap_s = (listed[old_kid].retire_after_us - time.time() * 1e6) / 1e6
            assert gateway.settings.token_ttl_seconds <= overlap_s <= gateway.settings.token_ttl_seconds + 120

            # The overlap is over (as if the old tokens' lifetime had passed): the old key is retired.
            await _end_overlap(gateway, old_kid)
            gateway.auth.forget_cached_keys()
            assert not await accepted(here, old)
            assert await accepted(here, new)
            await _until(lambda: _refused(there, old), 10.0)
            listed = {k.kid: k for k in await gateway.auth.list_keys()}
            assert listed[old_kid].state == "retired"
    finally:
        await second.close()


async def _end_overlap(gateway: Gateway, kid: str) -> None:
    from gateway.store.tables import signing_key

    async with gateway.db.write() as conn:
        await conn.execute(
            update(signing_key)
            .where(signing_key.c.kid == kid)
            .values(retire_after_us=int(time.time() * 1e6) - 1)
        )


async def _refused(http: httpx.AsyncClient, token: str) -> bool:
    return not await accepted(http, token)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.1)


async def test_retired_key_material_is_destroyed(gateway: Gateway) -> None:
    from gateway.store.tables import signing_key

    async with http_client(gateway) as http:
        await new_token(gateway, http)
    rotated = await gateway.auth.rotate_keys()
    await _end_overlap(gateway, rotated.previous or "")
    gateway.auth.forget_cached_keys()
    await gateway.auth.list_keys()
    async with gateway.db.read() as conn:
        row = (await conn.execute(select(signing_key).where(signing_key.c.kid == rotated.previous))).one()
    assert row.state == "retired" and row.wrapped is None


@pytest_asyncio.fixture
async def old_database(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> AsyncIterator[str]:
    url = await database_url_factory(backend)
    yield url


async def test_the_migration_encrypts_a_plain_text_key_and_its_tokens_stay_valid(old_database: str) -> None:
    key = b"k" * 32
    db = Database(old_database)
    try:
        await migrate.upgrade(db, "0005")
        async with db.write() as conn:
            await conn.execute(
                text("INSERT INTO server_key (name, value, created_us) VALUES (:n, :v, :c)"),
                {"n": "access-token-hs256", "v": base64.b64encode(key).decode(), "c": 1},
            )
            await conn.execute(
                text(
                    "INSERT INTO api_client (client_id, name, secret_hash, scope, jwks, created_us, disabled)"
                    " VALUES ('legacy-client', 'legacy', NULL, 'system/*.cruds', NULL, 1, :f)"
                ),
                {"f": False},
            )
    finally:
        await db.dispose()
    now = int(time.time())
    # A token as the previous release issued it: HS256 with that key, no kid.
    legacy = jwt.encode(
        {
            "iss": "specialty-gateway",
            "aud": "specialty-gateway",
            "sub": "legacy-client",
            "client_id": "legacy-client",
            "scope": "system/*.cruds",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="HS256",
        headers={"typ": "at+jwt"},
    )
    started = await Gateway.start(settings_for(old_database))
    try:
        async with http_client(started) as http:
            assert await accepted(http, legacy)
        for value in await raw_text_values(started):
            for candidate in _candidates(value):
                assert candidate != key and not _signs(legacy, candidate)
    finally:
        await started.close()


async def test_a_wrong_kek_stops_the_start_and_a_new_kek_is_taken_up_alongside_the_old_one(
    old_database: str,
) -> None:
    first = await Gateway.start(settings_for(old_database))
    try:
        async with http_client(first) as http:
            token = await new_token(first, http)
    finally:
        await first.close()
    old, new = os.environ["GATEWAY_KEY_ENCRYPTION_KEY"], new_key_text()
    with pytest.raises(KeyEncryptionError, match="not configured"):
        await Gateway.start(settings_for(old_database, key_encryption_key=new))
    # Changing the KEK: the new one first, the old one after it; the start re-seals under the new one.
    both = await Gateway.start(settings_for(old_database, key_encryption_key=f"{new},{old}"))
    await both.close()
    only_new = await Gateway.start(settings_for(old_database, key_encryption_key=new))
    try:
        async with http_client(only_new) as http:
            assert await accepted(http, token)
    finally:
        await only_new.close()
