"""Reading and rewriting FHIR references."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

_RELATIVE_RE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@lru_cache(maxsize=8192)  # ids are new in every message: a big cache held memory, not hits
def parse_reference(reference: str, local_bases: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(type, id) of a literal reference to a resource on this server, or None.

    Relative references ("Patient/1", "Patient/1/_history/2") always qualify; absolute ones only when they
    start with one of `local_bases`. Contained (#x), urn: and other servers' URLs return None.
    """
    if "://" in reference:
        for base in local_bases:
            prefix = base.rstrip("/") + "/"
            if reference.startswith(prefix):
                reference = reference[len(prefix) :]
                break
        else:
            return None
    match = _RELATIVE_RE.match(reference)
    if not match:
        return None
    return match["type"], match["id"]


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-shaped object (a dict with a string `reference`) anywhere in a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for key, value in node.items():
            if key != "contained":  # contained resources resolve against their container
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)


def rewrite_references(resource: dict[str, Any], resolve: Callable[[str], str | None]) -> int:
    """Replace each `reference` for which `resolve` gives a new value. Returns how many changed."""
    changed = 0
    for ref in iter_references(resource):
        new = resolve(ref["reference"])
        if new is not None and new != ref["reference"]:
            ref["reference"] = new
            changed += 1
    return changed
