"""SMART standalone launch: the authorization endpoint (`GET /auth/authorize`) and its consent form
(`POST /auth/authorize`). The checks and codes are gateway/service/access/launch.py.

An unknown or disabled app, or a redirect URI not registered for it exactly, gets an error page (400),
never a redirect. Without a console session the person is sent to the login page, which brings them back.
The consent form carries the session's CSRF token and the request's parameters, checked again on POST.
"""

from __future__ import annotations

import html
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from gateway.service.access.launch import (
    AuthorizationRequest,
    LaunchPageError,
    LaunchRedirectError,
    scopes_for,
)
from gateway.service.access.logins import tokens_match
from gateway.transports.http.audit_routes import record_of
from gateway.transports.http.console_routes import (
    _HEADERS,
    CSRF_FIELD,
    _audit_person,
    _forbidden,
    _form,
    _page,
    current_session,
)
from gateway.transports.http.deps import GatewayDep, fhir_base

router = APIRouter(tags=["Auth"])

AUTHORIZE_PATH = "/auth/authorize"
_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "aud",
)


def _error_page(message: str) -> HTMLResponse:
    body = f"<h1>This sign-in request cannot be completed</h1>\n<p>{html.escape(message)}</p>"
    return _page("Sign-in request refused", body, 400)


def _back_to_app(redirect_uri: str, state: str | None, **fields: str) -> RedirectResponse:
    query = dict(fields)
    if state is not None:
        query["state"] = state
    joiner = "&" if urlsplit(redirect_uri).query else "?"
    return RedirectResponse(
        f"{redirect_uri}{joiner}{urlencode(query)}", status_code=303, headers={"Cache-Control": "no-store"}
    )


def _params(source: dict[str, str]) -> dict[str, str]:
    return {k: source[k] for k in _PARAMS if k in source}


def _consent(request: AuthorizationRequest, scope: str, csrf: str, params: dict[str, str]) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">\n' for k, v in params.items()
    )
    items = "".join(f"<li><code>{html.escape(s)}</code></li>\n" for s in scope.split())
    body = (
        f"<h1>Allow {html.escape(request.app.name)}?</h1>\n"
        f"<p>The app <strong>{html.escape(request.app.name)}</strong> asks to act on your behalf with:</p>\n"
        f"<ul>\n{items}</ul>\n"
        f'<form method="post" action="{AUTHORIZE_PATH}">\n'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(csrf)}">\n{hidden}'
        '<button type="submit" name="decision" value="approve">Allow</button>\n'
        '<button type="submit" name="decision" value="deny">Deny</button>\n</form>'
    )
    response = _page(f"Allow {request.app.name}?", body)
    # The approval redirects to the app: browsers apply form-action to that redirect too.
    target = urlsplit(request.redirect_uri)
    response.headers["Content-Security-Policy"] = _HEADERS["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action 'self' {target.scheme}://{target.netloc}"
    )
    return response


@router.get(
    AUTHORIZE_PATH, summary="SMART authorization endpoint (code flow, PKCE S256)", response_class=HTMLResponse
)
async def authorize(request: Request, gateway: GatewayDep) -> Response:
    params = _params(dict(request.query_params))
    try:
        checked = await gateway.launch.check_request(params, fhir_base(request, gateway))
    except LaunchPageError as exc:
        return _error_page(str(exc))
    except LaunchRedirectError as exc:
        uri = params["redirect_uri"]
        return _back_to_app(uri, params.get("state"), error=exc.error, error_description=exc.description)
    session = await current_session(request, gateway)
    if session is None:
        here = f"{AUTHORIZE_PATH}?{request.url.query}"
        return RedirectResponse(f"/console/login?next={quote(here, safe='')}", status_code=303)
    _audit_person(request, session.user, session.user.name)
    scope = scopes_for(checked.app.scope, checked.requested_scope, session.user)
    if not scope:
        return _back_to_app(
            checked.redirect_uri, checked.state, error="invalid_scope",
            error_description="none of the requested scopes is allowed for this user",
        )  # fmt: skip
    return _consent(checked, scope, session.csrf_token, params)


@router.post(AUTHORIZE_PATH, summary="the consent form (approve or deny)", response_class=HTMLResponse)
async def decide(request: Request, gateway: GatewayDep) -> Response:
    form = await _form(request)
    session = await current_session(request, gateway)
    if session is None or not tokens_match(form.get(CSRF_FIELD), session.csrf_token):
        return _forbidden()
    _audit_person(request, session.user, session.user.name)
    params = _params(form)
    try:
        checked = await gateway.launch.check_request(params, fhir_base(request, gateway))
        decision = "approved" if form.get("decision") == "approve" else "denied"
        record = record_of(request)
        if record is not None:  # the audit trail says who let which app ask for what
            record.operation = (
                f"SMART consent {decision}: app {checked.app.client_id}, scope {checked.requested_scope}"
            )
        if decision != "approved":
            return _back_to_app(checked.redirect_uri, checked.state, error="access_denied")
        code = await gateway.launch.issue_code(checked, session.user)
    except LaunchPageError as exc:
        return _error_page(str(exc))
    except LaunchRedirectError as exc:
        uri = params["redirect_uri"]
        return _back_to_app(uri, params.get("state"), error=exc.error, error_description=exc.description)
    return _back_to_app(checked.redirect_uri, checked.state, code=code)
