"""Poison HL7 v2 messages into a running `gateway serve` over MLLP (python-hl7's MLLPClient), both
backends: each gets its NAK with a reason on the same connection, which then still takes good messages,
and each is in the message log."""

from __future__ import annotations

import asyncio

import httpx
from hl7.client import MLLPClient

from gateway.adapters.hl7v2.er7 import Message
from tests.hl7_messages import anc_oru, obx, oru
from tests.integration.conftest import LiveServer

POISON = [
    (oru("LP-SP", "LMRN-SP", [obx(1, "751-8", "1.2"), "NTE|1||x\\.sp100000000\\y"]), "AR", "104"),
    (anc_oru("LP-NM", "LMRN-NM", value="9" * 4300), "AE", "104"),
    (anc_oru("LP-NUL", "LMRN-NUL").replace("Neutrophils", "Neutro\x00phils"), "AR", "102"),
    # big enough to be prepared in a worker process
    (oru("LP-SEG", "LMRN-SEG", [obx(n, "751-8", "1.2") for n in range(1, 2100)]), "AR", "104"),
]


def exchange(port: int, messages: list[str]) -> list[str]:
    """All messages on one connection, one at a time; the framed replies as text."""
    replies = []
    with MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(60)
        for message in messages:
            reply = client.send_message(message)
            while not reply.endswith(b"\x1c\r"):
                more = client.socket.recv(65536)
                assert more, "the server closed the connection"
                reply += more
            replies.append(reply.strip(b"\x0b\x1c\r").decode())
    return replies


def msa_and_err(ack: str) -> tuple[str, str, str]:
    message = Message(ack)
    msa = next(s for s in message.segments if s.name == "MSA")
    errors = [s for s in message.segments if s.name == "ERR"]
    return msa.raw(1), msa.raw(2), errors[0][3].c(1) if errors else ""


async def test_poison_over_mllp_gets_naks_and_the_connection_stays_usable(live: LiveServer) -> None:
    good = anc_oru(f"LP-GOOD-{live.backend}", f"LMRN-GOOD-{live.backend}")
    messages = [message for message, _, _ in POISON]
    replies = await asyncio.to_thread(exchange, live.mllp_port, [*messages, good, messages[1]])

    for (message, code, error_code), reply in zip(POISON, replies, strict=False):
        control_id = message.split("\r", 1)[0].split("|")[9]
        assert msa_and_err(reply) == (code, control_id, error_code)
    assert msa_and_err(replies[len(POISON)])[0] == "AA"
    assert replies[-1] == replies[1]  # the re-sent poison: the same answer, from the log

    token = await live.token("system/*.cruds hl7v2/messages.read")
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        rows = (await http.get("/hl7v2/messages", params={"status": "failed", "count": "500"})).json()
    logged = {row["controlId"]: row for row in rows["messages"]}
    for message, code, _ in POISON:
        control_id = message.split("\r", 1)[0].split("|")[9]
        assert logged[control_id]["ackCode"] == code
