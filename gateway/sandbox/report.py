"""A run's report for a terminal (a table) or a program (`--json`)."""

from __future__ import annotations

from gateway.sandbox.runner import Report

COLUMNS = ("step", "result", "detail", "time")
DETAIL_WIDTH = 100  # long diffs wrap badly in a terminal; --json has them whole


def table(report: Report) -> str:
    rows = [(s.name, s.result.upper(), _cut(s.detail), f"{s.seconds * 1000:.0f} ms") for s in report.steps]
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(4)]
    lines = [f"gateway sandbox run {report.run} against {report.base_url}", ""]
    for row in [COLUMNS, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failed = sum(s.result == "fail" for s in report.steps)
    lines += ["", f"{len(report.steps)} steps, {failed} failed: {'PASS' if report.passed else 'FAIL'}"]
    return "\n".join(lines)


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 3] + "..."
