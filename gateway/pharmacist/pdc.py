"""Adherence as proportion of days covered (PDC), the Pharmacy Quality Alliance (PQA) method.

Why this shape: payers and Star ratings judge adherence by the PQA's PDC, so the pharmacist must see the
same number, and see how it came about (the per-fill spans), to act on a patient before the payer does.

What is implemented, for one target group of fills:
- the *treatment period* runs from the index date (the first fill handed over inside the measurement
  period) to the period end, both days included; fills handed over before the period start or after its
  end are not counted (they neither set the index date nor cover days; PQA counts fills in the period);
- fills of the *same drug* (the caller's drug key: the active ingredient, so a change of strength is the
  same drug) that overlap, or fall on the same day, are shifted forward to start the day after the previous
  supply of that drug ends;
- fills of *different drugs* of one group are not shifted against each other: a day is covered when any
  of them covers it (taking two drugs of the class on one day covers that day once);
- a day is covered once however many fills cover it; supply beyond the period end is not counted;
- PDC = covered days / days in the treatment period; adherent when PDC >= the threshold (80 %, 90 % for
  antiretrovirals), compared exactly (fractions, no float rounding at the boundary).

PQA's denominator also asks for at least two fills on different dates (and, per measure, a minimum
treatment period); `distinct_fill_dates` is given so the caller can apply the measure's rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction

PQA_THRESHOLD = Fraction(4, 5)
ANTIRETROVIRAL_THRESHOLD = Fraction(9, 10)
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Fill:
    """One dispense: handed over on `handed_over` with `days_supply` days of `drug` (the drug key)."""

    drug: str
    handed_over: date
    days_supply: int
    source: str | None = None  # e.g. "MedicationDispense/123", to explain a span

    def __post_init__(self) -> None:
        if self.days_supply < 1:
            raise ValueError(f"days_supply must be at least 1, got {self.days_supply}")


@dataclass(frozen=True, slots=True)
class Coverage:
    """A fill and the days it covers after shifting: `start`..`end` inclusive (None when not counted);
    `counted` is how many of those days lie in the treatment period."""

    fill: Fill
    start: date | None
    end: date | None
    counted: int
    note: str | None = None  # why it was shifted or not counted


@dataclass(frozen=True, slots=True)
class PdcResult:
    index_date: date | None  # None: no fill in the period, so no PDC
    period_end: date
    days_in_period: int
    days_covered: int
    pdc: Fraction | None
    threshold: Fraction
    adherent: bool
    distinct_fill_dates: int
    fills: tuple[Coverage, ...]

    @property
    def percent(self) -> float | None:
        return None if self.pdc is None else round(float(self.pdc) * 100, 1)


def _shifted(fills: list[Fill], start: date, end: date) -> tuple[list[Coverage], set[date]]:
    """Shift one drug's fills forward past each other and clip them to `start`..`end`."""
    coverages: list[Coverage] = []
    covered: set[date] = set()
    free_from: date | None = None  # the first day this drug's earlier supply leaves uncovered
    for fill in sorted(fills, key=lambda f: f.handed_over):
        first = fill.handed_over if free_from is None else max(fill.handed_over, free_from)
        last = first + timedelta(days=fill.days_supply - 1)
        free_from = last + _DAY
        days = {first + timedelta(days=n) for n in range((last - first).days + 1)}
        inside = {day for day in days if start <= day <= end}
        notes = []
        if first != fill.handed_over:
            notes.append(f"shifted {(first - fill.handed_over).days} days past the previous supply")
        if len(inside) < len(days):
            notes.append(f"{len(days) - len(inside)} days past the period end not counted")
        coverages.append(Coverage(fill, first, last, len(inside), "; ".join(notes) or None))
        covered |= inside
    return coverages, covered


def pdc(
    fills: Iterable[Fill],
    period_start: date,
    period_end: date,
    threshold: Fraction = PQA_THRESHOLD,
) -> PdcResult:
    """The PDC of one target group of fills over the measurement period `period_start`..`period_end`."""
    if period_end < period_start:
        raise ValueError(f"period end {period_end} is before its start {period_start}")
    inside: list[Fill] = []
    outside: list[Coverage] = []
    for fill in fills:
        if period_start <= fill.handed_over <= period_end:
            inside.append(fill)
        else:
            where = "before the period start" if fill.handed_over < period_start else "after the period end"
            outside.append(Coverage(fill, None, None, 0, f"handed over {where}: not counted"))
    if not inside:
        return PdcResult(None, period_end, 0, 0, None, threshold, False, 0, tuple(outside))
    index = min(fill.handed_over for fill in inside)
    by_drug: dict[str, list[Fill]] = {}
    for fill in inside:
        by_drug.setdefault(fill.drug, []).append(fill)
    coverages: list[Coverage] = []
    covered: set[date] = set()
    for drug_fills in by_drug.values():
        spans, days = _shifted(drug_fills, index, period_end)
        coverages.extend(spans)
        covered |= days
    coverages.sort(key=lambda c: (c.fill.handed_over, c.fill.drug))
    days_in_period = (period_end - index).days + 1
    ratio = Fraction(len(covered), days_in_period)
    return PdcResult(
        index_date=index,
        period_end=period_end,
        days_in_period=days_in_period,
        days_covered=len(covered),
        pdc=ratio,
        threshold=threshold,
        adherent=ratio >= threshold,
        distinct_fill_dates=len({fill.handed_over for fill in inside}),
        fills=tuple(sorted(outside, key=lambda c: c.fill.handed_over)) + tuple(coverages),
    )
