"""The access-token key ring: which key signs, which keys still verify, when a previous key retires.

Each key has a `kid` (`k1`, `k2`, ...: numbered, so two processes creating or rotating at once collide on
the primary key instead of both succeeding) and a state:

    current   signs new tokens and verifies (exactly one)
    previous  verifies only, until `retire_after`: the tokens it signed have expired by then
    retired   verifies nothing; its material is erased from the database

`k0` is the key of releases before key ids: tokens without a `kid` header are checked against it while it
is still current or previous.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LEGACY_KID = "k0"
CURRENT, PREVIOUS, RETIRED = "current", "previous", "retired"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never its material."""

    kid: str
    state: str
    created_us: int
    retire_after_us: int | None
    retired_us: int | None


def effective_state(info: KeyInfo, now_us: int) -> str:
    """A previous key whose overlap has ended counts as retired, whether or not its row says so yet."""
    if info.state == PREVIOUS and info.retire_after_us is not None and info.retire_after_us <= now_us:
        return RETIRED
    return info.state


def kid_number(kid: str) -> int:
    return int(kid[1:]) if kid[:1] == "k" and kid[1:].isdigit() else -1


def next_kid(existing: Iterable[str]) -> str:
    return f"k{max((kid_number(k) for k in existing), default=0) + 1}"


def overlap_end_us(now_us: int, token_ttl_s: int, grace_s: float) -> int:
    """When a key demoted now may retire: every token it signed has expired (tokens signed by processes
    that have not yet noticed the rotation included, hence the grace)."""
    return now_us + int((token_ttl_s + grace_s) * 1_000_000)


@dataclass(frozen=True)
class KeyRing:
    """Opened keys by kid, with their metadata, as one process sees them."""

    infos: Mapping[str, KeyInfo]
    secrets: Mapping[str, bytes]

    @property
    def current(self) -> tuple[str, bytes] | None:
        """(kid, key) to sign with; the newest current key should two ever be current."""
        kids = sorted((i.kid for i in self.infos.values() if i.state == CURRENT), key=kid_number)
        for kid in reversed(kids):
            if kid in self.secrets:
                return kid, self.secrets[kid]
        return None

    def verifying_key(self, kid: str | None, now_us: int) -> bytes | None:
        """The key that checks a token naming `kid` (None: a token from before key ids), if it still may."""
        info = self.infos.get(kid or LEGACY_KID)
        if info is None or effective_state(info, now_us) == RETIRED:
            return None
        return self.secrets.get(info.kid)

    def due_for_retirement(self, now_us: int) -> list[str]:
        return [
            i.kid
            for i in self.infos.values()
            if i.state == PREVIOUS and effective_state(i, now_us) == RETIRED
        ]
