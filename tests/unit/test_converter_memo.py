"""The converter memo stays small when every input is new (a whole OBR: order numbers, times), and still
remembers what repeats."""

from __future__ import annotations

import gc
import tracemalloc
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.adapters.hl7v2.rules import MEMO_BYTES, PROBE, REST, memoized


def _ctx() -> Any:
    return SimpleNamespace(zone=ZoneInfo("UTC"), tables={}, problems=[])


@pytest.mark.slow
def test_a_memo_of_results_never_seen_twice_stays_within_its_byte_budget() -> None:
    calls = 0

    def convert(item: str, _ctx: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"identifier": item, "note": "x" * 4000}  # a large result, new every time

    run = memoized(convert, lambda item: item)
    ctx = _ctx()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5000):  # 20 MB of results in all
            run(f"order-{n}", ctx)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert calls == 5000
    assert held < 2 * MEMO_BYTES, held


def test_a_repeated_input_is_converted_once_and_handed_out_as_a_fresh_copy() -> None:
    calls = 0

    def convert(item: str, _ctx: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"code": item}

    run = memoized(convert, lambda item: item)
    ctx = _ctx()
    first, second = run("718-7", ctx), run("718-7", ctx)
    assert calls == 1 and first == second and first is not second


def test_a_memo_that_rarely_hits_rests_and_then_tries_again() -> None:
    calls: list[str] = []

    def convert(item: str, _ctx: Any) -> dict[str, Any]:
        calls.append(item)
        return {"value": item}

    run = memoized(convert, lambda item: item)
    ctx = _ctx()
    for n in range(PROBE):  # every input new: under USEFUL hits
        assert run(f"order-{n}", ctx) == {"value": f"order-{n}"}
    # Resting: a repeated input is converted again, each time, and still handed out right.
    calls.clear()
    for _ in range(3):
        assert run("order-1", ctx) == {"value": "order-1"}
    assert calls == ["order-1"] * 3
    for n in range(REST - 3):
        run(f"other-{n}", ctx)
    # Rested: it remembers again.
    calls.clear()
    results = [run("718-7", ctx) for _ in range(3)]
    assert calls == ["718-7"] and results[0] == results[2] and results[0] is not results[2]


def test_a_memo_that_hits_stays_on() -> None:
    calls: list[str] = []

    def convert(item: str, _ctx: Any) -> str:
        calls.append(item)
        return item.upper()

    run = memoized(convert, lambda item: item)
    ctx = _ctx()
    for n in range(3 * PROBE):
        run(f"code-{n % 20}", ctx)  # 20 codes over and over
    assert len(calls) == 20
