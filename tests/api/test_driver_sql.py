"""Statements sent on the driver's own connection (gateway/store/driver_sql.py) behave as SQLAlchemy's:
inside the write transaction (a rollback takes them back, even as its first statement), a unique clash is
SQLAlchemy's IntegrityError (what a concurrent create's VersionConflict rests on), and statement
listeners hear them. On both backends: PostgreSQL takes the driver path, SQLite the general one."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.store import driver_sql
from gateway.store import resources as store
from gateway.store.tables import resource, sp_token


def _insert_sql(gateway: Gateway) -> str:
    marks = "$1, $2, $3, $4, $5" if not gateway.db.is_sqlite else "?, ?, ?, ?, ?"
    columns = "res_type, res_id, version, updated_us, deleted"
    return f"INSERT INTO resource ({columns}) VALUES ({marks}) RETURNING rid"


async def _count(gateway: Gateway, res_id: str) -> int:
    async with gateway.db.read() as conn:
        found = await conn.execute(select(func.count()).where(resource.c.res_id == res_id))
        return int(found.scalar_one())


class _Rollback(Exception):
    pass


async def test_a_first_statement_on_the_driver_is_inside_the_transaction(gateway: Gateway) -> None:
    with pytest.raises(_Rollback):
        async with gateway.db.write() as conn:
            # the transaction's first statement: SQLAlchemy has not sent BEGIN yet
            rows = await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "rolled-back", 1, 1, False))
            assert len(rows) == 1 and int(rows[0][0]) > 0
            await store.bulk_insert(
                conn, sp_token, ("rid", "res_type", "param", "system", "code"),
                [(int(rows[0][0]), "Basic", "code", None, "x")],
            )  # fmt: skip
            raise _Rollback
    assert await _count(gateway, "rolled-back") == 0
    async with gateway.db.write() as conn:
        await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "kept", 1, 1, False))
    assert await _count(gateway, "kept") == 1


async def test_a_unique_clash_on_the_driver_is_sqlalchemys_integrity_error(gateway: Gateway) -> None:
    async with gateway.db.write() as conn:
        await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "twice", 1, 1, False))
    with pytest.raises(IntegrityError):
        async with gateway.db.write() as conn:
            await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "twice", 1, 1, False))
    # the connection went back to the pool in a usable state
    async with gateway.db.write() as conn:
        await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "after", 1, 1, False))
    assert await _count(gateway, "twice") == 1 and await _count(gateway, "after") == 1


async def test_statement_listeners_hear_driver_statements(gateway: Gateway) -> None:
    heard: list[tuple[str, bool]] = []

    def listen(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO"):
            heard.append((statement.split()[2], many))

    engine = gateway.db.writer.sync_engine
    event.listen(engine, "before_cursor_execute", listen)
    try:
        async with gateway.db.write() as conn:
            rows = await driver_sql.fetch(conn, _insert_sql(gateway), ("Basic", "heard", 1, 1, False))
            await store.bulk_insert(
                conn, sp_token, ("rid", "res_type", "param", "system", "code"),
                [(int(rows[0][0]), "Basic", "code", None, code) for code in ("a", "b")],
            )  # fmt: skip
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert ("resource", False) in heard and ("sp_token", True) in heard


async def test_current_versions_by_key_on_the_driver(gateway: Gateway) -> None:
    ctx = RequestContext(base_url="http://gateway.test/fhir")
    ids: dict[str, list[str]] = {}
    for rtype, body in (
        ("Patient", {"resourceType": "Patient"}),
        ("Practitioner", {"resourceType": "Practitioner", "name": [{"family": "a"}]}),
        ("Practitioner", {"resourceType": "Practitioner", "name": [{"family": "b"}]}),
    ):
        outcome = await gateway.fhir.create(ctx, rtype, orjson.dumps(body), None)
        assert outcome.stored is not None
        ids.setdefault(rtype, []).append(outcome.stored.id)
    gone = ids["Practitioner"][1]
    await gateway.fhir.delete(ctx, "Practitioner", gone, None)
    kept = ids["Practitioner"][0]
    keys = [
        ("Patient", ids["Patient"][0]),
        ("Practitioner", kept),
        ("Practitioner", gone),
        ("Practitioner", "none"),
    ]
    async with gateway.db.read() as conn:
        every = await store.current_many(conn, keys)
        live = await store.load_by_keys(conn, keys)
        one = await store.current(conn, "Practitioner", gone)
        never = await store.current(conn, "Practitioner", "none")
    assert set(every) == set(keys[:3])
    assert every[("Practitioner", gone)].deleted is True and every[("Practitioner", gone)].version == 2
    assert every[("Patient", ids["Patient"][0])].deleted is False
    assert b'"family":"a"' in (every[("Practitioner", kept)].content or b"")
    assert {(s.type, s.id) for s in live} == set(keys[:2])
    assert one is not None and one.deleted is True and never is None


async def test_resources_by_reference_on_the_driver(gateway: Gateway) -> None:
    """Live resources whose reference parameter names any target, several target types at once, the
    current version only, deleted ones left out; hundreds of ids in one lookup."""
    from gateway.store import search as store_search

    ctx = RequestContext(base_url="http://gateway.test/fhir")

    async def create(body: dict[str, Any]) -> str:
        outcome = await gateway.fhir.create(ctx, body["resourceType"], orjson.dumps(body), None)
        assert outcome.stored is not None
        return outcome.stored.id

    def observation(subject: str, text: str, status: str = "final") -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": status,
            "code": {"text": text},
            "subject": {"reference": subject},
        }

    patient = await create({"resourceType": "Patient"})
    group = await create({"resourceType": "Group", "type": "person", "actual": True})
    about_patient = await create(observation(f"Patient/{patient}", "a"))
    about_group = await create(observation(f"Group/{group}", "b"))
    deleted = await create(observation(f"Patient/{patient}", "c"))
    await gateway.fhir.delete(ctx, "Observation", deleted, None)
    changed = {**observation(f"Patient/{patient}", "a", "amended"), "id": about_patient}
    await gateway.fhir.update(ctx, "Observation", about_patient, orjson.dumps(changed), None)
    others = [f"Patient/nobody-{n}" for n in range(500)]
    async with gateway.db.read() as conn:
        both = await store_search.by_reference(
            conn, "Observation", "subject", [f"Patient/{patient}", f"Group/{group}", *others]
        )
        one = await store_search.by_reference(
            conn, "Observation", "patient", [f"Patient/{patient}", "no-slash"]
        )
        none = await store_search.by_reference(conn, "Observation", "subject", others)
    assert sorted(s.id for s in both) == sorted([about_patient, about_group])
    assert [(s.id, s.version) for s in one] == [(about_patient, 2)] and b'"amended"' in (
        one[0].content or b""
    )
    assert none == []


async def test_one_write_replaces_the_index_rows_of_what_it_updates(gateway: Gateway) -> None:
    """Versions and index rows go in together (one statement on PostgreSQL): an update's old rows are gone
    and its new ones are there, in the same write as a create and a delete, and nothing of the others."""
    from gateway.fhir.extract import extract
    from gateway.store.tables import INDEX_TABLES

    ctx = RequestContext(base_url="http://gateway.test/fhir")

    def observation(code: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01",
        }

    ids = []
    for code in ("1-1", "2-2", "3-3"):
        outcome = await gateway.fhir.create(ctx, "Observation", orjson.dumps(observation(code)), None)
        assert outcome.stored is not None
        ids.append(outcome.stored.id)
    changed, deleted, untouched = ids
    async with gateway.db.write() as conn:
        heads = await store.current_many(conn, [("Observation", i) for i in ids])
        now = heads[("Observation", changed)].updated_us + 1
        new = {**observation("9-9"), "id": changed}
        await store.write(
            conn,
            [
                store.PendingVersion("Observation", changed, 2, now, "PUT", orjson.dumps(new),
                                     extract(new, ()), head=store.head_of(heads[("Observation", changed)])),
                store.PendingVersion("Observation", deleted, 2, now, "DELETE", None, None,
                                     head=store.head_of(heads[("Observation", deleted)])),
                store.PendingVersion("Observation", "fresh", 1, now, "POST",
                                     orjson.dumps({**observation("4-4"), "id": "fresh"}),
                                     extract({**observation("4-4"), "id": "fresh"}, ())),
            ],
        )  # fmt: skip

    async def codes(res_id: str) -> list[str]:
        async with gateway.db.read() as conn:
            rid = select(resource.c.rid).where(resource.c.res_id == res_id).scalar_subquery()
            found = await conn.execute(
                select(sp_token.c.code).where(sp_token.c.rid == rid, sp_token.c.param == "code")
            )
            return sorted(found.scalars())

    assert await codes(changed) == ["9-9"]
    assert await codes(deleted) == []  # a deleted resource is found by no search
    assert await codes(untouched) == ["3-3"] and await codes("fresh") == ["4-4"]
    async with gateway.db.read() as conn:
        rows = {
            table.name: int((await conn.execute(select(func.count()).select_from(table).where(
                table.c.rid == select(resource.c.rid).where(resource.c.res_id == changed).scalar_subquery()
            ))).scalar_one())
            for table in INDEX_TABLES
        }  # fmt: skip
        versions = await store.current_many(conn, [("Observation", i) for i in (*ids, "fresh")])
    expected = extract(new, ())
    assert rows == {"sp_token": len(expected.tokens), "sp_reference": len(expected.references),
                    "sp_date": len(expected.dates), "sp_string": len(expected.strings)}  # fmt: skip
    assert [versions[("Observation", i)].version for i in (*ids, "fresh")] == [2, 2, 1, 1]
    assert versions[("Observation", deleted)].deleted


@pytest.mark.parametrize("backend", ["postgresql"])  # a PostgreSQL backend process is what is killed
async def test_a_backend_killed_under_a_driver_statement_is_unavailability_and_the_pool_recovers(
    gateway: Gateway,
) -> None:
    """What the HL7 v2 pipeline treats as "database unreachable, no ACK" (its _UNAVAILABLE), and no dead
    connection handed out afterwards."""
    from gateway.service.hl7.pipeline import _UNAVAILABLE

    with pytest.raises(_UNAVAILABLE):
        async with gateway.db.write() as conn:
            pid = (await driver_sql.fetch(conn, "SELECT pg_backend_pid()", ()))[0][0]
            async with gateway.db.read() as other:
                await driver_sql.fetch(other, "SELECT pg_terminate_backend($1)", (pid,))
            # Let the client see its backend go: a statement racing the termination notice gets asyncpg's
            # InternalClientError instead (about 1 time in 10, on SQLAlchemy's own path as well).
            await asyncio.sleep(0.2)
            await driver_sql.fetch(conn, _insert_sql(gateway), ("Practitioner", "never", 1, 1, False))
    for _ in range(20):  # more than the pool holds: every connection handed out works
        async with gateway.db.write() as conn:
            assert (await driver_sql.fetch(conn, "SELECT 1", ()))[0][0] == 1
    assert await _count(gateway, "never") == 0
