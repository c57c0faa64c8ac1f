"""JSON for FHIR content that keeps every decimal exactly as it was written.

FHIR decimals carry precision: a lab result sent as `7.20` says more than `7.2`, and `1.0E3` has two
significant figures where `1000` has four. orjson (like Python's float) keeps only the value:
`orjson.loads(b"7.20")` is 7.2 and is written back as `7.2`. Here every non-integer number is parsed into
a `DecimalLiteral`, a float (so arithmetic and comparisons keep working) that remembers its literal, and
`dumps` writes that literal back byte for byte. Integers are Python ints, exact at any size.

Speed: parsing uses the standard library's C scanner, which hands each number's text to a callback
(orjson cannot), and is 2-3 times slower than orjson: about 5 µs more for a typical Observation, which is
small next to validating and storing it. Writing stays orjson, with one callback per decimal (about 1.5
times orjson's time). `python -m bench jsonio` measures both.

A leaf: imports the standard library and orjson only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

__all__ = ["DecimalLiteral", "JSONDecodeError", "decimal_literal", "dumps", "loads"]

# orjson's JSONDecodeError is a subclass of this one: catching it catches both parsers' errors.
JSONDecodeError = json.JSONDecodeError

# A JSON number (RFC 8259): ASCII digits, no '+', no leading zeros, digits on both sides of a '.'.
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A number as senders write it (HL7 NM and friends): a '+', leading zeros, ".5" and "5." too.
_SENT_NUMBER: Final = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?([eE][+-]?[0-9]+)?")
# A \u escape of a UTF-16 surrogate (\uD800-\uDFFF); alone it is not text, and orjson refuses it.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
# orjson writes integers from -2**63 to 2**64 - 1; beyond that they are written as fragments.
_ORJSON_INTS: Final = range(-(2**63), 2**64)


class DecimalLiteral(float):
    """A JSON number with a fraction or an exponent: a float that remembers how it was written.

    `str()` (and so f-strings) give the literal. Arithmetic gives plain floats, as it should: a computed
    value has no written precision. Equality is the float's, so 7.20 == 7.2.
    """

    __slots__ = ("literal",)
    literal: str

    def __new__(cls, literal: str) -> DecimalLiteral:
        """The number written as `literal`: a finite JSON number (`decimal_literal` takes what senders
        write). ValueError otherwise."""
        if not isinstance(literal, str) or _JSON_NUMBER.fullmatch(literal) is None:
            raise ValueError(f"not a JSON number: {literal!r}")
        value = float.__new__(cls, literal)
        if math.isinf(value):
            raise ValueError(f"beyond the range of a double: {literal!r}")
        value.literal = literal
        return value

    def __str__(self) -> str:
        return self.literal

    def __repr__(self) -> str:
        return f"DecimalLiteral({self.literal!r})"

    def __reduce__(self) -> tuple[type[DecimalLiteral], tuple[str]]:
        return DecimalLiteral, (self.literal,)

    def __copy__(self) -> DecimalLiteral:
        return self  # immutable, like float

    def __deepcopy__(self, memo: dict[int, Any]) -> DecimalLiteral:
        return self


def decimal_literal(text: str) -> int | DecimalLiteral | None:
    """A number as a sender writes it, as the JSON number that keeps its written precision.

    Takes HL7 NM (a leading '+', leading zeros, ".5", "5.") and JSON numbers with exponents, with
    surrounding whitespace: "+007.20" is 7.20, ".5" is 0.5, "-0.0" stays -0.0, "1.0E3" stays 1.0E3.
    Without a fraction or an exponent the number is an int ("5." is 5, "-0" is 0). None when `text` is
    not a number, or is beyond the range of a double.
    """
    match = _SENT_NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    sign, whole, fraction, exponent = match.groups()
    if not whole and not fraction:
        return None  # "", "+", ".", "e5": no digits before the exponent
    number = ("-" if sign == "-" else "") + (whole.lstrip("0") or "0")
    if not fraction and not exponent:
        return int(number)
    try:
        return DecimalLiteral(number + (f".{fraction}" if fraction else "") + (exponent or ""))
    except ValueError:
        return None


class _NotFinite(ValueError):
    pass


def _from_scanner(text: str) -> DecimalLiteral:
    """parse_float for the stdlib scanner, which only ever passes valid JSON number text."""
    value = float.__new__(DecimalLiteral, text)
    if math.isinf(value):
        raise _NotFinite(text)
    value.literal = text
    return value


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)  # NaN, Infinity and -Infinity are not JSON


_DECODER: Final = json.JSONDecoder(parse_float=_from_scanner, parse_constant=_refuse_constant)


def loads(data: bytes | str) -> Any:
    """Parse JSON, every non-integer number as a `DecimalLiteral` and every integer exactly.

    Accepts what orjson accepts, and refuses the rest with JSONDecodeError (a ValueError): invalid
    UTF-8, lone surrogates, NaN and Infinity, numbers beyond the range of a double.
    """
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise JSONDecodeError(f"not valid UTF-8 ({exc.reason})", "", exc.start) from None
    try:
        value = _DECODER.decode(text)
    except _NotFinite as exc:
        raise JSONDecodeError(
            f"{exc} is not a finite JSON number", text, max(text.find(str(exc)), 0)
        ) from None
    except RecursionError:
        raise JSONDecodeError("nested too deeply", text, 0) from None
    except JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more than 4300 digits
        raise JSONDecodeError(str(exc), text, 0) from None
    if b"\\" in raw and _SURROGATE_ESCAPE.search(raw) is not None:
        orjson.loads(raw)  # the stdlib scanner takes lone surrogates; orjson refuses them (and pairs pass)
    return value


def _default(value: Any) -> orjson.Fragment:
    if isinstance(value, DecimalLiteral):
        return orjson.Fragment(value.literal)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(obj: Any, *, option: int | None = None) -> bytes:
    """orjson.dumps that writes each `DecimalLiteral` as its literal and integers of any size exactly."""
    try:
        return orjson.dumps(obj, default=_default, option=option)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (rare: a sender's long number) are not orjson's; anything else fails again.
        return orjson.dumps(_big_ints_as_fragments(obj), default=_default, option=option)


def _big_ints_as_fragments(value: Any) -> Any:
    """A copy of `value` with integers orjson cannot write turned into fragments."""
    if type(value) is dict:
        return {k: _big_ints_as_fragments(v) for k, v in value.items()}
    if type(value) is list or type(value) is tuple:
        return [_big_ints_as_fragments(v) for v in value]
    if type(value) is int and value not in _ORJSON_INTS:
        return orjson.Fragment(str(value))
    return value
