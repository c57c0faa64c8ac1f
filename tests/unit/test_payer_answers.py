"""A payer's synchronous answer is parsed keeping its decimals: its ClaimResponse is stored as received."""

from __future__ import annotations

import httpx

from gateway.fhir import jsonio
from gateway.pa.payers import PayerConfig
from gateway.service.priorauth.payer_client import Answered, PayerClient

ANSWER = b'{"resourceType":"ClaimResponse","total":[{"amount":{"value":7.20,"currency":"USD"}}],"x":1.0E3}'


async def test_a_payer_answer_keeps_the_literals_it_was_written_with() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=ANSWER))
    client = PayerClient(httpx.AsyncClient(transport=transport))
    try:
        payer = PayerConfig(name="p", base_url="http://payer.test/fhir", insurers=["Organization/1"])
        outcome = await client.submit(payer, b"{}", "k")
    finally:
        await client.close()
    assert isinstance(outcome, Answered)
    assert jsonio.dumps(outcome.body) == ANSWER
