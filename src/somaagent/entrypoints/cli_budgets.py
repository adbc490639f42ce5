"""``soma budgets``: create, list, show, update, delete, rebuild and reset budgets.

Thin: parse, build the stores from settings, call ``BudgetService``, print (``--json`` for
machines). Money is printed as plain decimal strings, never floats. Errors print
``soma: error: ...`` and exit 1; nothing is half-written (each change is one statement).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import psycopg

from somaagent.adapters import postgres
from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.budget_store import BudgetStore, ChargeWriter
from somaagent.adapters.redis_budget import RedisBudgetCounters
from somaagent.domain.budgets import (
    UNSET,
    Budget,
    BudgetCreate,
    BudgetError,
    BudgetSummary,
    BudgetUnavailable,
    BudgetUpdate,
)
from somaagent.service.budgets import BudgetService
from somaagent.settings import Settings

__all__ = ["add_budgets"]

T = TypeVar("T")
Handler = Callable[[Settings, argparse.Namespace], int]
_ON_EXCEED = ("downgrade", "pause", "deny", "require_approval")


# -- values --------------------------------------------------------------------------------


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {value!r}") from None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None


def _or_none(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    def parse_or_none(value: str) -> T | None:
        return None if value.lower() == "none" else parse(value)

    return parse_or_none


def _text(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return "-" if value is None else str(value)


def _plain(value: Any) -> Any:
    """JSON-ready data: Decimals and datetimes as strings, dataclasses as objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal | datetime | date):
        return _text(value)
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_plain(value), sort_keys=True))


# -- wiring --------------------------------------------------------------------------------


@asynccontextmanager
async def _service(settings: Settings) -> AsyncIterator[BudgetService]:
    dsn = settings.secret("postgres_dsn")
    try:
        postgres.migrate(dsn)
    except psycopg.OperationalError as exc:
        raise BudgetUnavailable(f"PostgreSQL unavailable: {exc}") from exc
    store = BudgetStore(dsn)
    counters = RedisBudgetCounters(settings.url("redis_url"))
    service = BudgetService(store, counters, ChargeWriter(store))
    try:
        yield service
    finally:
        await service.aclose()
        await counters.aclose()
        await store.aclose()


def _known_tenant(settings: Settings, tenant: str) -> None:
    """A budget is for a tenant that exists: one named by an API key (or LOCAL's anonymous
    caller's tenant); a typo would otherwise create a budget nobody is ever charged to."""
    if settings.allow_anonymous and tenant == settings.anonymous_tenant:
        return
    store = ApiKeyStore(settings.secret("postgres_dsn"))
    try:
        known = bool(store.list(tenant))
    finally:
        store.close()
    if not known:
        raise BudgetError(
            f"unknown tenant {tenant!r}: no API key names it"
            f" (create one first: soma keys create --tenant {tenant} ...)"
        )


def _command(work: Callable[[BudgetService, argparse.Namespace], Awaitable[int]]) -> Handler:
    def handler(settings: Settings, args: argparse.Namespace) -> int:
        async def run() -> int:
            if work is _create:
                await asyncio.to_thread(_known_tenant, settings, args.tenant)
            async with _service(settings) as service:
                return await work(service, args)

        try:
            return asyncio.run(run())
        except (BudgetError, BudgetUnavailable) as exc:
            print(f"soma: error: {exc}", file=sys.stderr)
            return 1

    return handler


# -- commands ------------------------------------------------------------------------------


def _row(b: Budget) -> str:
    return (
        f"{b.budget_id}  {b.tenant:<16} {b.persona or '*':<14} {b.window:<8} {b.timezone:<20}"
        f" {_text(b.limit_tokens):>12} {_text(b.limit_usd):>14} {_text(b.limit_gpu_hours):>10}"
        f"  {b.on_exceed}"
    )


_HEADER = (
    f"{'budget_id':<16}  {'tenant':<16} {'persona':<14} {'window':<8} {'timezone':<20}"
    f" {'tokens':>12} {'usd':>14} {'gpu_hours':>10}  on_exceed"
)


async def _create(service: BudgetService, args: argparse.Namespace) -> int:
    budget = await service.create(
        BudgetCreate(
            tenant=args.tenant,
            persona=args.persona,
            window=args.window,
            timezone=args.tz,
            limit_tokens=args.tokens,
            limit_usd=args.usd,
            limit_gpu_hours=args.gpu_hours,
            on_exceed=args.on_exceed,
            approval_above_usd=args.approval_above_usd,
        )
    )
    if args.json:
        _print_json(budget)
    else:
        print(f"created budget {budget.budget_id}\n{_HEADER}\n{_row(budget)}")
    return 0


async def _list(service: BudgetService, args: argparse.Namespace) -> int:
    budgets = await service.list(args.tenant)
    if args.json:
        _print_json(budgets)
        return 0
    print(_HEADER)
    for budget in budgets:
        print(_row(budget))
    return 0


def _summary_lines(s: BudgetSummary) -> list[str]:
    st = s.state
    return [
        f"window        {st.budget.window} {st.window.key}"
        f" [{_text(st.window.start)} .. {_text(st.window.end)})",
        f"counted since {_text(s.counted_since)}"
        f"  ({'exact ledger' if s.exact else 'counter units'})",
        f"spent         tokens={s.spent_tokens} usd={_text(s.spent_usd)}"
        f" gpu_hours={_text(s.spent_gpu_hours)}",
        f"reserved      tokens={st.reserved.tokens} usd_nano={st.reserved.usd_nano}"
        f" gpu_us={st.reserved.gpu_us}",
        f"remaining     tokens={_text(s.remaining_tokens)} usd={_text(s.remaining_usd)}"
        f" gpu_hours={_text(s.remaining_gpu_hours)}",
        f"burn per hour tokens={_text(s.burn_tokens_per_hour)} usd={_text(s.burn_usd_per_hour)}"
        f" gpu_hours={_text(s.burn_gpu_hours_per_hour)}",
        f"exhausted at  {_text(s.projected_exhaustion)}",
    ]


async def _show(service: BudgetService, args: argparse.Namespace) -> int:
    budget = await service.get(args.budget_id)
    try:
        found = [s for s in await service.summary(budget.tenant) if s.state.budget == budget]
    except BudgetUnavailable as exc:
        print(f"soma: warning: no live state: {exc}", file=sys.stderr)
        found = []
    summary = found[0] if found else None
    if args.json:
        _print_json({"budget": budget, "summary": summary})
        return 0
    print(f"{_HEADER}\n{_row(budget)}")
    if summary is not None:
        print("\n".join(_summary_lines(summary)))
    return 0


async def _update(service: BudgetService, args: argparse.Namespace) -> int:
    change = BudgetUpdate(
        limit_tokens=args.tokens,
        limit_usd=args.usd,
        limit_gpu_hours=args.gpu_hours,
        on_exceed=args.on_exceed,
        approval_above_usd=args.approval_above_usd,
    )
    budget = await service.update(args.budget_id, change)
    if args.json:
        _print_json(budget)
    else:
        print(f"updated budget {budget.budget_id}\n{_HEADER}\n{_row(budget)}")
    return 0


async def _delete(service: BudgetService, args: argparse.Namespace) -> int:
    budget = await service.delete(args.budget_id)
    print(f"deleted budget {budget.budget_id} ({budget.scope}, {budget.window})")
    return 0


async def _rebuild(service: BudgetService, args: argparse.Namespace) -> int:
    report = await service.rebuild(args.tenant)
    if args.json:
        _print_json(report.counters)
        return 0
    for c in report.counters:
        state = "rebuilt" if c.rebuilt else "present"
        print(
            f"{state:<8} {c.key}  spent tokens={c.spent.tokens} usd_nano={c.spent.usd_nano}"
            f" gpu_us={c.spent.gpu_us}  reserved tokens={c.reserved.tokens}"
            f" usd_nano={c.reserved.usd_nano} gpu_us={c.reserved.gpu_us}"
        )
    print(f"{report.rebuilt} of {len(report.counters)} counters rebuilt")
    return 0


async def _reset(service: BudgetService, args: argparse.Namespace) -> int:
    record = await service.reset(args.budget_id, actor=args.actor, reason=args.reason)
    if args.json:
        _print_json(record)
    else:
        print(
            f"reset budget {record.budget_id} window {record.window_key} at"
            f" {_text(record.reset_at)} (audit #{record.reset_id}); spent before:"
            f" tokens={record.spent_before_tokens} usd={_text(record.spent_before_usd)}"
            f" gpu_ms={_text(record.spent_before_gpu_ms)}"
        )
    return 0


# -- parser --------------------------------------------------------------------------------


def _limits(parser: argparse.ArgumentParser, *, update: bool) -> None:
    default: Any = UNSET if update else None
    clear = " ('none' clears it)" if update else ""
    wrap: Callable[[Callable[[str], Any]], Callable[[str], Any]] = (
        _or_none if update else (lambda f: f)
    )
    parser.add_argument("--tokens", type=wrap(_int), default=default, help="token limit" + clear)
    parser.add_argument("--usd", type=wrap(_decimal), default=default, help="USD limit" + clear)
    parser.add_argument(
        "--gpu-hours", type=wrap(_decimal), default=default, help="GPU-hour limit" + clear
    )
    parser.add_argument("--on-exceed", choices=_ON_EXCEED, default=UNSET if update else "downgrade")
    parser.add_argument(
        "--approval-above-usd",
        type=wrap(_decimal),
        default=default,
        metavar="D",
        help="a single call whose worst case costs more needs approval" + clear,
    )
    parser.add_argument("--json", action="store_true")


def add_budgets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``soma budgets ...`` to the ``soma`` parser's subcommands."""
    budgets = sub.add_parser("budgets", help="budgets: create, list, show, update, delete, ...")
    cmds = budgets.add_subparsers(dest="budgets_command", required=True)

    create = cmds.add_parser("create", help="create a budget (at least one limit)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--persona", help="only this persona (default: the whole tenant)")
    create.add_argument("--window", required=True, choices=("daily", "monthly"))
    create.add_argument("--tz", required=True, help="IANA time zone, e.g. Europe/Paris")
    _limits(create, update=False)
    create.set_defaults(func=_command(_create))

    lst = cmds.add_parser("list", help="list budgets")
    lst.add_argument("--tenant")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_command(_list))

    show = cmds.add_parser("show", help="a budget and its current window")
    show.add_argument("budget_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_command(_show))

    update = cmds.add_parser("update", help="change limits or policy")
    update.add_argument("budget_id")
    _limits(update, update=True)
    update.set_defaults(func=_command(_update))

    delete = cmds.add_parser("delete", help="delete a budget (its audit rows stay)")
    delete.add_argument("budget_id")
    delete.set_defaults(func=_command(_delete))

    rebuild = cmds.add_parser("rebuild", help="rebuild missing Redis counters from the ledger")
    rebuild.add_argument("--tenant")
    rebuild.add_argument("--json", action="store_true")
    rebuild.set_defaults(func=_command(_rebuild))

    reset = cmds.add_parser("reset", help="clear a window's spend (audited)")
    reset.add_argument("budget_id")
    reset.add_argument("--actor", required=True, help="who resets (kept in the audit row)")
    reset.add_argument("--reason", required=True)
    reset.add_argument("--json", action="store_true")
    reset.set_defaults(func=_command(_reset))
