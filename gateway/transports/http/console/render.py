"""Rendering console pages: Jinja2 templates (escaping on by default) inside one layout, and the few static
files the gateway itself serves (a style sheet, one small script for live updates; nothing from elsewhere).

Every page goes out with `Cache-Control: no-store` (it holds patients' data) and a Content-Security-Policy
that allows only this site's own style sheet, script and server-sent events: no inline script, no frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from gateway.auth.roles import Area
from gateway.transports.http.console.session import CSRF_FIELD, Caller

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# The sections of the console, in the order of the navigation, and what a role needs to see each.
SECTIONS: tuple[tuple[str, str, Area], ...] = (
    ("/console", "Worklist", Area.WORKLIST),
    ("/console/pa", "Prior authorizations", Area.PA_WORK),
    ("/console/messages", "Message log", Area.MESSAGE_LOG),
    ("/console/subscriptions", "Subscriptions", Area.SUBSCRIPTIONS),
    ("/console/metrics", "Metrics", Area.METRICS),
)


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a name a template expects and a page forgot is an error, not blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["csrf_field"] = CSRF_FIELD
    return env


def render(
    request: Request,
    caller: Caller | None,
    template: str,
    title: str,
    values: Mapping[str, Any] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A page: `template` inside the layout, for this caller (None on the pages before a login)."""
    sections = [
        (href, label) for href, label, area in SECTIONS if caller is not None and caller.reaches(area)
    ]
    text = (
        environment()
        .get_template(template)
        .render(
            title=title,
            caller=caller,
            user=caller.session.user if caller else None,
            csrf=caller.csrf if caller else "",
            sections=sections,
            path=request.url.path,
            **(values or {}),
        )
    )
    return HTMLResponse(text, status_code=status, headers=HEADERS)
