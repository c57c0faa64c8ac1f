"""Code tables for the HL7 v2 tests: `mappings/tables/*.yaml` behind the `datatypes.Tables` protocol.

Not a test module. `extra` adds or overrides entries per table, for tables that are site data (such as
`assigning-authorities`) or for a test that needs an entry the shipped files do not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TABLES_DIR = Path(__file__).resolve().parents[2] / "mappings" / "tables"


def load_table(path: Path) -> dict[str, Any]:
    """The whole document of one table file: its `description` and its `codes`."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("codes"), dict):
        raise ValueError(f"{path.name}: a table file needs a `codes:` mapping")
    return document


class YamlTables:
    """`map(table, code)` over the YAML files, each read once on first use; missing files are empty."""

    def __init__(self, directory: Path = TABLES_DIR, extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.directory = directory
        self.extra = extra or {}
        self._codes: dict[str, dict[str, Any]] = {}

    def codes(self, table: str) -> dict[str, Any]:
        if table not in self._codes:
            path = self.directory / f"{table}.yaml"
            codes = {str(k): v for k, v in load_table(path)["codes"].items()} if path.exists() else {}
            codes.update(self.extra.get(table, {}))
            self._codes[table] = codes
        return self._codes[table]

    def map(self, table: str, code: str) -> Any | None:
        return self.codes(table).get(code)
