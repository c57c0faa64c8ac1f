"""The pull checkpoints' leases on both backends (gateway/store/upstreams.py): one holder at a time, a
crashed holder's lease expires, the checkpoint moves only under the lease, and a restart keeps it."""

from __future__ import annotations

import uuid

from gateway.service.gateway import Gateway
from gateway.store import upstreams as store

SECOND = 1_000_000


async def test_one_holder_at_a_time_and_a_dead_holders_lease_expires(gateway: Gateway) -> None:
    name = f"up-{uuid.uuid4().hex[:8]}"  # rows are not emptied between tests: a name of its own
    async with gateway.db.write() as conn:
        await store.ensure(conn, name, ["Observation"])
        await store.ensure(conn, name, ["Observation"])  # again (a restart): no second row, no reset
        first = await store.claim(conn, name, "Observation", "proc-a", 100 * SECOND, 120 * SECOND)
        assert first is not None
        # another process, while the lease is live: nothing
        assert await store.claim(conn, name, "Observation", "proc-b", 101 * SECOND, 120 * SECOND) is None
        assert await store.advance(conn, name, "Observation", "proc-a", "2026-01-01T00:00:00Z", 220 * SECOND)
        # not the holder: the checkpoint does not move
        assert not await store.advance(conn, name, "Observation", "proc-b", "2027-01-01T00:00:00Z", 0)
        # proc-a dies; after its lease ran out proc-b takes over, from proc-a's checkpoint
        taken = await store.claim(conn, name, "Observation", "proc-b", 221 * SECOND, 120 * SECOND)
        assert taken is not None and taken.last_updated == "2026-01-01T00:00:00Z"
        await store.finish(
            conn, name, "Observation", "proc-b", now=222 * SECOND, next_poll_us=300 * SECOND, error=None
        )
        # not due before its next poll, whoever asks
        assert await store.claim(conn, name, "Observation", "proc-a", 250 * SECOND, 120 * SECOND) is None
        again = await store.claim(conn, name, "Observation", "proc-a", 301 * SECOND, 120 * SECOND)
        assert again is not None and again.last_updated == "2026-01-01T00:00:00Z"
        await store.finish(
            conn, name, "Observation", "proc-a", now=302 * SECOND, next_poll_us=400 * SECOND, error="HTTP 503"
        )
    async with gateway.db.read() as conn:
        (row,) = [c for c in await store.all_checkpoints(conn) if c.upstream == name]
    assert row.failures == 1 and row.polled_us == 222 * SECOND  # a failure keeps the last good poll
