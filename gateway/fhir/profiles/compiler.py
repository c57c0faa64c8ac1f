"""Compiling a StructureDefinition's differential into a tree of rule nodes.

`Compiler` reads the differential in order, creates a node per constrained element (and per slice), and
compiles each element's min/max, fixed[x]/pattern[x], type restrictions, bindings (through `terminology`),
Reference targets and FHIRPath constraints (through `fhirpath`). Whatever it cannot enforce it rejects with a
ValueError naming the source file, so that a bad profile fails the load rather than a later write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.fhir.profiles.fhirpath import CHOICE_TYPES, DEFINED_ELSEWHERE, child_model_path, compile_fhirpath
from gateway.fhir.profiles.rules import NOTHING, STRENGTH_SEVERITY, Binding, Constraint, Node, Profile
from gateway.fhir.profiles.terminology import Terminology
from gateway.types import JSON

_CORE_SD: Final = "http://hl7.org/fhir/StructureDefinition/"
# Element properties that constrain content but are not implemented: refusing them beats ignoring them.
_UNSUPPORTED: Final = ("maxLength", "minValue", "maxValue", "contentReference", "defaultValue")


def _choice_value(element: Mapping[str, Any], prefix: str) -> Any:
    """The fixed[x]/pattern[x] value of an element definition, or NOTHING."""
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
            return value
    return NOTHING


def _upper_first(name: str) -> str:
    """A type code as it appears in a choice property name: dateTime -> DateTime."""
    return name[:1].upper() + name[1:]


class Compiler:
    """Turns one StructureDefinition's differential into a `Profile`; errors name `source`."""

    def __init__(
        self, source: str, sd: JSON, terminology: Terminology, profile_types: dict[str, str]
    ) -> None:
        self.source = source
        self.sd = sd
        self.terminology = terminology
        self.profile_types = profile_types

    def fail(self, message: str) -> ValueError:
        """An error that names the file (or list position) the profile came from."""
        return ValueError(f"{self.source}: {message}")

    def compile(self) -> Profile:
        """Build the rule tree from the differential, in order (parents before children, as FHIR requires)."""
        sd = self.sd
        for key in ("url", "type", "differential"):
            if key not in sd:
                raise self.fail(f"StructureDefinition has no {key}")
        if sd.get("derivation", "constraint") != "constraint":
            raise self.fail("only derivation=constraint profiles can be applied")
        rtype = sd["type"]
        root = Node(name=rtype, model_path=rtype)
        nodes: dict[str, Node] = {rtype: root}
        elements = sd["differential"].get("element")
        if not isinstance(elements, list):
            raise self.fail("differential.element must be a list")
        for index, element in enumerate(elements):
            if not isinstance(element, dict):
                raise self.fail(f"differential.element[{index}] is not an object")
            try:
                self.add_element(element, rtype, nodes)
            except (KeyError, TypeError, AttributeError) as exc:
                raise self.fail(f"element {element.get('id')!r} is malformed: {exc!r}") from None
        root.finish()
        return Profile(
            sd["url"],
            str(sd.get("id") or sd.get("name") or sd["url"]),
            rtype,
            str(sd.get("baseDefinition", "")),
            root,
        )

    def add_element(self, element: JSON, rtype: str, nodes: dict[str, Node]) -> None:
        """Place one differential element in the tree (creating unconstrained ancestors) and compile it."""
        path = element.get("path")
        if not isinstance(path, str):
            raise self.fail(f"element {element.get('id')!r} has no path")
        eid = element.get("id") or (path + (f":{element['sliceName']}" if element.get("sliceName") else ""))
        segments = [part.partition(":") for part in eid.split(".")]
        if ".".join(s[0] for s in segments) != path or segments[0][0] != rtype:
            raise self.fail(f"element id {eid!r} does not match path {path!r} of a {rtype} profile")
        for unsupported in _UNSUPPORTED:
            if any(k.startswith(unsupported) for k in element):
                raise self.fail(f"{eid}: {unsupported} is not supported")
        if len(segments) == 1:
            self.add_rules(nodes[rtype], element, eid)
            return
        parent = nodes[rtype]
        for depth in range(1, len(segments)):
            key = ".".join("".join(s) for s in segments[: depth + 1])
            node = nodes.get(key)
            if node is None:
                node = self.new_node(parent, segments[depth][0], segments[depth][2] or None, key)
                nodes[key] = node
            parent = node
        self.add_rules(parent, element, eid)

    def new_node(self, parent: Node, name: str, slice_name: str | None, key: str) -> Node:
        """A node for a child element or a slice of `parent`'s child."""
        if slice_name is not None:
            if "/" in slice_name or "@" in slice_name:
                raise self.fail(f"{key}: re-slicing and @default slices are not supported")
            sliced = next((c for c in parent.children if c.name == name.removesuffix("[x]")), None)
            if sliced is None or not sliced.sliced:
                raise self.fail(f"{key}: slice without a slicing definition on the same path earlier")
            node = Node(
                name=sliced.name, model_path=sliced.model_path, slice_name=slice_name, choice=sliced.choice
            )
            sliced.slices.append(node)
            return node
        stem = name.removesuffix("[x]")
        model_path = child_model_path(parent.model_path, stem) if parent.model_path else None
        node = Node(name=stem, model_path=model_path)
        if name.endswith("[x]"):
            choice_key = f"{parent.model_path}.{stem}" if parent.model_path else ""
            node.choice = tuple(CHOICE_TYPES.get(DEFINED_ELSEWHERE.get(choice_key, choice_key), ()))
            node.model_path = None  # depends on which type the resource chose
        parent.children.append(node)
        return node

    def add_rules(self, node: Node, element: JSON, eid: str) -> None:
        """Compile the constraining properties of one element definition onto its node."""
        try:
            node.min = int(element.get("min", node.min))
            if "max" in element:
                node.max = None if element["max"] == "*" else int(element["max"])
        except ValueError:
            raise self.fail(f"{eid}: min must be a number and max a number or '*'") from None
        node.fixed = _choice_value(element, "fixed")
        node.pattern = _choice_value(element, "pattern")
        types = element.get("type") or []
        if types and node.choice is not None:
            node.allowed = frozenset(_upper_first(t["code"]) for t in types)
            if not node.choice:  # the model does not know this choice: the profile's list is all we have
                node.choice = tuple(sorted(node.allowed))
        node.targets = self.reference_targets(types)
        if "binding" in element:
            node.binding = self.binding(element["binding"], node, eid)
        for constraint in element.get("constraint", []):
            node.constraints.append(self.constraint(constraint, node, eid))
        if "slicing" in element:
            self.slicing(node, element["slicing"], eid)
        if node.slice_name is not None and node.fixed is NOTHING and node.pattern is NOTHING:
            raise self.fail(f"{eid}: a slice needs pattern[x] or fixed[x] (discriminator on $this)")

    def slicing(self, node: Node, slicing: JSON, eid: str) -> None:
        """Mark `node` as sliced; only discriminators this package can evaluate are accepted."""
        for discriminator in slicing.get("discriminator", []):
            if discriminator.get("type") not in ("pattern", "value") or discriminator.get("path") != "$this":
                raise self.fail(f"{eid}: only pattern/value discriminators on $this are supported")
        node.sliced = True
        node.closed = slicing.get("rules") == "closed"

    def reference_targets(self, types: list[JSON]) -> frozenset[str] | None:
        """Resource types allowed by Reference(...) targetProfiles; None when any type is allowed."""
        refs = [t for t in types if t.get("code") == "Reference"]
        if not refs:
            return None
        targets: set[str] = set()
        for ref in refs:
            profiles = ref.get("targetProfile")
            if not profiles:
                return None
            for url in profiles:
                url = url.split("|", 1)[0]
                if url in self.profile_types:
                    targets.add(self.profile_types[url])
                elif url.startswith(_CORE_SD):
                    targets.add(url.removeprefix(_CORE_SD))
                else:
                    return None  # a profile we do not have: cannot tell its type, so do not judge
        return frozenset(targets)

    def binding(self, binding: JSON, node: Node, eid: str) -> Binding | None:
        """Precompute the value set; required bindings must be expandable from the shipped resources."""
        strength = binding.get("strength")
        url = binding.get("valueSet")
        if strength not in STRENGTH_SEVERITY or not isinstance(url, str):
            return None  # example bindings, or none: nothing to check
        try:
            pairs = self.terminology.expand(url)
        except (KeyError, ValueError) as exc:
            if strength == "required":
                raise self.fail(f"{eid}: required binding to {url} cannot be checked: {exc}") from None
            return None  # advisory binding to a value set not shipped: there is nothing to advise with
        model_type = node.model_path if node.model_path and "." not in node.model_path else None
        kind = model_type if model_type in ("Coding", "CodeableConcept") else None
        if model_type in ("code", "string", "uri"):
            kind = "code"
        return Binding(strength, url.split("|", 1)[0], pairs, frozenset(c for _, c in pairs), kind)

    def constraint(self, constraint: JSON, node: Node, eid: str) -> Constraint:
        """Compile one invariant; a broken expression fails the load, not the first write it meets."""
        key = constraint.get("key")
        expression = constraint.get("expression")
        severity = constraint.get("severity")
        if not key or not isinstance(expression, str) or severity not in ("error", "warning"):
            raise self.fail(f"{eid}: constraint needs key, expression and severity error|warning")
        try:
            evaluate = compile_fhirpath(expression, node.model_path or "")
        except ValueError as exc:
            raise self.fail(f"{eid}: constraint {key}: {exc}") from None
        return Constraint(key, severity, str(constraint.get("human", "")), evaluate)
