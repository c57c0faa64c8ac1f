"""People's passwords: argon2id storage, rehash on a changed cost, and the password policy."""

from __future__ import annotations

import argon2
import pytest
from pydantic import ValidationError

from gateway.auth.passwords import (
    DEFAULT_COST,
    MAX_LENGTH,
    MIN_LENGTH,
    WeakPassword,
    check_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from gateway.settings import Settings

TEST_COST = 10  # 1 MiB: what the test suite uses (GATEWAY_PASSWORD_HASH_COST=10)
PASSWORD = "correct horse battery staple"


def test_the_default_cost_is_at_least_argon2_cffi_s_memory_hard_defaults() -> None:
    stored = hash_password(PASSWORD)  # the real cost, once: about 64 MiB and tens of milliseconds
    params = argon2.extract_parameters(stored)
    library = argon2.PasswordHasher()
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= library.memory_cost >= 64 * 1024
    assert params.time_cost >= library.time_cost and params.parallelism >= library.parallelism
    assert Settings().password_hash_cost == DEFAULT_COST
    assert verify_password(PASSWORD, stored) and not needs_rehash(stored)


def test_a_stored_hash_is_argon2id_salted_and_not_the_password() -> None:
    first, second = hash_password(PASSWORD, TEST_COST), hash_password(PASSWORD, TEST_COST)
    assert first.startswith("$argon2id$v=19$m=1024,t=3,p=4$")
    assert first != second  # a fresh salt each time
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "!", first)
    assert not verify_password("Correct horse battery staple", first)


def test_unicode_forms_of_one_password_match() -> None:
    composed, decomposed = "café crème brûlée", "cafe\u0301 cre\u0300me bru\u0302le\u0301e"
    assert verify_password(decomposed, hash_password(composed, TEST_COST))


def test_malformed_or_hostile_hashes_are_a_mismatch_not_an_error() -> None:
    assert not verify_password(PASSWORD, "")
    assert not verify_password(PASSWORD, "scrypt$1024$8$1$c2FsdA==$aGFzaA==")
    stored = hash_password(PASSWORD, TEST_COST)
    # The same hash claiming 4 GiB of memory: refused before anything is computed.
    assert not verify_password(PASSWORD, stored.replace("m=1024", "m=4194304"))
    argon2i = argon2.PasswordHasher(memory_cost=1024, type=argon2.Type.I).hash(PASSWORD)
    assert not verify_password(PASSWORD, argon2i)
    assert not verify_password("lone \udc00 surrogate", stored)


def test_a_hash_made_at_another_cost_needs_rehashing() -> None:
    cheap = hash_password(PASSWORD, TEST_COST)
    assert not needs_rehash(cheap, TEST_COST)
    assert needs_rehash(cheap, TEST_COST + 1)
    assert verify_password(PASSWORD, cheap)  # still valid meanwhile: the hash names its own parameters
    assert needs_rehash("not a hash", TEST_COST)
    for out_of_range in (9, 21):
        with pytest.raises(ValueError):
            hash_password(PASSWORD, out_of_range)
    with pytest.raises(ValidationError):
        Settings(password_hash_cost=9)
    with pytest.raises(ValueError):
        hash_password("", TEST_COST)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("", "at least 12"),
        ("eleven-char", "at least 12"),
        ("x" * (MAX_LENGTH + 1), f"at most {MAX_LENGTH}"),
        ("pharmacist.one", "user name"),
        ("  PHARMACIST.ONE ", "user name"),
        ("lone \udc00 surrogate!", "cannot be stored"),
    ],
)
def test_the_policy_refuses_and_says_why_without_quoting_the_password(password: str, why: str) -> None:
    with pytest.raises(WeakPassword) as refused:
        check_policy(password, "pharmacist.one")
    assert why in str(refused.value)
    if password.strip():
        assert password.strip() not in str(refused.value)


def test_the_policy_accepts_twelve_characters_and_long_passphrases() -> None:
    check_policy("x" * MIN_LENGTH, "pharmacist.one")
    check_policy("x" * MAX_LENGTH, "pharmacist.one")
    check_policy("pharmacist.one and more", "pharmacist.one")  # containing the name is allowed
