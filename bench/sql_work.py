"""SQL work per six-OBX ORU: statements sent, by statement, and rows added, by table, on each backend (in this
process, through the same pipeline `gateway serve` runs). Fewer statements and narrower index rows are how
issue 13 cuts the database's share of a message; this shows where they go.
"""

from __future__ import annotations

import collections
from typing import Any

from sqlalchemy import event, func, select

from bench.harness import throwaway_database
from bench.hl7 import six_obx_oru
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Source
from gateway.settings import get_settings
from gateway.store.tables import metadata

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
            before = await _table_rows(gateway)
            for engine in (gateway.db.writer, gateway.db.reader):
                event.listen(engine.sync_engine, "before_cursor_execute", count)
            for n in range(WARMUP, WARMUP + MESSAGES):
                result = await gateway.pipeline.submit(six_obx_oru(n).encode(), Source("mllp", "bench"))
                if result.code != "AA":
                    raise RuntimeError(f"not AA: {result.ack[:200]}")
            for engine in (gateway.db.writer, gateway.db.reader):
                event.remove(engine.sync_engine, "before_cursor_execute", count)
            after = await _table_rows(gateway)
        finally:
            await gateway.close()
        # Rows added, counted in the tables themselves: a statement may insert into several tables from
        # arrays (PostgreSQL's unnest), so its parameter sets say nothing of its rows.
        added = {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}
        by_table = sorted(added.items(), key=lambda item: -item[1])
        print(
            f"{backend}: {sum(statements.values()) / MESSAGES:.1f} statements and"
            f" {sum(added.values()) / MESSAGES:.1f} rows added per message"
            f" ({', '.join(f'{t} {n / MESSAGES:.1f}' for t, n in by_table)})"
        )
        for head, count_ in statements.most_common(12):
            sets = rows[head] / MESSAGES
            print(f"  {count_ / MESSAGES:6.2f} statements {sets:7.2f} parameter sets  {head}")


async def _table_rows(gateway: Gateway) -> dict[str, int]:
    async with gateway.db.read() as conn:
        return {
            table.name: int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
            for table in metadata.sorted_tables
        }


async def run(backends: list[str], postgres_url: str) -> None:
    print(f"SQL work per six-OBX ORU^R01 ({MESSAGES} messages after {WARMUP} to warm up)\n")
    for backend in backends:
        await measure(backend, postgres_url)
