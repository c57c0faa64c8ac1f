"""PDC (PQA method) and fills from MedicationDispenses, with the hand calculations written out.

The measurement period in most tests is 2024-01-01 .. 2024-04-09: 31 (Jan) + 29 (Feb, leap year) + 31
(Mar) + 9 (Apr) = 100 days, so covered days read directly as a percentage. "day n" below is
2024-01-01 + (n - 1): day 31 = Jan 31, day 60 = Feb 29, day 61 = Mar 1, day 100 = Apr 9.
"""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction
from typing import Any

from gateway.pharmacist.dispenses import fills_from_dispenses, ingredient_name
from gateway.pharmacist.pdc import ANTIRETROVIRAL_THRESHOLD, Fill, pdc

START, END = date(2024, 1, 1), date(2024, 4, 9)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def day(n: int) -> date:
    return START + timedelta(days=n - 1)


def test_the_period_is_100_days() -> None:
    assert (END - START).days + 1 == 100 and day(31) == date(2024, 1, 31) and day(61) == date(2024, 3, 1)


def test_overlapping_fills_of_one_drug_are_shifted_forward() -> None:
    # Fill 1: day 1, 30 days -> days 1..30.
    # Fill 2: day 25 overlaps; shifted to start the day after fill 1 ends -> days 31..60.
    # Fill 3: day 51 overlaps fill 2; shifted to day 61 -> days 61..90.
    # Covered 90 of 100 (index day 1 .. day 100) -> 90 %. Without shifting it would be days 1..80 = 80.
    fills = [Fill("clozapine", day(1), 30), Fill("clozapine", day(25), 30), Fill("clozapine", day(51), 30)]
    result = pdc(fills, START, END)
    assert (result.index_date, result.days_in_period, result.days_covered) == (day(1), 100, 90)
    assert result.pdc == Fraction(9, 10) and result.adherent and result.percent == 90.0
    assert [(c.start, c.end, c.counted) for c in result.fills] == [
        (day(1), day(30), 30),
        (day(31), day(60), 30),
        (day(61), day(90), 30),
    ]
    assert result.fills[1].note == "shifted 6 days past the previous supply"  # day 25 -> day 31


def test_fills_on_the_same_day_are_shifted_too() -> None:
    # Two 30-day fills on day 1: days 1..30 and 31..60 -> 60 of 100.
    result = pdc([Fill("x", day(1), 30), Fill("x", day(1), 30)], START, END)
    assert result.days_covered == 60 and result.pdc == Fraction(60, 100)


def test_a_gap_is_uncovered() -> None:
    # Day 1, 30 days -> days 1..30; day 61 (Mar 1), 30 days -> days 61..90. Days 31..60 and 91..100 not
    # covered: 60 of 100 = 60 %, not adherent.
    result = pdc([Fill("x", day(1), 30), Fill("x", day(61), 30)], START, END)
    assert (result.days_covered, result.days_in_period) == (60, 100)
    assert result.pdc == Fraction(3, 5) and not result.adherent
    assert result.distinct_fill_dates == 2


def test_a_strength_switch_is_the_same_drug() -> None:
    # Two RxNorm clinical drugs of one ingredient (different codes, different strengths): one key, so the
    # second fill (day 20) is shifted past the first (days 1..30) -> days 31..60; 60 of 100.
    dispenses = [
        _dispense("a", "2024-01-01", 30, code="197535", name="clozapine 100 MG Oral Tablet"),
        _dispense("b", "2024-01-20T10:00:00-05:00", 30, code="197536", name="clozapine 200 MG Oral Tablet"),
    ]
    extracted = fills_from_dispenses(dispenses)
    assert extracted.skipped == ()
    assert {f.drug for f in extracted.fills} == {"clozapine"}
    result = pdc(extracted.fills, START, END)
    assert result.days_covered == 60
    assert [(c.start, c.end) for c in result.fills] == [(day(1), day(30)), (day(31), day(60))]


def test_different_drugs_of_one_group_are_not_shifted_a_day_counts_once() -> None:
    # Drug A day 1, 30 days -> 1..30; drug B day 20, 30 days -> 20..49 (not shifted: another drug).
    # Union: days 1..49 = 49 of 100.
    result = pdc([Fill("a", day(1), 30), Fill("b", day(20), 30)], START, END)
    assert result.days_covered == 49
    assert [(c.fill.drug, c.start, c.end) for c in result.fills] == [
        ("a", day(1), day(30)),
        ("b", day(20), day(49)),
    ]


def test_fills_before_the_period_are_not_counted() -> None:
    # 2023-12-15, 60 days: handed over before the period, so not counted at all (it would reach Feb 12).
    # Index date: the first fill in the period, day 20 -> treatment period days 20..100 = 81 days.
    # Day 20, 30 days -> days 20..49 = 30 covered. PDC = 30/81 = 37.0 %.
    result = pdc([Fill("x", date(2023, 12, 15), 60), Fill("x", day(20), 30)], START, END)
    assert (result.index_date, result.days_in_period, result.days_covered) == (day(20), 81, 30)
    assert result.pdc == Fraction(30, 81) and result.percent == 37.0
    before = result.fills[0]
    assert (before.start, before.counted) == (None, 0)
    assert before.note == "handed over before the period start: not counted"


def test_supply_past_the_end_is_not_counted() -> None:
    # Day 80 (Mar 20), 90 days -> days 80..169; the treatment period is days 80..100 = 21 days, all
    # covered: 21/21 = 100 %; the 69 days past Apr 9 are not counted.
    result = pdc([Fill("x", day(80), 90)], START, END)
    assert (result.index_date, result.days_in_period, result.days_covered) == (day(80), 21, 21)
    assert result.pdc == 1 and result.adherent
    assert result.fills[0].counted == 21 and result.fills[0].note == "69 days past the period end not counted"


def test_shifting_past_the_end_is_not_counted() -> None:
    # Day 91, 10 days -> 91..100; day 95, 10 days shifted to 101..110: outside, 0 counted. 10/10 days.
    result = pdc([Fill("x", day(91), 10), Fill("x", day(95), 10)], START, END)
    assert (result.days_in_period, result.days_covered) == (10, 10)
    assert result.fills[1].counted == 0


def test_no_fills_means_no_pdc() -> None:
    for fills in ([], [Fill("x", date(2023, 12, 1), 30)], [Fill("x", date(2024, 5, 1), 30)]):
        result = pdc(fills, START, END)
        assert result.index_date is None and result.pdc is None and result.percent is None
        assert not result.adherent and result.days_in_period == result.days_covered == 0


def test_the_80_percent_boundary() -> None:
    # Day 1, 80 days -> days 1..80 of 100: exactly 80 %, adherent (>=), compared exactly.
    exact = pdc([Fill("x", day(1), 80)], START, END)
    assert exact.pdc == Fraction(4, 5) and exact.adherent
    # 79 days -> 79 %: not adherent.
    assert not pdc([Fill("x", day(1), 79)], START, END).adherent
    # Antiretrovirals: 90 %. 80 % is not enough; 90 days is.
    assert not pdc([Fill("x", day(1), 80)], START, END, ANTIRETROVIRAL_THRESHOLD).adherent
    assert pdc([Fill("x", day(1), 90)], START, END, ANTIRETROVIRAL_THRESHOLD).adherent


def test_a_thirty_day_period_boundary_without_float_rounding() -> None:
    # 30-day period (Jan 1 .. Jan 30), 24 covered days: 24/30 = 4/5 exactly -> adherent.
    assert pdc([Fill("x", day(1), 24)], day(1), day(30)).adherent


def _dispense(ident: str, when: str | None, days: Any, code: str | None = None, name: str | None = None,
              status: str = "completed") -> dict[str, Any]:  # fmt: skip
    resource: dict[str, Any] = {"resourceType": "MedicationDispense", "id": ident, "status": status}
    if when is not None:
        resource["whenHandedOver"] = when
    if days is not None:
        resource["daysSupply"] = {
            "value": days,
            "unit": "day",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        }
    coding = {"system": RXNORM, "code": code, "display": name} if code else None
    resource["medicationCodeableConcept"] = {"coding": [coding] if coding else [], "text": name}
    return resource


def test_dispenses_that_cannot_count_are_reported_with_a_reason() -> None:
    good = _dispense("ok", "2024-02-01", 30, "197535", "clozapine 100 MG Oral Tablet")
    weeks = _dispense("wk", "2024-02-01", 4, "197535", "clozapine 100 MG Oral Tablet")
    weeks["daysSupply"] = {"value": 4, "code": "wk", "system": "http://unitsofmeasure.org"}
    nameless = _dispense("anon", "2024-02-01", 30)
    nameless["medicationCodeableConcept"] = {"coding": [{"system": "urn:local", "code": "X"}]}
    dangling = _dispense("ref", "2024-02-01", 30)
    dangling["medicationReference"] = {"reference": "Medication/missing"}
    del dangling["medicationCodeableConcept"]
    extracted = fills_from_dispenses(
        [
            good,
            _dispense("ip", "2024-02-01", 30, "197535", "clozapine 100 MG Oral Tablet", status="in-progress"),
            _dispense("nowhen", None, 30, "197535", "clozapine 100 MG Oral Tablet"),
            _dispense("month", "2024-02", 30, "197535", "clozapine 100 MG Oral Tablet"),
            _dispense("nodays", "2024-02-01", None, "197535", "clozapine 100 MG Oral Tablet"),
            _dispense("zero", "2024-02-01", 0, "197535", "clozapine 100 MG Oral Tablet"),
            _dispense("half", "2024-02-01", 7.5, "197535", "clozapine 100 MG Oral Tablet"),
            weeks,
            nameless,
            dangling,
        ]
    )
    assert extracted.fills == (Fill("clozapine", date(2024, 2, 1), 30, "MedicationDispense/ok"),)
    assert [(s.reference, s.reason) for s in extracted.skipped] == [
        ("MedicationDispense/ip", "status 'in-progress', not completed"),
        ("MedicationDispense/nowhen", "whenHandedOver None is not a day"),
        ("MedicationDispense/month", "whenHandedOver '2024-02' is not a day"),
        ("MedicationDispense/nodays", "no daysSupply"),
        ("MedicationDispense/zero", "daysSupply 0 is not positive"),
        ("MedicationDispense/half", "daysSupply 7.5 is not a whole number of days"),
        ("MedicationDispense/wk", "daysSupply in 'wk', not days"),
        ("MedicationDispense/anon", "medication has no RxNorm code or name to tell the drug by"),
        ("MedicationDispense/ref", "medication Medication/missing not found"),
    ]


def test_contained_and_referenced_medications() -> None:
    medication = {"resourceType": "Medication", "id": "m1",
                  "code": {"coding": [{"system": RXNORM, "code": "1364435",
                                       "display": "apixaban 5 MG Oral Tablet [Eliquis]"}]}}  # fmt: skip
    contained = _dispense("c", "2024-01-05", 30)
    del contained["medicationCodeableConcept"]
    contained["contained"] = [medication]
    contained["medicationReference"] = {"reference": "#m1"}
    referenced = _dispense("r", "2024-02-04", 30)
    del referenced["medicationCodeableConcept"]
    referenced["medicationReference"] = {"reference": "Medication/m1"}
    extracted = fills_from_dispenses([contained, referenced], medications={"Medication/m1": medication})
    assert extracted.skipped == ()
    assert [(f.drug, f.handed_over) for f in extracted.fills] == [
        ("apixaban", date(2024, 1, 5)),
        ("apixaban", date(2024, 2, 4)),
    ]


def test_ingredient_names_and_the_code_fallback() -> None:
    assert ingredient_name("clozapine 100 MG Oral Tablet [Clozaril]") == "clozapine"
    assert ingredient_name("abacavir 600 MG / lamivudine 300 MG Oral Tablet") == "abacavir / lamivudine"
    assert ingredient_name("1 ML adalimumab 40 MG/ML Prefilled Syringe") == "adalimumab"
    assert ingredient_name("Clozaril") is None
    # No strength in the name: the RxNorm code is the key (a strength switch then counts as another drug).
    extracted = fills_from_dispenses([_dispense("b", "2024-01-01", 30, "42", "Clozaril")])
    assert extracted.fills[0].drug == "rxnorm:42"
