"""OpenTelemetry traces (gateway/tracing.py): an HL7 v2 result received over MLLP, committed, matched to
a topic and delivered to a subscriber shows as linked spans that carry ids and statuses, never PHI."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from hl7.client import MLLPClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import tracing
from gateway.service.gateway import Gateway
from gateway.transports.mllp.pipeline_handler import pipeline_handler
from gateway.transports.mllp.server import MLLPServer
from tests import factories as f
from tests.api.test_subscriptions import subscribe, wait_active
from tests.receiver import Receiver

FAMILY, MRN = "Spanwhistle", "MRN-TRACE-4417"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)


def _oru(control_id: str) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|TRACELAB|LAB|GW|RX|20260301083000-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
            f"PID|1||{MRN}-{control_id}^^^TRACE&2.16.840.1.113883.19.44&ISO^MR||{FAMILY}^Ann||19700101|F",
            f"OBR|1|T{control_id}^EHR|TF{control_id}^LAB|2823-3^Potassium^LN|||20260301070000-0500",
            "OBX|1|NM|2823-3^Potassium^LN||6.4|mmol/L^^UCUM|3.5-5.1|H|||F|||20260301080000-0500",
        ]
    )


def _named(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


async def test_a_result_is_traced_from_mllp_through_commit_and_matching_to_delivery(
    delivering: Gateway, api: httpx.AsyncClient, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    sub_id = await subscribe(api, f.subscription("abnormal-lab-result", receiver.url("/t")))
    await wait_active(api, sub_id)
    mllp = MLLPServer(pipeline_handler(delivering.pipeline))
    await mllp.start("127.0.0.1", 0)
    control_id = f"TR{uuid.uuid4().hex[:8]}"
    try:

        def send() -> bytes:
            with MLLPClient("127.0.0.1", mllp.port) as client:
                return bytes(client.send_message(_oru(control_id)))

        reply = await asyncio.to_thread(send)
        assert f"MSA|AA|{control_id}".encode() in reply
        await receiver.until(lambda: receiver.events("/t"))

        def delivered() -> list[ReadableSpan]:
            return [
                s
                for s in _named(list(spans.get_finished_spans()), "subscriptions.deliver")
                if s.attributes
                and s.attributes.get("subscription.id") == sub_id
                and s.attributes.get("notification.type") == "event-notification"
            ]

        for _ in range(200):
            if delivered():
                break
            await asyncio.sleep(0.02)
    finally:
        await mllp.stop()
        await api.delete(f"/fhir/Subscription/{sub_id}")
    found = list(spans.get_finished_spans())
    (receive,) = [
        s for s in _named(found, "mllp.receive") if (s.attributes or {}).get("hl7.control_id") == control_id
    ]
    assert (receive.attributes or {})["hl7.ack_code"] == "AA"
    assert str((receive.attributes or {})["gateway.correlation_id"]).startswith("mllp-")
    commits = [
        s for s in _named(found, "hl7.commit") if any(link.context == receive.context for link in s.links)
    ]
    assert len(commits) == 1  # the commit (in the writer task) links back to the message's receipt
    matches = [
        s
        for s in _named(found, "subscriptions.match")
        if s.parent is not None and s.parent.span_id == commits[0].context.span_id
    ]
    assert matches and (matches[0].attributes or {})["events"] >= 1
    (attempt,) = delivered()[:1]
    assert (attempt.attributes or {})["http.status_code"] == 200
    assert (attempt.attributes or {})["delivery.ok"] is True
    values = " ".join(str(v) for s in found for v in (s.attributes or {}).values())
    assert FAMILY not in values and MRN not in values  # ids and statuses only
