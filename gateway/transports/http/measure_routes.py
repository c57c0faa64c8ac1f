"""The pharmacist measures over HTTP: the Measure definitions, `$evaluate-measure` and the gauges on
`/metrics` (gateway/service/pharmacist/measures.py, measure_gauges.py).

Registered before the generic FHIR routes: Measure is not a resource of the store (it is read-only, from
`profiles/`), and `Measure/$evaluate-measure` is not a read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.responses import Response

from gateway.service.gateway import Gateway
from gateway.service.pharmacist.measure_gauges import GaugeValues, MeasureGauges
from gateway.service.pharmacist.measures import MeasureService
from gateway.transports.http.deps import Ctx
from gateway.transports.http.responses import fhir_response

router = APIRouter(prefix="/fhir", tags=["Pharmacist"])


def measures_of(app: FastAPI) -> MeasureService:
    """The app's MeasureService, made on first use from its gateway."""
    service: MeasureService | None = getattr(app.state, "measures", None)
    if service is None:
        gateway: Gateway = app.state.gateway
        service = MeasureService(gateway.fhir, gateway.profiles.resources())
        app.state.measures = service
    return service


def gauges_of(app: FastAPI) -> MeasureGauges:
    gauges: MeasureGauges | None = getattr(app.state, "measure_gauges", None)
    if gauges is None:
        settings = app.state.gateway.settings
        gauges = MeasureGauges(
            measures_of(app),
            period_days=settings.measures_period_days,
            refresh_s=settings.measures_refresh_seconds,
        )
        app.state.measure_gauges = gauges
    return gauges


@router.get("/Measure", summary="the pharmacist Measures (search by url)")
async def search(request: Request, ctx: Ctx) -> Response:
    return fhir_response(measures_of(request.app).search(list(request.query_params.multi_items())))


@router.get(
    "/Measure/$evaluate-measure",
    summary="a MeasureReport of the Measure named by the measure parameter (as on Measure/{id})",
)
async def evaluate_type(request: Request, ctx: Ctx) -> Response:
    params = list(request.query_params.multi_items())
    return fhir_response(await measures_of(request.app).evaluate(ctx, None, params))


@router.get("/Measure/{measure_id}", summary="one pharmacist Measure")
async def read(measure_id: str, request: Request, ctx: Ctx) -> Response:
    return fhir_response(measures_of(request.app).read(measure_id))


@router.get(
    "/Measure/{measure_id}/$evaluate-measure",
    summary="a MeasureReport: periodStart, periodEnd; subject=Patient/{id} (individual) or"
    " Practitioner/{id} or none (summary)",
)
async def evaluate(measure_id: str, request: Request, ctx: Ctx) -> Response:
    params = list(request.query_params.multi_items())
    return fhir_response(await measures_of(request.app).evaluate(ctx, measure_id, params))


class MeasureCollector:
    """The pharmacist gauges, as last computed (`MeasureGauges.refresh` runs before each scrape)."""

    def __init__(self, source: Callable[[], GaugeValues | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        values = self.source()
        if values is None:
            return
        yield _gauge(
            "gateway_measures_computed_timestamp_seconds",
            "When the pharmacist gauges were computed",
            values.computed_us / 1_000_000,
        )
        yield _gauge(
            "gateway_measures_compute_seconds",
            "How long computing the pharmacist gauges took",
            values.duration_s,
        )
        yield _gauge(
            "gateway_measures_period_days",
            "Days the pharmacist gauges cover (ending today, UTC)",
            values.period.days,
        )
        bands = GaugeMetricFamily(
            "gateway_pdc_patients",
            "Patients in the PDC denominator, adherent (PDC >= 80 %) or not",
            labels=["band"],
        )
        bands.add_metric(["adherent"], values.pdc_adherent)
        bands.add_metric(["non_adherent"], values.pdc_non_adherent)
        yield bands
        yield _gauge(
            "gateway_pdc_mean", "Mean proportion of days covered (0..1) of those patients", values.pdc_mean
        )
        yield _statistics(
            "gateway_time_to_first_dose_seconds",
            "Seconds from order (authoredOn) to its first dispense",
            values.first_dose_median_s,
            values.first_dose_mean_s,
        )
        yield _gauge(
            "gateway_first_dose_waiting", "Orders in the period not dispensed yet", values.first_dose_waiting
        )
        yield _statistics(
            "gateway_alert_acknowledge_seconds",
            "Seconds from an alert's authoredOn to its first accepted or in-progress version",
            values.acknowledge_median_s,
            values.acknowledge_mean_s,
        )
        yield _statistics(
            "gateway_alert_resolve_seconds",
            "Seconds from an alert's authoredOn to its first completed version",
            values.resolve_median_s,
            values.resolve_mean_s,
        )
        yield _gauge(
            "gateway_alerts_unacknowledged",
            "Alerts raised in the period not acknowledged yet",
            values.alerts_unacknowledged,
        )
        yield _gauge(
            "gateway_monitoring_on_time_ratio",
            "Monitoring labs done within their window, among those owed whose window closed (0..1)",
            values.monitoring_on_time_ratio,
        )
        yield _gauge(
            "gateway_monitoring_owed",
            "Monitoring labs owed whose window closed in the period",
            values.monitoring_owed,
        )


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


def _statistics(name: str, documentation: str, median: float | None, mean: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["statistic"])
    for statistic, value in (("median", median), ("mean", mean)):
        if value is not None:
            family.add_metric([statistic], value)
    return family


def install(app: FastAPI, registry: CollectorRegistry) -> None:
    """The gauges on /metrics, refreshed (when stale) before each scrape."""

    def current() -> GaugeValues | None:
        gauges: MeasureGauges | None = getattr(app.state, "measure_gauges", None)
        return gauges.values if gauges is not None else None

    async def refresh() -> None:
        await gauges_of(app).refresh()

    registry.register(MeasureCollector(current))
    hooks: list[Callable[[], Awaitable[None]]] = getattr(app.state, "before_scrape", [])
    app.state.before_scrape = [*hooks, refresh]
