"""`GET /fhir/Patient/{id}/$timeline?_stream=true`, both backends: entries as server-sent events when their
versions commit; Last-Event-ID resumes without gaps or repeats; scopes; caps; revocation; heartbeats.

httpx's in-process transport collects a whole answer before returning it, which an endless stream never
ends, so the stream is read from a real uvicorn server on a free port in this event loop, serving the
backend's shared gateway (writes go through the in-process client as elsewhere, or through the stream
server: both are the same gateway). Timeouts only keep a broken test from hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest_asyncio
import uvicorn

from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.service.pharmacist.timeline_stream import BATCH
from gateway.store import timeline as timeline_store
from gateway.transports.http.app import create_app
from gateway.transports.http.event_stream import EventStreamResponse
from tests import factories as f
from tests.api.test_patient_timeline import NO_OBSERVATION, anc, create, move
from tests.conftest import ClientFactory
from tests.hl7_messages import ack_code, anc_oru

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
WAIT = 20.0  # seconds: only so that a broken test fails instead of hanging


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    id: str
    entry: dict[str, Any]


@dataclass
class Stream:
    """An open stream and what it has delivered so far."""

    response: httpx.Response
    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)  # every event, alerts included

    async def next(self, timeout: float = WAIT, *, alerts: bool = False) -> Received:
        """The next event (comments are kept aside). Abnormal results open alert work items in their
        own transaction, whose entries follow the result's: skipped unless `alerts`."""
        async with asyncio.timeout(timeout):
            event_id, data = "", ""
            async for line in self.lines:
                self.raw.append(line)
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    got = Received(event_id, orjson.loads(data))
                    self.received.append(got)
                    if alerts or got.entry["kind"] != "alert":
                        return got
                    event_id, data = "", ""
            raise AssertionError(f"the stream ended; comments: {self.comments}")

    async def comment(self, text: str, timeout: float = WAIT) -> None:
        """Read until this comment line arrives (events on the way are kept in `raw`)."""
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                self.raw.append(line)
                if line.startswith(":"):
                    self.comments.append(line)
                    if line == text:
                        return
            raise AssertionError(f"the stream ended; comments: {self.comments}")

    async def ended(self, timeout: float = WAIT) -> None:
        """Read to the end of the answer (what arrives is kept)."""
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                self.raw.append(line)
                if line.startswith(":"):
                    self.comments.append(line)


class StreamServer:
    """A uvicorn server for the backend's gateway, and stream clients for it."""

    def __init__(self, gateway: Gateway) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(gateway.settings, gateway),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(WAIT))
        self._open: list[contextlib.AsyncExitStack] = []

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        async with asyncio.timeout(WAIT):
            while not self.server.started:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for stack in self._open:
            await stack.aclose()
        await self.http.aclose()
        self.server.should_exit = True
        if self.task is not None:
            await self.task

    async def get(
        self, client: httpx.AsyncClient, patient: str, headers: dict[str, str] | None = None, **params: str
    ) -> httpx.Response:
        """A whole answer (a refusal) from the stream server, with the client's token."""
        return await self.http.get(
            f"/fhir/Patient/{patient}/$timeline",
            params={"_stream": "true", **params},
            headers={"Authorization": client.headers["Authorization"], **(headers or {})},
        )

    async def open(
        self, client: httpx.AsyncClient, patient: str, last_event_id: str | None = None, **params: str
    ) -> Stream:
        headers = {"Authorization": client.headers["Authorization"], "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        stack = contextlib.AsyncExitStack()
        self._open.append(stack)
        response = await stack.enter_async_context(
            self.http.stream(
                "GET",
                f"/fhir/Patient/{patient}/$timeline",
                params={"_stream": "true", **params},
                headers=headers,
            )
        )
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        return Stream(response, response.aiter_lines())

    async def close(self, stream: Stream) -> None:
        await stream.response.aclose()


@pytest_asyncio.fixture
async def streams(gateway: Gateway) -> AsyncIterator[StreamServer]:
    server = StreamServer(gateway)
    await server.start()
    yield server
    await server.stop()
    async with asyncio.timeout(WAIT):  # every stream gave its slot back
        while gateway.timeline_feed.open_streams:
            await asyncio.sleep(0.02)


async def test_an_entry_arrives_after_a_rest_write(api: httpx.AsyncClient, streams: StreamServer) -> None:
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient, authoredOn="2024-02-01"))  # before: not sent
    stream = await streams.open(api, patient)
    observation = await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z", "L"))
    got = await stream.next()
    assert got.entry == {
        "id": f"Observation/{observation}",
        "time": "2024-02-26T08:00:00Z",
        "kind": "observation",
        "summary": "ANC 1.2 10*3/uL (low)",
        "source": {"system": None, "kind": "fhir-client"},
        "resource": f"Observation/{observation}/_history/1",
    }
    assert got.id and order not in "".join(stream.raw)
    # The alert work item the low result opened (written in its transaction, by the alert service) follows.
    alert = await stream.next(alerts=True)
    assert alert.entry["kind"] == "alert" and alert.entry["id"].startswith("Task/")
    # An update is the same entry again, at its new version, under a new event id.
    current = (await api.get(f"/fhir/Observation/{observation}")).json()
    current["status"] = "amended"
    assert (await api.put(f"/fhir/Observation/{observation}", json=current)).status_code == 200
    again = await stream.next()
    assert again.entry["id"] == f"Observation/{observation}" and again.id != got.id
    assert again.entry["resource"] == f"Observation/{observation}/_history/2"
    # Another patient's writes are not on this stream; an HL7 v2 result for this one is, with its sender.
    await create(api, anc(await create(api, f.patient()), 0.4, "2024-02-27T08:00:00Z", "LL"))
    answer = await api.post("/hl7v2", content=anc_oru("TLS-1", "MRN-TLS1").encode(), headers=ER7)
    assert ack_code(answer.text) == "AA", answer.text
    hl7_patient = (await api.get("/fhir/Patient", params={"identifier": "MRN-TLS1"})).json()["entry"][0]
    await streams.close(stream)
    hl7_stream = await streams.open(api, hl7_patient["resource"]["id"])
    second = anc_oru("TLS-2", "MRN-TLS1", "0.9")
    assert ack_code((await api.post("/hl7v2", content=second.encode(), headers=ER7)).text) == "AA"
    kinds: dict[str, dict[str, Any]] = {}
    while "observation" not in kinds:
        received = await hl7_stream.next()
        kinds[received.entry["kind"]] = received.entry
    assert kinds["observation"]["source"]["kind"] == "hl7v2"
    assert kinds["observation"]["summary"].startswith("Neutrophils 0.9")


async def test_a_result_completing_a_monitoring_lab_sends_the_calendar_entry(
    api: httpx.AsyncClient, streams: StreamServer
) -> None:
    today = datetime.now(UTC).date()
    patient = await create(api, f.patient())
    await create(api, f.medication_request(patient, authoredOn=today.isoformat()))
    stream = await streams.open(api, patient)
    await create(api, anc(patient, 2.4, f"{today.isoformat()}T08:00:00Z"))
    seen: dict[str, dict[str, Any]] = {}
    while "monitoring-due" not in seen:
        got = await stream.next()
        seen[got.entry["kind"]] = got.entry
    assert list(seen) == ["observation", "monitoring-due"]  # the result, then what it did to the calendar
    assert seen["monitoring-due"]["summary"] == "Lab due: clozapine monitoring lab baseline (completed)"
    assert seen["monitoring-due"]["time"] == today.isoformat()


async def test_resuming_misses_nothing_and_repeats_nothing(
    api: httpx.AsyncClient, streams: StreamServer
) -> None:
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient, authoredOn="2024-02-01"))
    task = await create(api, f.pa_task(patient, order, authoredOn="2024-02-02T10:00:00Z"))
    stream = await streams.open(api, patient)
    first = await create(api, anc(patient, 2.5, "2024-02-12T08:00:00Z"))
    got = await stream.next()
    assert got.entry["id"] == f"Observation/{first}"
    await streams.close(stream)
    # Written while disconnected: a result, two PA moves and a Task version that is no move.
    second = await create(api, anc(patient, 1.8, "2024-02-19T08:00:00Z"))
    await move(api, task, "in-progress", "pended", "2024-02-05T10:00:00Z")
    current = (await api.get(f"/fhir/Task/{task}")).json()
    current["description"] = "same state, new wording"
    assert (await api.put(f"/fhir/Task/{task}", json=current)).status_code == 200
    await move(api, task, "completed", "approved", "2024-02-09T10:00:00Z")
    third = await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z", "L"))
    resumed = await streams.open(api, patient, last_event_id=got.id)
    expected = [
        f"Observation/{second}",
        f"Task/{task}/_history/2",
        f"Task/{task}/_history/4",
        f"Observation/{third}",
    ]
    received = [await resumed.next() for _ in expected]
    assert [r.entry["id"] for r in received] == expected
    assert received[1].entry["summary"].endswith("pended") and received[2].entry["summary"].endswith(
        "approved"
    )
    # Nothing more is waiting: the next event is the next write.
    fourth = await create(api, anc(patient, 1.0, "2024-03-04T08:00:00Z", "L"))
    assert (await resumed.next()).entry["id"] == f"Observation/{fourth}"
    await streams.close(resumed)
    # Resuming from the middle gives what followed, once.
    middle = await streams.open(api, patient, last_event_id=received[1].id)
    assert [(await middle.next()).entry["id"] for _ in range(3)] == [*expected[2:], f"Observation/{fourth}"]
    ids = [r.id for r in received]
    assert len(set(ids)) == len(ids) and got.id not in ids


async def test_no_observation_for_a_token_that_cannot_read_them(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory, streams: StreamServer
) -> None:
    patient = await create(api, f.patient())
    narrow = await client_factory(NO_OBSERVATION)
    stream = await streams.open(narrow, patient)
    no_provenance = await client_factory("system/Patient.r system/MedicationRequest.r")
    plain = await streams.open(no_provenance, patient)
    hidden = await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z", "L"))
    answer = await api.post("/hl7v2", content=anc_oru("TLS-3", "MRN-TLS3").encode(), headers=ER7)
    assert ack_code(answer.text) == "AA"
    order = await create(api, f.medication_request(patient, authoredOn="2024-02-01"))
    got = await stream.next()
    assert got.entry["id"] == f"MedicationRequest/{order}" and got.entry["source"] is not None
    mine = await plain.next()
    assert mine.entry["id"] == f"MedicationRequest/{order}" and mine.entry["source"] is None
    seen = "\n".join(stream.raw)
    assert hidden not in seen and "ANC" not in seen and "observation" not in seen
    no_patient = await client_factory("system/Observation.rs")
    refused = await streams.get(no_patient, patient)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    # One AuditEvent per stream, a read of the Patient naming the kinds sent, queued when the stream ends.
    await streams.close(stream)
    auditor = await client_factory("audit/events.read")
    async with asyncio.timeout(WAIT):
        while True:
            await gateway.audit.flush()
            params = {"patient": patient, "subtype": "operation"}
            found = (await auditor.get("/fhir/AuditEvent", params=params)).json()
            described = [
                (e["resource"]["action"], x["description"])
                for e in found.get("entry", [])
                for x in e["resource"]["entity"]
                if "_stream=true" in x.get("description", "")
            ]
            if described:
                break
            await asyncio.sleep(0.05)
    assert ("R", "$timeline?_stream=true; returned: alert, medication-order") in described


async def test_bad_requests(api: httpx.AsyncClient, streams: StreamServer) -> None:
    patient = await create(api, f.patient())
    other = await create(api, f.patient())
    stream = await streams.open(api, other)
    await create(api, anc(other, 1.2, "2024-02-26T08:00:00Z"))
    other_id = (await stream.next()).id
    for bad in ("nope", "0", "A" * 22, other_id):
        answer = await streams.get(api, patient, headers={"Last-Event-ID": bad})
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert (await streams.get(api, patient, _count="5")).status_code == 400
    assert (await streams.get(api, patient, _stream="maybe")).status_code == 400
    document = await api.get(f"/fhir/Patient/{patient}/$timeline", params={"_stream": "false"})
    assert document.status_code == 200 and document.json()["entries"] == []
    assert (await streams.get(api, "unknown-1")).status_code == 404
    accept = await streams.get(api, patient, headers={"Accept": "application/fhir+json"})
    assert accept.status_code == 406


async def test_caps_refuse_with_an_operation_outcome(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory, streams: StreamServer
) -> None:
    feed = gateway.timeline_feed
    patient = await create(api, f.patient())
    saved = (feed.max_per_client, feed.max_total)
    feed.max_per_client, feed.max_total = 1, 2
    try:
        await streams.open(api, patient)
        again = await streams.get(api, patient)
        assert again.status_code == 429 and again.headers["Retry-After"]
        assert again.json()["issue"][0]["code"] == "throttled"
        await streams.open(await client_factory("system/*.rs"), patient)
        full = await streams.get(await client_factory("system/*.rs"), patient)
        assert full.status_code == 503 and full.json()["resourceType"] == "OperationOutcome"
    finally:
        feed.max_per_client, feed.max_total = saved


async def test_a_revoked_token_stops_receiving(
    gateway: Gateway, api: httpx.AsyncClient, streams: StreamServer
) -> None:
    patient = await create(api, f.patient())
    registered = await gateway.auth.add_client(f"reader-{uuid.uuid4().hex[:8]}", "system/*.rs")
    token = await api.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(registered.client_id, registered.client_secret or ""),
    )
    reader = httpx.AsyncClient(headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    stream = await streams.open(reader, patient)
    await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z"))
    await stream.next()
    before = len(stream.raw)
    assert await gateway.auth.disable_client(registered.client_id)
    await stream.ended()  # woken by the revocation, the stream finds its token refused and ends
    await create(api, anc(patient, 0.8, "2024-02-27T08:00:00Z"))
    assert not any(line.startswith("data: ") for line in stream.raw[before:])
    assert stream.comments[-1] == ": closed: access token no longer valid"
    await reader.aclose()


async def test_heartbeats_and_the_backlog(
    gateway: Gateway, api: httpx.AsyncClient, streams: StreamServer
) -> None:
    feed = gateway.timeline_feed
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient, authoredOn="2024-02-01"))
    early = await create(api, anc(patient, 2.5, "2024-01-12T08:00:00Z"))
    late = await create(api, anc(patient, 1.8, "2024-02-19T08:00:00Z"))
    saved = feed.heartbeat_s
    feed.heartbeat_s = 0.1
    try:
        stream = await streams.open(api, patient, _since="2024-02-01")
        backlog = [await stream.next() for _ in range(2)]
        assert [b.entry["id"] for b in backlog] == [f"MedicationRequest/{order}", f"Observation/{late}"]
        assert backlog[0].id == backlog[1].id  # where the live part starts
        await stream.comment(": heartbeat")
        newer = await create(api, anc(patient, 1.1, "2024-02-26T08:00:00Z"))
        assert (await stream.next()).entry["id"] == f"Observation/{newer}"
        assert early not in "".join(stream.raw)
    finally:
        feed.heartbeat_s = saved


async def test_commits_of_another_process_arrive_by_polling(
    gateway: Gateway, api: httpx.AsyncClient, streams: StreamServer
) -> None:
    """Without the in-process wake-up (as for a write by another gateway on the same database), the poll
    finds the commit."""
    feed = gateway.timeline_feed
    patient = await create(api, f.patient())
    saved = feed.poll_s
    feed.poll_s = 0.1
    feed.wake = lambda patients: None  # type: ignore[method-assign]
    try:
        stream = await streams.open(api, patient)
        observation = await create(api, anc(patient, 1.2, "2024-02-26T08:00:00Z"))
        assert (await stream.next()).entry["id"] == f"Observation/{observation}"
    finally:
        del feed.wake
        feed.poll_s = saved


async def test_a_reader_that_stops_reading_costs_one_batch_and_is_let_go(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    """The answer is written one item at a time: while a write waits for the client nothing more is read
    or built, and a write still waiting after the send timeout ends the stream and frees its slot."""
    feed = gateway.timeline_feed
    patient = await create(api, f.patient())
    ctx = RequestContext(base_url="http://gateway.test/fhir", client_id="slow-reader")

    async def valid() -> None:
        return None

    stream = await feed.open(
        ctx,
        patient,
        [("_stream", "true")],
        last_event_id=None,
        expires_at=time.time() + 600,
        check_token=valid,
    )
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            stuck.set()
            await asyncio.Event().wait()  # the client never reads again

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    answering = asyncio.create_task(
        EventStreamResponse(stream, send_timeout=0.5)({"type": "http"}, receive, send)
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": anc(patient, 1.0 + i / 100, "2024-02-26T08:00:00Z"),
                "request": {"method": "POST", "url": "Observation"},
            }
            for i in range(BATCH + 20)
        ],
    }
    assert (await api.post("/fhir", json=bundle)).status_code == 200
    async with asyncio.timeout(WAIT):
        await stuck.wait()
        await answering  # returns once the stalled write is given up
    assert stream.sent <= BATCH
    assert feed.open_streams == 0


async def test_a_savepoint_rolled_back_leaves_nothing_in_the_change_log(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    """Versions written inside a savepoint that is rolled back (the PA worker applies answers that way)
    never become changes; those of a savepoint that is kept do."""
    patient = await create(api, f.patient())
    ctx = RequestContext(base_url="http://gateway.test/fhir")

    class Undone(Exception):
        pass

    async with gateway.db.write() as conn:
        kept = await gateway.fhir.create_on(conn, ctx, anc(patient, 2.0, "2024-02-01T08:00:00Z"))
        with contextlib.suppress(Undone):
            async with conn.begin_nested():
                await gateway.fhir.create_on(conn, ctx, anc(patient, 3.0, "2024-02-02T08:00:00Z"))
                raise Undone
        async with conn.begin_nested():
            inner = await gateway.fhir.create_on(conn, ctx, anc(patient, 4.0, "2024-02-03T08:00:00Z"))
    async with gateway.db.read() as conn:
        changes = await timeline_store.changes_after(conn, patient, 0, 100)
    assert kept.stored is not None and inner.stored is not None
    assert [(c.seq, c.type, c.id) for c in changes] == [
        (1, "Observation", kept.stored.id),
        (2, "Observation", inner.stored.id),
    ]
