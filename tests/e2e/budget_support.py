"""Helpers for the budget e2e tests: keys, budgets and a concurrent load of real calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.settings import Settings


def new_tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_keys(stack: Settings, tenant: str, *pairs: tuple[str, str]) -> list[str]:
    """One API key per (persona, role) of ``tenant``."""
    store = ApiKeyStore(stack.secret("postgres_dsn"))
    try:
        return [store.create(tenant, persona, role)[1] for persona, role in pairs]
    finally:
        store.close()


def gateway_url(gw: Settings) -> str:
    return f"http://127.0.0.1:{gw.gateway_port}"


def create_budget(gw: Settings, operator_key: str, **fields: Any) -> dict[str, Any]:
    r = httpx.post(
        gateway_url(gw) + "/v1/budgets",
        json=fields,
        headers={"Authorization": f"Bearer {operator_key}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def charged(stack: Settings, tenant: str) -> tuple[int, Decimal, int]:
    """Tokens, exact USD and rows of ``budget_charges`` for ``tenant`` (Postgres ledger)."""
    with psycopg.connect(stack.secret("postgres_dsn")) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0), count(*)"
            " FROM budget_charges WHERE tenant = %s",
            (tenant,),
        ).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1]), int(row[2])


@dataclass
class LoadResult:
    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)

    def ok(self) -> list[dict[str, Any]]:
        return [b for s, b in zip(self.statuses, self.bodies, strict=True) if s == 200]


async def concurrent_calls(
    gw: Settings,
    key: str,
    payload: dict[str, Any],
    n: int,
    *,
    midway: Callable[[], Awaitable[None]] | None = None,
    midway_after: int = 0,
) -> LoadResult:
    """``n`` concurrent chat calls; ``midway`` runs once ``midway_after`` have answered."""
    result = LoadResult()
    done = 0
    fired = asyncio.Event()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(
        base_url=gateway_url(gw),
        headers={"Authorization": f"Bearer {key}"},
        timeout=180,
        limits=limits,
    ) as client:

        async def one() -> None:
            nonlocal done
            r = await client.post("/v1/chat/completions", json=payload)
            result.statuses.append(r.status_code)
            result.bodies.append(r.json())
            result.headers.append(r.headers)
            done += 1
            if midway is not None and done >= midway_after and not fired.is_set():
                fired.set()
                await midway()

        await asyncio.gather(*(one() for _ in range(n)))
    return result
