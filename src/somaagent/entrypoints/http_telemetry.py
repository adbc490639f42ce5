"""HTTP ingest of telemetry events for services written in other languages."""

from __future__ import annotations

from functools import partial

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from somaagent.domain.chat_request import RequestError
from somaagent.entrypoints.http_chat import openai_error, read_json_body
from somaagent.service.http_ingest import accept_events

__all__ = ["ingest_events"]


async def ingest_events(request: Request) -> JSONResponse:
    """``POST /v1/telemetry/events``: a JSON array of events (or ``{"events": [...]}``).

    202 with a per-event result when at least one event was accepted; 422 when none was;
    400/413/415 when the body itself is unusable.
    """
    container = request.app.state.container
    settings = container.settings
    if container.publisher is None:
        return openai_error(503, "telemetry publisher is not configured", kind="server_error")
    if container.publisher.spool_error is not None:
        return _not_durable(container.publisher.spool_error, "no event was accepted")
    try:
        items = _split_items(await read_json_body(request, settings.ingest_max_body_bytes))
    except RequestError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    except ValueError as exc:
        return openai_error(400, str(exc))
    report = await anyio.to_thread.run_sync(
        partial(
            accept_events,
            items,
            codec=container.codec,
            publisher=container.publisher,
            topic_for_event_type=settings.topics.topic_for_event_type(),
        )
    )
    if not report.durable:
        return _not_durable(
            container.publisher.spool_error or "write refused",
            "the valid events are held in memory and sent if this process stays up; sending"
            " the batch again is safe (duplicates are dropped by event id)",
        )
    return JSONResponse(report.to_dict(), status_code=202 if report.accepted else 422)


def _not_durable(reason: str, what: str) -> JSONResponse:
    response = openai_error(
        503,
        f"the telemetry spool cannot be written ({reason}); {what}",
        kind="server_error",
        code="telemetry_unavailable",
    )
    response.headers["retry-after"] = "5"
    return response


def _split_items(body: bytes) -> list[bytes]:
    """Raw bytes of each element of a JSON array (or of ``{"events": [...]}``)."""
    try:
        parsed = msgspec.json.decode(body, type=list[msgspec.Raw] | dict[str, msgspec.Raw])
    except msgspec.DecodeError as exc:
        raise ValueError(f"body is not JSON: {' '.join(str(exc).split())}") from None
    except msgspec.ValidationError:
        raise ValueError('body must be a JSON array of events or {"events": [...]}') from None
    if isinstance(parsed, dict):
        if "events" not in parsed:
            raise ValueError('body object must have an "events" array')
        try:
            parsed = msgspec.json.decode(parsed["events"], type=list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ValueError('"events" must be a JSON array') from None
    if not parsed:
        raise ValueError("no events in the batch")
    if len(parsed) > 10_000:
        raise ValueError(f"{len(parsed)} events in one batch; the limit is 10000")
    return [bytes(item) for item in parsed]
