"""Round-trip comparison: what the runner sent against what the server gave back, field by field.

Pure. A server may add what it owns (`id`, `meta`, `text`) and anything else; what counts is that every
field sent comes back with the same value. Numbers compare by value (1.0 == 1), everything else exactly.
"""

from __future__ import annotations

from typing import Any

# Elements a server legitimately rewrites: its id, versioning and tags (meta), a generated narrative.
SERVER_OWNED = frozenset({"id", "meta", "text"})


def differences(sent: Any, returned: Any, path: str = "") -> list[str]:
    """One line per field sent that came back missing or changed, e.g. `subject.reference: changed ...`."""
    if isinstance(sent, dict):
        if not isinstance(returned, dict):
            return [f"{path or '(resource)'}: changed from an object to {_short(returned)}"]
        found: list[str] = []
        for key, value in sent.items():
            if not path and key in SERVER_OWNED:
                continue
            where = f"{path}.{key}" if path else key
            if key not in returned:
                found.append(f"{where}: dropped")
            else:
                found.extend(differences(value, returned[key], where))
        return found
    if isinstance(sent, list):
        if not isinstance(returned, list):
            return [f"{path}: changed from a list to {_short(returned)}"]
        found = [f"{path}[{i}]: dropped" for i in range(len(returned), len(sent))]
        for i, (a, b) in enumerate(zip(sent, returned, strict=False)):
            found.extend(differences(a, b, f"{path}[{i}]"))
        return found
    if _same(sent, returned):
        return []
    return [f"{path}: changed {_short(sent)} -> {_short(returned)}"]


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    return bool(type(a) is type(b) and a == b)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
