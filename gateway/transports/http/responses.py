"""Rendering interaction outcomes and errors as HTTP responses."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from gateway.exceptions import FhirError, OAuthError, Unauthorized
from gateway.fhir.outcome import outcome_bytes
from gateway.service.fhirapi.interactions import Outcome

FHIR_JSON = "application/fhir+json; charset=utf-8"


def fhir_response(outcome: Outcome) -> Response:
    headers: dict[str, str] = {}
    if outcome.etag:
        headers["ETag"] = outcome.etag
    if outcome.last_modified:
        headers["Last-Modified"] = outcome.last_modified
    if outcome.location and outcome.status in (200, 201):
        headers["Location"] = outcome.location
        if outcome.status == 201:
            headers["Content-Location"] = outcome.location
    if outcome.status == 204:
        return Response(status_code=204, headers=headers)
    return Response(outcome.body or b"", status_code=outcome.status, headers=headers, media_type=FHIR_JSON)


def error_response(error: FhirError) -> Response:
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    return Response(
        outcome_bytes(error.issues), status_code=error.status, headers=headers, media_type=FHIR_JSON
    )


def oauth_error_response(error: OAuthError) -> Response:
    """An OAuth 2.0 error as RFC 6749 section 5.2 has it: {"error": ..., "error_description": ...}."""
    headers = {"WWW-Authenticate": 'Basic realm="gateway"'} if error.status == 401 else {}
    return JSONResponse(
        {"error": error.error, "error_description": error.description},
        status_code=error.status,
        headers=headers,
    )
