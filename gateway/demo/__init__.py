"""`gateway demo`: a realistic specialty-pharmacy story fed through a gateway's real paths.

The package drives a gateway from outside, as its clients do: the FHIR API with an OAuth client token,
HL7 v2 over MLLP (python-hl7's client), and a payer's PAS endpoint (`payer.py`, a small HTTP server the
self-served demo runs). It never imports the gateway's service, store or transports (an import-linter
contract): `gateway.cli` starts the server the way `gateway serve` does and hands this package its URLs.

    story.py    the story as data: people, dates, HL7 v2 messages and FHIR resources (pure)
    client.py   the HTTP API (token, FHIR calls) and the MLLP sender
    payer.py    the stand-in payer (PAS $submit / $inquire, approval by subscription notification)
    feed.py     the feed, in the order things happened, and what it reads back
    report.py   the summary: matching and its reasons, links to look at, how to get a token
"""

from __future__ import annotations

import secrets
from datetime import datetime

from gateway.demo.client import Api, DemoError, Mllp
from gateway.demo.feed import Feeder, PayerFeeds, PriorAuth, Result, Say, ThroughPayer
from gateway.demo.payer import DemoPayer
from gateway.demo.report import Access
from gateway.demo.story import Story

__all__ = [
    "FEEDER_SCOPE",
    "PAYER_SCOPE",
    "READER_SCOPE",
    "Access",
    "DemoError",
    "DemoPayer",
    "PayerFeeds",
    "PriorAuth",
    "Result",
    "Story",
    "ThroughPayer",
    "feed",
    "run_id",
]

# The API clients of the self-served demo: the feeder (the EHR, the pharmacy's tools), the payer
# (answers only its own requests), and a read-only one for the operator.
FEEDER_SCOPE = "system/*.cruds"
PAYER_SCOPE = "system/ClaimResponse.c"
READER_SCOPE = "system/*.rs hl7v2/messages.read"


def run_id(now: datetime) -> str:
    """A short suffix naming one run: its time (recognisable) and two random hex digits (two runs in one
    second into one database still do not collide)."""
    return f"{now:%m%d%H%M%S}{secrets.token_hex(1).upper()}"


def feed(
    story: Story,
    base_url: str,
    client: tuple[str, str],
    mllp: tuple[str, int],
    prior_auth: PriorAuth,
    *,
    insurer: tuple[str, str] | None = None,
    say: Say = lambda _: None,
) -> Result:
    """Feeds the whole story into the gateway at `base_url` (and its MLLP listener); what it found."""
    with Api(base_url, *client) as api, Mllp(*mllp) as sender:
        return Feeder(api, sender, story, prior_auth, insurer=insurer, say=say).run()
