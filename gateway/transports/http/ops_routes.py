"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.responses import Response

from gateway.transports.http.deps import GatewayDep

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="liveness: the process answers and the database responds")
async def healthz(gateway: GatewayDep) -> JSONResponse:
    try:
        async with gateway.db.read() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure makes the instance unhealthy
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    # `worker`: which process of a `serve --workers N` cluster answered (0: not in a cluster)
    return JSONResponse(
        {"status": "ok", "database": gateway.db.dialect, "worker": gateway.settings.worker_index}
    )


@router.get("/metrics", summary="Prometheus metrics (no patient data)")
async def metrics(request: Request) -> Response:
    for refresh in getattr(request.app.state, "before_scrape", ()):  # cached figures past their age
        await refresh()
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
