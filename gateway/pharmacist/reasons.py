"""The reason every pharmacist decision carries: a short code for programs and a text for people.

Matching and worklist ranking both explain themselves with these, so the console can show the text and
filter or count by code.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.types import JSON


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"

    def to_json(self) -> JSON:
        return {"code": self.code, "text": self.text}
