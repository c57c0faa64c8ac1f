"""Monitoring calendars: the shipped schedules, the strict format, and a clozapine calendar run against a
simulated clock (plain dates; nothing reads the real time)."""

from __future__ import annotations

import textwrap
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from gateway.mapping.files import MappingError
from gateway.mapping.monitoring import Code, DrugLabRule, MonitoringRules, load_monitoring
from gateway.pharmacist.schedule import (
    Activity,
    add_months,
    discontinue,
    hold,
    overdue,
    plan,
    record_result,
    resume,
    satisfied_by,
)

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
ANC = Code("http://loinc.org", "751-8")
ANC_ALT = Code("http://loinc.org", "26499-4")
ALT = Code("http://loinc.org", "1742-6")
START = date(2024, 1, 1)  # a Monday; 2024 is a leap year


@pytest.fixture(scope="module")
def rules() -> MonitoringRules:
    return load_monitoring(MAPPINGS)


@pytest.fixture(scope="module")
def clozapine(rules: MonitoringRules) -> DrugLabRule:
    return next(rule for rule in rules.drug_lab if rule.id == "clozapine-anc")


def test_every_shipped_schedule_loads_and_produces_dates(rules: MonitoringRules) -> None:
    assert rules.drug_lab and all(rule.schedule is not None for rule in rules.drug_lab)
    for rule in rules.drug_lab:
        assert rule.schedule is not None and rule.schedule.source.strip(), rule.id
        activities = plan(rule, START, months=24)
        assert activities, rule.id
        dues = [a.due for a in activities]
        assert dues == sorted(set(dues)) and dues[0] >= START and dues[-1] <= date(2026, 1, 1), rule.id
        assert [a.sequence for a in activities] == list(
            range(activities[0].sequence, activities[0].sequence + len(activities))
        )
        assert all(a.labs == rule.labs and a.status == "scheduled" for a in activities), rule.id


def test_clozapine_calendar(clozapine: DrugLabRule) -> None:
    activities = plan(clozapine, START, months=24)
    dues = [a.due for a in activities]
    # Baseline on the start day, sequence 0.
    assert (activities[0].sequence, activities[0].due) == (0, START)
    # Weekly to month 6: Jan 1 + 26 weeks = Jul 1 = Jan 1 + 6 months (182 days), so 26 weekly labs.
    weekly = dues[1:27]
    assert weekly[0] == date(2024, 1, 8) and weekly[-1] == date(2024, 7, 1)
    assert all(b - a == timedelta(weeks=1) for a, b in pairwise(weekly))
    # Every 2 weeks from Jul 1 to month 12 (2025-01-01): Jul 15 ... Dec 30 (13 steps of 14 days).
    biweekly = dues[27:40]
    assert biweekly[0] == date(2024, 7, 15) and biweekly[-1] == date(2024, 12, 30)
    # Monthly from Dec 30, counted from Dec 30 so February's short month does not make the rest drift.
    assert dues[40:43] == [date(2025, 1, 30), date(2025, 2, 28), date(2025, 3, 30)]
    assert dues[-1] == date(2025, 12, 30) and len(activities) == 1 + 26 + 13 + 12


def test_horizon_by_count(clozapine: DrugLabRule) -> None:
    activities = plan(clozapine, START, count=3)
    assert [(a.sequence, a.due) for a in activities] == [
        (0, START),
        (1, date(2024, 1, 8)),
        (2, date(2024, 1, 15)),
    ]
    assert len(plan(clozapine, START, months=1, count=100)) == 5  # Jan 1, 8, 15, 22, 29 (Feb 1 is the end)
    with pytest.raises(ValueError, match="horizon"):
        plan(clozapine, START)


def _calendar(clozapine: DrugLabRule) -> tuple[Activity, ...]:
    # Baseline Jan 1 (#0), weekly: #1 Jan 8, #2 Jan 15, #3 Jan 22, #4 Jan 29, #5 Feb 5, ...; grace 2 days.
    activities = plan(clozapine, START, count=12)
    for effective in (date(2023, 12, 28), date(2024, 1, 8), date(2024, 1, 15)):  # #0, #1, #2 on time
        activities, done = record_result(activities, ANC, effective)
        assert done is not None
    return activities


def test_one_missed_week_gives_exactly_one_overdue_activity(clozapine: DrugLabRule) -> None:
    activities = _calendar(clozapine)
    assert [a.sequence for a in activities if a.status == "completed"] == [0, 1, 2]
    # #3 is due Jan 22; with 2 days' grace a result on Jan 24 still counts: not overdue on Jan 24.
    assert overdue(activities, date(2024, 1, 24)) == []
    # Jan 25: overdue, and only #3 (#4, due Jan 29, is not late yet).
    late = overdue(activities, date(2024, 1, 25))
    assert [(a.sequence, a.due) for a in late] == [(3, date(2024, 1, 22))]
    # The next result, Jan 29, is outside #3's window (Jan 16 .. Jan 24) and inside #4's (Jan 23 .. Jan 31):
    # it completes #4; #3 stays overdue.
    activities, done = record_result(activities, ANC, date(2024, 1, 29))
    assert done is not None and (done.sequence, done.satisfied_on) == (4, date(2024, 1, 29))
    assert [a.sequence for a in overdue(activities, date(2024, 1, 30))] == [3]


def test_a_late_result_within_grace_completes_the_late_activity(clozapine: DrugLabRule) -> None:
    activities = _calendar(clozapine)
    # Jan 23 lies in #3's window (Jan 16 .. Jan 24) and in #4's (Jan 23 .. Jan 31): the earliest open wins.
    chosen = satisfied_by(activities, ANC_ALT, date(2024, 1, 23))  # the other ANC code counts too
    assert chosen is not None and chosen.sequence == 3
    assert satisfied_by(activities, ALT, date(2024, 1, 23)) is None  # not one of the rule's labs


def test_baseline_window(clozapine: DrugLabRule) -> None:
    activities = plan(clozapine, START, count=2)
    # The baseline counts from 30 days before the start; a result 31 days before is too old.
    assert satisfied_by(activities, ANC, START - timedelta(days=30)) == activities[0]
    assert satisfied_by(activities, ANC, START - timedelta(days=31)) is None
    # On the start day the result is the baseline, not lab #1 (whose window opens the day after).
    assert satisfied_by(activities, ANC, START) == activities[0]


def test_hold_and_resume_shift_the_remaining_activities(clozapine: DrugLabRule) -> None:
    activities = _calendar(clozapine)
    activities, _ = record_result(activities, ANC, date(2024, 1, 22))  # #3
    activities, _ = record_result(activities, ANC, date(2024, 1, 29))  # #4
    # Held on Feb 1: #5 (Feb 5) onwards go on hold; held ones are never overdue.
    held = hold(activities, date(2024, 2, 1))
    assert [a.sequence for a in held if a.status == "on-hold"] == list(range(5, 12))
    assert overdue(held, date(2024, 2, 20)) == []
    assert satisfied_by(held, ANC, date(2024, 2, 5)) is None
    # Resumed on Feb 15: 14 days held, so #5 moves from Feb 5 to Feb 19 (window Jan 30 -> Feb 13).
    resumed = resume(held, date(2024, 2, 1), date(2024, 2, 15))
    fifth = resumed[5]
    assert (fifth.sequence, fifth.status, fifth.due, fifth.window_start) == (
        5,
        "scheduled",
        date(2024, 2, 19),
        date(2024, 2, 13),
    )
    assert [a.due for a in resumed[5:8]] == [date(2024, 2, 19), date(2024, 2, 26), date(2024, 3, 4)]
    assert [a.due for a in resumed[:5]] == [a.due for a in activities[:5]]  # completed ones stay
    assert overdue(resumed, date(2024, 2, 21)) == []
    assert [a.sequence for a in overdue(resumed, date(2024, 2, 22))] == [5]  # Feb 19 + 2 days grace


def test_discontinue_cancels_the_remaining_activities(clozapine: DrugLabRule) -> None:
    activities = _calendar(clozapine)
    stopped = discontinue(hold(activities, date(2024, 2, 1)))
    assert [a.status for a in stopped[:3]] == ["completed"] * 3
    assert {a.status for a in stopped[3:]} == {"cancelled"}  # the overdue #3, the held and the scheduled
    assert overdue(stopped, date(2025, 1, 1)) == []
    assert record_result(stopped, ANC, date(2024, 1, 22)) == (stopped, None)


def test_schedule_without_baseline_starts_its_first_window_on_the_start_day(rules: MonitoringRules) -> None:
    lithium = next(rule for rule in rules.drug_lab if rule.id == "lithium-level")
    first = plan(lithium, START, count=1)[0]
    assert (first.sequence, first.due, first.window_start) == (1, date(2024, 1, 8), START)


def test_add_months_keeps_the_day_or_takes_the_month_end() -> None:
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2023, 1, 31), 1) == date(2023, 2, 28)
    assert add_months(date(2024, 11, 15), 14) == date(2026, 1, 15)


GOOD = {
    "baseline": "true",
    "phases": "[{until_month: 6, every: 1 week}, {every: 1 month}]",
    "grace_days": "2",
    "source": "label",
}


def _file(**schedule: str | None) -> str:
    fields = {key: value for key, value in (GOOD | schedule).items() if value is not None}
    body = "\n".join(f"      {key}: {value}" for key, value in fields.items())
    return textwrap.dedent("""\
        rules:
          - id: r1
            drug: clozapine
            names: [clozapine]
            labs: [{system: http://loinc.org, code: 751-8}]
            source: label
            bands: [{when: {below: 500}, unit: /uL, severity: high, action: stop}]
            schedule:
        """) + body + "\n"  # fmt: skip


def test_the_good_schedule_loads(tmp_path: Path) -> None:
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "drug-lab.yaml").write_text(_file(), encoding="utf-8")
    schedule = load_monitoring(tmp_path).drug_lab[0].schedule
    assert schedule is not None and schedule.baseline and schedule.grace_days == 2
    assert [(p.every.describe(), p.until_month) for p in schedule.phases] == [
        ("1 week", 6),
        ("1 month", None),
    ]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"every_day": "1"}, "schedule: unknown keys ['every_day']"),
        ({"phases": "[{every: 1 fortnight}]"}, "schedule: phases[0]: 'every' must be like '1 week'"),
        ({"phases": "[{every: 0 weeks}]"}, "schedule: phases[0]: 'every' must be like"),
        ({"phases": "[{until_month: 6, evry: 1 week}]"}, "schedule: phases[0]: unknown keys ['evry']"),
        ({"phases": "[{until_month: 6, every: 1 week}, {until_month: 6, every: 2 weeks}]"},
         "schedule: phases[1]: phases must end later than the one before"),
        ({"phases": "[{every: 1 week}, {until_month: 12, every: 2 weeks}]"},
         "schedule: phases[1]: phases must end later than the one before; only the last may omit"),
        ({"phases": "[{until_month: 0, every: 1 week}]"}, "schedule: phases[0]: 'until_month' must be"),
        ({"phases": "{every: 1 week}"}, "schedule: 'phases' must be a list"),
        ({"baseline": "yes please"}, "schedule: 'baseline' must be true or false"),
        ({"baseline": "false", "phases": None}, "schedule: needs 'phases' and/or 'baseline: true'"),
        ({"grace_days": None}, "schedule: 'grace_days' must be a whole number of days >= 0, got None"),
        ({"grace_days": "-1"}, "schedule: 'grace_days' must be a whole number"),
        ({"source": None}, "schedule: 'source' must be a non-empty string"),
    ],
)  # fmt: skip
def test_a_broken_schedule_names_file_and_entry(
    tmp_path: Path, schedule: dict[str, str | None], expected: str
) -> None:
    folder = tmp_path / "monitoring"
    folder.mkdir()
    (folder / "drug-lab.yaml").write_text(_file(**schedule), encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_monitoring(tmp_path)
    assert str(caught.value).startswith(f"{folder / 'drug-lab.yaml'}: rules[0] (r1): schedule")
    assert expected in str(caught.value)
