"""OperationOutcome resources built from Issues."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.types import Issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    rendered = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        rendered.append(item)
    if not rendered:
        rendered.append({"severity": "information", "code": "informational", "diagnostics": "All OK"})
    return {"resourceType": "OperationOutcome", "issue": rendered}


def outcome_bytes(issues: Iterable[Issue]) -> bytes:
    return orjson.dumps(operation_outcome(issues))


def information(message: str) -> Issue:
    return Issue("information", "informational", message)
