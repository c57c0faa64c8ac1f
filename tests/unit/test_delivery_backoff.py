"""Retry delays for failed deliveries: doubling from 1 s, capped at 300 s, jittered to [50%, 100%]."""

from __future__ import annotations

import itertools
import random

import pytest

from gateway.service.subscriptions.delivery import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_s


class _Fixed(random.Random):
    """A Random whose random() always returns the same value, to see the delay without jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_constants() -> None:
    assert (BACKOFF_BASE_S, BACKOFF_CAP_S) == (1.0, 300.0)


@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [
        (0, 1.0),  # treated like the first failure
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (8, 128.0),
        (9, 256.0),
        (10, 300.0),  # 512 capped
        (11, 300.0),
        (50, 300.0),
        (1_024, 300.0),  # 2**1023 still fits in a float
    ],
)
def test_doubling_and_cap(failures: int, ceiling: float) -> None:
    nearly_one = 1.0 - 2**-53  # the largest value random() can return
    assert backoff_s(failures, _Fixed(nearly_one)) == pytest.approx(ceiling)
    assert backoff_s(failures, _Fixed(0.0)) == pytest.approx(ceiling / 2)
    assert backoff_s(failures, _Fixed(0.5)) == pytest.approx(ceiling * 0.75)


@pytest.mark.parametrize("failures", [1_025, 10_000])
def test_no_overflow_for_a_lane_that_keeps_failing(failures: int) -> None:
    assert backoff_s(failures, _Fixed(0.0)) == pytest.approx(BACKOFF_CAP_S / 2)


def test_grows_until_the_cap() -> None:
    delays = [backoff_s(n, _Fixed(0.5)) for n in range(1, 15)]
    assert delays == sorted(delays)
    assert all(later == 2 * earlier for earlier, later in itertools.pairwise(delays[:9]))
    assert delays[-1] == delays[-2] == 0.75 * BACKOFF_CAP_S


@pytest.mark.parametrize("failures", [1, 2, 5, 9, 10, 30])
def test_jitter_stays_within_half_and_full_delay(failures: int) -> None:
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1))
    rng = random.Random(1234 + failures)
    delays = [backoff_s(failures, rng) for _ in range(2_000)]
    assert all(isinstance(d, float) for d in delays)
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # jitter actually spreads the retries across the range
    assert min(delays) < ceiling * 0.55
    assert max(delays) > ceiling * 0.95
    assert len(set(delays)) > 1_900


def test_seeded_random_is_reproducible() -> None:
    first = [backoff_s(n, random.Random(7)) for n in range(1, 12)]
    second = [backoff_s(n, random.Random(7)) for n in range(1, 12)]
    assert first == second
    assert first != [backoff_s(n, random.Random(8)) for n in range(1, 12)]


def test_without_a_generator_the_module_random_is_used() -> None:
    for failures in (1, 4, 20):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1))
        assert ceiling / 2 <= backoff_s(failures) <= ceiling


def test_a_peers_retry_after_wins_when_longer_and_is_bounded() -> None:
    from gateway.service.subscriptions.delivery import MAX_NOT_BEFORE_S, retry_delay_s

    assert retry_delay_s(1, None, _Fixed(0.0)) == pytest.approx(0.5)  # the lane's own backoff
    assert retry_delay_s(1, 120.0, _Fixed(0.0)) == pytest.approx(120.0)
    assert retry_delay_s(12, 2.0, _Fixed(0.0)) == pytest.approx(BACKOFF_CAP_S / 2)  # shorter: backoff
    assert retry_delay_s(1, 10 * 86400.0, _Fixed(0.0)) == MAX_NOT_BEFORE_S == 3600.0
    assert retry_delay_s(1, -5.0, _Fixed(0.0)) == pytest.approx(0.5)
