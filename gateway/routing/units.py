"""The few unit conversions lab monitoring needs, and nothing clever.

Units are UCUM codes (http://unitsofmeasure.org). A value converts only between units of one kind listed
here; anything else returns None so the caller skips the comparison instead of guessing. meq/L and
mmol/L are the same number only for ions with one charge (Li+, K+, Na+), so the caller has to say so.
"""

from __future__ import annotations

# unit -> (kind, factor to the kind's base unit)
_SCALES: dict[str, tuple[str, float]] = {
    # cell counts per volume; base /uL (1 mm3 = 1 uL; 10*9/L = 10*9 per 10*6 uL = 1000/uL)
    "/uL": ("count", 1.0),
    "{cells}/uL": ("count", 1.0),
    "/mm3": ("count", 1.0),
    "10*3/uL": ("count", 1e3),
    "10*3/mm3": ("count", 1e3),
    "10*9/L": ("count", 1e3),
    "/L": ("count", 1e-6),
    # mass concentration; base g/L
    "g/dL": ("mass", 10.0),
    "g/L": ("mass", 1.0),
    "mg/dL": ("mass", 1e-2),
    "mg/L": ("mass", 1e-3),
    "ug/mL": ("mass", 1e-3),
    "ug/dL": ("mass", 1e-5),
    "ng/mL": ("mass", 1e-6),
    # substance concentration; base mmol/L
    "mol/L": ("substance", 1e3),
    "mmol/L": ("substance", 1.0),
    "umol/L": ("substance", 1e-3),
    # charge concentration; base meq/L
    "eq/L": ("charge", 1e3),
    "meq/L": ("charge", 1.0),
    # enzyme activity; base U/L ([IU] is a different UCUM unit, so it is not folded in)
    "U/L": ("activity", 1.0),
    "[IU]/L": ("international", 1.0),
}

# Spellings labs send as Quantity.unit text that mean exactly one UCUM unit.
_ALIASES: dict[str, str] = {
    "mEq/L": "meq/L",
    "mmol/l": "mmol/L",
    "cells/uL": "/uL",
    "x10E3/uL": "10*3/uL",
    "10^3/uL": "10*3/uL",
    "x10^3/uL": "10*3/uL",
    "x10E9/L": "10*9/L",
    "10^9/L": "10*9/L",
    "x10^9/L": "10*9/L",
    "IU/L": "[IU]/L",
}


def normalise(unit: str | None) -> str | None:
    """The UCUM code for `unit`, or the unit as given when it is not one of the known spellings."""
    if unit is None:
        return None
    unit = unit.strip()
    if not unit:
        return None
    return _ALIASES.get(unit, unit)


def is_known(unit: str) -> bool:
    return normalise(unit) in _SCALES


def _kind(unit: str, monovalent: bool) -> tuple[str, float] | None:
    kind = _SCALES.get(unit)
    if kind is not None and monovalent and kind[0] == "charge":
        return "substance", kind[1]  # one charge per particle: 1 meq = 1 mmol
    return kind


def convert(
    value: float, from_unit: str | None, to_unit: str | None, *, monovalent: bool = False
) -> float | None:
    """`value` in `from_unit` expressed in `to_unit`; None when the two units do not convert."""
    source, target = normalise(from_unit), normalise(to_unit)
    if source == target:
        return value
    if source is None or target is None:
        return None
    from_kind, to_kind = _kind(source, monovalent), _kind(target, monovalent)
    if from_kind is None or to_kind is None or from_kind[0] != to_kind[0]:
        return None
    # Rounded so 0.4 10*3/uL is 400 /uL, not 400.00000000000006, at an inclusive threshold.
    return float(f"{value * from_kind[1] / to_kind[1]:.12g}")
