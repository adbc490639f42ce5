"""Token and cost figures for ``GET /v1/telemetry/tokens`` and the hourly ledger job.

Both read the ClickHouse ``usage_hourly`` aggregates (one row per hour, tenant, persona,
model, tier and event type, kept by materialized views). Money leaves ClickHouse as a string
(``toString`` of the ``Decimal(38, 18)`` sum), never as a JSON number, so it stays exact.
Figures are hourly: a range is widened to whole hours (``from`` down, ``to`` up) and the
answer says which range it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from somaagent.domain.chat_request import RequestError

__all__ = [
    "GROUP_BY",
    "LedgerRow",
    "UsageQuery",
    "hour_floor",
    "ledger_rows",
    "parse_usage_query",
    "token_usage",
]

Query = Callable[[str], list[dict[str, Any]]]

# group_by name -> ClickHouse expression over usage_hourly
GROUP_BY: dict[str, str] = {
    "tenant": "tenant",
    "persona": "persona",
    "model": "model_id",
    "tier": "tier",
    "hour": "formatDateTime(hour, '%Y-%m-%dT%H:00:00Z')",
    "day": "formatDateTime(toStartOfDay(hour), '%Y-%m-%d')",
}
_MAX_RANGE = timedelta(days=400)
# GPU ms are Float64 sums: each call's figure is whole microseconds (ChatService.gpu_ms), so
# the exact total is too; rounding to 3 places drops the binary-float noise of the sum
# (0.1 + 0.2 = 0.30000000000000004), far below a microsecond for any realistic total.
_SUMS = (
    "sum(calls) AS calls, sum(errors) AS errors, sum(input_tokens) AS input_tokens,"
    " sum(output_tokens) AS output_tokens, sum(cached_tokens) AS cached_tokens,"
    " toString(sum(cost_usd)) AS cost_usd, toString(round(sum(gpu_ms), 3)) AS gpu_ms"
)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hour_floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hour_ceil(at: datetime) -> datetime:
    floor = hour_floor(at)
    return floor if floor == at.astimezone(UTC) else floor + timedelta(hours=1)


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("'%Y-%m-%d %H:%M:%S'")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    tenant: str
    start: datetime  # whole hour, UTC
    end: datetime  # whole hour, UTC, exclusive
    persona: str | None = None
    model: str | None = None
    group_by: tuple[str, ...] = ("model",)


def _parse_time(name: str, value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(
            400, f"'{name}' is not an ISO 8601 time: {value!r}", param=name
        ) from None
    if at.tzinfo is None:
        raise RequestError(400, f"'{name}' needs a time zone (e.g. Z): {value!r}", param=name)
    return at


def parse_usage_query(params: dict[str, str], *, tenant: str, now: datetime) -> UsageQuery:
    """Validate the query string (the caller's tenant is fixed by its key, not here)."""
    unknown = set(params) - {"tenant", "persona", "model", "from", "to", "group_by"}
    if unknown:
        raise RequestError(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    end = _parse_time("to", params["to"]) if "to" in params else now
    start = _parse_time("from", params["from"]) if "from" in params else end - timedelta(days=1)
    if start >= end:
        raise RequestError(400, "'from' must be before 'to'", param="from")
    if end - start > _MAX_RANGE:
        raise RequestError(400, "the range may span at most 400 days", param="from")
    groups = tuple(g.strip() for g in params.get("group_by", "model").split(",") if g.strip())
    bad = [g for g in groups if g not in GROUP_BY]
    if bad:
        allowed = ", ".join(GROUP_BY)
        raise RequestError(400, f"cannot group by {bad[0]!r}; use {allowed}", param="group_by")
    return UsageQuery(
        tenant=tenant,
        start=hour_floor(start),
        end=_hour_ceil(end),
        persona=params.get("persona") or None,
        model=params.get("model") or None,
        group_by=tuple(dict.fromkeys(groups)),
    )


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    inp, out = int(row["input_tokens"]), int(row["output_tokens"])
    return {
        "calls": int(row["calls"]),
        "errors": int(row["errors"]),
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": int(row["cached_tokens"]),
        "total_tokens": inp + out,
        "cost_usd": f"{Decimal(row['cost_usd']):f}",
        "gpu_ms": f"{Decimal(row['gpu_ms']):f}",
    }


def token_usage(query: Query, q: UsageQuery, *, database: str) -> dict[str, Any]:
    """The ``/v1/telemetry/tokens`` answer: grouped rows and totals for one tenant."""
    where = [
        f"tenant = {_quote(q.tenant)}",
        f"hour >= toDateTime({_ts(q.start)}, 'UTC')",
        f"hour < toDateTime({_ts(q.end)}, 'UTC')",
    ]
    if q.persona:
        where.append(f"persona = {_quote(q.persona)}")
    if q.model:
        where.append(f"model_id = {_quote(q.model)}")
    cond = " AND ".join(where)
    keys = ", ".join(f"{GROUP_BY[g]} AS {g}" for g in q.group_by)
    rows = query(
        f"SELECT {keys}, {_SUMS} FROM {database}.usage_hourly WHERE {cond}"
        f" GROUP BY {', '.join(q.group_by)} ORDER BY {', '.join(q.group_by)}"
    )
    total = query(f"SELECT {_SUMS} FROM {database}.usage_hourly WHERE {cond}")
    return {
        "object": "soma.token_usage",
        "tenant": q.tenant,
        "from": q.start.isoformat().replace("+00:00", "Z"),
        "to": q.end.isoformat().replace("+00:00", "Z"),
        "filters": {"persona": q.persona, "model": q.model},
        "group_by": list(q.group_by),
        "data": [{**{g: r[g] for g in q.group_by}, **_figures(r)} for r in rows],
        "totals": _figures(total[0]) if total else None,
    }


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One hour of one tenant/persona/model in the Postgres budget ledger."""

    tenant: str
    persona: str
    model_id: str
    hour: datetime
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    gpu_ms: Decimal


def ledger_rows(
    query: Query, *, database: str, start: datetime, end: datetime
) -> Sequence[LedgerRow]:
    """Every (hour, tenant, persona, model) in ``[start, end)`` from the hourly aggregates."""
    rows = query(
        "SELECT formatDateTime(hour, '%Y-%m-%d %H:00:00') AS h, tenant, persona, model_id,"
        f" {_SUMS} FROM {database}.usage_hourly"
        f" WHERE hour >= toDateTime({_ts(hour_floor(start))}, 'UTC')"
        f" AND hour < toDateTime({_ts(_hour_ceil(end))}, 'UTC')"
        " GROUP BY h, tenant, persona, model_id ORDER BY h, tenant, persona, model_id"
    )
    return [
        LedgerRow(
            tenant=r["tenant"],
            persona=r["persona"],
            model_id=r["model_id"],
            hour=datetime.fromisoformat(r["h"]).replace(tzinfo=UTC),
            calls=int(r["calls"]),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            cost_usd=Decimal(r["cost_usd"]),
            gpu_ms=Decimal(r["gpu_ms"]),
        )
        for r in rows
    ]
