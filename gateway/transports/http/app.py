"""The FastAPI application: routes, error rendering, limits, metrics, lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway import __version__
from gateway.exceptions import BadRequest, FhirError, MethodNotAllowed, NotFound, OAuthError
from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.transports.http import (
    audit_routes,
    auth_routes,
    bulk_routes,
    cds_routes,
    console_routes,
    ehr_routes,
    everything_routes,
    fhir_routes,
    hl7_routes,
    launch_routes,
    measure_routes,
    ops_routes,
    pa_routes,
    pharmacist_routes,
    subscription_routes,
    timeline_routes,
)
from gateway.transports.http.console import message_pages as console_messages
from gateway.transports.http.console import metrics_pages as console_metrics
from gateway.transports.http.console import pa_pages as console_pa
from gateway.transports.http.console import patient_pages as console_patient
from gateway.transports.http.console import static_routes as console_static
from gateway.transports.http.console import subscription_pages as console_subscriptions
from gateway.transports.http.console import worklist_pages as console_worklist
from gateway.transports.http.console.session import LoginNeeded, login_redirect
from gateway.transports.http.docs import install_docs
from gateway.transports.http.errors import UnexpectedErrors
from gateway.transports.http.guards import NulGuard
from gateway.transports.http.lean_path import LeanPath
from gateway.transports.http.limits import BodySizeLimit
from gateway.transports.http.observability import (
    EhrForwardCollector,
    EhrPullCollector,
    EhrSubscribeCollector,
    HttpMetrics,
    Observability,
    PipelineCollector,
    PriorAuthCollector,
)
from gateway.transports.http.responses import error_response, oauth_error_response

log = logging.getLogger("gateway.http")


def create_app(settings: Settings, gateway: Gateway | None = None, *, lean_path: bool = True) -> FastAPI:
    """The app; it starts its own Gateway on startup unless one is handed in (tests share one).
    `lean_path=False` leaves plain reads, searches and creates to FastAPI's router too (tests compare
    the two paths)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = gateway is None
        app.state.gateway = gateway or await Gateway.start(settings)
        if owned:
            registry.register(PipelineCollector(app.state.gateway.pipeline.counts))
            registry.register(PriorAuthCollector(lambda: app.state.gateway.payer_worker.turnaround))
            registry.register(audit_routes.AuditCollector(lambda: app.state.gateway.audit))
            registry.register(EhrPullCollector(lambda: app.state.gateway.puller))
            registry.register(EhrForwardCollector(lambda: app.state.gateway.deliverer.forwarding))
            registry.register(EhrSubscribeCollector(lambda: app.state.gateway.subscriber))
        try:
            yield
        finally:
            if owned:
                await app.state.gateway.close()

    app = FastAPI(
        title="Specialty medication gateway",
        version=__version__,
        description="FHIR R4 API, OAuth 2.0 client credentials, health and metrics.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from CDNs; install_docs serves them from local files
        redoc_url=None,
    )
    install_docs(app)
    registry = CollectorRegistry()
    if gateway is not None:
        app.state.gateway = gateway
        registry.register(PipelineCollector(gateway.pipeline.counts))
        registry.register(PriorAuthCollector(lambda: gateway.payer_worker.turnaround))
        registry.register(audit_routes.AuditCollector(lambda: gateway.audit))
        registry.register(EhrPullCollector(lambda: gateway.puller))
        registry.register(EhrForwardCollector(lambda: gateway.deliverer.forwarding))
        registry.register(EhrSubscribeCollector(lambda: gateway.subscriber))
    app.state.metrics_registry = registry
    measure_routes.install(app, registry)  # the pharmacist gauges, refreshed before a scrape when stale
    docs_routes = list(app.routes)
    routers = [
        auth_routes.discovery_router,  # before the generic /fhir/{type}/{id} routes
        subscription_routes.router,  # before the generic /fhir/{type}/{id} routes
        pa_routes.router,
        cds_routes.router,
        ehr_routes.router,
        pharmacist_routes.router,
        measure_routes.router,
        audit_routes.router,
        everything_routes.router,
        bulk_routes.router,  # before the generic /fhir/{type}/{id} routes
        timeline_routes.router,
        fhir_routes.router,
        auth_routes.router,
        launch_routes.router,
        console_routes.router,
        console_static.router,
        console_worklist.router,
        console_pa.router,
        console_metrics.router,
        console_patient.router,
        console_messages.router,
        console_subscriptions.router,
        hl7_routes.router,
        ops_routes.router,
    ]
    for router in routers:
        app.include_router(router)
    _install_error_handlers(app)
    if lean_path:  # innermost: every middleware below applies to the requests it answers too
        app.add_middleware(LeanPath, routes=[*docs_routes, *(r for router in routers for r in router.routes)])
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(NulGuard)
    app.add_middleware(Observability, metrics=HttpMetrics(registry))
    app.add_middleware(UnexpectedErrors)  # outermost: what escapes everything else (see errors.py)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginNeeded)
    async def login_needed(_: Request, exc: LoginNeeded) -> Response:
        return login_redirect(exc.back_to)

    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, exc: FhirError) -> Response:
        return error_response(exc)

    @app.exception_handler(OAuthError)
    async def oauth_error(_: Request, exc: OAuthError) -> Response:
        return oauth_error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"No route for {request.method} {request.url.path}"))
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(f"{request.method} is not supported on {request.url.path}")
            )
        error = FhirError(str(exc.detail))
        error.status = exc.status_code
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest(f"Malformed request: {exc.errors()[:3]}"))
