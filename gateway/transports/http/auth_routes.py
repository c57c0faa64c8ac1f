"""OAuth 2.0 token endpoint and SMART discovery."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.exceptions import OAuthError
from gateway.service.access.clients import RetryLater
from gateway.transports.http.audit_routes import note_token_request
from gateway.transports.http.deps import GatewayDep

router = APIRouter(tags=["Auth"])


@router.post("/auth/token", summary="OAuth 2.0 client credentials token (SMART Backend Services)")
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


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
async def smart_configuration(request: Request) -> JSONResponse:
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            "token_endpoint": f"{base}/auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": ["system/*.cruds", "system/*.rs"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
        }
    )
