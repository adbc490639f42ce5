"""Operator APIs: token usage and the approvals queue (tenant-scoped by the caller's key).

Every view answers OpenAI-style errors. A caller only ever sees its own tenant: naming
another tenant (``?tenant=other``) is a 403, and an approval of another tenant reads as
not found. Deciding approvals needs the ``admin`` or ``operator`` role.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from somaagent.adapters.api_keys import KeyStoreUnavailable
from somaagent.adapters.approvals import ApprovalError
from somaagent.domain.chat_request import RequestError
from somaagent.domain.identity import Caller, IdentityError
from somaagent.entrypoints.http_chat import FastJSONResponse, authenticate, openai_error
from somaagent.service.usage_report import parse_usage_query, token_usage

__all__ = [
    "OPERATOR_ROLES",
    "caller_tenant",
    "decide_approval",
    "get_approval",
    "guarded",
    "list_approvals",
    "telemetry_tokens",
]

log = logging.getLogger("somaagent.gateway")
OPERATOR_ROLES = frozenset({"admin", "operator"})
View = Callable[[Request, Caller], Awaitable[Response]]


def caller_tenant(caller: Caller, params: dict[str, str]) -> str:
    """The tenant a request may read: its own; naming another one is a 403."""
    asked = params.get("tenant")
    if asked is not None and asked != caller.tenant:
        raise IdentityError(
            403, f"this key belongs to tenant {caller.tenant!r}; it cannot read {asked!r}"
        )
    return caller.tenant


def require_operator(caller: Caller) -> None:
    if caller.role not in OPERATOR_ROLES:
        raise IdentityError(403, f"role {caller.role!r} cannot do this; it needs admin or operator")


def guarded(view: View) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate, run ``view``, and turn every failure into an OpenAI-style error."""

    async def endpoint(request: Request) -> Response:
        try:
            caller = await authenticate(request)
            return await view(request, caller)
        except IdentityError as exc:
            kind = "authentication_error" if exc.status == 401 else "permission_error"
            return openai_error(exc.status, str(exc), kind=kind)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except KeyStoreUnavailable as exc:
            return openai_error(
                503, f"cannot check the API key right now: {exc}", kind="server_error"
            )
        except Exception:
            log.exception("operator API failed: %s", request.url.path)
            return openai_error(500, "internal error; it has been logged", kind="server_error")

    endpoint.__name__ = view.__name__
    return endpoint


async def _telemetry_tokens(request: Request, caller: Caller) -> Response:
    container = request.app.state.container
    params = dict(request.query_params)
    tenant = caller_tenant(caller, params)
    query = container.usage_query
    if query is None:
        return openai_error(503, "no ClickHouse store is configured", kind="server_error")
    q = parse_usage_query(params, tenant=tenant, now=datetime.now(UTC))
    body = await anyio.to_thread.run_sync(
        partial(token_usage, query, q, database=container.settings.clickhouse_database)
    )
    return FastJSONResponse(body)


def _approvals(request: Request) -> Any:
    store = request.app.state.container.approvals
    if store is None:
        raise RequestError(503, "the approvals queue is not configured", kind="server_error")
    return store


async def _list_approvals(request: Request, caller: Caller) -> Response:
    params = dict(request.query_params)
    tenant = caller_tenant(caller, params)
    status = params.get("status")
    if status not in (None, "pending", "approved", "denied", "used", "expired"):
        raise RequestError(400, f"unknown status {status!r}", param="status")
    rows = await anyio.to_thread.run_sync(
        partial(_approvals(request).list, tenant=tenant, status=status)
    )
    return FastJSONResponse({"object": "list", "data": [a.to_dict() for a in rows]})


async def _get_approval(request: Request, caller: Caller) -> Response:
    approval_id = request.path_params["approval_id"]
    row = await anyio.to_thread.run_sync(_approvals(request).get, approval_id)
    if row is None or row.tenant != caller.tenant:
        return openai_error(404, f"no approval {approval_id!r}", code="approval_not_found")
    return FastJSONResponse(row.to_dict())


async def _decide_approval(request: Request, caller: Caller) -> Response:
    approval_id = request.path_params["approval_id"]
    decision = request.path_params["decision"]
    if decision not in ("approve", "deny"):
        return openai_error(404, f"no such action {decision!r}; use approve or deny")
    require_operator(caller)
    store = _approvals(request)
    row = await anyio.to_thread.run_sync(store.get, approval_id)
    if row is None or row.tenant != caller.tenant:
        return openai_error(404, f"no approval {approval_id!r}", code="approval_not_found")
    note = request.query_params.get("note")
    try:
        done = await anyio.to_thread.run_sync(
            partial(
                store.decide,
                approval_id,
                approve=decision == "approve",
                actor=f"key:{caller.key_id}",
                note=note,
            )
        )
    except ApprovalError as exc:
        return openai_error(409, str(exc), code="approval_conflict")
    return FastJSONResponse(done.to_dict())


telemetry_tokens = guarded(_telemetry_tokens)
list_approvals = guarded(_list_approvals)
get_approval = guarded(_get_approval)
decide_approval = guarded(_decide_approval)
