"""Client identifiers and client secrets: generation, hashing with scrypt, verification.

A stored hash describes itself, `scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can be raised later
without breaking secrets hashed under the old one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

_SCHEME = "scrypt"
DEFAULT_COST = 14  # log2 of scrypt's N: about 16 MiB and tens of milliseconds per check
MIN_COST, MAX_COST = 10, 18
_R, _P = 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32

# Bounds for parameters read back from storage, so a corrupt row cannot make one check eat a gigabyte.
_MAX_N = 2**18
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 256 * 1024 * 1024


def new_client_id() -> str:
    """A random client id; URL-safe, so it needs no escaping in HTTP Basic credentials or form bodies.
    Never starting with `-`, which a command line would take for an option (`gateway clients remove ID`)."""
    while (client_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return client_id


def new_secret() -> str:
    """A random client secret with 256 bits of entropy, shown once to the operator and then only hashed."""
    return secrets.token_urlsafe(32)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # scrypt needs 128 * n * r bytes; the default cap (32 MiB) would refuse legitimate larger costs.
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY + 1024 * 1024, dklen=length
    )


def hash_secret(secret: str, cost: int = DEFAULT_COST) -> str:
    """The string to store for `secret`: scrypt (N = 2**cost) with a fresh random salt."""
    if not secret:
        raise ValueError("refusing to hash an empty secret")
    if not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"secret hash cost must be {MIN_COST} to {MAX_COST}")
    n = 2**cost
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, n, _R, _P, _HASH_BYTES)
    return f"{_SCHEME}${n}${_R}${_P}${_b64encode(salt)}${_b64encode(digest)}"


def _parse_int(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"not a number: {text!r}")
    return int(text)


def _parse_stored(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) from a stored string; ValueError when it is malformed or out of bounds."""
    scheme, n_text, r_text, p_text, salt_text, hash_text = stored.split("$")
    if scheme != _SCHEME:
        raise ValueError(f"unknown scheme {scheme!r}")
    n, r, p = _parse_int(n_text), _parse_int(r_text), _parse_int(p_text)
    if n < 2 or n > _MAX_N or n & (n - 1) or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError("scrypt parameters out of range")
    if 128 * n * r > _MAX_MEMORY:
        raise ValueError("scrypt parameters need too much memory")
    salt = base64.b64decode(salt_text, validate=True)
    digest = base64.b64decode(hash_text, validate=True)
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("salt or hash of the wrong length")
    return n, r, p, salt, digest


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches a string from `hash_secret`; False, not an error, for a malformed `stored`."""
    try:
        n, r, p, salt, expected = _parse_stored(stored)
        actual = _scrypt(secret, salt, n, r, p, len(expected))
    except ValueError:  # includes binascii.Error, and UnicodeEncodeError for a secret with lone surrogates
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash(cost: int) -> str:
    """A hash of a random secret nobody knows, at the configured cost: what unknown clients are checked
    against, so that they take as long as a known client with a wrong secret."""
    return hash_secret(new_secret(), cost)


def prepare_dummy(cost: int = DEFAULT_COST) -> None:
    """Compute the dummy hash now (at start), not during the first request from an unknown client."""
    _dummy_hash(cost)


def verify_secret_or_dummy(secret: str, stored: str | None, cost: int = DEFAULT_COST) -> bool:
    """`verify_secret` against `stored`, or, when there is nothing to check against (unknown client, a
    client without a secret), the same work against a dummy hash at `cost`, answering False."""
    if stored is None:
        verify_secret(secret, _dummy_hash(cost))
        return False
    return verify_secret(secret, stored)
