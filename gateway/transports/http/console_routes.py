"""People log in to the console: the login form, login, logout, and who the session is (`whoami`).

Cookies (both HttpOnly, SameSite=Lax, Path /, Secure when the request came over TLS or the configured
base URL is https):
- `gateway_login_csrf`: a random token set with the login form, which the form sends back (a login without
  it, or with another, is refused 403 before the password is looked at);
- `gateway_session`: the session id after a login (the server keeps only its SHA-256).

Every state-changing form after the login carries the session's CSRF token (`csrf_token`), checked on
POST: a missing or wrong token is 403 and changes nothing. Every login attempt and logout is an AuditEvent
(gateway/fhir/audit.py: type 110114, subtype 110122 Login or 110123 Logout), naming the user's
Practitioner when it has one, else the user name, and never the password.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.responses import Response

from gateway.fhir.audit import LOGIN, LOGOUT, PRACTITIONER_AGENT
from gateway.service.access.logins import Attempt, LoginResult, Session, tokens_match
from gateway.service.gateway import Gateway
from gateway.store.users import UserRecord
from gateway.transports.http.audit_routes import record_of
from gateway.transports.http.deps import GatewayDep

router = APIRouter(prefix="/console", tags=["Console"])

SESSION_COOKIE = "gateway_session"
LOGIN_CSRF_COOKIE = "gateway_login_csrf"
CSRF_FIELD = "csrf_token"
# The one answer to every refused login: it does not say whether the user exists.
REFUSED = "Wrong user name or password, or the account is locked or disabled."
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _secure(request: Request, gateway: Gateway) -> bool:
    return request.url.scheme == "https" or gateway.settings.base_url.lower().startswith("https://")


def _set_cookie(response: Response, request: Request, gateway: Gateway, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path="/", secure=_secure(request, gateway), httponly=True, samesite="lax"
    )


def _clear_cookie(response: Response, request: Request, gateway: Gateway, name: str) -> None:
    response.delete_cookie(name, path="/", secure=_secure(request, gateway), httponly=True, samesite="lax")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><main>\n{body}\n</main></body></html>\n"
    )
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def safe_next(target: str | None) -> str | None:
    """`target` when it is a path on this site (`/...`, not `//host` or `/\\host`, no scheme, no control
    characters); None for anything else, so a login cannot be made to send a person elsewhere."""
    if not target or len(target) > 4000 or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(not c.isprintable() or c.isspace() or c == "\\" for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _login_form(
    csrf: str, message: str | None = None, status: int = 200, next_url: str | None = None
) -> HTMLResponse:
    alert = f'<p role="alert">{html.escape(message)}</p>\n' if message else ""
    hidden_next = f'<input type="hidden" name="next" value="{html.escape(next_url)}">\n' if next_url else ""
    body = (
        "<h1>Sign in</h1>\n"
        f"{alert}"
        '<form method="post" action="/console/login">\n'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(csrf)}">\n'
        f"{hidden_next}"
        '<p><label for="username">User name</label><br>'
        '<input id="username" name="username" autocomplete="username" required autofocus></p>\n'
        '<p><label for="password">Password</label><br>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required></p>\n'
        '<p><button type="submit">Sign in</button></p>\n</form>'
    )
    return _page("Sign in", body, status)


def _forbidden() -> HTMLResponse:
    body = (
        "<h1>Refused</h1>\n<p>This form has expired or did not come from this site. "
        '<a href="/console/login">Open the login page again</a>.</p>'
    )
    return _page("Refused", body, 403)


async def _form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _audit_person(request: Request, user: UserRecord | None, typed_name: str) -> None:
    """The request's AuditRecord names the person: their Practitioner, else their user name (as typed
    for an unknown user)."""
    record = record_of(request)
    if record is None:
        return
    if user is not None and user.practitioner:
        record.agent, record.agent_kind, record.agent_alt = user.practitioner, PRACTITIONER_AGENT, user.name
    else:
        record.agent, record.agent_kind = (user.name if user is not None else typed_name[:64]) or None, "user"
    request.scope.setdefault("state", {})["client_id"] = user.name if user is not None else "-"


def _audit_login(request: Request, attempt: Attempt, typed_name: str, subtype: str = LOGIN) -> None:
    _audit_person(request, attempt.user, typed_name)
    record = record_of(request)
    if record is not None:
        record.kind, record.subtype = "login", subtype
        record.outcome = 0 if attempt.result is LoginResult.SUCCESS else 4
        record.outcome_desc = attempt.result.value


async def current_session(request: Request, gateway: Gateway) -> Session | None:
    return await gateway.logins.session(request.cookies.get(SESSION_COOKIE))


@router.get("/login", summary="the login form", response_class=HTMLResponse)
async def login_form(request: Request, gateway: GatewayDep) -> Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = _login_form(csrf, next_url=safe_next(request.query_params.get("next")))
    _set_cookie(response, request, gateway, LOGIN_CSRF_COOKIE, csrf)
    return response


@router.post("/login", summary="log in (form: username, password, csrf_token)", response_class=HTMLResponse)
async def login(request: Request, gateway: GatewayDep) -> Response:
    form = await _form(request)
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not tokens_match(form.get(CSRF_FIELD), csrf):
        return _forbidden()
    assert csrf is not None
    name = form.get("username", "").strip()
    address = request.client.host if request.client else ""
    attempt = await gateway.logins.login(
        name, form.get("password", ""), replacing=request.cookies.get(SESSION_COOKIE), address=address
    )
    _audit_login(request, attempt, name)
    next_url = safe_next(form.get("next"))
    if attempt.result is LoginResult.THROTTLED:
        wait = gateway.logins.retry_after(address)
        refused = _login_form(csrf, f"Too many failed logins from this address: try again in {wait} s.", 429)
        refused.headers["Retry-After"] = str(max(wait, 1))
        return refused
    if attempt.session_id is None:
        return _login_form(csrf, REFUSED, 401, next_url)
    response = RedirectResponse(
        next_url or "/console", status_code=303, headers={"Cache-Control": "no-store"}
    )
    _set_cookie(response, request, gateway, SESSION_COOKIE, attempt.session_id)
    _clear_cookie(response, request, gateway, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout", summary="log out (form: csrf_token)", response_class=HTMLResponse)
async def logout(request: Request, gateway: GatewayDep) -> Response:
    form = await _form(request)
    session = await current_session(request, gateway)
    if session is None:
        if request.cookies.get(SESSION_COOKIE) is None:
            return _forbidden()  # no session and no token to check it against: nothing to end
        response: Response = RedirectResponse("/console/login", status_code=303)
        _clear_cookie(response, request, gateway, SESSION_COOKIE)  # already ended (expired, disabled)
        return response
    if not tokens_match(form.get(CSRF_FIELD), session.csrf_token):
        return _forbidden()
    await gateway.logins.logout(session)
    _audit_login(request, Attempt(LoginResult.SUCCESS, session.user), session.user.name, LOGOUT)
    record = record_of(request)
    if record is not None:
        record.outcome_desc = "logout"
    response = RedirectResponse("/console/login", status_code=303, headers={"Cache-Control": "no-store"})
    _clear_cookie(response, request, gateway, SESSION_COOKIE)
    return response


@router.get("/whoami", summary="who the session is (401 without a live session)")
async def whoami(request: Request, gateway: GatewayDep) -> Response:
    session = await current_session(request, gateway)
    if session is None:
        return JSONResponse(
            {"error": "not logged in"}, status_code=401, headers={"Cache-Control": "no-store"}
        )
    _audit_person(request, session.user, session.user.name)
    user = session.user
    return JSONResponse(
        {
            "name": user.name,
            "role": user.role,
            "practitioner": user.practitioner,
            "csrf_token": session.csrf_token,  # for the session's forms (same-origin scripts only)
        },
        headers={"Cache-Control": "no-store"},
    )
