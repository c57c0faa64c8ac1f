"""Local codes to standard ones: the `codes:` rules of a site (HL7 v2) or of an EHR's FHIR client.

A rule names a resource type, a CodeableConcept element (default `code`), the local coding to find (`from`:
its code, and its system when given) and the standard coding to put first (`to`). The local coding is
kept after the standard one, so what the sender said is never lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CodeRuleError(ValueError):
    """A `codes:` rule that cannot be used; the message names the file and the rule."""


def check_code_rules(path: Path, rules: Any) -> list[dict[str, Any]]:
    """The `codes:` list of a mapping file, each rule complete; MappingError naming the file otherwise."""
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise CodeRuleError(f"{path}: 'codes' must be a list of rules")
    for number, rule in enumerate(rules, 1):
        wanted, target = (rule.get("from"), rule.get("to")) if isinstance(rule, dict) else (None, None)
        if not isinstance(wanted, dict) or not wanted.get("code"):
            raise CodeRuleError(f"{path}: codes rule {number} needs from: {{code: ...}}")
        if not isinstance(target, dict) or not target.get("system") or not target.get("code"):
            raise CodeRuleError(f"{path}: codes rule {number} needs to: {{system: ..., code: ...}}")
    return list(rules)


def replace_coding(concept: dict[str, Any], rule: dict[str, Any]) -> bool:
    """Put the rule's standard coding first when a local coding matches; keep the local one after it."""
    wanted = rule["from"]
    codings = concept.get("coding") or []
    for coding in codings:
        if coding.get("code") == wanted.get("code") and (
            "system" not in wanted or coding.get("system", "") == wanted["system"]
        ):
            concept["coding"] = [dict(rule["to"]), *[c for c in codings if c != rule["to"]]]
            return True
    return False


def apply_code_rules(resource: dict[str, Any], rules: list[dict[str, Any]]) -> list[str]:
    """Apply the rules that concern this resource; what was replaced, as lines for the caller to report."""
    done = []
    for rule in rules:
        if resource.get("resourceType") != rule.get("resource", resource.get("resourceType")):
            continue
        element = rule.get("element", "code")
        concept = resource.get(element)
        if isinstance(concept, dict) and replace_coding(concept, rule):
            done.append(
                f"{resource['resourceType']}.{element}: local code {rule['from'].get('code')} replaced"
            )
    return done
