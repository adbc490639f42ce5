"""Budgets: limits per tenant or persona over calendar windows, and their integer units (pure).

A budget caps what one tenant (``persona=None``) or one persona of a tenant may spend in a
daily or monthly window that follows the calendar of the budget's IANA time zone, in up to
three dimensions: tokens, USD and GPU-hours.

Counters (Redis, Lua) only ever hold integers, all below 2**53 so a Lua double is exact:
tokens; USD in nano-USD, each charge rounded *up* from its exact 18-dp cost; GPU time in
microseconds, rounded *up*. Limits are converted rounding *down*. A counter is therefore
never below the exact spend and its limit never above the exact limit, so "the counter
says it fits" implies "the exact spend fits".
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from somaagent.domain.identity import check_safe_name
from somaagent.domain.money import SUM_CONTEXT, exact_sum

__all__ = [
    "MAX_AMOUNT",
    "MAX_GPU_HOURS",
    "MAX_TOKENS",
    "MAX_USD",
    "UNSET",
    "Amounts",
    "Budget",
    "BudgetCreate",
    "BudgetError",
    "BudgetState",
    "BudgetSummary",
    "BudgetUnavailable",
    "BudgetUpdate",
    "DIMENSIONS",
    "Charge",
    "Dimension",
    "Limits",
    "OnExceed",
    "ResetRecord",
    "UnknownBudget",
    "check_budget_id",
    "Unset",
    "Window",
    "WindowKind",
    "WindowTotals",
    "counter_key",
    "done_key",
    "gpu_hours_to_us_floor",
    "gpu_ms_to_us_ceil",
    "nano_to_usd",
    "reservation_key",
    "reservations_key",
    "summarize",
    "us_to_gpu_hours",
    "usd_to_nano_ceil",
    "usd_to_nano_floor",
    "window_of",
]

WindowKind = Literal["daily", "monthly"]
OnExceed = Literal["downgrade", "pause", "deny", "require_approval"]
Dimension = Literal["tokens", "usd", "gpu"]
DIMENSIONS: tuple[Dimension, ...] = ("tokens", "usd", "gpu")

MAX_TOKENS = 10**15
MAX_USD = Decimal(1_000_000)
MAX_GPU_HOURS = Decimal(1_000_000)
MAX_AMOUNT = 10**15  # per reservation or charge and dimension, in units
NANO_PER_USD = Decimal(10**9)
US_PER_MS = Decimal(1000)
US_PER_HOUR = Decimal(3_600_000_000)
_QUANTUM = Decimal("1e-18")
_CTX = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])
_BUDGET_ID_RE = re.compile(r"[0-9a-f]{16}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_HOST_ZONES = frozenset({"localtime", "posixrules"})  # files of the host, not IANA zones


class BudgetError(ValueError):
    """Invalid budget input or a budget operation that cannot be done; the message says why."""


class UnknownBudget(BudgetError):
    """No budget has this id."""


class BudgetUnavailable(Exception):
    """The budget store (Redis or PostgreSQL) cannot be reached; the caller decides to fail
    open or closed."""


class Unset(Enum):
    """Sentinel type of ``UNSET``: "leave this field as it is" in a ``BudgetUpdate``."""

    UNSET = "unset"


UNSET = Unset.UNSET


# -- units ---------------------------------------------------------------------------------


def _units(value: Decimal, scale: Decimal, rounding: str, what: str) -> int:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise BudgetError(f"{what} must be a finite Decimal, got {value!r}")
    if value < 0:
        raise BudgetError(f"{what} must not be negative, got {value}")
    # The 80-digit context is passed to each operation instead of entering a
    # ``localcontext`` copy of it per call (which cost more than the arithmetic); the
    # results are the same. Only its status flags, which nothing reads, now accumulate.
    return int(_CTX.multiply(value, scale).to_integral_value(rounding=rounding, context=_CTX))


def usd_to_nano_ceil(usd: Decimal) -> int:
    """Nano-USD of a cost, rounded up (a counter never undercounts spend)."""
    return _units(usd, NANO_PER_USD, decimal.ROUND_CEILING, "cost_usd")


def usd_to_nano_floor(usd: Decimal) -> int:
    """Nano-USD of a limit, rounded down (a counter's limit never exceeds the real one)."""
    return _units(usd, NANO_PER_USD, decimal.ROUND_FLOOR, "limit_usd")


def gpu_ms_to_us_ceil(gpu_ms: Decimal) -> int:
    """Microseconds of GPU time, rounded up."""
    return _units(gpu_ms, US_PER_MS, decimal.ROUND_CEILING, "gpu_ms")


def gpu_hours_to_us_floor(hours: Decimal) -> int:
    """Microseconds of a GPU-hour limit, rounded down."""
    return _units(hours, US_PER_HOUR, decimal.ROUND_FLOOR, "limit_gpu_hours")


@dataclass(frozen=True, slots=True)
class Amounts:
    """Integer units in the three dimensions: tokens, nano-USD, GPU microseconds."""

    tokens: int = 0
    usd_nano: int = 0
    gpu_us: int = 0

    def __post_init__(self) -> None:
        if type(self.tokens) is int and type(self.usd_nano) is int and type(self.gpu_us) is int:
            return  # the common case, checked without a loop (tens of these per request)
        for name in ("tokens", "usd_nano", "gpu_us"):
            value = getattr(self, name)
            if type(value) is not int:
                raise BudgetError(f"{name} must be an int, got {type(value).__name__}")

    def checked(self) -> Amounts:
        """Self, when every unit is in ``[0, MAX_AMOUNT]``; else ``BudgetError``."""
        for name, value in zip(("tokens", "usd_nano", "gpu_us"), self.as_tuple(), strict=True):
            if not 0 <= value <= MAX_AMOUNT:
                raise BudgetError(f"{name} must be between 0 and {MAX_AMOUNT}, got {value}")
        return self

    def items(self) -> tuple[tuple[Dimension, int], ...]:
        return (("tokens", self.tokens), ("usd", self.usd_nano), ("gpu", self.gpu_us))

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.tokens, self.usd_nano, self.gpu_us)

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.tokens + other.tokens, self.usd_nano + other.usd_nano, self.gpu_us + other.gpu_us
        )

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.tokens - other.tokens, self.usd_nano - other.usd_nano, self.gpu_us - other.gpu_us
        )

    @classmethod
    def of_charge(cls, tokens: int, cost_usd: Decimal, gpu_ms: Decimal) -> Amounts:
        """The units a settled charge adds to a counter (cost and GPU time rounded up)."""
        return cls(tokens, usd_to_nano_ceil(cost_usd), gpu_ms_to_us_ceil(gpu_ms))


@dataclass(frozen=True, slots=True)
class Limits:
    """A budget's limits in units (rounded down); ``None`` = that dimension is unlimited."""

    tokens: int | None
    usd_nano: int | None
    gpu_us: int | None

    def get(self, dimension: Dimension) -> int | None:
        return {"tokens": self.tokens, "usd": self.usd_nano, "gpu": self.gpu_us}[dimension]

    def remaining(self, used: Amounts) -> Limits:
        """What is left after ``used`` (may be negative after an overshooting settle)."""
        return Limits(
            None if self.tokens is None else self.tokens - used.tokens,
            None if self.usd_nano is None else self.usd_nano - used.usd_nano,
            None if self.gpu_us is None else self.gpu_us - used.gpu_us,
        )


# -- budgets -------------------------------------------------------------------------------


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name or name in _HOST_ZONES:
        raise BudgetError(f"unknown time zone {name!r} (use an IANA name like Europe/Paris)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BudgetError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Paris)"
        ) from None


def _decimal_limit(name: str, value: object, maximum: Decimal) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise BudgetError(f"{name} must be a decimal number, got {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite():
        raise BudgetError(f"{name} must be a finite number, got {value}")
    if number < 0:
        raise BudgetError(f"{name} must not be negative, got {value}")
    if number > maximum:
        raise BudgetError(f"{name} must be at most {maximum}, got {value}")
    with decimal.localcontext(_CTX):
        if number.quantize(_QUANTUM) != number:
            raise BudgetError(f"{name} has more than 18 decimal places: {value}")
    return number


def _token_limit(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise BudgetError(f"limit_tokens must be a whole number, got {value!r}")
    if value < 0:
        raise BudgetError(f"limit_tokens must not be negative, got {value}")
    if value > MAX_TOKENS:
        raise BudgetError(f"limit_tokens must be at most {MAX_TOKENS}, got {value}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BudgetError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True, slots=True)
class Budget:
    """A stored budget. ``persona=None`` makes it tenant-wide (it applies to every persona)."""

    budget_id: str
    tenant: str
    persona: str | None
    window: WindowKind
    timezone: str
    limit_tokens: int | None
    limit_usd: Decimal | None
    limit_gpu_hours: Decimal | None
    on_exceed: OnExceed
    approval_above_usd: Decimal | None
    created_at: datetime
    updated_at: datetime

    def limits(self) -> Limits:
        """The limits in counter units, rounded down."""
        return Limits(
            self.limit_tokens,
            None if self.limit_usd is None else usd_to_nano_floor(self.limit_usd),
            None if self.limit_gpu_hours is None else gpu_hours_to_us_floor(self.limit_gpu_hours),
        )

    def applies_to(self, tenant: str, persona: str) -> bool:
        return self.tenant == tenant and self.persona in (None, persona)

    @property
    def scope(self) -> str:
        """``tenant`` or ``tenant/persona``, for messages."""
        return self.tenant if self.persona is None else f"{self.tenant} persona {self.persona}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetCreate:
    """A new budget's fields, validated on construction (``BudgetError`` names the field).

    Rules: tenant and persona are contract ``SafeName``s; the time zone is an IANA name;
    at least one limit; limits are not negative and at most 10**15 tokens, 1,000,000 USD,
    1,000,000 GPU-hours, with at most 18 decimal places.
    """

    tenant: str
    persona: str | None = None
    window: WindowKind
    timezone: str
    limit_tokens: int | None = None
    limit_usd: Decimal | None = None
    limit_gpu_hours: Decimal | None = None
    on_exceed: OnExceed = "downgrade"
    approval_above_usd: Decimal | None = None

    def __post_init__(self) -> None:
        try:
            check_safe_name("tenant", self.tenant)
            if self.persona is not None:
                check_safe_name("persona", self.persona)
        except ValueError as exc:
            raise BudgetError(str(exc)) from None
        _check_choice("window", self.window, get_args(WindowKind))
        _zone(self.timezone)
        _check_limits(self)
        _check_choice("on_exceed", self.on_exceed, get_args(OnExceed))

    def budget(self, budget_id: str, now: datetime) -> Budget:
        """The stored form of this input."""
        return Budget(
            budget_id=budget_id,
            **{f.name: getattr(self, f.name) for f in fields(self)},
            created_at=now,
            updated_at=now,
        )


def _check_limits(data: BudgetCreate | Budget) -> None:
    """Validate the limits and store the decimal ones as ``Decimal`` (ints are accepted)."""
    _token_limit(data.limit_tokens)
    for name, maximum in (
        ("limit_usd", MAX_USD),
        ("limit_gpu_hours", MAX_GPU_HOURS),
        ("approval_above_usd", MAX_USD),
    ):
        object.__setattr__(data, name, _decimal_limit(name, getattr(data, name), maximum))
    if data.limit_tokens is None and data.limit_usd is None and data.limit_gpu_hours is None:
        raise BudgetError("a budget needs at least one limit: tokens, usd or gpu-hours")


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetUpdate:
    """A change to an existing budget's limits or policy; ``UNSET`` fields stay as they are,
    ``None`` clears a limit. Scope, window and time zone are fixed: changing them would move
    the counted spend, so delete the budget and create another instead."""

    limit_tokens: int | None | Unset = UNSET
    limit_usd: Decimal | None | Unset = UNSET
    limit_gpu_hours: Decimal | None | Unset = UNSET
    on_exceed: OnExceed | Unset = UNSET
    approval_above_usd: Decimal | None | Unset = UNSET

    def changes(self) -> dict[str, object]:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not UNSET}

    def apply(self, budget: Budget, now: datetime) -> Budget:
        """The updated budget, validated like a new one (``BudgetError`` when invalid)."""
        changes = self.changes()
        if not changes:
            raise BudgetError("nothing to update: give at least one limit or policy field")
        updated = replace(budget, **changes, updated_at=now)  # type: ignore[arg-type]
        _check_limits(updated)
        _check_choice("on_exceed", updated.on_exceed, get_args(OnExceed))
        return updated


def check_budget_id(budget_id: str) -> str:
    """``budget_id`` when it has the form of one (16 lowercase hex); else ``UnknownBudget``."""
    if not isinstance(budget_id, str) or not _BUDGET_ID_RE.fullmatch(budget_id):
        raise UnknownBudget(f"no budget {budget_id!r} (a budget id is 16 lowercase hex)")
    return budget_id


# -- windows -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """One calendar window of a budget's time zone: ``[start, end)`` as aware UTC datetimes.

    ``key`` names it in counter keys: ``2026-11-22`` (daily) or ``2026-11`` (monthly).
    """

    key: str
    start: datetime
    end: datetime


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``zone``.

    Where midnight falls in a spring-forward gap, ``fold=0`` reads it with the offset in
    force before the gap, which is exactly the instant the clock jumped: the day's start.
    """
    naive = datetime(day.year, day.month, day.day)
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def window_of(budget: Budget | BudgetCreate, at: datetime) -> Window:
    """The window of ``budget`` that contains the aware instant ``at``.

    Calendar days and months of the budget's time zone, so a daily window lasts 23 or 25
    hours on a DST change day.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise BudgetError("window_of needs an aware datetime")
    zone = _zone(budget.timezone)
    local = at.astimezone(zone).date()
    if budget.window == "daily":
        first, after = local, local + timedelta(days=1)
        key = local.isoformat()
    else:
        first = local.replace(day=1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        key = f"{first.year:04d}-{first.month:02d}"
    start, end = _local_midnight(first, zone), _local_midnight(after, zone)
    return Window(key=key, start=start, end=end)


# -- redis keys ----------------------------------------------------------------------------
# Every key of a tenant carries the hash tag ``{tenant}`` so one tenant lives on one Redis
# Cluster slot and one Lua script may touch all of them. SafeName excludes braces, so the
# tag is exactly the tenant.


def _tag(tenant: str) -> str:
    return f"soma:{{{tenant}}}"


def counter_key(tenant: str, budget_id: str, window_key: str) -> str:
    """The hash holding spent and reserved units of one budget in one window."""
    return f"{_tag(tenant)}:bud:{budget_id}:{window_key}"


def reservations_key(tenant: str) -> str:
    """The sorted set of the tenant's open reservations, scored by deadline (Unix ms)."""
    return f"{_tag(tenant)}:resq"


def reservation_key(tenant: str, reservation_id: str) -> str:
    """The hash of one open reservation (its amounts, counters and deadline)."""
    return f"{_tag(tenant)}:res:{reservation_id}"


def done_key(tenant: str, reservation_id: str) -> str:
    """The short-lived marker that a reservation was settled or released."""
    return f"{_tag(tenant)}:done:{reservation_id}"


# -- charges -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """What one settled reservation cost, exactly (one ``budget_charges`` row).

    ``occurred_at`` is the reservation's time: it picks the window, the same window whose
    counters the reservation was held on. ``settled_at`` orders the charge against manual
    resets (a reset clears what was settled before it).
    """

    reservation_id: str
    tenant: str
    persona: str
    model_id: str
    occurred_at: datetime
    settled_at: datetime
    tokens: int
    cost_usd: Decimal
    gpu_ms: Decimal
    counters: tuple[str, ...] = field(default=(), compare=False)

    def units(self) -> Amounts:
        return Amounts.of_charge(self.tokens, self.cost_usd, self.gpu_ms)

    def counts_for(self, budget: Budget, window: Window, since: datetime | None) -> bool:
        """Whether the rebuild of ``budget``'s counter for ``window`` includes this charge."""
        return (
            budget.applies_to(self.tenant, self.persona)
            and window.start <= self.occurred_at < window.end
            and (since is None or self.settled_at > since)
        )


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Charges of one budget window, exact and in counter units (the sum of each charge's
    rounded-up units, which is what the counter accumulated charge by charge)."""

    charges: int
    tokens: int
    cost_usd: Decimal
    gpu_ms: Decimal
    units: Amounts

    @classmethod
    def of(cls, charges: list[Charge]) -> WindowTotals:
        units = Amounts()
        for c in charges:
            units = units + c.units()
        return cls(
            charges=len(charges),
            tokens=sum(c.tokens for c in charges),
            cost_usd=exact_sum(c.cost_usd for c in charges),
            gpu_ms=exact_sum(c.gpu_ms for c in charges),
            units=units,
        )

    def __add__(self, other: WindowTotals) -> WindowTotals:
        return WindowTotals(
            charges=self.charges + other.charges,
            tokens=self.tokens + other.tokens,
            cost_usd=SUM_CONTEXT.add(self.cost_usd, other.cost_usd),
            gpu_ms=SUM_CONTEXT.add(self.gpu_ms, other.gpu_ms),
            units=self.units + other.units,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ResetRecord:
    """The audit row of one manual reset; ``spent_before_*`` are exact (from the ledger)."""

    reset_id: int | None = None
    budget_id: str
    tenant: str
    window_key: str
    reset_at: datetime
    actor: str
    reason: str
    spent_before_tokens: int
    spent_before_usd: Decimal
    spent_before_gpu_ms: Decimal

    def __post_init__(self) -> None:
        for name, value, longest in (("actor", self.actor, 200), ("reason", self.reason, 2000)):
            if not isinstance(value, str) or not 1 <= len(value.strip()) <= longest:
                raise BudgetError(f"{name} must be 1-{longest} characters")
            if _CONTROL_RE.search(value):
                raise BudgetError(f"{name} must not contain control characters")


# -- state and summary ---------------------------------------------------------------------


def nano_to_usd(nano: int) -> Decimal:
    """Nano-USD as USD (exact)."""
    return Decimal(nano).scaleb(-9)


def us_to_gpu_hours(us: int) -> Decimal:
    """GPU microseconds as GPU-hours, rounded half-even to 18 places."""
    with decimal.localcontext(_CTX):
        return (Decimal(us) / US_PER_HOUR).quantize(_QUANTUM)


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's current window as its counter holds it, in units."""

    budget: Budget
    window: Window
    limits: Limits
    spent: Amounts
    reserved: Amounts

    @property
    def remaining(self) -> Limits:
        """``limit - spent - reserved`` per limited dimension, floored at 0."""
        left = self.limits.remaining(self.spent + self.reserved)
        return Limits(
            *(None if v is None else max(0, v) for v in (left.tokens, left.usd_nano, left.gpu_us))
        )

    def remaining_ratio(self) -> float:
        """The smallest fraction left over the limited dimensions (1 = untouched, <= 0 =
        exhausted; a zero limit counts as exhausted). For gauges and ordering only."""
        limits, spent, held = self.limits, self.spent, self.reserved
        tightest: float | None = None
        for limit, used in (
            (limits.tokens, spent.tokens + held.tokens),
            (limits.usd_nano, spent.usd_nano + held.usd_nano),
            (limits.gpu_us, spent.gpu_us + held.gpu_us),
        ):
            if limit is not None:
                ratio = (limit - used) / limit if limit > 0 else 0.0
                if tightest is None or ratio < tightest:
                    tightest = ratio
        return 1.0 if tightest is None else tightest

    def policy_doc(self) -> dict[str, object]:
        """This budget as an entry of the policy input's ``budgets`` (integer units)."""
        b = self.budget

        def units(a: Amounts | Limits) -> dict[str, int | None]:
            return {"tokens": a.tokens, "usd_nano": a.usd_nano, "gpu_us": a.gpu_us}

        approval = b.approval_above_usd
        return {
            "budget_id": b.budget_id,
            "scope": "tenant" if b.persona is None else "persona",
            "persona": b.persona,
            "window": b.window,
            "window_key": self.window.key,
            "resets_at": self.window.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "on_exceed": b.on_exceed,
            "approval_above_usd_nano": None if approval is None else usd_to_nano_floor(approval),
            "limit": units(self.limits),
            "spent": units(self.spent),
            "reserved": units(self.reserved),
            "remaining": units(self.remaining),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSummary:
    """A budget's current window for people: natural units (tokens, USD, GPU-hours).

    ``spent_*`` are exact from the ledger when ``exact`` (else the counter's rounded-up
    units); ``reserved`` is held by calls in flight; ``remaining_*`` = limit - spent -
    reserved (``None`` when unlimited; negative after an overshoot). Burn rates are per hour
    over the window so far (since ``counted_since``, the window start or the last reset);
    ``projected_exhaustion`` is when the first limited dimension runs out at that rate
    (``None`` when nothing burns).
    """

    state: BudgetState
    exact: bool
    counted_since: datetime
    spent_tokens: int
    spent_usd: Decimal
    spent_gpu_hours: Decimal
    remaining_tokens: int | None
    remaining_usd: Decimal | None
    remaining_gpu_hours: Decimal | None
    burn_tokens_per_hour: Decimal
    burn_usd_per_hour: Decimal
    burn_gpu_hours_per_hour: Decimal
    projected_exhaustion: datetime | None


def _per_hour(amount: Decimal, hours: Decimal) -> Decimal:
    with decimal.localcontext(_CTX):
        return (amount / hours).quantize(_QUANTUM) if hours > 0 else Decimal(0)


def summarize(
    state: BudgetState, exact: WindowTotals | None, since: datetime | None, at: datetime
) -> BudgetSummary:
    """The summary of ``state`` at ``at``; ``exact`` = the ledger's totals of the window
    (``None`` when PostgreSQL could not be read), ``since`` = the window's last reset."""
    b, window = state.budget, state.window
    start = max(window.start, since) if since is not None else window.start
    if exact is not None:
        tokens, usd = exact.tokens, exact.cost_usd
        with decimal.localcontext(_CTX):
            gpu = (exact.gpu_ms / Decimal(3_600_000)).quantize(_QUANTUM)
    else:
        tokens, usd = state.spent.tokens, nano_to_usd(state.spent.usd_nano)
        gpu = us_to_gpu_hours(state.spent.gpu_us)
    held = state.reserved
    elapsed = max(at - start, timedelta(0))
    hours = (
        Decimal(elapsed.days * 86_400 + elapsed.seconds) + Decimal(elapsed.microseconds).scaleb(-6)
    ) / 3600
    rows = (
        (b.limit_tokens, Decimal(tokens), Decimal(held.tokens)),
        (b.limit_usd, usd, nano_to_usd(held.usd_nano)),
        (b.limit_gpu_hours, gpu, us_to_gpu_hours(held.gpu_us)),
    )
    remaining: list[Decimal | None] = []
    burns: list[Decimal] = []
    exhaustion: datetime | None = None
    for limit, spent, reserved in rows:
        burn = _per_hour(spent, hours)
        burns.append(burn)
        left = None if limit is None else Decimal(limit) - spent - reserved
        remaining.append(left)
        if left is None:
            continue
        if left <= 0:
            when: datetime | None = at
        elif burn > 0 and left / burn < 10**6:  # beyond ~114 years: never, for our purposes
            when = at + timedelta(hours=float(left / burn))
        else:
            when = None
        if when is not None and (exhaustion is None or when < exhaustion):
            exhaustion = when
    return BudgetSummary(
        state=state,
        exact=exact is not None,
        counted_since=start,
        spent_tokens=tokens,
        spent_usd=usd,
        spent_gpu_hours=gpu,
        remaining_tokens=None if remaining[0] is None else int(remaining[0]),
        remaining_usd=remaining[1],
        remaining_gpu_hours=remaining[2],
        burn_tokens_per_hour=burns[0],
        burn_usd_per_hour=burns[1],
        burn_gpu_hours_per_hour=burns[2],
        projected_exhaustion=exhaustion,
    )
