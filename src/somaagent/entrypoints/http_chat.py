"""HTTP views of the OpenAI-compatible API: ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from somaagent.adapters.api_keys import KeyStoreUnavailable, NotCached
from somaagent.domain.chat_request import RequestError, parse_chat_request
from somaagent.domain.identity import (
    Caller,
    IdentityError,
    RequestContext,
    build_request_context,
)
from somaagent.domain.rate_limits import RateLimits
from somaagent.domain.routing import ModelEntry
from somaagent.entrypoints.http_protocol import client_gone, on_disconnect
from somaagent.observability.logging import bind_log_context
from somaagent.service.chat import ChatService, ClientGone
from somaagent.service.chat_stream import StreamBody, open_stream

__all__ = [
    "chat_completions",
    "list_models",
    "open_unless_gone",
    "open_watched",
    "openai_error",
    "read_json_body",
    "retrieve_model",
]

log = logging.getLogger("somaagent.gateway")


class FastJSONResponse(Response):
    """A JSON answer rendered by msgspec, its header list built directly.

    The stdlib encoder is several times slower, and Starlette's header handling (lowercase,
    encode, look for content-length and content-type in each) is not needed for the
    gateway's own headers, which never repeat those two.
    """

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.after = after  # run once the answer is written (a call's accounting)
        self.body = msgspec.json.encode(content)
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": self.body})
        finally:
            if self.after is not None:
                try:
                    await self.after()
                except Exception:  # the answer has left: a bug here is logged, not sent
                    log.exception("accounting for an answered call failed")


def openai_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers by lowercase name, the first of repeated ones (as Starlette's
    ``Headers.get``), decoded once: a call looks up about eight of them."""
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


async def authenticate(request: Request, headers: Mapping[str, str] | None = None) -> Caller:
    """The caller behind ``Authorization: Bearer <key>`` (or the anonymous LOCAL caller)."""
    container = request.app.state.container
    settings = container.settings
    header = (request.headers if headers is None else headers).get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    store = container.api_keys
    if token and store is not None:
        cached = store.authenticate_cached(token)
        caller: Caller | None = (
            await anyio.to_thread.run_sync(store.authenticate, token)
            if cached is NotCached.NOT_CACHED
            else cached
        )
        if caller is not None:
            return caller
        if token.startswith("sk-soma-") or not settings.allow_anonymous:
            raise IdentityError(401, "invalid API key")
    if settings.allow_anonymous:
        return Caller(
            key_id="anonymous",
            tenant=settings.anonymous_tenant,
            persona=settings.anonymous_persona,
            role=settings.anonymous_role,
            limits=RateLimits.of(settings.anonymous_rpm, settings.anonymous_tpm),
        )
    raise IdentityError(401, "missing API key: send 'Authorization: Bearer sk-soma-...'")


async def read_json_body(
    request: Request, limit: int, headers: Mapping[str, str] | None = None
) -> bytes:
    """The body of a JSON request, at most ``limit`` bytes; 415/413 ``RequestError`` else."""
    headers = request.headers if headers is None else headers
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(415, f"content-type must be application/json, got {ctype or 'none'}")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body over {limit} bytes")
    # The ASGI messages are read here rather than through ``Request.stream()``: an async
    # generator per request costs its registration with the event loop and two ``anext``.
    body = bytearray()
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestError(413, f"request body over {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def chat_completions(request: Request) -> Response:
    received = time.perf_counter()
    container = request.app.state.container
    settings = container.settings
    service = container.chat
    request_id: str | None = None  # once the request has its span: the events' span_id
    try:
        incoming = request_headers(request)
        caller = await authenticate(request, incoming)
        raw = await read_json_body(request, settings.chat_max_body_bytes, incoming)
        chat = parse_chat_request(
            raw,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_cap=settings.max_tokens_cap,
        )
        ctx: RequestContext = build_request_context(caller, incoming, chat.metadata)
        attributes = (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": chat.model or "auto",
                "http.request.method": "POST",
                "url.path": "/v1/chat/completions",
                "soma.tenant": caller.tenant,
                "soma.persona": caller.persona,
                "soma.stream": chat.stream,
            }
            if service.tracing.enabled
            else {}
        )
        with service.tracing.request(ctx.trace, "POST /v1/chat/completions", attributes) as (
            trace_ctx,
            _span,
        ):
            if trace_ctx is not ctx.trace:  # a span of our own: its ids go into the events
                ctx = dataclasses.replace(ctx, trace=trace_ctx)
            request_id = "req_" + ctx.trace.span_id
            with bind_log_context(
                tenant=caller.tenant,
                persona=caller.persona,
                mode=ctx.mode,
                trace_id=ctx.trace.trace_id,
            ):
                approval_id = incoming.get("x-soma-approval") or None
                if chat.stream:
                    opening = open_stream(service, chat, caller, ctx, received, approval_id)
                    headers, body = await open_watched(opening, request.receive)
                    headers["x-request-id"] = request_id
                    return EventStream(body, headers)
                gone = client_gone(request.receive)
                outcome = await service.complete(
                    chat, caller, ctx, received, approval_id, gone, answer_first=True
                )
                # The call's events are built and spooled once the answer has left
                # (``outcome.close``, run by the response), so the client does not wait.
                try:
                    outcome.headers["x-request-id"] = request_id
                    return FastJSONResponse(
                        outcome.body, headers=outcome.headers, after=outcome.close
                    )
                except BaseException:
                    await outcome.close()
                    raise
    except IdentityError as exc:
        kind = "authentication_error" if exc.status == 401 else "invalid_request_error"
        return openai_error(exc.status, str(exc), kind=kind)
    except RequestError as exc:
        if request_id is not None:  # refused after routing: its events carry the id
            exc.headers["x-request-id"] = request_id
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    except KeyStoreUnavailable as exc:
        return openai_error(503, f"cannot check the API key right now: {exc}", kind="server_error")
    except (ClientDisconnect, ClientGone):  # nobody is left to answer (nothing is sent)
        return Response(status_code=499)
    except Exception:  # a bug must not become a traceback on the wire
        log.exception("chat completion failed")
        return openai_error(500, "internal error; it has been logged", kind="server_error")


async def open_watched(
    opening: Coroutine[Any, Any, tuple[dict[str, str], StreamBody]], receive: Receive
) -> tuple[dict[str, str], StreamBody]:
    """Open a stream while watching the client (``ClientDisconnect`` when it left first).

    Before the first byte of the answer a stream may wait long: a long prompt's prefill, a
    retry's back-off, or the head held back while it could be a signal (with escalation on,
    a whole answer that is one). A client that leaves meanwhile cancels the opening, whose
    upstream request is then closed and its partial answer accounted as an interrupt
    (``chat_stream``). Under the gateway's own HTTP protocol the connection's loss cancels
    this task directly; under another server, :func:`open_unless_gone` watches."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    def gone() -> None:
        nonlocal left
        left = True
        task.cancel()

    stop = on_disconnect(receive, gone)
    if stop is None:
        return await open_unless_gone(opening, receive)
    try:
        return await opening
    except asyncio.CancelledError:
        if not left:
            raise
        raise ClientDisconnect() from None
    finally:
        stop()
        if left:  # our cancel, delivered (or swallowed by the opening): not the task's own
            task.uncancel()


async def open_unless_gone(
    opening: Coroutine[Any, Any, tuple[dict[str, str], StreamBody]], receive: Receive
) -> tuple[dict[str, str], StreamBody]:
    """:func:`open_watched` for any ASGI server: the opening runs in a task of its own
    while this one waits for ``http.disconnect`` (two tasks and an ``asyncio.wait`` a
    stream; streamed at c=16 it measured 814 against 849 req/s without it, within what
    alternation on this host resolves)."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(opening)
    watch = loop.create_task(_disconnected(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this handler itself is cancelled: so is the opening
        task.cancel()
        watch.cancel()
        raise
    if task.done():
        watch.cancel()
        return task.result()
    task.cancel()
    try:
        _headers, body = await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        raise ClientDisconnect() from None
    await body.aclose()  # it opened as the client left: accounted as an interrupt
    raise ClientDisconnect()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def list_models(request: Request) -> Response:
    container = request.app.state.container
    try:
        caller = await authenticate(request)
    except IdentityError as exc:
        return openai_error(exc.status, str(exc), kind="authentication_error")
    data = [_model_object(e) for e in _visible_models(container.chat, caller)]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{model}`` (the SDK's ``models.retrieve``): one model the caller may
    use, or a 404 as for a model that does not exist."""
    container = request.app.state.container
    try:
        caller = await authenticate(request)
    except IdentityError as exc:
        return openai_error(exc.status, str(exc), kind="authentication_error")
    model_id = request.path_params["model"]
    for entry in _visible_models(container.chat, caller):
        if entry.model_id == model_id:
            return JSONResponse(_model_object(entry))
    return openai_error(
        404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
    )


def _visible_models(service: ChatService, caller: Caller) -> list[ModelEntry]:
    """The catalog's models with a configured upstream that ``caller`` may ask for."""
    return [
        e
        for e in service.catalog.allowed_for(caller.persona, caller.role)
        if e.model_id in service.upstreams
    ]


def _model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "somaagent",
        "tier": entry.tier,
    }


class EventStream(Response):
    """An SSE response that closes its body iterator as soon as the client disconnects.

    Starlette's ``StreamingResponse`` cancels the sending task but leaves the iterator
    suspended; here the iterator is always closed (shielded), so the upstream request is
    cancelled at once and the partial answer accounted.
    """

    def __init__(self, body: StreamBody, headers: dict[str, str]) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.stream = body
        self.extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.encode(), v.encode()) for k, v in self.extra_headers.items()]
        raw.append((b"content-type", b"text/event-stream; charset=utf-8"))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                stream = self.stream
                async for chunk in stream:
                    last = stream.last  # the answer's end: the response ends with it
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    if last:  # the call's events are published as the body closes, below
                        break
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()
