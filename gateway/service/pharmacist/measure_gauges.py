"""The pharmacist measures as aggregate figures for `/metrics`, recomputed at most every N seconds.

Computed by the same code as `$evaluate-measure` with no subject (`MeasureService.compute`) over the
trailing `GATEWAY_MEASURES_PERIOD_DAYS` ending today (UTC), so a summary MeasureReport for that period
shows the same figures. A scrape that finds the figures older than `GATEWAY_MEASURES_REFRESH_SECONDS`
recomputes them first (one at a time: concurrent scrapes wait for the same computation); any other scrape
gets the cached figures without touching the store. A computation that fails keeps the previous figures
(logged). Only aggregates: no patient, order, alert or pharmacist is named in a label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from gateway.fhir import dates
from gateway.pharmacist import measures as m
from gateway.service.pharmacist.measures import MeasureService

log = logging.getLogger("gateway.measures")


@dataclass(frozen=True, slots=True)
class GaugeValues:
    period: m.Period
    computed_us: int
    duration_s: float  # how long the computation took
    pdc_adherent: int  # patients in the PDC denominator at or above the threshold
    pdc_non_adherent: int
    pdc_mean: float | None  # 0..1, as the pdc group's measureScore
    first_dose_median_s: float | None
    first_dose_mean_s: float | None
    first_dose_waiting: int  # orders in the period not dispensed yet
    acknowledge_median_s: float | None
    acknowledge_mean_s: float | None
    resolve_median_s: float | None
    resolve_mean_s: float | None
    alerts_unacknowledged: int  # alerts raised in the period, not acknowledged yet
    monitoring_on_time_ratio: float | None  # 0..1, as the on-time group's measureScore
    monitoring_owed: int  # activities owed whose window closed in the period (the ratio's denominator)


class MeasureGauges:
    def __init__(self, service: MeasureService, *, period_days: int, refresh_s: float) -> None:
        self.service = service
        self.period_days = period_days
        self.refresh_s = refresh_s
        self.values: GaugeValues | None = None
        self._lock = asyncio.Lock()

    def period(self, now_us: int) -> m.Period:
        today = dates.from_us(now_us).date()
        return m.Period(today - timedelta(days=self.period_days - 1), today)

    def stale(self, now_us: int) -> bool:
        return self.values is None or now_us - self.values.computed_us >= self.refresh_s * 1_000_000

    async def refresh(self) -> GaugeValues | None:
        """Recompute when stale (or never computed); the figures as they then are."""
        if not self.stale(self.service.now()):
            return self.values
        async with self._lock:
            now = self.service.now()
            if self.stale(now):  # another scrape may have refreshed while this one waited
                try:
                    self.values = await self.compute(now)
                except Exception:
                    log.exception("the pharmacist gauges could not be computed; the previous figures stay")
        return self.values

    async def compute(self, now_us: int) -> GaugeValues:
        started = time.perf_counter()
        period = self.period(now_us)
        service = self.service
        async with service.fhir.db.read() as conn:
            pdc = await service.compute(conn, "pdc", None, period, now_us)
            first_dose = await service.compute(conn, "time-to-first-dose", None, period, now_us)
            alerts = await service.compute(conn, "alert-response", None, period, now_us)
            monitoring = await service.compute(conn, "monitoring-adherence", None, period, now_us)
        assert isinstance(pdc, m.PdcTally) and isinstance(first_dose, m.FirstDoseTally)
        assert isinstance(alerts, m.AlertTally) and isinstance(monitoring, m.MonitoringTally)
        values = GaugeValues(
            period=period,
            computed_us=now_us,
            duration_s=time.perf_counter() - started,
            pdc_adherent=pdc.numerator,
            pdc_non_adherent=pdc.denominator - pdc.numerator,
            pdc_mean=pdc.mean,
            first_dose_median_s=first_dose.durations.median,
            first_dose_mean_s=first_dose.durations.mean,
            first_dose_waiting=first_dose.waiting,
            acknowledge_median_s=alerts.acknowledge.median,
            acknowledge_mean_s=alerts.acknowledge.mean,
            resolve_median_s=alerts.resolve.median,
            resolve_mean_s=alerts.resolve.mean,
            alerts_unacknowledged=alerts.initial - len(alerts.acknowledge.values),
            monitoring_on_time_ratio=monitoring.score,
            monitoring_owed=monitoring.denominator - monitoring.excluded,
        )
        log.info(
            "pharmacist gauges computed over %s..%s in %.3fs", period.start, period.end, values.duration_s
        )
        return values
