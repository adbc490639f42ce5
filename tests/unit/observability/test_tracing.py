"""``Tracing``: the ``none`` exporter is a no-op; ``traceparent`` names the span it is given."""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from somaagent.domain.identity import TraceContext, parse_traceparent
from somaagent.observability.tracing import Tracing, build_tracing

CALLER = TraceContext(
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    span_id="1111111111111111",
    parent_span_id="00f067aa0ba902b7",
    sampled=True,
)
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def recording() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_none_exporter_is_a_no_op() -> None:
    before = trace.get_tracer_provider()
    tracing = build_tracing("none", endpoint=None, service_name="somaagent-test")
    assert not tracing.enabled
    with tracing.request(CALLER, "POST /v1/chat/completions", {"a": 1}) as (ctx, span):
        assert ctx is CALLER  # the request keeps the span id the gateway made up
        assert span is None
        with tracing.span("router.decide", {"b": 2}) as inner:
            assert inner is None
        client = tracing.start("chat m")
        assert client is None
        tracing.set(client, gen_ai__usage__input_tokens=3)
        tracing.end(client, "upstream_timeout")
        assert tracing.traceparent(client, ctx.traceparent) == CALLER.traceparent
    tracing.shutdown()
    assert trace.get_tracer_provider() is before  # nothing installed globally


def test_traceparent_names_the_given_span() -> None:
    tracing, exporter = recording()
    span = tracing.start("chat m")
    assert span is not None
    header = tracing.traceparent(span, "00-" + "0" * 32 + "-" + "0" * 16 + "-01")
    sc = span.get_span_context()
    # flags as the SDK set them: sampled, plus W3C level 2's random-trace-id bit on a root
    assert header == f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
    assert TRACEPARENT.match(header)
    # what the upstream parses back is this span: same trace, this span as its parent
    parsed = parse_traceparent(header)
    assert (parsed.trace_id, parsed.parent_span_id, parsed.sampled) == (
        f"{sc.trace_id:032x}",
        f"{sc.span_id:016x}",
        True,
    )
    tracing.end(span)
    assert [s.name for s in exporter.get_finished_spans()] == ["chat m"]
    tracing.shutdown()


def test_traceparent_of_no_span_is_the_fallback() -> None:
    assert Tracing.traceparent(None, CALLER.traceparent) == CALLER.traceparent


def test_request_span_continues_the_callers_trace() -> None:
    tracing, exporter = recording()
    with tracing.request(CALLER, "POST /v1/chat/completions", {"soma.tenant": "t"}) as (
        ctx,
        server,
    ):
        assert server is not None
        sc = server.get_span_context()
        assert ctx.trace_id == CALLER.trace_id == f"{sc.trace_id:032x}"
        assert ctx.span_id == f"{sc.span_id:016x}" != CALLER.span_id
        assert ctx.parent_span_id == CALLER.parent_span_id
        client = tracing.start("chat m", {"gen_ai.request.model": "m"})
        upstream = parse_traceparent(tracing.traceparent(client, ctx.traceparent))
        assert upstream.trace_id == CALLER.trace_id
        tracing.set(client, gen_ai__usage__output_tokens=5, skipped=None)
        tracing.end(client, "upstream_timeout")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    srv, cli = spans["POST /v1/chat/completions"], spans["chat m"]
    assert srv.kind is SpanKind.SERVER and cli.kind is SpanKind.CLIENT
    assert srv.parent is not None and f"{srv.parent.span_id:016x}" == CALLER.parent_span_id
    assert srv.parent.is_remote
    assert cli.parent is not None and cli.parent.span_id == srv.context.span_id
    assert upstream.parent_span_id == f"{cli.context.span_id:016x}"
    assert cli.attributes is not None
    assert cli.attributes["gen_ai.usage.output_tokens"] == 5
    assert cli.attributes["error.type"] == "upstream_timeout"
    assert "skipped" not in cli.attributes
    assert not cli.status.is_ok
    tracing.shutdown()


def test_unsampled_caller_is_not_recorded_but_keeps_its_trace() -> None:
    tracing, exporter = recording()
    caller = TraceContext(CALLER.trace_id, CALLER.span_id, CALLER.parent_span_id, sampled=False)
    with tracing.request(caller, "POST /v1/chat/completions", {}) as (ctx, server):
        assert ctx.trace_id == CALLER.trace_id
        assert tracing.traceparent(server, "fallback").endswith("-00")
    assert exporter.get_finished_spans() == ()
    tracing.shutdown()
