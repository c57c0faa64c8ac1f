"""The figures a MeasureReport states, by group code: what the console's metrics page shows (pure)."""

from __future__ import annotations

from typing import Any

from gateway.types import JSON


def scores(report: JSON) -> dict[str, float | None]:
    """Each group's measureScore (None: nothing to score), by the group's code."""
    found: dict[str, float | None] = {}
    for group in report.get("group") or []:
        code = _code(group.get("code"))
        if code is None:
            continue
        score = group.get("measureScore")
        value = score.get("value") if isinstance(score, dict) else None
        found[code] = float(value) if isinstance(value, int | float) else None
    return found


def populations(report: JSON, group_code: str) -> dict[str, int]:
    """The population counts of one group, by population code (initial-population, denominator, ...)."""
    for group in report.get("group") or []:
        if _code(group.get("code")) == group_code:
            return {
                code: int(p.get("count") or 0)
                for p in group.get("population") or []
                if (code := _code(p.get("code"))) is not None
            }
    return {}


def _code(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None
