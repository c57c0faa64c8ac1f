"""Every answer names its request (`X-Request-ID`), and what is logged while serving it carries that id."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway import logs


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(logs.CorrelationFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_callers_request_id_is_echoed_and_logged(api: httpx.AsyncClient) -> None:
    collect = _Collect()
    http_log = logging.getLogger("gateway.http")
    http_log.addHandler(collect)
    level = http_log.level
    http_log.setLevel(logging.INFO)
    try:
        answer = await api.get("/fhir/Patient", params={"_count": 1}, headers={"X-Request-ID": "trace-77.a"})
    finally:
        http_log.removeHandler(collect)
        http_log.setLevel(level)
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "trace-77.a"
    served = [r for r in collect.records if "/fhir/Patient" in r.getMessage()]
    assert served and all(getattr(r, "correlation_id", None) == "trace-77.a" for r in served)


@pytest.mark.parametrize("sent", [None, "two words", "x" * 100])
async def test_without_a_usable_request_id_each_answer_gets_a_new_one(
    api: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    first = await api.get("/fhir/metadata", headers=headers)
    second = await api.get("/fhir/Patient/does-not-exist", headers=headers)
    assert second.status_code == 404
    ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
    assert len(ids) == 2 and sent not in ids
    assert all(len(i) == 32 for i in ids)
