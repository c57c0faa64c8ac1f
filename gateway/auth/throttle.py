"""Back-off after failed client authentications, per key (a client id, a source address).

A key may fail `free_failures` times; each further failure blocks it for a delay doubling from
`base_delay_s` up to `max_delay_s`. While blocked, requests under that key are answered 429 before any
secret is hashed, so guessing costs the guesser time and the gateway nothing. Failures are forgotten after
`forget_after_s` without one; a success forgets a client id's failures (not an address's: one valid
credential must not reset the count of an address spraying other ids).

Unknown client ids are counted exactly like known ones, or a 429 would tell which ids exist. The table is
bounded (the least recently failed keys are dropped first), since client ids come from the caller.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEY_LENGTH = 128  # client ids are at most 64 characters; longer junk is counted under its prefix


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_failures: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    forget_after_s: float = 900.0


@dataclass(slots=True)
class _Entry:
    failures: int
    last_failure: float
    blocked_until: float


class FailureThrottle:
    def __init__(
        self,
        policy: ThrottlePolicy,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        entry = self._entries.get(key[:MAX_KEY_LENGTH])
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - self._clock())

    def failed(self, key: str) -> None:
        key = key[:MAX_KEY_LENGTH]
        now = self._clock()
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.last_failure > self.policy.forget_after_s:
            entry = _Entry(0, now, now)
        entry.failures += 1
        entry.last_failure = now
        beyond = entry.failures - self.policy.free_failures
        if beyond > 0:
            delay = min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** min(beyond - 1, 30))
            entry.blocked_until = now + delay
        self._entries[key] = entry  # most recent last
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._entries.pop(key[:MAX_KEY_LENGTH], None)

    def __len__(self) -> int:
        return len(self._entries)
