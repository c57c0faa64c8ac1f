"""A failure the gateway did not foresee answers 500 and logs no patient data.

SQLAlchemy's error text carries the statement's bound parameters (names, MRNs, whole resources), and an
exception's message may carry any value it was raised about; neither may reach a log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.service.gateway import Gateway
from gateway.store import resources
from gateway.store.resources import PendingVersion, Stored
from gateway.store.tables import resource_version
from tests.factories import patient

NAME = "Quintessa-Marlowe"
MRN = "MRN-73519-PRIVATE"
NOTE = "suspected agranulocytosis, stop clozapine"


async def test_database_errors_carry_no_bound_parameters(gateway: Gateway) -> None:
    """Both engines are built with hide_parameters: the error's text names the statement, not the values."""
    statement = text("SELECT value FROM no_such_table WHERE value = :name OR value = :mrn")
    for open_connection in (gateway.db.read, gateway.db.write):
        with pytest.raises(DBAPIError) as caught:
            async with open_connection() as conn:
                await conn.execute(statement, {"name": NAME, "mrn": MRN})
        message = str(caught.value)
        assert "no_such_table" in message  # the statement is still there to debug with
        assert NAME not in message and MRN not in message


async def test_an_unexpected_error_is_a_500_whose_log_has_no_patient_data(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real SQL failure with the patient's data as parameters: each version row is inserted a second
    time, content and all, breaking the primary key. Everything logged (messages, tracebacks) is searched."""
    real_write = resources.write

    async def write_twice(conn: AsyncConnection, pending: Sequence[PendingVersion]) -> list[Stored]:
        written = await real_write(conn, pending)
        columns = ("rid", "version", "res_type", "res_id", "updated_us", "method", "deleted", "content")
        rows = [
            (s.rid, s.version, s.type, s.id, s.updated_us, p.method, False, (p.content or b"").decode())
            for s, p in zip(written, pending, strict=True)
        ]
        await resources.bulk_insert(conn, resource_version, columns, rows)
        return written

    monkeypatch.setattr(resources, "write", write_twice)
    caplog.set_level(logging.DEBUG)
    resource = patient(
        mrn=MRN,
        name=[{"family": NAME, "given": ["Ada"]}],
        extension=[{"url": "https://specialty-gateway.org/fhir/note", "valueString": NOTE}],
    )

    answer = await api.post("/fhir/Patient", json=resource)

    assert answer.status_code == 500, answer.text[:300]
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    request_id = answer.headers["X-Request-ID"]
    assert request_id in outcome["issue"][0]["diagnostics"]
    logged = caplog.text
    assert request_id in logged and "IntegrityError" in logged  # enough to find and classify it
    for secret in (NAME, MRN, NOTE):
        assert secret not in logged
        assert secret not in answer.text
