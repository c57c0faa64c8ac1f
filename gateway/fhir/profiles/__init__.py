"""The gateway's profiles: FHIR StructureDefinitions (differentials) applied to resources as plain dicts.

`ProfileSet.load` reads `profiles/` once and compiles every differential into a tree of rule nodes (one per
constrained element), value sets into frozensets of (system, code) and every FHIRPath expression into a
callable. `validate` then walks only the branches of a resource that carry rules, so its cost grows with the
number of rules, not with the size of the resource.

Supported in a differential: min/max at any depth, choice elements and `type` restrictions on them,
fixed[x], pattern[x], bindings (required; extensible and preferred as warnings), Reference targetProfile,
FHIRPath constraints and slicing by `pattern`/`value` on `$this`. Anything else that would constrain the
content (maxLength, minValue[x], other discriminators, re-slicing) is rejected at load: a rule the gateway
cannot enforce must not look enforced.

The package's modules, each importing only those listed before it: `native` (a compiler from the subset of
FHIRPath the invariants use to Python closures), `presence` (settling invariants from which elements are
present), `fhirpath` (checking and compiling expressions: natively
when they are in that subset, else with fhirpathpy), `terminology` (value-set expansion), `rules` (the
compiled rule tree and JSON comparisons), `compiler` (differential -> rule tree), `walker` (validating a
resource against one profile) and `profile_set` (loading and the public `ProfileSet`).
"""

from gateway.fhir.profiles.profile_set import ENFORCEMENT_FILE, ProfileSet

__all__ = ["ENFORCEMENT_FILE", "ProfileSet"]
