"""SMART standalone launch: the authorization endpoint (`GET /auth/authorize`) and its consent form
(`POST /auth/authorize`). The checks and codes are gateway/service/access/launch.py.

An unknown or disabled app, or a redirect URI not registered for it exactly, gets an error page (400),
never a redirect. Without a console session the person is sent to the login page, which brings them back.
The consent form carries the session's CSRF token and the request's parameters, checked again on POST.
"""

from __future__ import annotations

import html
from urllib.parse import quote, urlencode, urlsplit

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from gateway.auth.scopes import Grants
from gateway.exceptions import FhirError
from gateway.service.access.context import RequestContext
from gateway.service.access.launch import (
    AuthorizationRequest,
    LaunchPageError,
    LaunchRedirectError,
    scopes_for,
)
from gateway.service.access.logins import tokens_match
from gateway.service.access.people import PersonAccess
from gateway.service.gateway import Gateway
from gateway.store.users import UserRecord
from gateway.transports.http.audit_routes import record_of
from gateway.transports.http.console.patient_view import patient_label
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


def _picker(patients: list[tuple[str, str]]) -> str:
    """The launch/patient picker: one radio button per patient the person reaches."""
    if not patients:
        return "<p>You have no patients to choose from: the app cannot be given a patient.</p>\n"
    options = "".join(
        f'<li><label><input type="radio" name="patient" value="{html.escape(pid)}" required> '
        f"{html.escape(label)}</label></li>\n"
        for pid, label in patients
    )
    return f"<fieldset><legend>Choose the patient the app will see</legend><ul>\n{options}</ul></fieldset>\n"


def _consent(
    request: AuthorizationRequest,
    scope: str,
    csrf: str,
    params: dict[str, str],
    patients: list[tuple[str, str]] | None = None,
) -> HTMLResponse:
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
        f"{_picker(patients) if patients is not None else ''}"
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


LAUNCH_PATIENT = "launch/patient"
PICKER_SIZE = 100  # patients listed at most (an admin reaches every one: the first hundred)


def _person_ctx(request: Request, gateway: Gateway, person: PersonAccess) -> RequestContext:
    return RequestContext(
        base_url=fhir_base(request, gateway),
        grants=Grants.for_person("user/Patient.rs"),
        audit=record_of(request),  # the picker shows patients' names: the request's AuditEvent names them
        person=person,
    )


async def _patients(request: Request, gateway: Gateway, user: UserRecord) -> list[tuple[str, str]]:
    """(id, "name · identifier") of the patients the person reaches, by name, for the picker."""
    person = await gateway.people.for_user(user)
    ctx = _person_ctx(request, gateway, person)
    found = await gateway.fhir.search(ctx, "Patient", [("_count", str(PICKER_SIZE))])
    bundle = orjson.loads(found.body or b"{}")
    listed = [(str(e["resource"]["id"]), patient_label(e["resource"])) for e in bundle.get("entry", [])]
    return sorted(listed, key=lambda p: p[1].casefold())


async def _exists(request: Request, gateway: Gateway, person: PersonAccess, patient: str) -> bool:
    try:
        await gateway.fhir.read(_person_ctx(request, gateway, person), "Patient", patient)
    except FhirError:
        return False
    return True


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
    patients = await _patients(request, gateway, session.user) if LAUNCH_PATIENT in scope.split() else None
    return _consent(checked, scope, session.csrf_token, params, patients)


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
        patient = None
        if LAUNCH_PATIENT in scopes_for(checked.app.scope, checked.requested_scope, session.user).split():
            patient = form.get("patient", "")
            person = await gateway.people.for_user(session.user)
            if not person.sees_patient(patient) or not await _exists(request, gateway, person, patient):
                raise LaunchRedirectError("invalid_request", "choose one of your patients for launch/patient")
        code = await gateway.launch.issue_code(checked, session.user, patient)
    except LaunchPageError as exc:
        return _error_page(str(exc))
    except LaunchRedirectError as exc:
        uri = params["redirect_uri"]
        return _back_to_app(uri, params.get("state"), error=exc.error, error_description=exc.description)
    return _back_to_app(checked.redirect_uri, checked.state, code=code)
