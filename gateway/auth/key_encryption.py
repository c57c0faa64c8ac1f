"""Signing keys at rest: sealed with AES-256-GCM under a key-encryption key (KEK) kept outside the database.

A database dump or backup alone then cannot mint access tokens. The sealed form is

    aesgcm1:<KEK fingerprint>:<base64(12-byte nonce + ciphertext + 16-byte tag)>

with the key's `kid` as associated data, so a sealed value moved to another row does not open. The
fingerprint (12 hex digits of a hash of the KEK, not enough to learn anything about it) says which KEK
sealed a value, so a missing KEK is named rather than reported as corruption.

Where the KEK comes from (`from_settings`):
- `GATEWAY_KEY_ENCRYPTION_KEY`: one or more base64 keys of 32 bytes, comma-separated. The first seals;
  the others only open, which is how the KEK itself is changed (put the new one first, keep the old one
  after it until `gateway keys rotate` or a start has re-sealed every key under the new one).
- unset: the file `GATEWAY_KEY_ENCRYPTION_KEY_FILE` (default `./var/key-encryption.key`), created with a
  fresh key and mode 0600 when it does not exist, with a warning in the log: fine for `make run` on one
  machine; in production set the variable from a secret store (the file sits beside the SQLite database,
  so a copy of ./var holds both).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("gateway.keys")

SCHEME = "aesgcm1"
KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_PREFIX = b"specialty-gateway signing key "
ENVIRONMENT_VARIABLE = "GATEWAY_KEY_ENCRYPTION_KEY"


class KeyEncryptionError(Exception):
    """A KEK cannot be read, or a sealed key cannot be opened with the configured KEKs."""


def new_key_text() -> str:
    """A fresh KEK in the form GATEWAY_KEY_ENCRYPTION_KEY takes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode_key(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyEncryptionError("a key-encryption key must be base64") from exc
    if len(raw) != KEY_BYTES:
        raise KeyEncryptionError(f"a key-encryption key must be {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"specialty-gateway kek fingerprint " + key).hexdigest()[:12]


class KeyEncryptionKey:
    """The configured KEKs: the first seals, every one of them opens."""

    def __init__(self, keys: Sequence[bytes], source: str = "") -> None:
        if not keys:
            raise KeyEncryptionError("no key-encryption key")
        self._keys = {fingerprint(k): AESGCM(k) for k in keys}
        # Keys for other purposes, one per KEK, derived by label (`derived`); never the KEK itself.
        self._derivable = [
            hmac.new(k, b"specialty-gateway derived keys", hashlib.sha256).digest() for k in keys
        ]
        self.primary = fingerprint(keys[0])
        self.source = source  # for messages: where the KEK came from (never the key)

    @classmethod
    def parse(cls, text: str, source: str = "") -> KeyEncryptionKey:
        return cls([_decode_key(part) for part in text.split(",") if part.strip()], source)

    def derived(self, label: str) -> list[bytes]:
        """32-byte keys for one purpose (e.g. the timeline stream's event ids), the primary KEK's first:
        HMAC-SHA256 under a key derived from each KEK, so every process with the same KEKs agrees."""
        return [hmac.new(k, label.encode(), hashlib.sha256).digest() for k in self._derivable]

    def seal(self, kid: str, secret: bytes) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self.primary].encrypt(nonce, secret, _AAD_PREFIX + kid.encode())
        return f"{SCHEME}:{self.primary}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, kid: str, stored: str) -> tuple[bytes, bool]:
        """The key sealed in `stored`, and whether the primary KEK sealed it (False: re-seal it)."""
        scheme, _, rest = stored.partition(":")
        sealed_by, _, payload = rest.partition(":")
        if scheme != SCHEME:
            raise KeyEncryptionError(f"signing key {kid} is not sealed ({scheme or 'empty'})")
        aead = self._keys.get(sealed_by)
        if aead is None:
            raise KeyEncryptionError(
                f"signing key {kid} was sealed with key-encryption key {sealed_by}, which is not configured"
                f" (configured: {', '.join(self._keys)}{'; from ' + self.source if self.source else ''})"
            )
        try:
            raw = base64.b64decode(payload, validate=True)
            secret = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _AAD_PREFIX + kid.encode())
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise KeyEncryptionError(f"signing key {kid} does not open: altered or moved") from exc
        return secret, sealed_by == self.primary


def load_or_create_file(path: Path) -> str:
    """The KEK text in `path`, creating the file (mode 0600, a fresh key) when it does not exist.

    Concurrent first starts agree on one key: the file is written under a temporary name and linked into
    place, which fails for all but the first.
    """
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_key_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            created = False  # another process was first: use its key
    finally:
        temporary.unlink(missing_ok=True)
    if created:
        log.warning(
            "%s is not set: created a key-encryption key in %s (mode 0600). Signing keys in the database"
            " are sealed with it. Keep this file with the database's backups, and in production set %s"
            " from a secret store instead.",
            ENVIRONMENT_VARIABLE,
            path,
            ENVIRONMENT_VARIABLE,
        )
    return _read_key_file(path)


def _read_key_file(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("key-encryption key file %s is readable by others (mode %o); chmod 600 it", path, mode)
    return path.read_text().strip()


def from_settings(value: str, file: Path) -> KeyEncryptionKey:
    """The KEK from GATEWAY_KEY_ENCRYPTION_KEY, else from (or into) the key file."""
    if value.strip():
        return KeyEncryptionKey.parse(value, ENVIRONMENT_VARIABLE)
    return KeyEncryptionKey.parse(load_or_create_file(file), str(file))
