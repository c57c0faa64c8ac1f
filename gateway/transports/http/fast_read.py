"""The lean path for a plain FHIR read (`GET /fhir/{type}/{id}`) and vread (`.../_history/{vid}`).

Why it exists: reads are the API's most frequent request, and through FastAPI a read paid more for the
framework than for itself (issue 13: a linear scan of the route table, dependency solving, a thread hop
for a sync dependency, two more middleware layers). This ASGI middleware sits innermost among the app's
own, so the request id, metrics, audit, NUL and body size middlewares still wrap it, and answers exactly
the requests the router would hand to the generic read or vread route, by calling what those routes call:
`people_request_context` (token, scopes, person, formats), `FhirService.read`/`vread`, `fhir_response`,
and the app's error rendering. Everything else (a query string, another method, a path an earlier route
takes, such as `/fhir/Measure/{id}`) passes on untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.exceptions import FhirError, OAuthError
from gateway.transports.http import fhir_routes
from gateway.transports.http.deps import get_gateway, people_request_context
from gateway.transports.http.responses import error_response, fhir_response, oauth_error_response

_PREFIX = "/fhir/"


@dataclass(frozen=True)
class _Target:
    """One route the lean path answers for, with the GET patterns of the routes matched before it."""

    route: BaseRoute
    earlier: tuple[re.Pattern[str], ...]

    def shadowed(self, path: str) -> bool:
        return any(pattern.match(path) for pattern in self.earlier)


def _target(routes: list[BaseRoute], endpoint: object) -> _Target | None:
    """The route of `endpoint` and what comes before it in the router's order (first match wins)."""
    earlier: list[re.Pattern[str]] = []
    for route in routes:
        if getattr(route, "endpoint", None) is endpoint:
            return _Target(route, tuple(earlier))
        pattern = getattr(route, "path_regex", None)
        methods = getattr(route, "methods", None)
        if pattern is None:
            return None  # a route the lean path cannot see into (a nested router): leave all to FastAPI
        if methods is None or "GET" in methods:
            earlier.append(pattern)
    return None


class FastRead:
    """ASGI middleware answering plain reads and vreads itself (see the module notes); `routes` are the
    app's routes in the router's order, at least up to the vread route."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        ordered = list(routes)
        self.read = _target(ordered, fhir_routes.read)
        self.vread = _target(ordered, fhir_routes.vread)
        self.answered = 0  # reads answered here (tests check the lean path is taken)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            await self.app(scope, receive, send)
            return
        parts = scope["path"][len(_PREFIX) :].split("/")
        target = self.read if len(parts) == 2 else self.vread
        assert target is not None
        params = {"rtype": parts[0], "rid": parts[1]}
        if len(parts) == 4:
            params["vid"] = parts[3]
        # What the router sets: Observability labels the metric by this route, the audit names the read.
        scope["route"], scope["path_params"] = target.route, params
        self.answered += 1
        response = await _answer(Request(scope, receive), params)
        await response(scope, receive, send)

    def _takes(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
            return False
        path: str = scope["path"]
        if scope.get("root_path") or not path.startswith(_PREFIX):
            return False
        parts = path[len(_PREFIX) :].split("/")
        if len(parts) == 2:
            target = self.read
        elif len(parts) == 4 and parts[2] == "_history":
            target = self.vread
        else:
            return False
        return target is not None and all(parts) and not target.shadowed(path)


async def _answer(request: Request, params: dict[str, str]) -> Response:
    """The read route's answer, rendered as the app's exception handlers render its errors."""
    try:
        ctx = await people_request_context(request)
        fhir = get_gateway(request).fhir
        if "vid" in params:
            outcome = await fhir.vread(ctx, params["rtype"], params["rid"], params["vid"])
        else:
            outcome = await fhir.read(ctx, params["rtype"], params["rid"])
    except FhirError as exc:
        return error_response(exc)
    except OAuthError as exc:
        return oauth_error_response(exc)
    return fhir_response(outcome)
