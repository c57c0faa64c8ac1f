"""The converter memo stays small when every input is new (a whole OBR: order numbers, times), and still
remembers what repeats."""

from __future__ import annotations

import gc
import tracemalloc
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.adapters.hl7v2.rules import MEMO_BYTES, memoized


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
