"""Subscription operations and topics under /fhir, and the websocket notification channel.

Registered before the generic FHIR routes so that `Subscription/{id}/$status` is not read as a vread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.responses import Response

from gateway.exceptions import BadRequest, FhirError
from gateway.fhir import dates
from gateway.routing.notifications import StatusHeader, notification_bundle
from gateway.service.gateway import Gateway
from gateway.store import subscriptions as sub_store
from gateway.transports.http.deps import Ctx, GatewayDep
from gateway.transports.http.responses import fhir_response

log = logging.getLogger("gateway.websocket")

router = APIRouter(prefix="/fhir", tags=["Subscriptions"])


async def _params(request: Request) -> dict[str, list[str]]:
    """Operation parameters from the query string and, for POST, a Parameters body."""
    found: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        found.setdefault(key, []).append(value)
    if request.method == "POST":
        body = await request.body()
        if body.strip():
            try:
                parameters: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("The operation body is not JSON (send a Parameters resource)") from None
            for p in parameters.get("parameter", []) if isinstance(parameters, dict) else []:
                given = [v for k, v in p.items() if k.startswith("value")] if isinstance(p, dict) else []
                if given and isinstance(p.get("name"), str):
                    found.setdefault(p["name"], []).append(str(given[0]))
    return found


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


# GET and POST each, with an operation id of their own (one route of two methods would give both the same
# operation id, which OpenAPI forbids).
@router.get("/Subscription/$status", summary="$status of subscriptions", operation_id="type_status_get")
@router.post("/Subscription/$status", summary="$status of subscriptions", operation_id="type_status_post")
async def type_status(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    params = await _params(request)
    ids = [i.rsplit("/", 1)[-1] for i in params.get("id", [])]
    return fhir_response(await gateway.subscription_ops.status(ctx, ids))


@router.get("/Subscription/{sub_id}/$status", summary="$status of one", operation_id="instance_status_get")
@router.post("/Subscription/{sub_id}/$status", summary="$status of one", operation_id="instance_status_post")
async def instance_status(sub_id: str, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.subscription_ops.status(ctx, [sub_id]))


@router.get("/Subscription/{sub_id}/$events", summary="replay past events", operation_id="events_get")
@router.post("/Subscription/{sub_id}/$events", summary="replay past events", operation_id="events_post")
async def events(sub_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    params = await _params(request)
    outcome = await gateway.subscription_ops.events(
        ctx,
        sub_id,
        _first(params, "eventsSinceNumber"),
        _first(params, "eventsUntilNumber"),
        _first(params, "content"),
    )
    return fhir_response(outcome)


@router.get("/Subscription/{sub_id}/$delivery-log", summary="recorded delivery attempts, newest first")
async def delivery_log(sub_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    count = request.query_params.get("_count", "50")
    return fhir_response(
        await gateway.subscription_ops.delivery_log(ctx, sub_id, int(count) if count.isdigit() else 50)
    )


def _ws_url(request: Request) -> str:
    base = str(request.base_url).rstrip("/")
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/fhir/ws"


@router.get(
    "/Subscription/{sub_id}/$get-ws-binding-token",
    summary="websocket binding token",
    operation_id="ws_token_get",
)
@router.post(
    "/Subscription/{sub_id}/$get-ws-binding-token",
    summary="websocket binding token",
    operation_id="ws_token_post",
)
async def ws_token(sub_id: str, request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(await gateway.subscription_ops.binding_token(ctx, [sub_id], _ws_url(request)))


@router.get(
    "/Subscription/$get-ws-binding-token",
    summary="websocket binding token (type)",
    operation_id="ws_token_type_get",
)
@router.post(
    "/Subscription/$get-ws-binding-token",
    summary="websocket binding token (type)",
    operation_id="ws_token_type_post",
)
async def ws_token_type(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    params = await _params(request)
    ids = [i.rsplit("/", 1)[-1] for i in params.get("id", [])]
    return fhir_response(await gateway.subscription_ops.binding_token(ctx, ids, _ws_url(request)))


@router.get("/SubscriptionTopic", summary="subscription topics (search by url)")
async def topics(request: Request, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(gateway.subscription_ops.topics(request.query_params.get("url")))


@router.get("/SubscriptionTopic/{topic_id}", summary="one subscription topic")
async def topic(topic_id: str, ctx: Ctx, gateway: GatewayDep) -> Response:
    return fhir_response(gateway.subscription_ops.topic(topic_id))


class _Sink:
    """A bound websocket as the deliverer sees it."""

    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket

    async def send_text(self, text: str) -> None:
        await self.socket.send_text(text)


@router.websocket("/ws")
async def websocket_channel(socket: WebSocket) -> None:
    """The websocket channel: `bind-with-token: TOKEN`, then a handshake and events for each subscription.

    Events committed while no socket was bound wait in the outbox; binding again replays them.
    """
    gateway: Gateway = socket.app.state.gateway
    await socket.accept()
    sink = _Sink(socket)
    bound: list[str] = []
    try:
        while True:
            message = (await socket.receive_text()).strip()
            command, _, token = message.partition(":")
            if command.strip() != "bind-with-token" or not token.strip():
                await socket.send_text(orjson.dumps({"error": "expected 'bind-with-token: TOKEN'"}).decode())
                continue
            try:
                ids = await gateway.subscription_ops.bind(token.strip())
            except FhirError as exc:
                await socket.send_text(orjson.dumps({"error": str(exc)}).decode())
                continue
            for sub_id in ids:
                await _handshake(gateway, sink, sub_id)
                gateway.deliverer.ws.setdefault(sub_id, set()).add(sink)
                bound.append(sub_id)
            gateway.deliverer.wake(ids)
    except WebSocketDisconnect:
        pass
    finally:
        for sub_id in bound:
            gateway.deliverer.ws.get(sub_id, set()).discard(sink)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.close(), 1)


async def _handshake(gateway: Gateway, sink: _Sink, sub_id: str) -> None:
    async with gateway.db.read() as conn:
        state = await sub_store.state(conn, sub_id)
    spec = gateway.subscriptions.spec(sub_id)
    if state is None or spec is None:
        return
    header = StatusHeader(gateway.deliverer.base_url, sub_id, spec.topic.url, state.status, state.last_event)
    await sink.send_text(
        orjson.dumps(
            notification_bundle(header, "handshake", [], spec.content, {}, now_us=dates.now_us())
        ).decode()
    )
