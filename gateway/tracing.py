"""Optional OpenTelemetry traces: an HL7 v2 message from MLLP receipt through commit, topic matching and
notification delivery.

Spans (their attributes are ids, counts, codes and statuses, never message or resource content):
- `mllp.receive`: one per framed message (peer address, bytes, ACK code, control id, correlation id);
- `hl7.commit`: one per batch transaction, linked to the receive span of each message in it;
- `subscriptions.match`: topic matching of a transaction's writes (versions, events queued);
- `subscriptions.deliver`: one per delivery attempt (subscription id, channel, events, HTTP status).

Without `GATEWAY_OTEL_ENDPOINT` nothing is recorded and the calls cost next to nothing; with it,
`configure` installs the OpenTelemetry SDK with an OTLP/HTTP exporter (the `otel` extra:
`pip install 'specialty-gateway[otel]'`). Without the opentelemetry packages every call here is a no-op.

A leaf module: imports nothing from the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    _trace = None  # type: ignore[assignment]

SERVICE_NAME = "specialty-gateway"
# The global provider's tracer, made once (a proxy: it records once a provider is set, else it is a no-op);
# `install` puts a provider's own in its place.
_default: Any = _trace.get_tracer("gateway") if _trace is not None else None
_tracer: Any = _default

Attributes = Mapping[str, str | int | float | bool]


def _get_tracer() -> Any:
    return _tracer


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None, links: Sequence[Any] = ()) -> Iterator[Any]:
    """A span around the block (the current span's child); yields it (None without OpenTelemetry), so
    the block can add attributes it learns, such as a status."""
    tracer = _get_tracer()
    if tracer is None:
        yield None
        return
    links_ = [_trace.Link(c) for c in links if c is not None and c.is_valid]
    with tracer.start_as_current_span(name, attributes=dict(attributes or {}), links=links_) as current:
        yield current


def set_attributes(current: Any, attributes: Attributes) -> None:
    if current is not None and current.is_recording():
        current.set_attributes(dict(attributes))


def current_context() -> Any:
    """The current span's context, to link work done later in another task to it (None without any)."""
    if _trace is None:
        return None
    context = _trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def install(provider: Any) -> None:
    """Record with this TracerProvider (tests hand in one with an in-memory exporter); None: back to the
    global provider's."""
    global _tracer
    _tracer = provider.get_tracer("gateway") if provider is not None else _default


def configure(endpoint: str) -> None:
    """The SDK with an OTLP/HTTP exporter to `endpoint` (e.g. http://collector:4318/v1/traces), batched;
    ValueError when the opentelemetry SDK or exporter is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ValueError(
            "GATEWAY_OTEL_ENDPOINT is set but OpenTelemetry is not installed:"
            " pip install 'specialty-gateway[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _trace.set_tracer_provider(provider)
    install(provider)
