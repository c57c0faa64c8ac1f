"""Prior-authorization turnaround against the CMS-0057-F limits, from each request's clock (pure).

A request's clock is what the tracking row beside its PA Task keeps (`gateway.service.priorauth.tracking`):
when it was first submitted, when the payer decided (the first decision after the last submission) and
when the decision was due (72 hours for an expedited request, 7 calendar days otherwise, counted from the
first submission). The same figures serve the per-payer report (`Task/$pa-turnaround`, `/metrics`) and
the PA turnaround Measure (`Measure/pa-turnaround/$evaluate-measure`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True, slots=True)
class Clock:
    """One PA request: first submitted, decided (None: no decision yet), decision due (None: unknown),
    and whether it is waiting on the payer now."""

    submitted_us: int
    decided_us: int | None
    due_us: int | None
    waiting: bool

    @property
    def hours(self) -> float | None:
        """Submission to decision, in hours; None while undecided."""
        if self.decided_us is None:
            return None
        return (self.decided_us - self.submitted_us) / US_PER_HOUR

    def overdue(self, now_us: int) -> bool:
        """Waiting on the payer past the due date."""
        return self.waiting and self.decided_us is None and self.due_us is not None and self.due_us < now_us

    @property
    def on_time(self) -> bool | None:
        """Decided on or before the due date; None when undecided or the due date is unknown."""
        if self.decided_us is None or self.due_us is None:
            return None
        return self.decided_us <= self.due_us


@dataclass(frozen=True, slots=True)
class Turnaround:
    decided: int
    pending: int  # waiting on the payer, no decision
    overdue: int  # of those, past the due date
    decided_on_time: int  # decided on or before the due date
    decided_late: int  # decided after the due date
    median_hours: float | None
    p90_hours: float | None  # nearest rank
    mean_hours: float | None
    hours: tuple[float, ...]  # every decided request's hours, ascending


def summarize(clocks: Iterable[Clock], now_us: int) -> Turnaround:
    """The turnaround of a group of requests (one payer's, one patient's, everyone's)."""
    found = list(clocks)
    hours = sorted(h for h in (c.hours for c in found) if h is not None)
    waiting = [c for c in found if c.decided_us is None and c.waiting]
    return Turnaround(
        decided=len(hours),
        pending=len(waiting),
        overdue=sum(1 for c in waiting if c.overdue(now_us)),
        decided_on_time=sum(1 for c in found if c.on_time is True),
        decided_late=sum(1 for c in found if c.on_time is False),
        median_hours=statistics.median(hours) if hours else None,
        p90_hours=hours[math.ceil(0.9 * len(hours)) - 1] if hours else None,
        mean_hours=statistics.fmean(hours) if hours else None,
        hours=tuple(hours),
    )
