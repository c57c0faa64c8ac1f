"""The console's own static files (a style sheet, a script), served by the gateway: nothing is fetched
from elsewhere. Only the files that are there, by exact name."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.exceptions import NotFound
from gateway.transports.http.console.render import STATIC, STATIC_TYPES

router = APIRouter(prefix="/console/static", include_in_schema=False)

_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in STATIC_TYPES}


@router.get("/{name}")
async def static_file(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        raise NotFound(f"No console file {name[:80]!r}")
    return Response(
        path.read_bytes(),
        media_type=STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
