"""Code tables (`mappings/tables/*.yaml`) with per-site overlays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CodeTables:
    """Lookups in named code tables. A site's overlay wins over the shared table, entry by entry."""

    def __init__(
        self, tables: Mapping[str, Mapping[str, Any]], overlay: Mapping[str, Mapping[str, Any]] | None = None
    ):
        self._tables = tables
        self._overlay = overlay or {}

    def map(self, table: str, code: str) -> Any | None:
        site = self._overlay.get(table)
        if site is not None and code in site:
            return site[code]
        shared = self._tables.get(table)
        if shared is None:
            return None
        found = shared.get(code)
        if found is None and code != code.upper():
            found = shared.get(code.upper())  # HL7 codes are upper case; some senders are not
        return found

    def with_overlay(self, overlay: Mapping[str, Mapping[str, Any]]) -> CodeTables:
        return CodeTables(self._tables, overlay)

    def table(self, name: str) -> Mapping[str, Any]:
        """One shared table as it is ({} when there is none)."""
        return self._tables.get(name) or {}

    def names(self) -> list[str]:
        return sorted(self._tables)
