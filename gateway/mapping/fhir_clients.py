"""EHR feeds over FHIR: `mappings/fhir/clients/*.yaml`, one file per EHR client that writes to the FHIR API.

What the HL7 v2 path gets from a site file, a client that pushes FHIR gets from one of these: its local
codes turned into standard ones (`codes:`, the same rules as a site's), a Provenance naming it on what it
writes, and its lab results matched with the same results arriving over HL7 v2 (`results: merge`), so
one result is one Observation whichever way it came first. A client with no file is an ordinary API
client: what it writes is stored as written.

    client: example-ehr          # the name it was registered with (`gateway clients add example-ehr ...`)
    description: ...
    results: merge               # merge (default) | keep: keep every Observation it sends as it is
    codes:
      - {resource: Observation, element: code, from: {system: ..., code: LOCAL}, to: {system: ..., code: ...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.mapping.codes import CodeRuleError, check_code_rules
from gateway.mapping.files import MappingError

KEYS = frozenset({"client", "description", "results", "codes"})


class FhirClientMappingError(MappingError):
    """A client mapping file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class FhirClientMapping:
    client: str  # the registered client name
    description: str = ""
    merge_results: bool = True
    codes: list[dict[str, Any]] = field(default_factory=list)


def load_fhir_clients(folder: Path) -> dict[str, FhirClientMapping]:
    """The client mappings by client name (no folder: none)."""
    found: dict[str, FhirClientMapping] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        mapping = _load(path)
        if mapping.client in found:
            raise FhirClientMappingError(f"{path}: client {mapping.client!r} has another file already")
        found[mapping.client] = mapping
    return found


def _load(path: Path) -> FhirClientMapping:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FhirClientMappingError(f"{path}: cannot be read as YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise FhirClientMappingError(f"{path}: a client mapping must be a mapping")
    unknown = set(content) - KEYS
    if unknown:
        raise FhirClientMappingError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(KEYS)})")
    client = content.get("client")
    if not isinstance(client, str) or not client.strip():
        raise FhirClientMappingError(f"{path}: 'client' (the registered client name) is required")
    results = content.get("results", "merge")
    if results not in ("merge", "keep"):
        raise FhirClientMappingError(f"{path}: 'results' must be merge or keep, not {results!r}")
    try:
        codes = check_code_rules(path, content.get("codes"))
    except CodeRuleError as exc:
        raise FhirClientMappingError(str(exc)) from exc
    return FhirClientMapping(client.strip(), str(content.get("description") or ""), results == "merge", codes)
