"""Small value types shared across the gateway. A leaf: imports nothing from the package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JSON = dict[str, Any]

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue: what is wrong and where (a FHIRPath-like `expression`)."""

    severity: Severity
    code: str  # http://hl7.org/fhir/issue-type, e.g. "invalid", "required", "value", "invariant"
    diagnostics: str
    expression: tuple[str, ...] = field(default=())

    @property
    def is_error(self) -> bool:
        return self.severity in ("fatal", "error")

    def at(self, prefix: str) -> Issue:
        """The same issue with its expressions re-rooted under `prefix` (e.g. a Bundle entry)."""
        return Issue(
            self.severity,
            self.code,
            self.diagnostics,
            tuple(prefix + "." + e.split(".", 1)[1] if "." in e else prefix for e in self.expression),
        )
