"""OpenTelemetry traces: gateway -> router -> policy -> upstream call -> publish.

``Tracing`` wraps one SDK ``TracerProvider`` built from the settings (exporter ``otlp``:
OTLP/HTTP to ``otel_endpoint``; ``console``: one JSON span per line on stdout; ``none``: no
provider and every call below is a no-op costing one attribute check). No global provider
is installed: the tracer travels with the services that use it.

The request span continues the caller's W3C trace (same trace id; the caller's span is its
parent) and *is* the span the request's telemetry events name: the request context's
``span_id`` is replaced by the OTel span's id, so a trace backend and ClickHouse join on
``trace_id``/``span_id``. The upstream call gets its own CLIENT span and the upstream
receives that span in ``traceparent``. Spans carry the GenAI semantic-convention attributes
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, ...) and never a prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from somaagent.domain.identity import TraceContext

__all__ = ["Tracing", "build_tracing"]

Attributes = Mapping[str, str | int | float | bool]

# Stateless (``nullcontext`` only hands back its result), so one is shared.
_NO_SPAN: AbstractContextManager[None] = nullcontext(None)


class Tracing:
    """Spans for one process; ``enabled`` is False when the exporter is ``none``."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("somaagent") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def request(
        self, ctx_trace: TraceContext, name: str, attributes: Attributes
    ) -> AbstractContextManager[tuple[TraceContext, Span | None]]:
        """The request's SERVER span, child of the caller's span; yields the updated trace."""
        if self._tracer is None:
            return nullcontext((ctx_trace, None))
        return self._request(self._tracer, ctx_trace, name, attributes)

    @staticmethod
    @contextmanager
    def _request(
        tracer: trace.Tracer, ctx_trace: TraceContext, name: str, attributes: Attributes
    ) -> Iterator[tuple[TraceContext, Span | None]]:
        parent = None
        if ctx_trace.parent_span_id is not None:
            remote = SpanContext(
                trace_id=int(ctx_trace.trace_id, 16),
                span_id=int(ctx_trace.parent_span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if ctx_trace.sampled else 0),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
        with tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        ) as span:
            sc = span.get_span_context()
            updated = dataclasses.replace(
                ctx_trace, trace_id=f"{sc.trace_id:032x}", span_id=f"{sc.span_id:016x}"
            )
            yield updated, span

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> AbstractContextManager[Span | None]:
        """A child of the current span (no-op when tracing is off).

        Off, it is one shared ``nullcontext``: a generator-based context manager costs a
        few microseconds per use, and the chat path opens several per call.
        """
        if self._tracer is None:
            return _NO_SPAN
        return self._span(self._tracer, name, attributes, kind)

    @staticmethod
    @contextmanager
    def _span(
        tracer: trace.Tracer, name: str, attributes: Attributes | None, kind: SpanKind
    ) -> Iterator[Span | None]:
        with tracer.start_as_current_span(
            name, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span

    def start(
        self, name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.CLIENT
    ) -> Span | None:
        """A child of the current span that the caller ends with ``end`` (for streams)."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(name, kind=kind, attributes=dict(attributes or {}))

    @staticmethod
    def end(span: Span | None, error: str | None = None) -> None:
        if span is None:
            return
        if error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
            span.set_attribute("error.type", error)
        span.end()

    @staticmethod
    def traceparent(span: Span | None, fallback: str) -> str:
        """The ``traceparent`` naming ``span`` (the upstream's parent), else ``fallback``."""
        if span is None:
            return fallback
        sc = span.get_span_context()
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    @staticmethod
    def set(span: Span | None, **attributes: Any) -> None:
        """Set attributes on ``span`` (dots spelled as ``__``); None values are skipped."""
        if span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key.replace("__", "."), value)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def build_tracing(
    exporter: str,
    *,
    endpoint: str | None,
    service_name: str,
) -> Tracing:
    """A ``Tracing`` for the ``otel_exporter`` setting (``none`` | ``console`` | ``otlp``)."""
    if exporter == "none":
        return Tracing(None)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=_one_line)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=500)
        )
    return Tracing(provider)


def _one_line(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"
