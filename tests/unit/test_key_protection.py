"""Pure pieces of key protection: sealing signing keys, the key ring's states, the failure back-off."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import jwt
import pytest

from gateway.auth.key_encryption import (
    KeyEncryptionError,
    KeyEncryptionKey,
    fingerprint,
    from_settings,
    load_or_create_file,
    new_key_text,
)
from gateway.auth.keyring import CURRENT, PREVIOUS, RETIRED, KeyInfo, KeyRing, next_kid, overlap_end_us
from gateway.auth.throttle import FailureThrottle, ThrottlePolicy
from gateway.auth.tokens import InvalidToken, issue_access_token, key_hint, verify_access_token

SECRET = b"s" * 32


def test_a_sealed_key_opens_only_with_its_kek_and_kid() -> None:
    kek = KeyEncryptionKey.parse(new_key_text())
    sealed = kek.seal("k1", SECRET)
    assert SECRET not in sealed.encode() and SECRET.hex() not in sealed
    assert kek.open("k1", sealed) == (SECRET, True)
    assert kek.seal("k1", SECRET) != sealed  # a fresh nonce each time
    with pytest.raises(KeyEncryptionError, match="altered or moved"):
        kek.open("k2", sealed)  # the kid is bound in: a value copied to another row does not open
    with pytest.raises(KeyEncryptionError, match="not configured"):
        KeyEncryptionKey.parse(new_key_text()).open("k1", sealed)
    tampered = sealed[:-6] + ("AAAAAA" if not sealed.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(KeyEncryptionError):
        kek.open("k1", tampered)
    with pytest.raises(KeyEncryptionError, match="not sealed"):
        kek.open("k1", "c2VjcmV0")  # plain base64, as the old server_key table held


def test_a_second_kek_opens_and_tells_that_the_value_needs_resealing() -> None:
    old, new = new_key_text(), new_key_text()
    sealed = KeyEncryptionKey.parse(old).seal("k3", SECRET)
    both = KeyEncryptionKey.parse(f"{new}, {old}")
    assert both.open("k3", sealed) == (SECRET, False)
    assert both.open("k3", both.seal("k3", SECRET)) == (SECRET, True)


@pytest.mark.parametrize("text", ["", "not base64 !", "c2hvcnQ=", "A" * 100])
def test_malformed_keks_are_refused(text: str) -> None:
    with pytest.raises(KeyEncryptionError):
        KeyEncryptionKey.parse(text)


def test_the_kek_fingerprint_does_not_reveal_the_key() -> None:
    key = os.urandom(32)
    assert len(fingerprint(key)) == 12 and key.hex()[:12] != fingerprint(key)


def test_without_the_variable_a_key_file_is_created_once_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "var" / "key-encryption.key"
    with caplog.at_level(logging.WARNING, "gateway.keys"):
        first = from_settings("", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "GATEWAY_KEY_ENCRYPTION_KEY is not set" in caplog.text and str(path) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gateway.keys"):
        second = from_settings("", path)
    assert caplog.text == ""  # created once; later starts use it quietly
    assert second.primary == first.primary


def test_the_variable_wins_over_the_file(tmp_path: Path) -> None:
    text = new_key_text()
    kek = from_settings(text, tmp_path / "unused.key")
    assert kek.primary == KeyEncryptionKey.parse(text).primary
    assert not (tmp_path / "unused.key").exists()


def test_concurrent_first_starts_agree_on_one_key_file(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    found: list[str] = []
    threads = [threading.Thread(target=lambda: found.append(load_or_create_file(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and found[0] == path.read_text().strip()
    assert [p.name for p in tmp_path.iterdir()] == ["kek"]  # no temporary files left


def test_a_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kek"
    path.write_text(new_key_text())
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "gateway.keys"):
        load_or_create_file(path)
    assert "readable by others" in caplog.text


# -- the key ring --------------------------------------------------------------------------------------


def _ring(*infos: KeyInfo) -> KeyRing:
    return KeyRing(
        {i.kid: i for i in infos}, {i.kid: i.kid.encode() * 16 for i in infos if i.state != RETIRED}
    )


def test_kids_are_numbered_after_the_highest() -> None:
    assert next_kid([]) == "k1"
    assert next_kid(["k0"]) == "k1"
    assert next_kid(["k2", "k10", "junk"]) == "k11"


def test_previous_keys_verify_until_their_overlap_ends() -> None:
    ring = _ring(KeyInfo("k1", PREVIOUS, 0, 1_000, None), KeyInfo("k2", CURRENT, 500, None, None))
    assert ring.current == ("k2", b"k2" * 16)
    assert ring.verifying_key("k1", 999) == b"k1" * 16
    assert ring.verifying_key("k1", 1_000) is None
    assert ring.due_for_retirement(999) == [] and ring.due_for_retirement(1_000) == ["k1"]
    assert ring.verifying_key("k9", 0) is None


def test_tokens_without_a_kid_are_checked_against_the_legacy_key_only() -> None:
    assert _ring(KeyInfo("k0", CURRENT, 0, None, None)).verifying_key(None, 5) == b"k0" * 16
    assert _ring(KeyInfo("k1", CURRENT, 0, None, None)).verifying_key(None, 5) is None


def test_the_overlap_covers_the_token_lifetime_and_a_grace() -> None:
    assert overlap_end_us(1_000_000, 300, 60) == 361_000_000


def test_tokens_carry_kid_and_client_generation() -> None:
    token = issue_access_token(
        key=SECRET,
        kid="k7",
        issuer="i",
        client_id="c",
        scope="system/*.rs",
        ttl_seconds=60,
        now=100,
        generation=3,
    )
    assert jwt.get_unverified_header(token)["kid"] == "k7"
    assert key_hint(token).kid == "k7" and key_hint(token).issued_at == 100
    claims = verify_access_token(token, key=SECRET, issuer="i", now=120)
    assert claims.generation == 3
    with pytest.raises(InvalidToken):
        key_hint("x" * 9000)


# -- back-off ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_back_off_starts_after_the_free_failures_and_doubles_to_the_cap() -> None:
    clock = Clock()
    throttle = FailureThrottle(
        ThrottlePolicy(free_failures=2, max_delay_s=5, forget_after_s=100), clock=clock
    )
    delays = []
    for _ in range(7):
        throttle.failed("client")
        delays.append(throttle.retry_after("client"))
        clock.now += delays[-1]  # the caller waits as told, then fails again
    assert delays == [0, 0, 1, 2, 4, 5, 5]
    assert throttle.retry_after("someone-else") == 0


def test_failures_are_forgotten_after_quiet_time_or_a_success() -> None:
    clock = Clock()
    throttle = FailureThrottle(ThrottlePolicy(free_failures=1, forget_after_s=60), clock=clock)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 1
    clock.now += 61
    throttle.failed("a")
    assert throttle.retry_after("a") == 0  # a first failure again
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0


def test_the_failure_table_is_bounded() -> None:
    throttle = FailureThrottle(ThrottlePolicy(free_failures=0), max_keys=3, clock=Clock())
    for key in ("a", "b", "c", "d"):
        throttle.failed(key)
    assert len(throttle) == 3 and throttle.retry_after("a") == 0 and throttle.retry_after("d") > 0
    throttle.failed("x" * 10_000)
    assert throttle.retry_after("x" * 5_000) > 0  # junk ids are counted by a bounded prefix
