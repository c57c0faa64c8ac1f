"""What a SMART app registration may hold (SMART App Launch 2.x, standalone launch): its name, its exact
redirect URIs and the scopes it may ask for. Pure checks; the table is gateway/store/smart_apps.py.

* Redirect URIs are matched exactly later, so they are checked strictly now: absolute, `https`, or plain
  `http` only for a loopback host (`localhost`, `127.0.0.1`, `[::1]`: a native or development app), no
  fragment (RFC 6749 section 3.1.2), no user name or password, no spaces.
* Scopes are SMART v2 `user/` and `patient/` resource scopes (`patient/*.rs`, `user/Observation.rs`), and
  `openid`, `fhirUser`, `launch/patient`, `offline_access`. `system/` scopes belong to backend clients
  (`gateway clients add`), never to an app a person launches.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.auth.scopes import InvalidScope, Scope, parse_token

APP_CONTEXTS = frozenset({"user", "patient"})
APP_OTHER_SCOPES = ("openid", "fhirUser", "launch/patient", "offline_access")
DEFAULT_APP_SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs user/*.rs"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_NAME = 64
MAX_REDIRECT_URI = 2000


class InvalidApp(ValueError):
    """An unusable app name, redirect URI or scope; the message is one line for the operator."""


def check_app_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidApp(f"an app name must be 1 to {MAX_NAME} characters")
    if name.startswith("-") or any(c.isspace() or not c.isprintable() for c in name):
        raise InvalidApp(f"invalid app name {name!r}: no spaces or control characters, not starting with '-'")
    return name


def check_redirect_uri(uri: str) -> str:
    """The URI when an app may be sent back to it; InvalidApp saying why not."""
    if not uri or len(uri) > MAX_REDIRECT_URI:
        raise InvalidApp(f"a redirect URI must be 1 to {MAX_REDIRECT_URI} characters")
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise InvalidApp(f"redirect URI {uri!r} contains spaces or control characters")
    if "#" in uri:
        raise InvalidApp(f"redirect URI {uri!r} has a fragment (#...); redirect URIs must not")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidApp(f"redirect URI {uri!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise InvalidApp(f"redirect URI {uri!r} must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidApp(f"redirect URI {uri!r} must not carry a user name or password")
    if scheme == "http" and host.lower() not in LOOPBACK_HOSTS:
        raise InvalidApp(
            f"redirect URI {uri!r} must use https (plain http only for localhost, 127.0.0.1 or [::1])"
        )
    return uri


def check_redirect_uris(uris: list[str] | tuple[str, ...]) -> list[str]:
    """The URIs, each checked, duplicates dropped, in the order given; at least one."""
    if not uris:
        raise InvalidApp("an app needs at least one --redirect-uri")
    return list(dict.fromkeys(check_redirect_uri(u) for u in uris))


def check_app_scope(text: str) -> str:
    """The scope string an app is registered with (duplicates dropped, canonical permission order);
    InvalidApp naming the first scope an app may not have."""
    kept: list[str] = []
    for token in text.split():
        try:
            parsed = parse_token(token)
        except InvalidScope as exc:
            raise InvalidApp(str(exc)) from None
        if isinstance(parsed, Scope):
            if parsed.context not in APP_CONTEXTS:
                raise InvalidApp(
                    f"scope {token!r} is not for apps: {parsed.context}/ scopes belong to backend clients "
                    "(gateway clients add); apps get user/ or patient/ scopes"
                )
            kept.append(str(parsed))
        elif parsed in APP_OTHER_SCOPES:
            kept.append(parsed)
        else:
            allowed = ", ".join(APP_OTHER_SCOPES)
            raise InvalidApp(
                f"scope {token!r} is not supported for apps (user/ and patient/ scopes, {allowed})"
            )
    if not kept:
        raise InvalidApp("an app needs at least one scope")
    return " ".join(dict.fromkeys(kept))
