"""Upstream EHR FHIR servers to pull from, from configuration (the model is gateway/pa/payers.py).

A YAML (or JSON) file named by GATEWAY_UPSTREAMS_FILE:

    upstreams:
      - name: riverside-ehr                   # letters, digits, '-': part of every local id it gives
        base_url: https://ehr.riverside.example/fhir
        auth:
          type: backend-services              # SMART Backend Services (private_key_jwt), or none
          client_id: gateway
          token_url: https://ehr.riverside.example/auth/token
          private_key_file: /etc/gateway/riverside.pem   # PEM; RSA for RS384, P-384 EC for ES384
          alg: RS384
          kid: gateway-2027                   # the key's id in the JWKS registered with the EHR
          scope: system/Patient.rs system/Observation.rs
        resources: [Patient, Observation, MedicationRequest]
        patients: [p-123, p-456]              # only these patients (ids on the EHR); omit for all
        # group: high-risk-clinic              # or: the members of this Group on the EHR (read each round)
        first_load: bulk-export               # or search (default): how the first pull of all types runs
        interval_seconds: 60
        max_requests_per_second: 5
        page_size: 100
        timeout_seconds: 30
        deletions: history                    # optional: also read {Type}/_history for deletions upstream
        forward:                              # optional: write what this gateway produces to it
          resources: [Observation, Task]  # conditional update on an identifier (gateway/ehr/forward.py)
        subscribe:                            # optional: be notified instead of polling (Backport IG)
          topic: https://ehr.riverside.example/fhir/SubscriptionTopic/resource-changed
          endpoint: https://gateway.example/ehr/notifications/riverside-ehr   # our receiver, public
          payload: id-only                    # or full-resource
          heartbeat_seconds: 60

An upstream may only pull (`resources`), only forward (`forward`), or both. `patients` and `group` exclude
each other. One that pulls may also `subscribe`, and is then polled only rarely while the upstream's
notifications arrive. `first_load: bulk-export` asks the EHR for a Bulk Data `$export` (Group, Patient or
system level as `group`/`patients` say) while no type has been pulled yet, then continues with searches.
The key is checked (it must open, and fit `alg`) at start, so a wrong path stops the gateway with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
# Short and without dots: the local id is `{name}-{hash}` and must stay within FHIR's 64 characters.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")


class UpstreamConfigError(ValueError):
    pass


class UpstreamAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["backend-services", "none"] = "none"
    client_id: str | None = None
    token_url: str | None = None
    private_key_file: Path | None = None
    alg: Literal["RS384", "ES384"] = "RS384"
    kid: str | None = None
    scope: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> UpstreamAuth:
        if self.type == "backend-services":
            missing = [
                n for n in ("client_id", "token_url", "private_key_file", "scope") if not getattr(self, n)
            ]
            if missing:
                raise ValueError(f"backend-services needs {', '.join(missing)}")
        return self

    def private_key_pem(self) -> bytes:
        """The PEM, checked to open and to fit `alg`; ValueError with the reason otherwise."""
        assert self.private_key_file is not None
        try:
            pem = self.private_key_file.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read private_key_file {self.private_key_file}: {exc.strerror}"
            ) from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise ValueError(
                f"private_key_file {self.private_key_file} is not an unencrypted PEM key"
            ) from None
        if self.alg == "RS384" and not (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048):
            raise ValueError("RS384 needs an RSA key of at least 2048 bits")
        if self.alg == "ES384" and not (
            isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        ):
            raise ValueError("ES384 needs a P-384 EC key")
        return pem


class ForwardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resources: list[str] = Field(min_length=1)

    @field_validator("resources")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _resource_types(value)


class SubscribeConfig(BaseModel):
    """A rest-hook Subscription this gateway keeps on the upstream (gateway/service/ehrpull/subscriber.py)."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=r"^https?://\S+$", max_length=1000)  # the upstream's topic canonical URL
    endpoint: str = Field(pattern=r"^https?://\S+$", max_length=1000)  # where the upstream reaches us
    payload: Literal["id-only", "full-resource"] = "id-only"
    heartbeat_seconds: int = Field(60, ge=1, le=86_400)


def _resource_types(value: list[str]) -> list[str]:
    bad = [t for t in value if not RESOURCE_TYPE.match(t)]
    if bad:
        raise ValueError(f"not resource types: {', '.join(bad)}")
    if len(set(value)) != len(value):
        raise ValueError("listed twice")
    return value


class UpstreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base_url: str = Field(pattern=r"^https?://")
    auth: UpstreamAuth = UpstreamAuth()
    resources: list[str] = Field(default_factory=list)  # to pull; empty: a forward-only upstream
    patients: list[str] = Field(default_factory=list)
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9\-.]{1,64}$")  # a Group id on the upstream
    first_load: Literal["search", "bulk-export"] = "search"
    interval_seconds: float = Field(60, gt=0)
    max_requests_per_second: float = Field(5, gt=0)
    page_size: int = Field(100, ge=1, le=1000)
    timeout_seconds: float = Field(30, gt=0, le=300)
    forward: ForwardConfig | None = None
    # Deletions upstream are invisible to a _lastUpdated search: `history` reads each pulled type's
    # `_history?_since=` for them (gateway/ehr/deletions.py); omitted, they are not followed.
    deletions: Literal["history"] | None = None
    subscribe: SubscribeConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("must be 1-24 lower-case letters, digits or '-'")
        return value

    @field_validator("resources")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _resource_types(value)

    @model_validator(mode="after")
    def _does_something(self) -> UpstreamConfig:
        if not self.resources and self.forward is None:
            raise ValueError("needs resources to pull, forward, or both")
        if self.group is not None and self.patients:
            raise ValueError("patients and group exclude each other: name the patients, or the Group")
        if self.first_load == "bulk-export" and not self.resources:
            raise ValueError("first_load: bulk-export needs resources to pull")
        if self.deletions is not None and not self.resources:
            raise ValueError("deletions needs resources to pull")
        if self.subscribe is not None:
            if not self.resources:
                raise ValueError("subscribe needs resources (what the notifications bring is pulled)")
            if not self.subscribe.endpoint.rstrip("/").endswith(f"/ehr/notifications/{self.name}"):
                raise ValueError(f"subscribe.endpoint must end with /ehr/notifications/{self.name}")
        return self

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/")


def parse_upstreams(data: Any, source: str = "upstreams") -> list[UpstreamConfig]:
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("upstreams"), list):
        raise UpstreamConfigError(f"{source}: expected a mapping with an 'upstreams' list")
    upstreams = []
    for index, entry in enumerate(data["upstreams"]):
        try:
            upstream = UpstreamConfig.model_validate(entry)
            if upstream.auth.type == "backend-services":
                upstream.auth.private_key_pem()
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise UpstreamConfigError(f"{source}: upstreams[{index}]: {problems}") from None
        except ValueError as exc:
            raise UpstreamConfigError(f"{source}: upstreams[{index}]: auth: {exc}") from None
        upstreams.append(upstream)
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise UpstreamConfigError(f"{source}: upstream names must be unique")
    return upstreams


def load_upstreams(path: Path | None) -> list[UpstreamConfig]:
    """The upstreams from a YAML/JSON file; none when no file is configured."""
    if path is None or str(path) == "":
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UpstreamConfigError(f"cannot read upstreams file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UpstreamConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_upstreams(data, str(path))
