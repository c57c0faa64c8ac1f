"""The lean path for the FHIR API's most frequent requests: read (`GET /fhir/{type}/{id}`), vread
(`.../_history/{vid}`), search (`GET /fhir/{type}?...`) and create (`POST /fhir/{type}`).

Why it exists: through FastAPI, these requests paid more for the framework than for themselves (issue 13:
a linear scan of the route table, dependency solving, a thread hop for a sync dependency, two more
middleware layers). This ASGI middleware sits innermost among the app's own, so the request id, metrics,
audit, NUL and body size middlewares still wrap it, and answers exactly the requests the router would
hand to the generic read, vread, search or create route, by calling what those routes call:
`people_request_context` (token, scopes, person, formats), `FhirService.read`/`vread`/`search`/`create`,
`fhir_response`, and the app's error rendering. Everything else (a read with a query string, another
method or shape, a path an earlier route takes, such as `/fhir/metadata` or `/fhir/Measure/{id}`) passes
on untouched.
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
    """One route the lean path answers for, with the patterns of the routes of its method matched before
    it (first match wins)."""

    name: str
    route: BaseRoute
    earlier: tuple[re.Pattern[str], ...]

    def shadowed(self, path: str) -> bool:
        return any(pattern.match(path) for pattern in self.earlier)


def _target(routes: list[BaseRoute], name: str, endpoint: object, method: str) -> _Target | None:
    """The route of `endpoint` for `method` and what comes before it in the router's order."""
    earlier: list[re.Pattern[str]] = []
    for route in routes:
        methods = getattr(route, "methods", None)
        if getattr(route, "endpoint", None) is endpoint and methods is not None and method in methods:
            return _Target(name, route, tuple(earlier))
        pattern = getattr(route, "path_regex", None)
        if pattern is None:
            return None  # a route the lean path cannot see into (a nested router): leave all to FastAPI
        if methods is None or method in methods:
            earlier.append(pattern)
    return None


class LeanPath:
    """ASGI middleware answering plain reads, vreads, searches and creates itself (see the module notes);
    `routes` are the app's routes in the router's order, at least up to the last of those routes."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        ordered = list(routes)
        self.read = _target(ordered, "read", fhir_routes.read, "GET")
        self.vread = _target(ordered, "vread", fhir_routes.vread, "GET")
        self.search = _target(ordered, "search", fhir_routes.search, "GET")
        self.create = _target(ordered, "create", fhir_routes.create, "POST")
        self.answered = 0  # requests answered here (tests check the lean path is taken)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._takes(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        target, parts = found
        params = {"rtype": parts[0]}
        if len(parts) > 1:
            params["rid"] = parts[1]
        if len(parts) == 4:
            params["vid"] = parts[3]
        # What the router sets: Observability labels the metric by this route, the audit names the request.
        scope["route"], scope["path_params"] = target.route, params
        self.answered += 1
        response = await _answer(target.name, Request(scope, receive), params)
        await response(scope, receive, send)

    def _takes(self, scope: Scope) -> tuple[_Target, list[str]] | None:
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        parts = path[len(_PREFIX) :].split("/")
        method = scope["method"]
        target: _Target | None = None
        if len(parts) == 1:
            target = self.search if method == "GET" else self.create if method == "POST" else None
        elif method == "GET" and not scope.get("query_string"):  # a read's _format etc.: the router's
            if len(parts) == 2:
                target = self.read
            elif len(parts) == 4 and parts[2] == "_history":
                target = self.vread
        if target is None or not all(parts) or target.shadowed(path):
            return None
        return target, parts


async def _answer(name: str, request: Request, params: dict[str, str]) -> Response:
    """The route's answer, rendered as the app's exception handlers render its errors."""
    try:
        ctx = await people_request_context(request)
        fhir = get_gateway(request).fhir
        rtype = params["rtype"]
        if name == "read":
            outcome = await fhir.read(ctx, rtype, params["rid"])
        elif name == "vread":
            outcome = await fhir.vread(ctx, rtype, params["rid"], params["vid"])
        elif name == "search":
            outcome = await fhir.search(ctx, rtype, fhir_routes.query_params(request))
        else:
            criteria = fhir_routes.create_criteria(request)
            outcome = await fhir.create(ctx, rtype, await request.body(), criteria)
    except FhirError as exc:
        return error_response(exc)
    except OAuthError as exc:
        return oauth_error_response(exc)
    return fhir_response(outcome)
