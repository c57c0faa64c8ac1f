"""Who is at the console: the session behind the cookie, as a `RequestContext` with the person's reach.

Every console page and action starts here, so the console and the FHIR API decide alike: the person's
reach (gateway/service/access/people.py) and the role's console scopes (gateway/auth/roles.py
CONSOLE_SCOPES). Without a live session a page redirects to the login form (coming back afterwards), and
an action is refused. Every state-changing form carries the session's CSRF token (`csrf_token`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse

from gateway.auth.roles import CONSOLE_SCOPES, Area, Role
from gateway.auth.scopes import Grants
from gateway.service.access.context import RequestContext
from gateway.service.access.logins import Session, tokens_match
from gateway.service.access.people import PersonAccess
from gateway.service.gateway import Gateway
from gateway.transports.http.audit_routes import record_of
from gateway.transports.http.deps import fhir_base, get_gateway, name_person

SESSION_COOKIE = "gateway_session"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, slots=True)
class Caller:
    """A person at the console: their session, their access and the context the services get."""

    session: Session
    person: PersonAccess
    ctx: RequestContext
    gateway: Gateway

    @property
    def csrf(self) -> str:
        return self.session.csrf_token

    def reaches(self, area: Area) -> bool:
        return self.person.reaches(area)

    @property
    def is_admin(self) -> bool:
        return self.person.role is Role.ADMIN


class LoginNeeded(Exception):
    """No live session: a page sends the browser to the login form."""

    def __init__(self, back_to: str) -> None:
        super().__init__(back_to)
        self.back_to = back_to


def login_redirect(back_to: str) -> RedirectResponse:
    return RedirectResponse(f"/console/login?next={quote(back_to, safe='/?=&')}", status_code=303)


async def caller_of(request: Request) -> Caller:
    """The person behind the session cookie; LoginNeeded when there is no live session."""
    gateway = get_gateway(request)
    session = await gateway.logins.session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        back_to = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginNeeded(back_to if request.method == "GET" else "/console")
    person = await gateway.people.for_user(session.user)
    record = record_of(request)
    if record is not None:
        name_person(record, person)
    request.scope.setdefault("state", {})["client_id"] = session.user.name
    ctx = RequestContext(
        base_url=fhir_base(request, gateway),
        grants=Grants.for_person(CONSOLE_SCOPES[person.role]),
        client_id=f"console:{session.user.name}",
        audit=record,
        person=person,
    )
    return Caller(session, person, ctx, gateway)


def csrf_ok(form: dict[str, str], caller: Caller) -> bool:
    return tokens_match(form.get(CSRF_FIELD), caller.csrf)


async def form_of(request: Request) -> dict[str, str]:
    """The posted form's text fields (nothing for another content type)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}
