"""Errors the gateway raises; every one renders as a FHIR OperationOutcome with an HTTP status.

    GatewayError
     +-- FhirError(status, issues)
          +-- BadRequest              400  malformed input (JSON, ids, parameters)
          +-- Unauthorized            401  no or bad bearer token
          +-- Forbidden               403  token lacks the scope
          +-- NotFound                404  unknown resource, type or route
          +-- MethodNotAllowed        405
          +-- NotAcceptable           406  asked for a format we do not serve
          +-- Conflict                409  id clash, version conflict without If-Match
          +-- Gone                    410  resource deleted
          +-- PreconditionFailed      412  If-Match mismatch, ambiguous conditional
          +-- PayloadTooLarge         413
          +-- UnsupportedMediaType    415
          +-- Unprocessable           422  valid JSON, invalid FHIR (structure or profile)

A leaf module: imports only `gateway.types`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.types import Issue


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class FhirError(GatewayError):
    status = 500
    issue_code = "exception"

    def __init__(
        self, message: str | None = None, issues: Iterable[Issue] = (), expression: str | None = None
    ):
        issue_list = list(issues)
        if message is not None:
            expr = (expression,) if expression else ()
            issue_list.insert(0, Issue("error", self.issue_code, message, expr))
        self.issues: list[Issue] = issue_list
        super().__init__(message or (issue_list[0].diagnostics if issue_list else self.__class__.__name__))


class BadRequest(FhirError):
    status = 400
    issue_code = "invalid"


class Unauthorized(FhirError):
    status = 401
    issue_code = "login"


class Forbidden(FhirError):
    status = 403
    issue_code = "forbidden"


class NotFound(FhirError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(FhirError):
    status = 405
    issue_code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    issue_code = "not-supported"


class Conflict(FhirError):
    status = 409
    issue_code = "conflict"


class Gone(FhirError):
    status = 410
    issue_code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    issue_code = "conflict"


class PayloadTooLarge(FhirError):
    status = 413
    issue_code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    issue_code = "not-supported"


class Unprocessable(FhirError):
    status = 422
    issue_code = "processing"


class TooCostly(FhirError):
    """A search that ran past the database's statement timeout: narrow it."""

    status = 503
    issue_code = "too-costly"


class OAuthError(GatewayError):
    """An OAuth 2.0 token endpoint error (RFC 6749 section 5.2), rendered as {"error": ...}, not FHIR."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
