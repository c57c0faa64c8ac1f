"""A patient's monitoring calendar for one drug-lab rule: the labs due, which result satisfies which, what is
overdue, and what a hold or a discontinuation does to the rest.

Why pure and immutable: the calendar is written as a FHIR CarePlan (one activity per due lab) by the
service layer; here it is only worked out, so every date can be tested against a simulated clock. The
functions take a tuple of activities and return a new one.

Semantics:
- Due dates: a baseline (if the schedule has one) is due on the order's start date. The phases follow in
  order: phase k puts a lab every `every` after the last due date so far, up to and including its
  `until_month` anniversary of the start; the next phase continues from the last date the previous one
  gave. Steps are counted from the phase's first date (month steps from a 31st land on the month's last
  day without drifting).
- One activity per rule and due date; a result coded with any of the rule's labs satisfies it (the rule's
  codes are alternatives or a panel drawn together, e.g. ALT and AST).
- Window: an activity may be satisfied by a result dated after the previous activity's due date and at the
  latest `grace_days` after its own (the baseline: from `BASELINE_LOOKBACK_DAYS` before the start; the
  first lab of a schedule without a baseline: from the start). A result goes to the earliest open activity
  whose window holds its date, so a late result completes the late activity, not the next.
- Overdue: open (scheduled) and due + grace before "now".
- Hold: the open activities due on or after the hold day go on hold (never overdue while held); resume
  moves them, windows included, by the days held and schedules them again. Activities due before the
  hold stay as they are (one already missed stays missed).
- Discontinue: every activity not completed is cancelled; nothing more is owed for a stopped drug.
"""

from __future__ import annotations

from calendar import monthrange
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from itertools import islice, takewhile
from typing import Literal

from gateway.mapping.monitoring import Code, DrugLabRule, Every, Schedule

BASELINE_LOOKBACK_DAYS = 30

# CarePlan.activity.detail.status codes (R4, required binding).
Status = Literal["scheduled", "on-hold", "completed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Activity:
    rule_id: str
    sequence: int  # 0: the baseline; 1, 2, ...: the scheduled labs in order
    labs: tuple[Code, ...]
    due: date
    window_start: date  # the earliest result date that counts for this activity
    grace_days: int
    status: Status = "scheduled"
    satisfied_on: date | None = None  # the effective date of the result that completed it

    @property
    def late_after(self) -> date:
        """The last day a result still counts; overdue from the day after."""
        return self.due + timedelta(days=self.grace_days)


def add_months(day: date, months: int) -> date:
    """`day` plus calendar months; a day past the month's end becomes its last day (Jan 31 + 1 = Feb 29)."""
    total = day.month - 1 + months
    year, month = day.year + total // 12, total % 12 + 1
    return date(year, month, min(day.day, monthrange(year, month)[1]))


def _step(anchor: date, every: Every, steps: int) -> date:
    if every.unit == "month":
        return add_months(anchor, every.count * steps)
    days = every.count * (7 if every.unit == "week" else 1)
    return anchor + timedelta(days=days * steps)


def due_dates(schedule: Schedule, start: date) -> Iterator[tuple[int, date]]:
    """(sequence, due date) of the labs in order, the baseline as sequence 0; endless when the last phase
    has no `until_month`, so take what you need."""
    if schedule.baseline:
        yield 0, start
    last, sequence = start, 1
    for phase in schedule.phases:
        end = None if phase.until_month is None else add_months(start, phase.until_month)
        anchor, steps = last, 1
        while True:
            due = _step(anchor, phase.every, steps)
            if end is not None and due > end:
                break
            yield sequence, due
            last, sequence, steps = due, sequence + 1, steps + 1


def plan(
    rule: DrugLabRule, start: date, *, months: int | None = None, count: int | None = None
) -> tuple[Activity, ...]:
    """The activities for an order of `rule`'s drug starting on `start`: those due within `months` of the
    start, and at most `count` of them (the baseline included); at least one of the two is needed."""
    if rule.schedule is None:
        raise ValueError(f"rule {rule.id} has no schedule")
    if months is None and count is None:
        raise ValueError("give a horizon: months and/or count")
    schedule = rule.schedule
    dates: Iterable[tuple[int, date]] = due_dates(schedule, start)
    if months is not None:
        until = add_months(start, months)
        dates = takewhile(lambda item: item[1] <= until, dates)
    if count is not None:
        dates = islice(dates, count)
    activities: list[Activity] = []
    for sequence, due in dates:
        if sequence == 0:
            window_start = due - timedelta(days=BASELINE_LOOKBACK_DAYS)
        elif activities:
            window_start = activities[-1].due + timedelta(days=1)
        else:
            window_start = start
        activities.append(Activity(rule.id, sequence, rule.labs, due, window_start, schedule.grace_days))
    return tuple(activities)


def _open(activity: Activity) -> bool:
    return activity.status == "scheduled"


def satisfied_by(activities: Iterable[Activity], lab: Code, effective: date) -> Activity | None:
    """The activity a result (its code and effective date) completes: the earliest open one whose window
    holds the date; None when it counts for none."""
    candidates = [
        a for a in activities if _open(a) and lab in a.labs and a.window_start <= effective <= a.late_after
    ]
    return min(candidates, key=lambda a: (a.due, a.sequence), default=None)


def record_result(
    activities: tuple[Activity, ...], lab: Code, effective: date
) -> tuple[tuple[Activity, ...], Activity | None]:
    """The activities with the one the result satisfies completed, and that activity (as completed)."""
    target = satisfied_by(activities, lab, effective)
    if target is None:
        return activities, None
    done = replace(target, status="completed", satisfied_on=effective)
    return tuple(done if a is target else a for a in activities), done


def overdue(activities: Iterable[Activity], now: date) -> list[Activity]:
    """Open activities whose due date plus grace has passed by `now`, earliest first."""
    return sorted((a for a in activities if _open(a) and a.late_after < now), key=lambda a: a.due)


def hold(activities: tuple[Activity, ...], held_on: date) -> tuple[Activity, ...]:
    """The order is held: open activities due on or after `held_on` go on hold."""
    return tuple(replace(a, status="on-hold") if _open(a) and a.due >= held_on else a for a in activities)


def resume(activities: tuple[Activity, ...], held_on: date, resumed_on: date) -> tuple[Activity, ...]:
    """The order is resumed: the held activities move by the days it was held and are scheduled again."""
    if resumed_on < held_on:
        raise ValueError(f"resumed on {resumed_on}, before the hold on {held_on}")
    shift = resumed_on - held_on
    return tuple(
        replace(a, status="scheduled", due=a.due + shift, window_start=a.window_start + shift)
        if a.status == "on-hold"
        else a
        for a in activities
    )


def discontinue(activities: tuple[Activity, ...]) -> tuple[Activity, ...]:
    """The order is stopped: every activity not completed is cancelled."""
    finished = ("completed", "cancelled")
    return tuple(a if a.status in finished else replace(a, status="cancelled") for a in activities)
