"""The migrations create exactly the schema the code describes, on both backends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select

from gateway.service.gateway import Gateway
from gateway.store import alerts as store_alerts
from gateway.store import migrate
from gateway.store.database import Database
from gateway.store.tables import (
    alert_candidate,
    api_client,
    app_user,
    auth_code,
    metadata,
    refresh_token,
    resource,
    resource_version,
    smart_app,
    user_session,
)


async def test_migrated_schema_matches_the_table_definitions(gateway: Gateway) -> None:
    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})  # type: ignore[arg-type]
        return list(compare_metadata(context, metadata))

    async with gateway.db.write() as conn:
        assert await conn.run_sync(diff) == []


async def test_upgrading_from_0008_adds_the_user_table_and_keeps_the_data(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> None:
    db = Database(await database_url_factory(backend))
    try:
        await migrate.upgrade(db, "0008")
        async with db.write() as conn:
            await conn.execute(
                insert(api_client).values(
                    client_id="c1", name="lab", scope="system/*.rs", created_us=1, disabled=False
                )
            )
        await migrate.upgrade(db)
        async with db.write() as conn:
            assert (await conn.execute(select(app_user))).all() == []
            assert [r.name for r in await conn.execute(select(api_client))] == ["lab"]
            # failed_logins has a server default: rows written without it start at 0
            await conn.execute(
                insert(app_user).values(
                    id="u1", name="Ann", name_key="ann", role="admin", password_hash="$argon2id$x",
                    disabled=False, created_us=1, updated_us=1, password_changed_us=1,
                )
            )  # fmt: skip
            assert (await conn.execute(select(app_user.c.failed_logins))).scalar_one() == 0
    finally:
        await db.dispose()


async def test_upgrading_from_0009_adds_the_session_table(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> None:
    db = Database(await database_url_factory(backend))
    try:
        await migrate.upgrade(db, "0009")
        await migrate.upgrade(db)
        async with db.write() as conn:
            assert (await conn.execute(select(user_session))).all() == []
    finally:
        await db.dispose()


async def test_upgrading_from_0010_adds_the_smart_app_table_and_keeps_the_users(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> None:
    db = Database(await database_url_factory(backend))
    try:
        await migrate.upgrade(db, "0010")
        async with db.write() as conn:
            await conn.execute(
                insert(app_user).values(
                    id="u1", name="Ann", name_key="ann", role="admin", password_hash="$argon2id$x",
                    disabled=False, created_us=1, updated_us=1, password_changed_us=1,
                )
            )  # fmt: skip
        await migrate.upgrade(db)
        async with db.write() as conn:
            assert [r.name for r in await conn.execute(select(app_user))] == ["Ann"]
            assert (await conn.execute(select(smart_app))).all() == []
            await conn.execute(
                insert(smart_app).values(
                    client_id="a1", name="pocket", confidential=False, redirect_uris='["http://localhost/cb"]',
                    scope="openid patient/*.rs", disabled=False, created_us=1,
                )
            )  # fmt: skip
            assert (await conn.execute(select(smart_app.c.secret_hash))).scalar_one() is None
    finally:
        await db.dispose()


async def test_upgrading_from_0011_adds_the_launch_tables_and_keeps_the_apps(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> None:
    db = Database(await database_url_factory(backend))
    try:
        await migrate.upgrade(db, "0011")
        async with db.write() as conn:
            await conn.execute(
                insert(smart_app).values(
                    client_id="a1", name="pocket", confidential=False, redirect_uris='["http://localhost/cb"]',
                    scope="openid patient/*.rs", disabled=False, created_us=1,
                )
            )  # fmt: skip
        await migrate.upgrade(db)
        async with db.write() as conn:
            assert [r.name for r in await conn.execute(select(smart_app))] == ["pocket"]
            assert (await conn.execute(select(auth_code))).all() == []
            assert (await conn.execute(select(refresh_token))).all() == []
    finally:
        await db.dispose()


def _alert(task_id: str, status: str) -> dict[str, object]:
    fhir = "https://specialty-gateway.org/fhir/CodeSystem"
    return {
        "resourceType": "Task",
        "id": task_id,
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": f"{fhir}/work-item-type", "code": "alert"}]},
        "focus": {"reference": "Observation/o1"},
        "for": {"reference": "Patient/p1"},
        "reasonCode": {"coding": [{"system": f"{fhir}/alert-rule", "code": "abnormal-result"}]},
    }


async def test_upgrading_from_0015_finds_the_open_alerts_as_candidates(
    database_url_factory: Callable[[str], Awaitable[str]], backend: str
) -> None:
    db = Database(await database_url_factory(backend))
    stored = {
        ("Observation", "o1"): {
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        },
        ("Task", "open"): _alert("open", "ready"),
        ("Task", "closed"): _alert("closed", "completed"),
        ("Task", "chore"): {"resourceType": "Task", "status": "ready", "intent": "order"},
    }
    try:
        await migrate.upgrade(db, "0015")
        async with db.write() as conn:
            for rid, ((rtype, rid_), content) in enumerate(stored.items(), start=1):
                await conn.execute(
                    insert(resource).values(
                        rid=rid, res_type=rtype, res_id=rid_, version=1, updated_us=1, deleted=False
                    )
                )
                await conn.execute(
                    insert(resource_version).values(
                        rid=rid, version=1, res_type=rtype, res_id=rid_, updated_us=1, method="PUT",
                        deleted=False, content=orjson.dumps(content).decode(),
                    )
                )  # fmt: skip
        await migrate.upgrade(db)
        async with db.write() as conn:
            c = alert_candidate.c
            rows = await conn.execute(select(c.task_id, c.patient, c.rule, c.lab_system, c.lab_code, c.live))
            assert sorted(tuple(r) for r in rows) == [
                ("closed", "Patient/p1", "abnormal-result", "http://loinc.org", "2345-7", False),
                ("open", "Patient/p1", "abnormal-result", "http://loinc.org", "2345-7", True),
            ]
            key = store_alerts.LabKey("Patient/p1", "http://loinc.org", "2345-7", frozenset())
            found = await store_alerts.live_tasks(conn, by_lab=[key], by_rule={}, lab_rules=["clozapine-anc"])
            assert found == {"open"}
    finally:
        await db.dispose()
