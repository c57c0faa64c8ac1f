"""Payer endpoints from configuration: where each payer's PAS API is, how to authenticate, how long to
wait, how to retry and how often to ask about pended requests.

A YAML (or JSON) file named by GATEWAY_PAYERS_FILE:

    payers:
      - name: acme-health                     # used in logs, metrics and the turnaround report
        base_url: https://pas.acme.example/fhir
        insurers:                             # whose Coverage.payor this payer answers for:
          - Organization/acme                 #   an Organization reference, or
          - http://hl7.org/fhir/sid/us-npi|1234567893   # an identifier (system|value) of it
        auth:
          type: client-credentials            # or static-token, or none
          token_url: https://pas.acme.example/oauth/token
          client_id: gateway
          client_secret_env: ACME_PAS_SECRET  # secrets come from the environment, never this file
          scope: system/Claim.c
        timeout_seconds: 15                   # PAS answers within 15 s
        retry: {max_attempts: 5, first_delay_seconds: 60, max_delay_seconds: 3600}
        inquire_every_seconds: 14400          # Claim/$inquire for pended requests; 0 = never
        claim_type: professional              # Claim.type: professional (default), institutional, pharmacy
        clients: [acme-pas-client-id]         # API clients that post this payer's answers (only its own)

Secrets may also be written inline (`client_secret`, `token`) for local testing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PayerConfigError(ValueError):
    pass


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(5, ge=1, le=100)
    first_delay_seconds: float = Field(60, gt=0)
    max_delay_seconds: float = Field(3600, gt=0)

    def delay_s(self, attempt: int) -> float:
        """Seconds before retry after failed attempt number `attempt` (1-based): doubling, capped."""
        return float(min(self.max_delay_seconds, self.first_delay_seconds * 2 ** min(attempt - 1, 30)))


class PayerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["client-credentials", "static-token", "none"] = "none"
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None
    token: str | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> PayerAuth:
        if self.type == "client-credentials" and not (self.token_url and self.client_id):
            raise ValueError("client-credentials needs token_url and client_id")
        if self.type == "client-credentials" and not (self.client_secret or self.client_secret_env):
            raise ValueError("client-credentials needs client_secret_env (or client_secret)")
        if self.type == "static-token" and not (self.token or self.token_env):
            raise ValueError("static-token needs token_env (or token)")
        return self

    def secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        if self.client_secret_env:
            return env.get(self.client_secret_env) or self.client_secret
        return self.client_secret

    def static_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        if self.token_env:
            return env.get(self.token_env) or self.token
        return self.token


class PayerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    base_url: str
    insurers: list[str] = Field(min_length=1)
    auth: PayerAuth = PayerAuth()
    timeout_seconds: float = Field(15, gt=0, le=300)
    retry: RetryPolicy = RetryPolicy()
    inquire_every_seconds: float = Field(4 * 3600, ge=0)
    claim_type: Literal["professional", "institutional", "pharmacy"] = "professional"
    # API clients (their client_id) this payer posts answers with; they may answer only its requests.
    clients: list[str] = Field(default_factory=list)

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/")


class PayerDirectory:
    """Which payer answers for an insurer (by Organization reference or identifier)."""

    def __init__(self, payers: list[PayerConfig]) -> None:
        self.payers = payers
        self._by_key = {key: p for p in payers for key in p.insurers}
        self._by_name = {p.name: p for p in payers}
        self._by_client = {client: p for p in payers for client in p.clients}

    def by_name(self, name: str) -> PayerConfig | None:
        return self._by_name.get(name)

    def for_client(self, client_id: str) -> PayerConfig | None:
        """The payer an API client is bound to; None for a client bound to none (e.g. an internal tool)."""
        return self._by_client.get(client_id)

    def for_insurer(self, reference: str | None, identifiers: list[str]) -> PayerConfig | None:
        for key in ([reference] if reference else []) + identifiers:
            if key in self._by_key:
                return self._by_key[key]
        return None


def number_key(payer: str | None, number: str) -> str:
    """A payer's own number (its ClaimResponse identifier, preAuthRef, authorization or X12 reference
    number) as remembered for correlation: numbers are only unique per payer, so the payer's name is part
    of the key (length-prefixed, so no name and number can run into another's). `None` or "" is the
    scope of requests to an insurer no configured payer answers for."""
    name = payer or ""
    return f"{len(name)}:{name}|{number}"


def parse_payers(data: Any, source: str = "payers") -> PayerDirectory:
    if data is None:
        return PayerDirectory([])
    if not isinstance(data, dict) or not isinstance(data.get("payers"), list):
        raise PayerConfigError(f"{source}: expected a mapping with a 'payers' list")
    payers = []
    for index, entry in enumerate(data["payers"]):
        try:
            payers.append(PayerConfig.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PayerConfigError(f"{source}: payers[{index}]: {problems}") from None
    names = [p.name for p in payers]
    if len(set(names)) != len(names):
        raise PayerConfigError(f"{source}: payer names must be unique")
    clients = [c for p in payers for c in p.clients]
    if len(set(clients)) != len(clients):
        raise PayerConfigError(f"{source}: a client may be bound to one payer only")
    return PayerDirectory(payers)


def load_payers(path: Path | None) -> PayerDirectory:
    """The payer directory from a YAML/JSON file; empty when no file is configured."""
    if path is None or str(path) == "":
        return PayerDirectory([])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PayerConfigError(f"cannot read payers file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PayerConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_payers(data, str(path))
