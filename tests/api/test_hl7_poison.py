"""Poison HL7 v2 messages through POST /hl7v2, both backends: each gets an AR or AE with a reason in its
ERR segment and a row in the message log, a re-send gets the same answer from the log without being
run again, and the next good message is accepted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sql_errors

from gateway.adapters.hl7v2.er7 import Message
from gateway.service.gateway import Gateway
from tests.hl7_messages import ack_code, anc_oru, obx, oru

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


async def send(api: httpx.AsyncClient, message: str | bytes) -> str:
    body = message if isinstance(message, bytes) else message.encode()
    answer = await api.post("/hl7v2", content=body, headers=ER7)
    assert answer.status_code == 200, answer.text
    return answer.text


def err(ack: str) -> tuple[str, str, str, str]:
    """(ERR-2 location, ERR-3 code, ERR-8 text, MSA-2) of an ACK."""
    message = Message(ack.replace("\r\n", "\r"))
    found = next(s for s in message.segments if s.name == "ERR")
    msa = next(s for s in message.segments if s.name == "MSA")
    return found.raw(2), found[3].c(1), found[8].text, msa.raw(2)


async def logged(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    return list((await api.get("/hl7v2/messages")).json()["messages"])


async def assert_good_message_still_accepted(api: httpx.AsyncClient, control_id: str) -> None:
    assert ack_code(await send(api, anc_oru(control_id, f"MRN-{control_id}"))) == "AA"


POISON = {
    # \.sp100000000\ would be 100 million line feeds
    "line-skip": (
        oru("P-SP", "MRN-SP", [obx(1, "751-8", "1.2"), "NTE|1||before\\.sp100000000\\after"]),
        "AR",
        "NTE^1^3",
        "104",
    ),
    "long-number": (anc_oru("P-NM", "MRN-NM", value="9" * 4300), "AE", "OBX^1^5", "104"),
    "number-past-64-bits": (anc_oru("P-NM25", "MRN-NM25", value="9" * 25), "AE", "OBX^1^5", "104"),
    "nul": (anc_oru("P-NUL", "MRN-NUL").replace("Neutrophils", "Neutro\x00phils"), "AR", "OBX^1^3", "102"),
    "escaped-nul": (
        oru("P-XNUL", "MRN-XNUL", [obx(1, "751-8", "1.2"), "NTE|1||a\\X00\\b"]),
        "AR",
        "NTE^1^3",
        "102",
    ),
    "too-many-segments": (
        oru("P-SEG", "MRN-SEG", [obx(n, "751-8", "1.2") for n in range(1, 2100)]),
        "AR",
        "OBX^1997",
        "104",
    ),
}


@pytest.mark.parametrize("name", list(POISON))
async def test_poison_gets_a_nak_with_a_reason_and_a_log_row(api: httpx.AsyncClient, name: str) -> None:
    message, code, where, error_code = POISON[name]
    control_id = message.split("\r", 1)[0].split("|")[9]

    ack = await send(api, message)

    assert ack_code(ack) == code
    location, found_code, text, acknowledged = err(ack)
    assert location.startswith(where) and found_code == error_code and text
    assert acknowledged == control_id
    (entry,) = await logged(api)
    assert (entry["status"], entry["ackCode"], entry["controlId"]) == ("failed", code, control_id)
    assert entry["errors"][0]["code"] == error_code
    assert entry["resources"] == []
    await assert_good_message_still_accepted(api, f"GOOD-{name}")


async def test_a_resend_of_poison_gets_the_same_answer_from_the_log(api: httpx.AsyncClient) -> None:
    message = anc_oru("P-AGAIN", "MRN-AGAIN", value="9" * 4300)
    first = await send(api, message)
    again = await send(api, message)
    assert again == first  # the stored ACK, byte for byte
    rows = [e for e in await logged(api) if e["controlId"] == "P-AGAIN"]
    assert len(rows) == 1


async def test_nul_bytes_are_stored_escaped_in_the_log(api: httpx.AsyncClient) -> None:
    message = anc_oru("P-RAW", "MRN-RAW").replace("Neutrophils", "Neutro\x00phils")
    await send(api, message)
    (entry,) = await logged(api)
    raw = (await api.get(f"/hl7v2/messages/{entry['id']}")).json()["raw"]
    assert "\x00" not in raw and "Neutro\\X00\\phils" in raw


@pytest.mark.parametrize(
    "header",
    ["MSH\x00^~\\&\x00", "MSH|^~\\&\x00|"],  # NUL as the field separator; as MSH-2's fifth character
    ids=["msh-1", "msh-2"],
)
async def test_nul_delimiters_in_msh_get_an_ar_in_standard_delimiters(
    api: httpx.AsyncClient, header: str
) -> None:
    """Found by fuzzing: such a message was accepted (AA), and its ACK, written in its delimiters, came back
    with each NUL escaped as \\X00\\, which no sender can read."""
    good = anc_oru("P-MSHNUL", "MRN-MSHNUL")
    message = header + good.split("|", 2)[2] if header.startswith("MSH|") else good.replace("|", "\x00")

    ack = await send(api, message)

    assert ack.startswith("MSH|^~\\&|") and "\x00" not in ack and "X00" not in ack
    assert ack_code(ack) == "AR"
    location, code, text, _ = err(ack)
    assert location.startswith("MSH^1^") and code == "102" and "NUL" in text
    (entry,) = await logged(api)
    assert entry["resources"] == []
    await assert_good_message_still_accepted(api, "GOOD-MSHNUL")


async def test_overlong_header_values_still_get_an_answer_and_a_log_row(api: httpx.AsyncClient) -> None:
    """Found by fuzzing: an MSH-3/4 or MSH-10 past 255 characters, or an MSH-9 past 32, did not fit the
    message log's columns on PostgreSQL; even logging the message as failed failed, so it got no ACK."""
    long_id = "C" * 300
    accepted = anc_oru(long_id, "MRN-LONGID").replace("|LABSYS|", "|" + "L" * 300 + "|", 1)
    ack = await send(api, accepted)
    assert ack_code(ack) == "AA"
    assert Message(ack).segments[1].raw(2) == long_id  # MSA-2 echoes MSH-10 whole
    assert await send(api, accepted) == ack  # a re-send is still recognised by its (cut) key

    unsupported = anc_oru("LONG-TYPE", "MRN-LONGTYPE").replace("ORU^R01^ORU_R01", "Z" * 40 + "^" + "Q" * 40)
    assert ack_code(await send(api, unsupported)) == "AR"

    entries = {e["controlId"]: e for e in await logged(api)}
    assert entries[long_id[:255]]["resources"] and entries["LONG-TYPE"]["ackCode"] == "AR"


@pytest.fixture
def exploding_translator(gateway: Gateway) -> Iterator[list[str]]:
    """The translator raises on messages whose control id starts with BOOM (a bug in a mapping, say)."""
    translator = gateway.pipeline.translator
    original = translator.translate
    seen: list[str] = []

    def translate(message: Message) -> Any:
        seen.append(message.control_id)
        if message.control_id.startswith("BOOM"):
            raise KeyError("a mapping bug")
        return original(message)

    translator.translate = translate  # type: ignore[method-assign]
    yield seen
    translator.translate = original  # type: ignore[method-assign]


async def test_a_translator_crash_is_an_ae_with_a_log_row_and_is_not_run_again(
    api: httpx.AsyncClient, exploding_translator: list[str]
) -> None:
    message = anc_oru("BOOM-1", "MRN-BOOM")
    ack = await send(api, message)
    assert ack_code(ack) == "AE"
    _, code, text, _ = err(ack)
    assert code == "207" and "KeyError" in text
    (entry,) = await logged(api)
    assert (entry["status"], entry["ackCode"]) == ("failed", "AE")

    assert await send(api, message) == ack
    assert exploding_translator.count("BOOM-1") == 1  # answered from the log, not translated again
    await assert_good_message_still_accepted(api, "AFTER-BOOM")


@pytest.fixture
def failing_store(gateway: Gateway) -> Iterator[list[int]]:
    """Writing resources fails for messages about MRN-STORE (as NUL bytes or an index row too large for
    PostgreSQL would); calls are counted."""
    fhir = gateway.fhir
    original = fhir.write_versions
    calls: list[int] = []

    async def write_versions(conn: Any, ctx: Any, pending: Any) -> Any:
        calls.append(len(pending))
        if any(b"MRN-STORE" in (p.content or b"") for p in pending):
            raise ValueError("the database refused a value")
        return await original(conn, ctx, pending)

    fhir.write_versions = write_versions  # type: ignore[method-assign]
    yield calls
    fhir.write_versions = original  # type: ignore[method-assign]


async def test_a_commit_failure_is_an_ae_with_a_log_row_and_the_store_untouched(
    api: httpx.AsyncClient, failing_store: list[int]
) -> None:
    message = anc_oru("STORE-1", "MRN-STORE")
    ack = await send(api, message)
    assert ack_code(ack) == "AE"
    _, code, text, _ = err(ack)
    assert code == "207" and "could not be stored" in text
    (entry,) = await logged(api)
    assert (entry["status"], entry["resources"]) == ("failed", [])
    patients = (await api.get("/fhir/Patient", params={"identifier": "MRN-STORE"})).json()
    assert patients.get("total", 0) == 0

    calls = len(failing_store)
    assert await send(api, message) == ack
    assert len(failing_store) == calls  # the re-send never reached the store
    await assert_good_message_still_accepted(api, "AFTER-STORE")


@pytest.fixture
def refused_statement(gateway: Gateway) -> Iterator[None]:
    """A statement the database refuses with an OperationalError while it is up (SQLite's "expression
    tree is too large", a statement timeout) for messages about MRN-DEEP."""
    fhir = gateway.fhir
    original = fhir.write_versions

    async def write_versions(conn: Any, ctx: Any, pending: Any) -> Any:
        if any(b"MRN-DEEP" in (p.content or b"") for p in pending):
            raise sql_errors.OperationalError("SELECT ...", {}, Exception("Expression tree is too large"))
        return await original(conn, ctx, pending)

    fhir.write_versions = write_versions  # type: ignore[method-assign]
    yield
    fhir.write_versions = original  # type: ignore[method-assign]


async def test_a_statement_the_live_database_refuses_is_an_ae_not_silence(
    api: httpx.AsyncClient, refused_statement: None
) -> None:
    """No answer tells the sender to try again: right when the database is down, a loop forever when it is
    up and refuses this message."""
    ack = await send(api, anc_oru("DEEP-1", "MRN-DEEP"))
    assert ack_code(ack) == "AE"
    assert "OperationalError" in err(ack)[2]
    (entry,) = await logged(api)
    assert entry["status"] == "failed"
    await assert_good_message_still_accepted(api, "AFTER-DEEP")


async def test_a_database_that_is_down_gets_no_answer_so_the_sender_tries_again(
    api: httpx.AsyncClient, gateway: Gateway, refused_statement: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(timeout_s: float = 2.0) -> bool:
        return False

    monkeypatch.setattr(gateway.fhir.db, "answers", down)
    answer = await api.post("/hl7v2", content=anc_oru("DEEP-2", "MRN-DEEP").encode(), headers=ER7)
    assert answer.status_code >= 500 and "MSA" not in answer.text
    assert [e for e in await logged(api) if e["status"] == "failed"] == []


async def test_reprocessing_runs_a_failed_message_again(
    api: httpx.AsyncClient, exploding_translator: list[str]
) -> None:
    """Re-sends are answered from the log; an operator's $reprocess (after the fix) runs it again."""
    await send(api, anc_oru("BOOM-2", "MRN-BOOM2"))
    (entry,) = await logged(api)
    answer = await api.post(f"/hl7v2/messages/{entry['id']}/$reprocess")
    assert answer.json()["ackCode"] == "AE"
    assert exploding_translator.count("BOOM-2") == 2


@pytest.fixture
def killed_connection(gateway: Gateway) -> Iterator[list[str]]:
    # the test may append "always": then every write of such a message loses its connection
    """The first two writes of a message about MRN-KILL lose their PostgreSQL backend (a restart or
    failover takes every pooled connection; the pipeline's own retry of a failed batch meets the next one)
    while the database is up again. How asyncpg reports that depends on
    timing: an OperationalError or InterfaceError once it has seen the connection close, its own
    InternalClientError when a statement races the notice. The fixture waits for the close, then raises the
    racing case's error (the one class the pipeline did not know)."""
    import asyncpg

    from gateway.store import driver_sql

    fhir = gateway.fhir
    original = fhir.write_versions
    kills: list[str] = []

    async def write_versions(conn: Any, ctx: Any, pending: Any) -> Any:
        if (len(kills) < 2 or "always" in kills) and any(b"MRN-KILL" in (p.content or b"") for p in pending):
            pid = (await driver_sql.fetch(conn, "SELECT pg_backend_pid()", ()))[0][0]
            async with gateway.db.read() as other:
                await driver_sql.fetch(other, "SELECT pg_terminate_backend(?)", (pid,))
            raw = await conn.get_raw_connection()
            for _ in range(100):
                if raw.dbapi_connection._connection.is_closed():
                    break
                await asyncio.sleep(0.01)
            kills.append(str(pid))
            # asyncpg's own message for a statement racing the close
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")
        return await original(conn, ctx, pending)

    fhir.write_versions = write_versions  # type: ignore[method-assign]
    yield kills
    fhir.write_versions = original  # type: ignore[method-assign]


@pytest.mark.parametrize("backend", ["postgresql"])  # a PostgreSQL backend process is what is lost
async def test_a_connection_lost_mid_commit_is_not_the_messages_fault(
    api: httpx.AsyncClient, killed_connection: list[str]
) -> None:
    """The message was fine and the database is up: it is committed on a fresh connection and answered AA,
    not logged as failed (with its AE remembered for every re-send)."""
    ack = await send(api, anc_oru("KILL-1", "MRN-KILL"))
    assert len(killed_connection) == 2
    assert ack_code(ack) == "AA", ack
    (entry,) = await logged(api)
    assert entry["status"] == "accepted" and entry["resources"]
    patients = (await api.get("/fhir/Patient", params={"identifier": "MRN-KILL"})).json()
    assert patients["total"] == 1
    assert await send(api, anc_oru("KILL-1", "MRN-KILL")) == ack  # the re-send: the same AA, from the log
    await assert_good_message_still_accepted(api, "AFTER-KILL")


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_connection_lost_on_every_try_gets_no_answer_so_the_sender_tries_again(
    api: httpx.AsyncClient, killed_connection: list[str]
) -> None:
    killed_connection.append("always")
    answer = await api.post("/hl7v2", content=anc_oru("KILL-2", "MRN-KILL").encode(), headers=ER7)
    assert answer.status_code >= 500 and "MSA" not in answer.text
    assert len(killed_connection) > 3  # the batch, then the message alone, tried again
    assert [e for e in await logged(api) if e["status"] == "failed"] == []
    await assert_good_message_still_accepted(api, "AFTER-KILL-2")
