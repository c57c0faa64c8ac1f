"""The public `ProfileSet`: loads the conformance resources, compiles them, and validates resources.

It indexes StructureDefinitions, ValueSets and CodeSystems (checking the few structural facts compilation
relies on), compiles every resource profile and the enforcement rules of `enforcement.json`, and on
`validate` applies the declared and enforced profiles (with the profiles they derive from) to a resource.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any, Final

from gateway.fhir.profiles.compiler import Compiler
from gateway.fhir.profiles.fhirpath import compile_fhirpath
from gateway.fhir.profiles.rules import Profile, Rule
from gateway.fhir.profiles.terminology import Terminology
from gateway.fhir.profiles.walker import Walk
from gateway.types import JSON, Issue

ENFORCEMENT_FILE: Final = "enforcement.json"


class ProfileSet:
    """The gateway's conformance resources, compiled for validation. Build with `load` or `from_resources`;
    immutable afterwards, so one instance can serve every request."""

    def __init__(
        self,
        resources: list[JSON],
        profiles: dict[str, Profile],
        rules: dict[str, list[Rule]],
        terminology: Terminology,
    ) -> None:
        self._resources = resources
        self._profiles = profiles
        self._rules = rules
        self._terminology = terminology
        self._lineage = {url: _lineage(url, profiles) for url in profiles}

    @classmethod
    def load(cls, directory: pathlib.Path) -> ProfileSet:
        """Read every *.json in `directory` (and its enforcement.json); ValueError names a bad file."""
        named: list[tuple[str, JSON]] = []
        rules: list[JSON] = []
        for path in sorted(directory.glob("*.json")):
            try:
                content = json.loads(path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path.name}: not valid JSON: {exc}") from None
            if path.name == ENFORCEMENT_FILE:
                if not isinstance(content, list):
                    raise ValueError(f"{path.name}: must be a list of rules")
                rules = content
            else:
                named.append((path.name, content))
        return cls._build(named, rules, ENFORCEMENT_FILE)

    @classmethod
    def from_resources(cls, resources: list[JSON], rules: list[JSON]) -> ProfileSet:
        """Build from resources and enforcement rules already in memory (pure)."""
        named = [(f"resources[{i}]", resource) for i, resource in enumerate(resources)]
        return cls._build(named, rules, "rules")

    @classmethod
    def _build(cls, named: list[tuple[str, JSON]], rules: list[JSON], rules_source: str) -> ProfileSet:
        """Index, check and compile; works on copies so later changes to the caller's dicts cannot leak in."""
        named = copy.deepcopy(named)
        by_type: dict[str, dict[str, tuple[str, JSON]]] = {
            "StructureDefinition": {},
            "ValueSet": {},
            "CodeSystem": {},
        }
        for source, resource in named:
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise ValueError(f"{source}: not a FHIR resource (no resourceType)")
            kind = resource["resourceType"]
            if kind not in by_type:
                continue  # other conformance resources are kept (resources()) but do not take part here
            url = resource.get("url")
            if not isinstance(url, str):
                raise ValueError(f"{source}: {kind} has no url")
            _check_shape(source, resource)
            if url in by_type[kind]:
                raise ValueError(f"{source}: duplicate {kind} url {url} (also in {by_type[kind][url][0]})")
            by_type[kind][url] = (source, resource)
        terminology = Terminology(
            {url: r for url, (_, r) in by_type["ValueSet"].items()},
            {url: r for url, (_, r) in by_type["CodeSystem"].items()},
        )
        profile_sources = {
            url: (source, sd)
            for url, (source, sd) in by_type["StructureDefinition"].items()
            if sd.get("kind") == "resource"  # datatype and extension definitions do not apply to resources
        }
        profile_types = {url: str(sd.get("type")) for url, (_, sd) in profile_sources.items()}
        profiles = {
            url: Compiler(source, sd, terminology, profile_types).compile()
            for url, (source, sd) in profile_sources.items()
        }
        compiled_rules = _compile_rules(rules, rules_source, profiles)
        return cls([r for _, r in named], profiles, compiled_rules, terminology)

    def validate(self, resource: JSON) -> list[Issue]:
        """Issues against the declared profiles we know and the profiles enforced for this resource."""
        issues: list[Issue] = []
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("error", "structure", "resourceType missing", ())]
        applied: dict[str, None] = {}  # an ordered set of profile URLs
        meta = resource.get("meta")
        declared = meta.get("profile", []) if isinstance(meta, dict) else []
        for index, canonical in enumerate(declared if isinstance(declared, list) else []):
            url = str(canonical).split("|", 1)[0]
            where = f"{rtype}.meta.profile[{index}]"
            profile = self._profiles.get(url)
            if profile is None:
                issues.append(
                    Issue(
                        "information",
                        "not-supported",
                        f"Profile {url} is not known here; not checked",
                        (where,),
                    )
                )
            elif profile.type != rtype:
                issues.append(
                    Issue("error", "invalid", f"Profile {url} is for {profile.type}, not {rtype}", (where,))
                )
            else:
                applied.update(dict.fromkeys(self._lineage[url]))
        for rule in self._rules.get(rtype, ()):
            if rule.profile not in applied and _rule_applies(rule, resource):
                applied.update(dict.fromkeys(self._lineage[rule.profile]))
        for url in applied:
            profile = self._profiles[url]
            walk = Walk(resource, profile.name, issues)
            if profile.root.constraints:
                walk.constraints(profile.root.constraints, resource, rtype, rtype)
            for child in profile.root.children:
                walk.element(child, resource, rtype, rtype)
        return issues

    def profiles_for(self, resource_type: str) -> list[str]:
        """Canonical URLs of the profiles on `resource_type` (for CapabilityStatement.supportedProfile)."""
        return sorted(url for url, p in self._profiles.items() if p.type == resource_type)

    def resources(self) -> list[JSON]:
        """The conformance resources as read (copies: callers cannot alter what validation uses)."""
        return copy.deepcopy(self._resources)

    def value_set_codes(self, url: str) -> set[tuple[str | None, str]]:
        """The (system, code) pairs of a shipped value set; KeyError if unknown."""
        return set(self._terminology.expand(url))


def _check_shape(source: str, resource: JSON) -> None:
    """The few structural facts compilation relies on; ValueError names the file otherwise."""
    kind = resource["resourceType"]
    if kind == "StructureDefinition" and resource.get("kind") not in (
        "resource",
        "complex-type",
        "primitive-type",
        "logical",
    ):
        raise ValueError(f"{source}: StructureDefinition.kind is missing or unknown")
    if kind == "CodeSystem" and not _codes_well_formed(resource.get("concept", [])):
        raise ValueError(f"{source}: every CodeSystem concept needs a string code")
    if kind == "ValueSet":
        compose = resource.get("compose", {})
        parts = (
            [*compose.get("include", []), *compose.get("exclude", [])] if isinstance(compose, dict) else None
        )
        if parts is None or not all(
            isinstance(p, dict) and _codes_well_formed(p.get("concept", [])) for p in parts
        ):
            raise ValueError(f"{source}: ValueSet.compose must list objects whose concepts have string codes")


def _codes_well_formed(concepts: Any) -> bool:
    """Whether a (possibly nested) concept list has a string code on every concept."""
    return isinstance(concepts, list) and all(
        isinstance(c, dict) and isinstance(c.get("code"), str) and _codes_well_formed(c.get("concept", []))
        for c in concepts
    )


def _lineage(url: str, profiles: dict[str, Profile]) -> list[str]:
    """A profile and the profiles it derives from that are in the set, base first."""
    chain: list[str] = []
    while url in profiles and url not in chain:
        chain.insert(0, url)
        url = profiles[url].base
    return chain


def _compile_rules(rules: list[JSON], source: str, profiles: dict[str, Profile]) -> dict[str, list[Rule]]:
    """Enforcement rules by resource type; each must name a loaded profile of the same type."""
    compiled: dict[str, list[Rule]] = {}
    for index, rule in enumerate(rules):
        where = f"{source}[{index}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{where}: a rule must be an object")
        url, rtype, when = rule.get("profile"), rule.get("resourceType"), rule.get("when")
        if url not in profiles:
            raise ValueError(f"{where}: unknown profile {url}")
        if profiles[url].type != rtype:
            raise ValueError(f"{where}: profile {url} is for {profiles[url].type}, not {rtype}")
        evaluator = None
        if when is not None:
            try:
                evaluator = compile_fhirpath(str(when), str(rtype))
            except ValueError as exc:
                raise ValueError(f"{where}: when: {exc}") from None
        compiled.setdefault(str(rtype), []).append(Rule(str(url), evaluator))
    return compiled


def _rule_applies(rule: Rule, resource: JSON) -> bool:
    """Whether the rule's `when` holds; a `when` that fails to evaluate enforces the profile (fail closed)."""
    if rule.when is None:
        return True
    try:
        return rule.when(resource, {"resource": resource, "rootResource": resource}) == [True]
    except Exception:
        return True
