"""OpenTelemetry traces for real: the gateway's OTLP/HTTP exporter to a receiving end.

The receiver below is the collector's end of the wire (OTLP/HTTP, protobuf): it decodes
what the gateway's own exporter posts. One non-streamed and one streamed call, each
continuing a caller's W3C trace, through a gateway in ``enforce`` mode with a budget (so
the policy and budget paths run); their spans and their telemetry events in ClickHouse
must name the same trace and the same request span.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from somaagent.bootstrap import Container
from somaagent.settings import Settings
from tests.e2e.budget_support import create_budget, gateway_url, make_keys, new_tenant
from tests.e2e.gateway_support import running_gateway
from tests.integration.telemetry_support import wait_until

MODEL = "smollm2-135m-instruct"
PAYLOAD = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 16,
    "temperature": 0,
}
SERVER_SPAN = "POST /v1/chat/completions"
EXPECTED = (SERVER_SPAN, "router.decide", "policy.evaluate", f"chat {MODEL}", "telemetry.publish")


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which is not None else None


class OtlpReceiver:
    """The collector's end: accepts OTLP/HTTP protobuf exports on ``POST /v1/traces``."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                received = [
                    ReceivedSpan(
                        service=str(
                            {a.key: _value(a.value) for a in rs.resource.attributes}.get(
                                "service.name"
                            )
                        ),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    )
                    for rs in export.resource_spans
                    for ss in rs.scope_spans
                    for s in ss.spans
                ]
                with lock:
                    outer.spans.extend(received)
                    outer.requests += 1
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def otlp() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def caller_trace() -> tuple[str, str, str]:
    """A caller's trace id, span id and the ``traceparent`` naming them (sampled)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def rows_for(worker: Container, table: str, session: str) -> list[dict[str, Any]]:
    assert worker.worker is not None
    store = worker.worker.store
    return store.query(
        f"SELECT trace_id, span_id FROM {store.database}.{table} WHERE session_id = '{session}'"
    )


def chat(gw: Settings, key: str, traceparent: str, session: str) -> tuple[httpx.Response, Any]:
    r = httpx.post(
        gateway_url(gw) + "/v1/chat/completions",
        json=PAYLOAD,
        headers={
            "Authorization": f"Bearer {key}",
            "traceparent": traceparent,
            "X-Soma-Session-Id": session,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r, r.json()["usage"]


def chat_streamed(
    gw: Settings, key: str, traceparent: str, session: str
) -> tuple[httpx.Response, Any]:
    usage = None
    with httpx.stream(
        "POST",
        gateway_url(gw) + "/v1/chat/completions",
        json={**PAYLOAD, "stream": True, "stream_options": {"include_usage": True}},
        headers={
            "Authorization": f"Bearer {key}",
            "traceparent": traceparent,
            "X-Soma-Session-Id": session,
        },
        timeout=120,
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                usage = chunk.get("usage") or usage
    assert usage is not None, "include_usage: the last chunk carries the usage"
    return r, usage


def check_trace(
    spans: list[ReceivedSpan], trace_id: str, caller_span: str, usage: dict[str, int]
) -> ReceivedSpan:
    """The request's spans, parented as documented; returns the SERVER span."""
    by_name = {name: [s for s in spans if s.name == name] for name in EXPECTED}
    assert {n: len(v) for n, v in by_name.items()} == dict.fromkeys(EXPECTED, 1), [
        (s.name, s.parent_span_id) for s in spans
    ]
    assert {s.trace_id for s in spans} == {trace_id}
    server = by_name[SERVER_SPAN][0]
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert server.parent_span_id == caller_span, "the caller's span is the request's parent"
    assert server.service == "somaagent-gateway"
    for name in EXPECTED[1:]:
        (child,) = by_name[name]
        assert child.parent_span_id == server.span_id, f"{name} is a child of the request"
    (policy,) = by_name["policy.evaluate"]
    assert policy.attributes["soma.policy.verdict"] == "allow"
    (call,) = by_name[f"chat {MODEL}"]
    assert call.kind == ProtoSpan.SPAN_KIND_CLIENT
    a = call.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert not any("content" in k or "prompt" in k for k in a), "never a prompt in a span"
    return server


def test_spans_and_events_of_a_call_share_the_callers_trace(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], otlp: OtlpReceiver
) -> None:
    worker, env = pipeline
    tenant = new_tenant("trace")
    operator, user = make_keys(stack, tenant, ("ops", "admin"), ("support", "user"))
    gw_env = {
        **env,
        "SOMA_POLICY_MODE": "enforce",
        "SOMA_OTEL_EXPORTER": "otlp",
        "SOMA_OTEL_ENDPOINT": otlp.url,
    }
    calls = []
    with running_gateway(gw_env) as gw:
        create_budget(gw, operator, window="daily", timezone="UTC", limit_tokens=1_000_000)
        for call in (chat, chat_streamed):
            trace_id, span_id, traceparent = caller_trace()
            session = f"trace-{uuid.uuid4().hex[:8]}"
            r, usage = call(gw, user, traceparent, session)
            assert r.headers["x-soma-policy-verdict"] == "allow"
            assert r.headers["x-soma-budget-remaining"], "the budget path ran"
            calls.append((call.__name__, trace_id, span_id, session, usage))
        # BatchSpanProcessor: exported within ~0.5 s of the span's end
        for _name, trace_id, _span, _session, _usage in calls:
            assert wait_until(
                lambda t=trace_id: {s.name for s in otlp.of_trace(t)} >= set(EXPECTED),
                timeout_s=15,
            ), "\n".join(f"{s.trace_id} {s.parent_span_id or '-':16} {s.name}" for s in otlp.spans)
    for name, trace_id, span_id, session, usage in calls:
        server = check_trace(otlp.of_trace(trace_id), trace_id, span_id, usage)
        for table in ("slm_metrics", "conversation_metrics", "policy_events"):
            assert wait_until(lambda t=table, s=session: bool(rows_for(worker, t, s)), timeout_s=30)
            rows = rows_for(worker, table, session)
            assert {(r["trace_id"], r["span_id"]) for r in rows} == {(trace_id, server.span_id)}, (
                name,
                table,
                rows,
            )
        print(
            json.dumps(
                {
                    "call": name,
                    "trace_id": trace_id,
                    "spans": [
                        [s.name, s.span_id, s.parent_span_id] for s in otlp.of_trace(trace_id)
                    ],
                }
            )
        )
