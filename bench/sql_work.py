"""SQL work per six-OBX ORU: statements sent and rows written, by statement, on each backend (in this
process, through the same pipeline `gateway serve` runs). Fewer statements and narrower index rows are how
issue 13 cuts the database's share of a message; this shows where they go.
"""

from __future__ import annotations

import collections
from typing import Any

from sqlalchemy import event

from bench.harness import throwaway_database
from bench.hl7 import six_obx_oru
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Source
from gateway.settings import get_settings

WARMUP = 50
MESSAGES = 200


def _head(statement: str) -> str:
    """The statement's first words up to its column list: enough to tell statements apart, no values."""
    return " ".join(statement.split())[:72]


async def measure(backend: str, postgres_url: str) -> None:
    async with throwaway_database(backend, postgres_url) as url:
        gateway = await Gateway.start(get_settings(database_url=url, workers=0))
        statements: collections.Counter[str] = collections.Counter()
        rows: collections.Counter[str] = collections.Counter()

        def count(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
            statements[_head(statement)] += 1
            rows[_head(statement)] += len(parameters) if many else 1

        try:
            await gateway.pipeline.start()
            for n in range(WARMUP):
                await gateway.pipeline.submit(six_obx_oru(n).encode(), Source("mllp", "bench"))
            for engine in (gateway.db.writer, gateway.db.reader):
                event.listen(engine.sync_engine, "before_cursor_execute", count)
            for n in range(WARMUP, WARMUP + MESSAGES):
                result = await gateway.pipeline.submit(six_obx_oru(n).encode(), Source("mllp", "bench"))
                if result.code != "AA":
                    raise RuntimeError(f"not AA: {result.ack[:200]}")
        finally:
            await gateway.close()
        writes = {k: v for k, v in rows.items() if k.startswith(("INSERT", "UPDATE", "DELETE"))}
        print(
            f"{backend}: {sum(statements.values()) / MESSAGES:.1f} statements and"
            f" {sum(writes.values()) / MESSAGES:.1f} rows written per message"
        )
        for head, count_ in statements.most_common(12):
            sets = rows[head] / MESSAGES
            print(f"  {count_ / MESSAGES:6.2f} statements {sets:7.2f} parameter sets  {head}")


async def run(backends: list[str], postgres_url: str) -> None:
    print(f"SQL work per six-OBX ORU^R01 ({MESSAGES} messages after {WARMUP} to warm up)\n")
    for backend in backends:
        await measure(backend, postgres_url)
