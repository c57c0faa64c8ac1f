"""Validating a resource against one compiled profile by walking its rule tree.

`Walk` visits only the branches of the resource that carry rules: cardinality and choice types of each
constrained element, then fixed/pattern values, bindings, Reference targets, FHIRPath invariants and slices
on each value present. Every problem becomes an `Issue` whose text names the profile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.fhir.profiles.fhirpath import child_model_path, typed_node
from gateway.fhir.profiles.rules import NOTHING, STRENGTH_SEVERITY, Binding, Constraint, Node, contains, equal
from gateway.fhir.references import parse_reference
from gateway.types import JSON, Issue, Severity


class Walk:
    """One profile applied to one resource: collects issues while walking the rule tree."""

    __slots__ = ("env", "issues", "root", "tag")

    def __init__(self, root: JSON, tag: str, issues: list[Issue]) -> None:
        self.root = root
        self.tag = f" (profile {tag})"
        self.issues = issues
        self.env = {"resource": root, "rootResource": root}

    def issue(self, severity: Severity, code: str, message: str, expression: str) -> None:
        """Record one issue; the profile's name goes into the text so a reader knows which rule set spoke."""
        self.issues.append(Issue(severity, code, message + self.tag, (expression,)))

    def element(self, node: Node, parent: Mapping[str, Any], parent_expr: str, parent_model: str) -> None:
        """Cardinality and types of `node` under one parent value, then the rules on each value."""
        found = self.find(node, parent, parent_expr, parent_model)
        if not found:
            # A primitive carrying only extensions (`_status`, e.g. a data-absent-reason) is present.
            count = 1 if node.choice is None and f"_{node.name}" in parent else 0
            self.count(node, count, parent_expr)
            return
        items: list[tuple[Any, str, str]] = []
        for expr, value, model in found:
            if isinstance(value, list):
                items.extend((v, f"{expr}[{i}]", model) for i, v in enumerate(value))
            else:
                items.append((value, expr, model))
        self.count(node, len(items), parent_expr)
        if not node.checks_items:
            return
        for value, expr, model in items:
            self.item(node, value, expr, model)
        if node.slices:
            self.slices(node, items, f"{parent_expr}.{node.name}")

    def count(self, node: Node, count: int, parent_expr: str) -> None:
        """min/max of an element: the issue names the element without an index."""
        if count < node.min:
            path = f"{parent_expr}.{node.name}"
            self.issue("error", "required", f"{path}: at least {node.min} required, found {count}", path)
        elif node.max is not None and count > node.max:
            path = f"{parent_expr}.{node.name}"
            self.issue("error", "structure", f"{path}: at most {node.max} allowed, found {count}", path)

    def find(
        self, node: Node, parent: Mapping[str, Any], parent_expr: str, parent_model: str
    ) -> list[tuple[str, Any, str]]:
        """(expression, value, model path) of the property (or chosen choice properties) present."""
        if node.choice is None:
            value = parent.get(node.name)
            if value is None:
                return []
            model = node.model_path or child_model_path(parent_model, node.name)
            return [(f"{parent_expr}.{node.name}", value, model)]
        found = []
        if node.choice:
            keys = [node.name + suffix for suffix in node.choice if node.name + suffix in parent]
        else:  # a choice the model does not list: any key `name` + TypeName
            n = len(node.name)
            keys = [k for k in parent if k.startswith(node.name) and k[n : n + 1].isupper()]
        for key in keys:
            suffix = key[len(node.name) :]
            model = child_model_path(parent_model, key)
            type_name = model if "." not in model else suffix
            expr = f"{parent_expr}.{node.name}.ofType({type_name})"
            if node.allowed is not None and suffix not in node.allowed:
                allowed = ", ".join(sorted(node.allowed))
                message = f"{expr}: type {type_name} not allowed here ({allowed})"
                self.issue("error", "structure", message, expr)
            found.append((expr, parent[key], model))
        return found

    def item(self, node: Node, value: Any, expr: str, model: str) -> None:
        """The rules that apply to each value of an element."""
        if node.slice_name is None:
            if node.fixed is not NOTHING and not equal(value, node.fixed):
                self.issue("error", "value", f"{expr}: must be exactly {json.dumps(node.fixed)}", expr)
            if node.pattern is not NOTHING and not contains(value, node.pattern):
                self.issue(
                    "error", "value", f"{expr}: must match the pattern {json.dumps(node.pattern)}", expr
                )
        if node.binding is not None:
            self.binding(node.binding, value, expr)
        if node.targets is not None and isinstance(value, dict):
            self.reference(node.targets, value, expr)
        if node.constraints:
            self.constraints(node.constraints, value, expr, model)
        if node.children and isinstance(value, dict):
            for child in node.children:
                self.element(child, value, expr, model)

    def slices(self, node: Node, items: list[tuple[Any, str, str]], path: str) -> None:
        """Count the values matching each slice, check each slice's cardinality and apply its rules."""
        counts = dict.fromkeys(range(len(node.slices)), 0)
        for value, expr, model in items:
            matched = False
            for index, piece in enumerate(node.slices):
                if _slice_matches(piece, value):
                    matched = True
                    counts[index] += 1
                    self.item(piece, value, expr, model)
            if not matched and node.closed:
                self.issue("error", "structure", f"{expr}: matches no slice and the slicing is closed", expr)
        for index, piece in enumerate(node.slices):
            count = counts[index]
            what = f"{path}: slice '{piece.slice_name}'"
            if count < piece.min:
                self.issue(
                    "error",
                    "required",
                    f"{what} needs at least {piece.min} matching item(s), found "
                    f"{count} (pattern {json.dumps(_slice_key(piece))})",
                    path,
                )
            if piece.max is not None and count > piece.max:
                self.issue(
                    "error", "structure", f"{what} allows at most {piece.max} item(s), found {count}", path
                )

    def binding(self, binding: Binding, value: Any, expr: str) -> None:
        """The code, Coding or CodeableConcept must be in the value set (a warning unless required)."""
        kind = binding.kind or _binding_kind(value)
        if kind == "code":
            if not isinstance(value, str) or value in binding.codes:
                return
            shown = f"'{value}'"
        elif kind == "Coding":
            if not isinstance(value, dict) or (value.get("system"), value.get("code")) in binding.pairs:
                return
            shown = f"{value.get('system')}|{value.get('code')}"
        else:
            codings = (
                [c for c in value.get("coding", []) if isinstance(c, dict)] if isinstance(value, dict) else []
            )
            if any((c.get("system"), c.get("code")) in binding.pairs for c in codings):
                return
            if not codings and binding.strength != "required":
                return  # text alone is acceptable outside required bindings
            shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        severity = STRENGTH_SEVERITY[binding.strength]
        message = f"{expr}: {shown} is not in the value set {binding.value_set} ({binding.strength} binding)"
        self.issue(severity, "code-invalid", message, expr)

    def reference(self, targets: frozenset[str], value: Mapping[str, Any], expr: str) -> None:
        """A relative literal reference (and Reference.type) must name an allowed resource type."""
        allowed = ", ".join(sorted(targets))
        reference = value.get("reference")
        if isinstance(reference, str):
            parsed = parse_reference(reference)  # None for #contained, urn:uuid: and absolute URLs
            if parsed is not None and parsed[0] not in targets:
                self.issue(
                    "error", "structure", f"{expr}: '{reference}' is a {parsed[0]}; allowed: {allowed}", expr
                )
                return
        declared = value.get("type")
        if isinstance(declared, str) and declared.rsplit("/", 1)[-1] not in targets:
            self.issue(
                "error", "structure", f"{expr}: type '{declared}' not allowed; allowed: {allowed}", expr
            )

    def constraints(self, constraints: list[Constraint], value: Any, expr: str, model: str) -> None:
        """Each invariant must evaluate to exactly [true] with the value as context."""
        # The root is passed as is (fhirpathpy types it from resourceType); inner values are wrapped in a
        # typed node so that choice names (`value`) and type tests (`is Quantity`) resolve.
        context = value if value is self.root else typed_node(value, model)
        for constraint in constraints:
            try:
                result = constraint.evaluate(context, self.env)
            except Exception as exc:  # a broken expression must not turn into a 500 on every write
                message = f"{expr}: {constraint.key} could not be evaluated: {exc}"
                self.issue(constraint.severity, "exception", message, expr)
                continue
            if result != [True]:
                message = f"{expr}: {constraint.key}: {constraint.human}"
                self.issue(constraint.severity, "invariant", message, expr)


def _binding_kind(value: Any) -> str:
    """Decide code / Coding / CodeableConcept from the JSON when the element's type is unknown."""
    if isinstance(value, str):
        return "code"
    if isinstance(value, dict) and "coding" not in value and ("code" in value or "system" in value):
        return "Coding"
    return "CodeableConcept"


def _slice_key(piece: Node) -> Any:
    """The value that decides membership of a slice (its fixed[x], else its pattern[x])."""
    return piece.fixed if piece.fixed is not NOTHING else piece.pattern


def _slice_matches(piece: Node, value: Any) -> bool:
    """Whether one item belongs to a slice (discriminator on $this: the item matches fixed or pattern)."""
    if piece.fixed is not NOTHING:
        return equal(value, piece.fixed)
    return contains(value, piece.pattern)
