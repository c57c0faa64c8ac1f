"""`gateway sandbox run`: exercises any FHIR R4 server with the gateway's own resources, then cleans up.

Like `gateway.demo`, this package is a client from outside: it speaks HTTP to a FHIR server and never
imports the gateway's service, store or transports (an import-linter contract). It uses the pure HL7 v2
translator (`gateway.adapters.hl7v2`) and PA Task builder (`gateway.pa`) to make the resources it writes.

    resources.py  the test data: a made-up patient, a clozapine order, lab Observations from an ORU^R01,
                  a PA Task; all tagged HTEST and carrying the run's identifier (pure)
    compare.py    round trip, field by field: what was sent against what came back (pure)
    client.py     httpx with timeouts, bearer token or client credentials via SMART configuration
    recording.py  record every exchange as JSON (credentials redacted); replay a recording in tests
    runner.py     the steps, their pass/fail and timings, cleanup that always runs
    report.py     the table and the JSON document

Exceptions: `SandboxError` (client.py) for a request refused or not answered; steps catch it and fail.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from gateway.sandbox import report
from gateway.sandbox.client import SandboxError, Server
from gateway.sandbox.recording import Recorder, Replay
from gateway.sandbox.runner import Report, Step, run

__all__ = [
    "HAPI_R4",
    "Recorder",
    "Replay",
    "Report",
    "SandboxError",
    "Server",
    "Step",
    "report",
    "run",
    "run_id",
]

HAPI_R4 = "http://hapi.fhir.org/baseR4"


def run_id(now: datetime) -> str:
    """The run's name: its time (recognisable on a shared public server) and random hex (unique)."""
    return f"gw-sandbox-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
