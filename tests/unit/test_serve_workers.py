"""How many serving processes `gateway serve` starts when none are configured."""

from __future__ import annotations

import os

import pytest

from gateway.settings import automatic_serve_workers


def test_sqlite_gets_one_process() -> None:
    assert automatic_serve_workers("sqlite+aiosqlite:///./var/gateway.db") == 1


def test_postgresql_gets_one_per_core_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert automatic_serve_workers("postgresql+asyncpg://postgres@127.0.0.1/test") == 3
