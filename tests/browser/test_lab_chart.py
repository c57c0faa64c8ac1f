"""The server-rendered lab chart, drawn by a real browser under the console's Content-Security-Policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.async_api import Page, Route, expect

from gateway.pharmacist.charts import render_lab_chart
from tests.browser.conftest import screenshot


async def test_chart_draws_under_the_console_csp(page: Page) -> None:
    day = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    svg = render_lab_chart(
        "ANC", [(day + timedelta(days=7 * i), v, "10*3/uL") for i, v in enumerate([2.4, 1.9, 1.2, 0.8])],
        reference_range=(1.5, 8.0), thresholds=[(1500, "hold", "moderate"), (1000, "stop", "severe")],
        threshold_unit="/uL", threshold_factor=1000,
    )  # fmt: skip

    page_html = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>chart</title></head>'
    page_html += f"<body>{svg}</body></html>"

    async def serve(route: Route) -> None:
        # The live console's own headers (its CSP above all), on its origin, around the chart.
        console = await route.fetch(url=route.request.url.replace("/chart-preview", "/login"))
        assert "default-src 'none'" in console.headers["content-security-policy"]
        await route.fulfill(response=console, body=page_html)

    await page.route("**/console/chart-preview", serve)
    await page.goto("/console/chart-preview")
    chart = page.get_by_role("img", name="ANC, 4 results")
    await expect(chart).to_be_visible()
    await expect(page.locator(".point.below-threshold")).to_have_count(2)
    hold = await page.locator('.threshold[data-value="1500"] line').bounding_box()
    low = await page.locator('.point[data-value="1.2"]').bounding_box()
    assert hold is not None and low is not None and low["y"] > hold["y"]  # as laid out by the browser
    await screenshot(page, "lab-chart-anc")
