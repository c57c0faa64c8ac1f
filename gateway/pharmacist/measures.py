"""The pharmacist's measures, pure: what each patient, order, alert and monitoring activity contributes,
and the tallies that add them up into the populations and scores of a MeasureReport.

Why pure: the same tallies feed `Measure/{id}/$evaluate-measure` (one patient, one pharmacist's
patients, everyone) and the gauges on `/metrics`, so the two can never disagree; and every rule below can
be checked by hand against a simulated clock. The service layer reads the store page by page and feeds
the tallies; nothing here holds more than one page of resources.

Days and instants. A day "as written" is the first ten characters of a FHIR date or dateTime (the
pharmacy's or the lab's local day, as PDC takes the date of service). Instants are the lower bound of the
value in UTC microseconds (`gateway.fhir.dates`); a time without a zone is UTC.

The measures (Measure resources under `profiles/`, README "Metrics: MeasureReports and gauges"):

- `pdc` (per patient): each drug (active ingredient: a strength switch is the same drug) is its own
  target group, measured with `gateway.pharmacist.pdc` from its first fill in the period to the period
  end. Initial population: a completed dispense handed over in the period. Denominator: at least two fills
  of one drug on different days (PQA). Numerator: every such drug at or above the threshold (80 %). The
  patient's PDC is the lowest of those drugs' (the drug most at risk); its mean is the second group.
- `time-to-first-dose` (per order): MedicationRequest.authoredOn (a day in the period) to the earliest
  whenHandedOver of a completed MedicationDispense whose authorizingPrescription is that order. Orders not
  dispensed yet are excluded from the measure population, and counted.
- `pa-turnaround` (per PA request first submitted in the period): decided on or before the CMS-0057-F due
  date (numerator) among those decided or overdue; requests still within their deadline, or ended without
  a decision, are excluded. Second group: hours to the decision (median). Figures from
  `gateway.pa.turnaround`, the same as `Task/$pa-turnaround`.
- `alert-response` (per alert or lab-overdue Task raised in the period, by authoredOn): time to the first
  version whose status is accepted or in-progress (acknowledged; a first version already completed counts
  as acknowledged then too: nobody resolves an alert unseen), and to the first version whose status is
  completed (resolved). Entered-in-error Tasks are not counted.
- `monitoring-adherence` (per monitoring CarePlan activity whose scheduledPeriod.end is a day in the
  period): denominator once that day has passed, excluding cancelled, on-hold, stopped and
  entered-in-error activities; numerator: completed with an outcome Observation whose effective day is on
  or before scheduledPeriod.end.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from typing import Any, Final

from gateway.fhir import dates
from gateway.fhir.references import parse_reference
from gateway.pa.turnaround import Clock, summarize
from gateway.pharmacist import vocabulary as vocab
from gateway.pharmacist.pdc import PQA_THRESHOLD, Fill, PdcResult, pdc

JSON = dict[str, Any]

US_PER_SECOND: Final = 1_000_000
SECONDS_PER_HOUR: Final = 3600

# measure-population codes (http://terminology.hl7.org/CodeSystem/measure-population)
INITIAL: Final = "initial-population"
DENOMINATOR: Final = "denominator"
DENOMINATOR_EXCLUSION: Final = "denominator-exclusion"
NUMERATOR: Final = "numerator"
MEASURE_POPULATION: Final = "measure-population"
MEASURE_POPULATION_EXCLUSION: Final = "measure-population-exclusion"
MEASURE_OBSERVATION: Final = "measure-observation"

# MedicationRequests that are not (yet, or ever) orders a first dose is owed for.
NOT_AN_ORDER_STATUS: Final = frozenset({"draft", "entered-in-error"})
NOT_AN_ORDER_INTENT: Final = frozenset({"proposal", "plan", "option"})
ACKNOWLEDGED: Final = frozenset({"accepted", "in-progress", "completed"})
ALERT_KINDS: Final = frozenset({vocab.ALERT, vocab.LAB_OVERDUE})
# Monitoring activities nothing is owed for (any more).
NOT_OWED: Final = frozenset({"cancelled", "on-hold", "stopped", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Period:
    """The measurement period, both days included."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"the period ends ({self.end}) before it starts ({self.start})")

    def holds(self, day: date | None) -> bool:
        return day is not None and self.start <= day <= self.end

    @property
    def start_us(self) -> int:
        return dates.date_range(self.start.isoformat())[0]

    @property
    def end_us(self) -> int:
        """The last microsecond of the last day (UTC)."""
        return dates.date_range(self.end.isoformat())[1]

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def day_of(value: Any) -> date | None:
    """The calendar day of a FHIR date or dateTime as written; None when it is not one."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def instant_of(value: Any) -> int | None:
    """The start of a FHIR date/dateTime/instant in UTC microseconds; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return dates.date_range(value)[0]
    except ValueError:
        return None


def reference_of(value: Any, resource_type: str) -> str | None:
    """`Type/id` of a Reference to a resource of this server of `resource_type` (history stripped)."""
    reference = value.get("reference") if isinstance(value, Mapping) else None
    parsed = parse_reference(reference) if isinstance(reference, str) else None
    return f"{parsed[0]}/{parsed[1]}" if parsed and parsed[0] == resource_type else None


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []


def _coded(concept: Any, system: str, codes: Iterable[str]) -> str | None:
    """The first of `codes` that the CodeableConcept carries in `system`."""
    wanted = set(codes)
    for coding in _codings(concept):
        if coding.get("system") == system and coding.get("code") in wanted:
            return str(coding["code"])
    return None


def _list(value: Any, name: str) -> list[Any]:
    found = value.get(name) if isinstance(value, Mapping) else None
    return found if isinstance(found, list) else []


# -- what a group of a MeasureReport says --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stratum:
    value: str
    populations: tuple[tuple[str, int], ...]
    score: float | None


@dataclass(frozen=True, slots=True)
class GroupResult:
    """One group of a MeasureReport: its populations in order, its score and, maybe, its strata."""

    code: str  # the Measure's group code (`https://specialty-gateway.org/fhir/CodeSystem/measure-group`)
    populations: tuple[tuple[str, int], ...]
    score: float | None  # a proportion or ratio (0..1), or hours for the time measures
    unit: str | None = None  # UCUM for the score (`h`), None for proportions and ratios
    stratifier: str | None = None
    strata: tuple[Stratum, ...] = ()


def ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / SECONDS_PER_HOUR, 2)


@dataclass(slots=True)
class Durations:
    """Seconds measured for a continuous-variable group (the values are what is kept: a median needs them)."""

    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None


# -- adherence (PDC) ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrugAdherence:
    drug: str
    result: PdcResult
    qualifies: bool  # PQA's denominator: at least `min_fill_days` fills on different days in the period


@dataclass(frozen=True, slots=True)
class PatientAdherence:
    drugs: tuple[DrugAdherence, ...]

    @property
    def in_initial_population(self) -> bool:
        return any(d.result.index_date is not None for d in self.drugs)

    @property
    def qualifying(self) -> tuple[DrugAdherence, ...]:
        return tuple(d for d in self.drugs if d.qualifies)

    @property
    def in_denominator(self) -> bool:
        return bool(self.qualifying)

    @property
    def pdc(self) -> Fraction | None:
        """The lowest PDC of the drugs in the denominator: the drug most at risk."""
        found = [d.result.pdc for d in self.qualifying if d.result.pdc is not None]
        return min(found) if found else None

    @property
    def adherent(self) -> bool:
        return self.in_denominator and all(d.result.adherent for d in self.qualifying)


def patient_adherence(
    fills: Iterable[Fill],
    period: Period,
    *,
    threshold: Fraction = PQA_THRESHOLD,
    min_fill_days: int = 2,
) -> PatientAdherence:
    """One patient's adherence over the period: one PDC per drug (the fills' drug key)."""
    by_drug: dict[str, list[Fill]] = {}
    for fill in fills:
        by_drug.setdefault(fill.drug, []).append(fill)
    drugs = []
    for drug in sorted(by_drug):
        result = pdc(by_drug[drug], period.start, period.end, threshold)
        qualifies = result.index_date is not None and result.distinct_fill_dates >= min_fill_days
        drugs.append(DrugAdherence(drug, result, qualifies))
    return PatientAdherence(tuple(drugs))


@dataclass(slots=True)
class PdcTally:
    initial: int = 0
    denominator: int = 0
    numerator: int = 0
    pdc_sum: float = 0.0
    by_drug: dict[str, tuple[int, float]] = field(default_factory=dict)  # drug -> (patients, PDC sum)

    def add(self, patient: PatientAdherence) -> None:
        if not patient.in_initial_population:
            return
        self.initial += 1
        if not patient.in_denominator or patient.pdc is None:
            return
        self.denominator += 1
        self.numerator += int(patient.adherent)
        self.pdc_sum += float(patient.pdc)
        for drug in patient.qualifying:
            if drug.result.pdc is not None:
                count, total = self.by_drug.get(drug.drug, (0, 0.0))
                self.by_drug[drug.drug] = (count + 1, total + float(drug.result.pdc))

    @property
    def mean(self) -> float | None:
        """The mean of the patients' PDCs (0..1, four decimals): the figure `gateway_pdc_mean` shows."""
        return round(self.pdc_sum / self.denominator, 4) if self.denominator else None

    def groups(self) -> list[GroupResult]:
        strata = tuple(
            Stratum(
                drug, ((MEASURE_POPULATION, count), (MEASURE_OBSERVATION, count)), round(total / count, 4)
            )
            for drug, (count, total) in sorted(self.by_drug.items())
        )
        return [
            GroupResult(
                "adherent",
                ((INITIAL, self.initial), (DENOMINATOR, self.denominator), (NUMERATOR, self.numerator)),
                ratio(self.numerator, self.denominator),
            ),
            GroupResult(
                "pdc",
                (
                    (INITIAL, self.initial),
                    (MEASURE_POPULATION, self.denominator),
                    (MEASURE_OBSERVATION, self.denominator),
                ),
                self.mean,
                stratifier="drug",
                strata=strata,
            ),
        ]


# -- time to first dose -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstDose:
    request: str  # MedicationRequest/id
    authored_us: int
    dispense: str | None  # MedicationDispense/id of the first dose, None while there is none
    handed_over_us: int | None

    @property
    def seconds(self) -> float | None:
        """Order to first dose; a dispense dated before the order (a day-only authoredOn and a hand-over
        the same morning in another zone) counts as no wait, never as a negative one."""
        if self.handed_over_us is None:
            return None
        return max(0, self.handed_over_us - self.authored_us) / US_PER_SECOND


def is_order_in(request: Mapping[str, Any], period: Period) -> bool:
    """A MedicationRequest that is an order authored on a day in the period."""
    return (
        request.get("status") not in NOT_AN_ORDER_STATUS
        and request.get("intent") not in NOT_AN_ORDER_INTENT
        and period.holds(day_of(request.get("authoredOn")))
        and instant_of(request.get("authoredOn")) is not None
    )


def first_doses(
    requests: Iterable[Mapping[str, Any]], dispenses: Iterable[Mapping[str, Any]], period: Period
) -> list[FirstDose]:
    """Each order authored in the period with its first completed dispense (any time after the period)."""
    first: dict[str, tuple[int, str]] = {}  # MedicationRequest/id -> (handed over, MedicationDispense/id)
    for dispense in dispenses:
        handed_over = instant_of(dispense.get("whenHandedOver"))
        if dispense.get("status") != "completed" or handed_over is None:
            continue
        for prescription in _list(dispense, "authorizingPrescription"):
            ordered = reference_of(prescription, "MedicationRequest")
            if ordered is not None:
                found = (handed_over, f"MedicationDispense/{dispense.get('id')}")
                first[ordered] = min(first.get(ordered, found), found)
    doses = []
    for request in requests:
        if not is_order_in(request, period):
            continue
        key = f"MedicationRequest/{request.get('id')}"
        handed_over, dispense_ref = first.get(key, (None, None))
        authored = instant_of(request.get("authoredOn"))
        assert authored is not None  # is_order_in checked it
        doses.append(FirstDose(key, authored, dispense_ref, handed_over))
    return doses


@dataclass(slots=True)
class FirstDoseTally:
    initial: int = 0
    waiting: int = 0  # not dispensed yet (measure-population exclusion)
    durations: Durations = field(default_factory=Durations)

    def add(self, dose: FirstDose) -> None:
        self.initial += 1
        if dose.seconds is None:
            self.waiting += 1
        else:
            self.durations.add(dose.seconds)

    def groups(self) -> list[GroupResult]:
        measured = len(self.durations.values)
        return [
            GroupResult(
                "time-to-first-dose",
                (
                    (INITIAL, self.initial),
                    (MEASURE_POPULATION, self.initial),
                    (MEASURE_POPULATION_EXCLUSION, self.waiting),
                    (MEASURE_OBSERVATION, measured),
                ),
                hours(self.durations.median),
                unit="h",
            )
        ]


# -- prior-authorization turnaround --------------------------------------------------------------------


@dataclass(slots=True)
class TurnaroundTally:
    """PA requests first submitted in the period, as `gateway.pa.turnaround` figures them."""

    now_us: int
    clocks: list[Clock] = field(default_factory=list)

    def add(self, clock: Clock) -> None:
        self.clocks.append(clock)

    def groups(self) -> list[GroupResult]:
        figures = summarize(self.clocks, self.now_us)
        initial = len(self.clocks)
        late = figures.decided_late + figures.overdue
        judged = figures.decided_on_time + late  # whether the deadline was kept is known
        median = figures.median_hours
        return [
            GroupResult(
                "decided-on-time",
                (
                    (INITIAL, initial),
                    (DENOMINATOR, initial),
                    (DENOMINATOR_EXCLUSION, initial - judged),
                    (NUMERATOR, figures.decided_on_time),
                ),
                ratio(figures.decided_on_time, judged),
            ),
            GroupResult(
                "turnaround",
                (
                    (INITIAL, initial),
                    (MEASURE_POPULATION, initial),
                    (MEASURE_POPULATION_EXCLUSION, initial - figures.decided),
                    (MEASURE_OBSERVATION, figures.decided),
                ),
                None if median is None else round(median, 2),
                unit="h",
            ),
        ]


# -- alert response -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskVersion:
    version: int
    recorded_us: int  # when the store took this version (meta.lastUpdated)
    task: Mapping[str, Any] | None  # None: a deletion


@dataclass(frozen=True, slots=True)
class AlertResponse:
    task: str  # Task/id
    kind: str  # alert | lab-overdue
    raised_day: date | None
    raised_us: int
    acknowledged_us: int | None
    resolved_us: int | None

    def _since_raised(self, moment: int | None) -> float | None:
        return None if moment is None else max(0, moment - self.raised_us) / US_PER_SECOND

    @property
    def acknowledge_seconds(self) -> float | None:
        return self._since_raised(self.acknowledged_us)

    @property
    def resolve_seconds(self) -> float | None:
        return self._since_raised(self.resolved_us)


def alert_kind(task: Mapping[str, Any]) -> str | None:
    return _coded(task.get("code"), vocab.WORK_ITEM_TYPE, ALERT_KINDS)


def alert_response(task_id: str, versions: Sequence[TaskVersion]) -> AlertResponse | None:
    """How one alert Task was answered, from its versions (oldest first); None when its current version
    is not an alert (any more), is deleted or was entered in error."""
    ordered = sorted(versions, key=lambda v: v.version)
    current = ordered[-1].task if ordered else None
    kind = alert_kind(current) if current is not None else None
    if current is None or kind is None or current.get("status") == "entered-in-error":
        return None
    authored = next((v.task["authoredOn"] for v in ordered if v.task and v.task.get("authoredOn")), None)
    raised_us = instant_of(authored)
    raised_day = day_of(authored)
    if raised_us is None:  # no authoredOn: raised when first stored
        raised_us = ordered[0].recorded_us
        raised_day = dates.from_us(raised_us).date()
    acknowledged = next(
        (v.recorded_us for v in ordered if v.task and v.task.get("status") in ACKNOWLEDGED), None
    )
    resolved = next((v.recorded_us for v in ordered if v.task and v.task.get("status") == "completed"), None)
    return AlertResponse(f"Task/{task_id}", kind, raised_day, raised_us, acknowledged, resolved)


@dataclass(slots=True)
class AlertTally:
    initial: int = 0
    acknowledge: Durations = field(default_factory=Durations)
    resolve: Durations = field(default_factory=Durations)

    def add(self, response: AlertResponse) -> None:
        self.initial += 1
        if response.acknowledge_seconds is not None:
            self.acknowledge.add(response.acknowledge_seconds)
        if response.resolve_seconds is not None:
            self.resolve.add(response.resolve_seconds)

    def _group(self, code: str, durations: Durations) -> GroupResult:
        measured = len(durations.values)
        return GroupResult(
            code,
            (
                (INITIAL, self.initial),
                (MEASURE_POPULATION, self.initial),
                (MEASURE_POPULATION_EXCLUSION, self.initial - measured),
                (MEASURE_OBSERVATION, measured),
            ),
            hours(durations.median),
            unit="h",
        )

    def groups(self) -> list[GroupResult]:
        return [self._group("acknowledge", self.acknowledge), self._group("resolve", self.resolve)]


# -- monitoring adherence -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitoringActivity:
    care_plan: str  # CarePlan/id
    index: int  # position in CarePlan.activity
    last_day: date  # scheduledPeriod.end: the last day a result counts
    status: str | None
    result_day: date | None  # the effective day of the earliest outcome Observation
    closed: bool  # the last day has passed
    owed: bool  # not cancelled, on hold, stopped or entered in error

    @property
    def in_denominator(self) -> bool:
        return self.closed

    @property
    def excluded(self) -> bool:
        return self.closed and not self.owed

    @property
    def on_time(self) -> bool:
        return self.status == "completed" and self.result_day is not None and self.result_day <= self.last_day


def is_monitoring_plan(care_plan: Mapping[str, Any]) -> bool:
    return any(
        _coded(concept, vocab.CARE_PLAN_CATEGORY, (vocab.MONITORING_CALENDAR,))
        for concept in _list(care_plan, "category")
    )


def observation_day(observation: Mapping[str, Any]) -> date | None:
    """The clinically relevant day of an Observation: effectiveDateTime, effectiveInstant or the start of
    effectivePeriod, as written."""
    period = observation.get("effectivePeriod")
    start = period.get("start") if isinstance(period, Mapping) else None
    return day_of(observation.get("effectiveDateTime") or observation.get("effectiveInstant") or start)


def outcome_references(care_plan: Mapping[str, Any]) -> set[str]:
    """`Observation/id` of every activity outcome: what has to be read to judge the activities."""
    found = set()
    for activity in _list(care_plan, "activity"):
        for outcome in _list(activity, "outcomeReference"):
            reference = reference_of(outcome, "Observation")
            if reference:
                found.add(reference)
    return found


def monitoring_activities(
    care_plan: Mapping[str, Any],
    observations: Mapping[str, Mapping[str, Any]],
    period: Period,
    today: date,
) -> list[MonitoringActivity]:
    """The activities of a monitoring CarePlan whose last day is in the period. `observations` are the
    outcome Observations by `Observation/id` (those missing or unreadable leave an activity not on time)."""
    if not is_monitoring_plan(care_plan) or care_plan.get("status") == "entered-in-error":
        return []
    found = []
    for index, activity in enumerate(_list(care_plan, "activity")):
        detail = activity.get("detail") if isinstance(activity, Mapping) else None
        scheduled = detail.get("scheduledPeriod") if isinstance(detail, Mapping) else None
        last_day = day_of(scheduled.get("end")) if isinstance(scheduled, Mapping) else None
        if detail is None or last_day is None or not period.holds(last_day):
            continue
        references = (reference_of(outcome, "Observation") for outcome in _list(activity, "outcomeReference"))
        days = [observation_day(observations[r]) for r in references if r is not None and r in observations]
        status = detail.get("status")
        found.append(
            MonitoringActivity(
                f"CarePlan/{care_plan.get('id')}",
                index,
                last_day,
                status if isinstance(status, str) else None,
                min((d for d in days if d is not None), default=None),
                closed=last_day < today,
                owed=status not in NOT_OWED,
            )
        )
    return found


@dataclass(slots=True)
class MonitoringTally:
    initial: int = 0
    denominator: int = 0
    excluded: int = 0
    on_time: int = 0

    def add(self, activity: MonitoringActivity) -> None:
        self.initial += 1
        if not activity.in_denominator:
            return
        self.denominator += 1
        if activity.excluded:
            self.excluded += 1
        elif activity.on_time:
            self.on_time += 1

    @property
    def score(self) -> float | None:
        """On time among the activities owed whose last day has passed: `gateway_monitoring_on_time_ratio`."""
        return ratio(self.on_time, self.denominator - self.excluded)

    def groups(self) -> list[GroupResult]:
        return [
            GroupResult(
                "on-time",
                (
                    (INITIAL, self.initial),
                    (DENOMINATOR, self.denominator),
                    (DENOMINATOR_EXCLUSION, self.excluded),
                    (NUMERATOR, self.on_time),
                ),
                self.score,
            )
        ]
