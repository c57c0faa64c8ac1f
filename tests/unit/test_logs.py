"""Log lines: JSON or text, with the correlation id of the request or message being served."""

from __future__ import annotations

import io
import logging
import sys

import orjson
import pytest

from gateway import logs


@pytest.mark.parametrize("value", ["abc-123", "0f" * 32, "req:7.1_x"])
def test_a_plain_caller_request_id_is_kept(value: str) -> None:
    assert logs.caller_or_new(value) == value


@pytest.mark.parametrize("value", [None, "", "a b", 'x"}', "line\nbreak", "x" * 65, "é"])
def test_a_request_id_that_could_forge_log_structure_is_replaced(value: str | None) -> None:
    replaced = logs.caller_or_new(value)
    assert replaced != value and len(replaced) == 32 and replaced.isalnum()


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise KeyError("boom")
        except KeyError:
            info = sys.exc_info()
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, info)
    logs.CorrelationFilter().filter(record)
    return record


def test_json_lines_carry_the_correlation_id_of_the_work_being_done() -> None:
    token = logs.correlation_id.set("mllp-42")
    try:
        inside = _record("stored %s/%s", "Observation", "o-1")
    finally:
        logs.correlation_id.reset(token)
    outside = _record('quote " and\nnewline', exc=True)
    first = orjson.loads(logs.JsonFormatter().format(inside))
    second = orjson.loads(logs.JsonFormatter().format(outside))
    assert first["message"] == "stored Observation/o-1"
    assert first["correlation_id"] == "mllp-42"
    assert first["level"] == "WARNING" and first["logger"] == "gateway.test"
    assert first["time"].endswith("+00:00")
    assert "correlation_id" not in second
    assert second["message"] == 'quote " and\nnewline'  # escaped: still one line
    assert "KeyError" in second["exception"]
    assert "\n" not in logs.JsonFormatter().format(outside)


def test_text_lines_end_with_the_correlation_id() -> None:
    token = logs.correlation_id.set("r-1")
    try:
        line = logs.TextFormatter().format(_record("hello"))
    finally:
        logs.correlation_id.reset(token)
    assert line.endswith("WARNING gateway.test hello [cid=r-1]")


def test_configure_writes_json_and_quiets_alembic_below_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        logs.configure("INFO", "json")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
        logging.getLogger("uvicorn.error").info("Waiting for application startup.")
        logging.getLogger("gateway.store").info("database schema at %s, up to date", "0014")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.getLogger("alembic").setLevel(logging.NOTSET)
        logging.getLogger("uvicorn.error").setLevel(logging.NOTSET)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["database schema at 0014, up to date"]
