"""``/v1/budgets`` (create, read, update, delete) and ``GET /v1/budget/summary``.

Tenant-scoped by the caller's key: a key reads and changes only its own tenant's budgets
(another tenant's budget reads as not found; naming another tenant is a 403). Creating,
changing and deleting need the ``admin`` or ``operator`` role. Money travels as decimal
strings (a JSON number is accepted only when it is an integer: a float has already lost
the exact value).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from somaagent.domain.budgets import (
    UNSET,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetSummary,
    BudgetUnavailable,
    BudgetUpdate,
    UnknownBudget,
)
from somaagent.domain.chat_request import RequestError
from somaagent.domain.identity import Caller
from somaagent.entrypoints.http_chat import FastJSONResponse, read_json_body
from somaagent.entrypoints.http_operator import caller_tenant, guarded, require_operator
from somaagent.service.budgets import BudgetService

__all__ = ["budget_item", "budget_summary", "budgets_collection"]

_MAX_BODY = 64 * 1024
_DECIMALS = ("limit_usd", "limit_gpu_hours", "approval_above_usd")
_CREATE = frozenset(
    {"tenant", "persona", "window", "timezone", "limit_tokens", "on_exceed", *_DECIMALS}
)
_UPDATE = frozenset({"limit_tokens", "on_exceed", *_DECIMALS})


def _service(request: Request) -> BudgetService:
    chat = request.app.state.container.chat
    gate = chat.gate if chat is not None else None
    if gate is None or gate.budgets is None:
        raise RequestError(503, "budgets are not configured", kind="server_error")
    budgets: BudgetService = gate.budgets
    return budgets


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


def budget_dict(b: Budget) -> dict[str, Any]:
    return {
        "object": "soma.budget",
        "id": b.budget_id,
        "tenant": b.tenant,
        "persona": b.persona,
        "scope": "tenant" if b.persona is None else "persona",
        "window": b.window,
        "timezone": b.timezone,
        "limit_tokens": b.limit_tokens,
        "limit_usd": _money(b.limit_usd),
        "limit_gpu_hours": _money(b.limit_gpu_hours),
        "on_exceed": b.on_exceed,
        "approval_above_usd": _money(b.approval_above_usd),
        "created_at": b.created_at.isoformat(),
        "updated_at": b.updated_at.isoformat(),
    }


def summary_dict(s: BudgetSummary) -> dict[str, Any]:
    st = s.state
    b = st.budget
    reserved = st.reserved
    return {
        "budget": budget_dict(b),
        "window": {
            "key": st.window.key,
            "start": st.window.start.isoformat(),
            "end": st.window.end.isoformat(),
            "counted_since": s.counted_since.isoformat(),
        },
        "exact": s.exact,
        "limit": {
            "tokens": b.limit_tokens,
            "usd": _money(b.limit_usd),
            "gpu_hours": _money(b.limit_gpu_hours),
        },
        "spent": {
            "tokens": s.spent_tokens,
            "usd": _money(s.spent_usd),
            "gpu_hours": _money(s.spent_gpu_hours),
        },
        "reserved": {
            "tokens": reserved.tokens,
            "usd": _money(Decimal(reserved.usd_nano).scaleb(-9)),
            "gpu_hours": _money(Decimal(reserved.gpu_us) / Decimal(3_600_000_000)),
        },
        "remaining": {
            "tokens": s.remaining_tokens,
            "usd": _money(s.remaining_usd),
            "gpu_hours": _money(s.remaining_gpu_hours),
        },
        "remaining_ratio": round(st.remaining_ratio(), 6),
        "burn_rate_per_hour": {
            "tokens": _money(s.burn_tokens_per_hour),
            "usd": _money(s.burn_usd_per_hour),
            "gpu_hours": _money(s.burn_gpu_hours_per_hour),
        },
        "projected_exhaustion": (
            s.projected_exhaustion.isoformat() if s.projected_exhaustion else None
        ),
    }


def _decimal(name: str, value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise RequestError(400, f"'{name}' must be a decimal string such as \"12.50\"", param=name)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise RequestError(400, f"'{name}' is not a decimal: {value!r}", param=name) from None
    raise RequestError(400, f"'{name}' must be a decimal string", param=name)


async def _body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    raw = await read_json_body(request, _MAX_BODY)
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    for name in _DECIMALS:
        if name in body:
            body[name] = _decimal(name, body[name])
    tokens = body.get("limit_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        raise RequestError(400, "'limit_tokens' must be an integer", param="limit_tokens")
    return body


def _budget_error(exc: BudgetError | BudgetUnavailable) -> RequestError:
    if isinstance(exc, BudgetUnavailable):
        return RequestError(503, str(exc), code="budgets_unavailable", kind="server_error")
    if isinstance(exc, UnknownBudget):
        return RequestError(404, str(exc), code="budget_not_found")
    return RequestError(400, str(exc), code="invalid_budget")


async def _own(service: BudgetService, budget_id: str, caller: Caller) -> Budget:
    try:
        budget = await service.get(budget_id)
    except (BudgetError, BudgetUnavailable) as exc:
        raise _budget_error(exc) from None
    if budget.tenant != caller.tenant:
        raise RequestError(404, f"no budget {budget_id!r}", code="budget_not_found")
    return budget


async def _collection(request: Request, caller: Caller) -> Response:
    service = _service(request)
    if request.method == "GET":
        tenant = caller_tenant(caller, dict(request.query_params))
        try:
            rows = await service.list(tenant)
        except (BudgetError, BudgetUnavailable) as exc:
            raise _budget_error(exc) from None
        return FastJSONResponse({"object": "list", "data": [budget_dict(b) for b in rows]})
    require_operator(caller)
    body = await _body(request, _CREATE)
    caller_tenant(caller, {"tenant": body["tenant"]} if "tenant" in body else {})
    body["tenant"] = caller.tenant
    for name in ("window", "timezone"):
        if name not in body:
            raise RequestError(400, f"'{name}' is required", param=name)
    try:
        budget = await service.create(BudgetCreate(**body))
    except (BudgetError, BudgetUnavailable, TypeError) as exc:
        if isinstance(exc, TypeError):
            raise RequestError(400, str(exc)) from None
        raise _budget_error(exc) from None
    return FastJSONResponse(budget_dict(budget), status_code=201)


async def _item(request: Request, caller: Caller) -> Response:
    service = _service(request)
    budget_id = request.path_params["budget_id"]
    budget = await _own(service, budget_id, caller)
    if request.method == "GET":
        return FastJSONResponse(budget_dict(budget))
    require_operator(caller)
    try:
        if request.method == "DELETE":
            gone = await service.delete(budget_id)
            return FastJSONResponse({**budget_dict(gone), "deleted": True})
        body = await _body(request, _UPDATE)
        change = BudgetUpdate(**{k: body.get(k, UNSET) for k in _UPDATE})
        return FastJSONResponse(budget_dict(await service.update(budget_id, change)))
    except (BudgetError, BudgetUnavailable) as exc:
        raise _budget_error(exc) from None


async def _summary(request: Request, caller: Caller) -> Response:
    service = _service(request)
    tenant = caller_tenant(caller, dict(request.query_params))
    now = datetime.now(UTC)
    try:
        rows = await service.summary(tenant, now)
    except (BudgetError, BudgetUnavailable) as exc:
        raise _budget_error(exc) from None
    persona = request.query_params.get("persona")
    data = [summary_dict(s) for s in rows if persona is None or s.state.budget.persona == persona]
    return FastJSONResponse(
        {"object": "soma.budget_summary", "tenant": tenant, "at": now.isoformat(), "data": data}
    )


budgets_collection = guarded(_collection)
budget_item = guarded(_item)
budget_summary = guarded(_summary)
