"""OAuth 2.0 token endpoint and SMART discovery."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.exceptions import OAuthError
from gateway.service.access.clients import RetryLater
from gateway.service.gateway import Gateway
from gateway.transports.http.audit_routes import note_token_request
from gateway.transports.http.deps import GatewayDep, fhir_base

router = APIRouter(tags=["Auth"])
# Included before the generic /fhir/{type}/{id} routes, which would otherwise take the discovery path.
discovery_router = APIRouter(tags=["Auth"])


@router.post(
    "/auth/token",
    summary="OAuth 2.0 token endpoint (client credentials, authorization code with PKCE, refresh token)",
)
async def token(request: Request, gateway: GatewayDep) -> JSONResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the token request must be application/x-www-form-urlencoded")
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    token_url = str(request.url.replace(query=""))
    note_token_request(request, fields)
    # The peer's address, not X-Forwarded-For: a header would let each guess claim a new address.
    address = request.client.host if request.client else ""
    try:
        if fields.get("grant_type") in ("authorization_code", "refresh_token"):
            answer = await gateway.launch.token(
                fields, request.headers.get("authorization"), fhir_base(request, gateway), address=address
            )
        else:
            answer = await gateway.auth.token(
                fields, request.headers.get("authorization"), token_url, address=address
            )
    except RetryLater as exc:
        return JSONResponse(
            {"error": exc.error, "error_description": exc.description},
            status_code=exc.status,
            headers={"Retry-After": str(exc.retry_after), "Cache-Control": "no-store"},
        )
    request.scope.setdefault("state", {})["client_id"] = answer.get("client_id", "-")
    return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# SMART App Launch 2.x discovery. Capabilities are what issue 11 builds; which are live yet is in the README
# ("SMART apps"). `sso-openid-connect` (and with it `issuer` and `jwks_uri`, which the spec then requires)
# comes with the ID token: access tokens are HS256, so there is no public key set to point at yet.
SMART_CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-offline",
    "permission-patient",
    "permission-user",
    "permission-v2",
    "permission-v1",
)
SMART_SCOPES = (
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "system/*.cruds",
)
AUTHORIZE_PATH = "/auth/authorize"
TOKEN_PATH = "/auth/token"


def _server_root(request: Request, gateway: Gateway) -> str:
    """Where /auth/... is served: the FHIR base without its `/fhir` (GATEWAY_BASE_URL when set)."""
    base = fhir_base(request, gateway)
    if base.endswith("/fhir"):
        return base.removesuffix("/fhir")
    return str(request.base_url).rstrip("/")


def smart_configuration_document(root: str) -> dict[str, object]:
    return {
        "authorization_endpoint": f"{root}{AUTHORIZE_PATH}",
        "token_endpoint": f"{root}{TOKEN_PATH}",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": list(SMART_SCOPES),
        "capabilities": list(SMART_CAPABILITIES),
    }


@discovery_router.get(
    "/fhir/.well-known/smart-configuration",
    summary="SMART configuration (SMART App Launch 2.x discovery, relative to the FHIR base; open)",
)
async def smart_configuration(request: Request, gateway: GatewayDep) -> JSONResponse:
    return JSONResponse(
        smart_configuration_document(_server_root(request, gateway)),
        headers={"Cache-Control": "public, max-age=300"},
    )


@router.get("/.well-known/smart-configuration", summary="SMART configuration (also at the server root)")
async def smart_configuration_at_root(request: Request, gateway: GatewayDep) -> JSONResponse:
    return await smart_configuration(request, gateway)
