"""An OPA-REST-compatible policy server backed by the in-process OPA engine.

Implements the subset of OPA's REST API the gateway uses, with OPA's status codes and bodies:

* ``POST /v1/data/{path}`` with an optional ``{"input": ...}`` body: ``200 {"result": ...}``,
  or ``200 {}`` when the document is undefined; ``400 {"code": "invalid_parameter", ...}``
  for a malformed body or path; ``500 {"code": "internal_error", ...}`` when evaluation
  fails.
* ``GET /health``: ``200 {}`` once the policies are compiled.

``soma policy serve`` runs it under uvicorn, so the REST client is exercised over real HTTP
against the real engine where no ``opa`` binary is installed. Two differences from OPA:
``{"input": null}`` is treated as no input (the bindings pass ``None`` as "no input"), and
there is no data API, bundle or decision log (only policies from the directory).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from somaagent.adapters.opa import (
    InProcessPolicyEngine,
    PolicyBundle,
    PolicyUnavailable,
    PolicyUndefined,
    split_path,
)
from somaagent.domain.policy import PolicyError

__all__ = ["create_app"]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"code": code, "message": message}, status)


async def _input_of(request: Request) -> tuple[object | None, Response | None]:
    """The ``input`` of the request body (``None`` when absent), or an error response."""
    raw = await request.body()
    if not raw.strip():
        return None, None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, _error(400, "invalid_parameter", f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return None, _error(400, "invalid_parameter", "body must be a JSON object")
    return body.get("input"), None


async def post_data(request: Request) -> Response:
    """OPA's ``POST /v1/data/{path}``: the document at ``data.<path>`` for the given input."""
    engine: InProcessPolicyEngine = request.app.state.engine
    path = request.path_params["path"]
    try:
        split_path(path)
    except PolicyError as exc:
        return _error(400, "invalid_parameter", str(exc))
    input_doc, problem = await _input_of(request)
    if problem is not None:
        return problem
    try:
        result = await engine.adocument(path, input_doc)
    except PolicyUndefined:
        return _json({})
    except PolicyUnavailable as exc:
        return _error(503, "internal_error", str(exc))
    except PolicyError as exc:
        return _error(500, "internal_error", str(exc))
    return _json({"result": result})


async def health(request: Request) -> Response:
    """OPA's ``GET /health``: ``{}`` (the policies compiled when the server started)."""
    return _json({})


def create_app(bundle: PolicyBundle) -> Starlette:
    """The server app; the engine is compiled in the lifespan (a bad policy fails start-up)
    and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = await anyio.to_thread.run_sync(InProcessPolicyEngine, bundle)
        app.state.engine = engine
        try:
            yield
        finally:
            engine.close()

    routes = [
        Route("/v1/data/{path:path}", post_data, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
