"""Reading `mappings/`: message definitions, resource mappings, code tables and site overrides.

Every file is checked when it is loaded, so a typo in a mapping stops the gateway at start with the
file and key named, instead of silently mapping nothing later.

    mappings/
      tables/<name>.yaml          code tables: {description, codes: {source code: target}}
      hl7v2/messages.yaml         accepted message types -> structure and adapter
      hl7v2/resources/<type>.yaml element rules per FHIR resource type
      hl7v2/sites/<site>.yaml     overrides for one sender, chosen by MSH-3/MSH-4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.mapping.tables import CodeTables
from gateway.mapping.zones import Zone, ZoneError, parse_zone

RULE_KEYS = {
    "from",
    "with",
    "table",
    "key",
    "repeat",
    "default",
    "fixed",
    "merge",
    "defaults",
    "system",
    "as",
}
SITE_KEYS = {
    "site",
    "description",
    "match",
    "timezone",
    "codes",
    "tables",
    "zsegments",
    "elements",
    "identity",
    "duplicates",
    "category",
}
IDENTITY_KEYS = {"patient_identifier_system", "unidentified", "on_conflict", "demographics"}
# Which messages may replace a Patient's stored demographics (the others only fill in what is missing).
DEMOGRAPHIC_SOURCES = ("adt", "orders", "results")


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class MessageDef:
    event: str  # e.g. ORU^R01
    structure: str
    adapter: str
    # Observation.category of its results when OBR-24, the code and the site say nothing (ORU: laboratory).
    category: str | None = None


@dataclass(frozen=True)
class IdentityPolicy:
    """How a sender's patients are identified and what happens when identity is in doubt."""

    # System for PID-2/3/4 identifiers that carry no assigning authority; None: derived from MSH-4/MSH-3.
    patient_identifier_system: str | None = None
    unidentified: str = "refuse"  # refuse (AE) | quarantine (held, AA with a warning)
    on_conflict: str = "refuse"  # refuse (AE) | accept (filed under the matched Patient, not overwritten)
    # adt | orders | results -> replace | fill: who may replace stored demographics
    demographics: dict[str, str] = field(
        default_factory=lambda: {"adt": "replace", "orders": "fill", "results": "fill"}
    )


DEFAULT_IDENTITY = IdentityPolicy()


@dataclass
class Site:
    name: str
    match: dict[str, str]
    timezone: Zone | None = None  # for this sender's times without an offset; None: the gateway's default
    codes: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    zsegments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    elements: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: IdentityPolicy = DEFAULT_IDENTITY
    # A message reusing a stored message's MSH-10 with other content: process (as new) | refuse (AE).
    reused_control_id: str = "process"
    # Observation.category for results when neither OBR-24 nor the code says (a lab site: laboratory).
    category: str | None = None

    def matches(self, sending_application: str, sending_facility: str) -> bool:
        wanted = {"sending_application": sending_application, "sending_facility": sending_facility}
        return all(
            wanted.get(key, "").casefold() == str(value).casefold() for key, value in self.match.items()
        )


@dataclass
class MappingSet:
    """Everything in `mappings/` the HL7 v2 adapters need."""

    tables: CodeTables
    messages: dict[str, MessageDef]
    resources: dict[str, dict[str, Any]]  # FHIR type -> {element path: rule or [rules]}
    sites: list[Site]
    root: Path

    def site_for(self, sending_application: str, sending_facility: str) -> Site | None:
        for site in self.sites:
            if site.matches(sending_application, sending_facility):
                return site
        return None


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot be read as YAML: {exc}") from exc


def _check_rules(path: Path, elements: Any) -> dict[str, Any]:
    if not isinstance(elements, dict):
        raise MappingError(f"{path}: 'elements' must map element paths to rules")
    for element, rules in elements.items():
        for rule in rules if isinstance(rules, list) else [rules]:
            if not isinstance(rule, dict):
                raise MappingError(f"{path}: the rule for {element!r} must be a mapping")
            unknown = set(rule) - RULE_KEYS
            if unknown:
                raise MappingError(f"{path}: rule for {element!r} has unknown keys {sorted(unknown)}")
            if "from" not in rule and "fixed" not in rule and "with" not in rule:
                raise MappingError(f"{path}: rule for {element!r} needs 'from', 'with' or 'fixed'")
    return elements


def load_tables(folder: Path) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        content = _read(path)
        if not isinstance(content, dict) or not isinstance(content.get("codes"), dict):
            raise MappingError(f"{path}: a table needs a 'codes' mapping")
        tables[path.stem] = {str(k): v for k, v in content["codes"].items()}
    return tables


def _load_messages(path: Path) -> dict[str, MessageDef]:
    content = _read(path)
    if not isinstance(content, dict) or not isinstance(content.get("messages"), dict):
        raise MappingError(f"{path}: needs a 'messages' mapping")
    messages = {}
    for event, spec in content["messages"].items():
        if not isinstance(spec, dict) or not {"structure", "adapter"} <= set(spec):
            raise MappingError(f"{path}: {event} needs 'structure' and 'adapter'")
        if set(spec) - {"structure", "adapter", "category"}:
            raise MappingError(f"{path}: {event} takes only structure, adapter and category")
        category = spec.get("category")
        messages[str(event)] = MessageDef(
            str(event), str(spec["structure"]), str(spec["adapter"]), str(category) if category else None
        )
    return messages


def _site_zone(path: Path, value: Any) -> Zone | None:
    """A site's `timezone`, parsed now so a typo stops the start instead of stamping times UTC."""
    if value is None:
        return None
    try:
        return parse_zone(value)
    except ZoneError as exc:
        raise MappingError(f"{path}: timezone {exc}") from None


def default_zone(setting: str) -> Zone:
    """GATEWAY_HL7_DEFAULT_OFFSET as a Zone; a bad value stops the start like a bad mapping file does."""
    try:
        return parse_zone(setting)
    except ZoneError as exc:
        raise MappingError(f"GATEWAY_HL7_DEFAULT_OFFSET {exc}") from None


def _load_site(path: Path) -> Site:
    content = _read(path)
    if not isinstance(content, dict):
        raise MappingError(f"{path}: a site override must be a mapping")
    unknown = set(content) - SITE_KEYS
    if unknown:
        raise MappingError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(SITE_KEYS)})")
    match = content.get("match")
    if not isinstance(match, dict) or not match or set(match) - {"sending_application", "sending_facility"}:
        raise MappingError(f"{path}: 'match' needs sending_application and/or sending_facility")
    for resource, elements in (content.get("elements") or {}).items():
        _check_rules(path, elements)
        if not isinstance(resource, str):
            raise MappingError(f"{path}: 'elements' keys are FHIR resource types")
    duplicates = content.get("duplicates") or {}
    if not isinstance(duplicates, dict) or set(duplicates) - {"reused_control_id"}:
        raise MappingError(f"{path}: 'duplicates' takes only reused_control_id")
    reused = str(duplicates.get("reused_control_id", "process"))
    if reused not in ("process", "refuse"):
        raise MappingError(f"{path}: duplicates.reused_control_id must be process or refuse, not {reused!r}")
    category = content.get("category")
    if category is not None and not (isinstance(category, str) and category.strip()):
        raise MappingError(f"{path}: 'category' must be an observation-category code such as laboratory")
    return Site(
        name=str(content.get("site") or path.stem),
        match={k: str(v) for k, v in match.items()},
        timezone=_site_zone(path, content.get("timezone")),
        codes=list(content.get("codes") or []),
        tables={k: {str(c): v for c, v in t.items()} for k, t in (content.get("tables") or {}).items()},
        zsegments=dict(content.get("zsegments") or {}),
        elements=dict(content.get("elements") or {}),
        identity=_identity_policy(path, content.get("identity")),
        reused_control_id=reused,
        category=category,
    )


def _identity_policy(path: Path, spec: Any) -> IdentityPolicy:
    if spec is None:
        return DEFAULT_IDENTITY
    if not isinstance(spec, dict) or set(spec) - IDENTITY_KEYS:
        raise MappingError(f"{path}: 'identity' takes {sorted(IDENTITY_KEYS)}")
    system = spec.get("patient_identifier_system")
    if system is not None and not (isinstance(system, str) and ":" in system):
        raise MappingError(f"{path}: identity.patient_identifier_system must be a URI such as urn:oid:1.2.3")
    choices = {"unidentified": ("refuse", "quarantine"), "on_conflict": ("refuse", "accept")}
    for key, allowed in choices.items():
        if key in spec and spec[key] not in allowed:
            raise MappingError(f"{path}: identity.{key} must be one of {list(allowed)}, not {spec[key]!r}")
    demographics = dict(DEFAULT_IDENTITY.demographics)
    given = spec.get("demographics") or {}
    if not isinstance(given, dict) or set(given) - set(DEMOGRAPHIC_SOURCES):
        raise MappingError(f"{path}: identity.demographics keys are {list(DEMOGRAPHIC_SOURCES)}")
    for source, mode in given.items():
        if mode not in ("replace", "fill"):
            raise MappingError(f"{path}: identity.demographics.{source} must be replace or fill")
        demographics[source] = mode
    return IdentityPolicy(
        patient_identifier_system=system,
        unidentified=str(spec.get("unidentified", DEFAULT_IDENTITY.unidentified)),
        on_conflict=str(spec.get("on_conflict", DEFAULT_IDENTITY.on_conflict)),
        demographics=demographics,
    )


def load(root: Path) -> MappingSet:
    """Load and check the whole `mappings/` folder."""
    hl7 = root / "hl7v2"
    resources: dict[str, dict[str, Any]] = {}
    for path in sorted((hl7 / "resources").glob("*.yaml")):
        content = _read(path)
        if not isinstance(content, dict) or "resource" not in content:
            raise MappingError(f"{path}: needs 'resource' (the FHIR type) and 'elements'")
        resources[str(content["resource"])] = _check_rules(path, content.get("elements"))
    return MappingSet(
        tables=CodeTables(load_tables(root / "tables")),
        messages=_load_messages(hl7 / "messages.yaml"),
        resources=resources,
        sites=[_load_site(path) for path in sorted((hl7 / "sites").glob("*.yaml"))],
        root=root,
    )
