"""People's passwords: the policy they must meet, and their storage as argon2id hashes (argon2-cffi).

A stored hash is argon2's own self-describing string,
`$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`, so the cost can be raised later:
`needs_rehash` tells which stored hashes differ from the configured cost (to hash again at the next
successful login). The memory cost is configured as a power of two, like the scrypt cost of client
secrets (gateway/auth/secrets.py); passes and lanes are argon2-cffi's defaults (RFC 9106's low-memory
profile: 64 MiB, 3 passes, 4 lanes).

Passwords are normalized to Unicode NFKC before they are checked or hashed (NIST SP 800-63B 5.1.1.2), so
the same password typed with composed or decomposed accents matches.
"""

from __future__ import annotations

import functools
import unicodedata

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

DEFAULT_COST = 16  # log2 of the memory in KiB: 2**16 KiB = 64 MiB, argon2-cffi's default
MIN_COST, MAX_COST = 10, 20  # 1 MiB (the test suite's) to 1 GiB
_DEFAULTS = argon2.PasswordHasher()
TIME_COST = _DEFAULTS.time_cost
PARALLELISM = _DEFAULTS.parallelism

MIN_LENGTH = 12
# Long enough for any passphrase or password manager; bounds what a login form can make the server hash.
MAX_LENGTH = 1024

# Bounds for parameters read back from storage, so a corrupt row cannot make one check eat gigabytes.
_MAX_MEMORY_KIB = 2**MAX_COST
_MAX_TIME_COST = 16
_MAX_PARALLELISM = 16


class WeakPassword(ValueError):
    """The password does not meet the policy; the message says why (never quoting the password)."""


def normalized(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def check_policy(password: str, user_name: str) -> None:
    """Raise WeakPassword unless `password` is acceptable for the user `user_name`: at least MIN_LENGTH
    characters (after NFKC), at most MAX_LENGTH, encodable as UTF-8, and not the user name (ignoring case
    and surrounding spaces)."""
    text = normalized(password)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise WeakPassword("the password holds characters that cannot be stored") from None
    if len(text) < MIN_LENGTH:
        raise WeakPassword(f"the password must be at least {MIN_LENGTH} characters long")
    if len(text) > MAX_LENGTH:
        raise WeakPassword(f"the password must be at most {MAX_LENGTH} characters long")
    if text.strip().casefold() == normalized(user_name).strip().casefold():
        raise WeakPassword("the password must not be the user name")


def _check_cost(cost: int) -> None:
    if not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"password hash cost must be {MIN_COST} to {MAX_COST}")


@functools.cache
def _hasher(cost: int) -> argon2.PasswordHasher:
    _check_cost(cost)
    return argon2.PasswordHasher(
        time_cost=TIME_COST,
        memory_cost=2**cost,
        parallelism=PARALLELISM,
        hash_len=_DEFAULTS.hash_len,
        salt_len=_DEFAULTS.salt_len,
        type=argon2.Type.ID,
    )


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """The string to store for `password`: argon2id with 2**cost KiB of memory and a fresh random salt.
    The policy is the caller's to check first (`check_policy`); an empty password is refused here too."""
    if not password:
        raise ValueError("refusing to hash an empty password")
    return _hasher(cost).hash(normalized(password))


def _parameters(stored: str) -> argon2.Parameters:
    """The parameters of a stored hash; ValueError when it is not argon2id or out of bounds."""
    try:
        params = argon2.extract_parameters(stored)
    except InvalidHashError as exc:
        raise ValueError("not an argon2 hash") from exc
    if params.type is not argon2.Type.ID:
        raise ValueError("not argon2id")
    if not (
        1 <= params.time_cost <= _MAX_TIME_COST
        and 1 <= params.parallelism <= _MAX_PARALLELISM
        and 8 * params.parallelism <= params.memory_cost <= _MAX_MEMORY_KIB
    ):
        raise ValueError("argon2 parameters out of range")
    return params


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a string from `hash_password`; False, not an error, for a malformed or
    out-of-bounds `stored` and for a password that cannot be encoded."""
    try:
        _parameters(stored)
        return _DEFAULTS.verify(stored, normalized(password))  # the hash names its own parameters
    except (ValueError, VerificationError, InvalidHashError):  # ValueError covers UnicodeEncodeError
        return False


def needs_rehash(stored: str, cost: int = DEFAULT_COST) -> bool:
    """Whether `stored` was made with other parameters than `hash_password(..., cost)` uses now (a lower
    or higher cost, an older argon2 version); True for a malformed hash."""
    try:
        _parameters(stored)
    except ValueError:
        return True
    return _hasher(cost).check_needs_rehash(stored)
