"""Policy verdicts and the policy input document (pure).

The gateway asks the policy (``policy/soma/gateway.rego``, evaluated by OPA) for a verdict on
every model call. This module holds both sides of that contract:

* the input document, as ``TypedDict`` s, with the helpers that keep it exact: money in
  integer nano-USD rounded up (:func:`usd_to_nano`), ``remaining`` derived from limit, spent
  and reserved (:func:`remaining_amounts`, :func:`budget_input`), reset times as RFC 3339
  UTC to the second (:func:`format_reset`, the form whose string order is time order);
* the result, :class:`Verdict`, and :func:`parse_verdict`, which accepts exactly the shape
  the policy promises and raises :class:`PolicyError` on anything else.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, TypedDict, get_args

__all__ = [
    "ACTIONS",
    "ON_EXCEED",
    "Action",
    "Amounts",
    "ApprovalInput",
    "BudgetInput",
    "Candidate",
    "OnExceed",
    "PolicyError",
    "PolicyInput",
    "PolicyMeta",
    "RequestInput",
    "RouteInput",
    "Verdict",
    "WorstCase",
    "budget_input",
    "example_input",
    "format_reset",
    "nano_to_usd",
    "parse_verdict",
    "remaining_amounts",
    "usd_to_nano",
]

Action = Literal["allow", "downgrade", "pause", "require_approval", "deny"]
ACTIONS: tuple[Action, ...] = get_args(Action)
OnExceed = Literal["downgrade", "pause", "deny", "require_approval"]
ON_EXCEED: tuple[OnExceed, ...] = get_args(OnExceed)

NANO_PER_USD = 1_000_000_000
# Wide enough that scaling any Decimal(38, 18) amount by 1e9 is exact; rounding is explicit.
_CTX = decimal.Context(prec=80, rounding=decimal.ROUND_CEILING)
_VERDICT_KEYS = frozenset({"action", "reasons", "model_id", "retry_after"})


class PolicyError(ValueError):
    """A policy that does not compile, or a result that is not a verdict."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's decision on one call.

    ``model_id`` is the model to call (the routed one unless ``action`` is ``downgrade``;
    empty only on a ``deny`` of an input that named no model). ``retry_after`` is set only
    on ``pause``: the earliest reset of the exceeded budgets, RFC 3339.
    """

    action: Action
    reasons: tuple[str, ...]
    model_id: str
    retry_after: str | None

    def to_dict(self) -> dict[str, Any]:
        """The verdict as the policy returns it (JSON-ready)."""
        return {
            "action": self.action,
            "reasons": list(self.reasons),
            "model_id": self.model_id,
            "retry_after": self.retry_after,
        }


def _fail(problem: str, result: object) -> PolicyError:
    shown = repr(result)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return PolicyError(f"policy result is not a verdict: {problem}; got {shown}")


def _parse_reasons(raw: object, result: object) -> tuple[str, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise _fail("'reasons' is not a list", result)
    if not raw:
        raise _fail("'reasons' is empty (every verdict says why)", result)
    for reason in raw:
        if not isinstance(reason, str) or not reason:
            raise _fail("'reasons' holds something other than a non-empty string", result)
    return tuple(raw)


def _parse_retry_after(raw: object, action: str, result: object) -> str | None:
    if raw is None:
        return None
    if action != "pause":
        raise _fail(f"'retry_after' is set on a {action} (only a pause has one)", result)
    if not isinstance(raw, str):
        raise _fail("'retry_after' is neither null nor a string", result)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _fail("'retry_after' is not an RFC 3339 timestamp", result) from None
    if moment.tzinfo is None:
        raise _fail("'retry_after' has no UTC offset", result)
    return raw


def parse_verdict(result: object) -> Verdict:
    """The :class:`Verdict` in ``result`` (the value of ``data.soma.gateway.verdict``).

    Raises :class:`PolicyError`, naming the problem, unless ``result`` is an object with
    exactly ``action`` (one of :data:`ACTIONS`), ``reasons`` (a non-empty list of non-empty
    strings), ``model_id`` (a string, non-empty unless the action is ``deny``) and
    ``retry_after`` (null, or an RFC 3339 timestamp with an offset on a ``pause``).
    """
    if not isinstance(result, Mapping):
        raise _fail("not an object", result)
    keys = set(result)
    if missing := _VERDICT_KEYS - keys:
        raise _fail(f"missing {', '.join(sorted(missing))}", result)
    if extra := keys - _VERDICT_KEYS:
        raise _fail(f"unexpected {', '.join(sorted(map(str, extra)))}", result)
    action = result["action"]
    if action not in ACTIONS:
        raise _fail(f"'action' is not one of {', '.join(ACTIONS)}", result)
    reasons = _parse_reasons(result["reasons"], result)
    model_id = result["model_id"]
    if not isinstance(model_id, str):
        raise _fail("'model_id' is not a string", result)
    if not model_id and action != "deny":
        raise _fail(f"'model_id' is empty on a {action}", result)
    retry_after = _parse_retry_after(result["retry_after"], action, result)
    return Verdict(action=action, reasons=reasons, model_id=model_id, retry_after=retry_after)


# --- The input document -----------------------------------------------------------------


class Amounts(TypedDict):
    """Tokens, integer nano-USD and integer GPU microseconds; ``None`` = no limit."""

    tokens: int | None
    usd_nano: int | None
    gpu_us: int | None


class WorstCase(TypedDict):
    """The most one call to a candidate can consume (rounded up)."""

    tokens: int
    usd_nano: int
    gpu_us: int


class Candidate(TypedDict):
    model_id: str
    tier: str
    worst_case: WorstCase


class RequestInput(TypedDict):
    tenant: str
    persona: str
    role: str
    mode: str
    session_id: str
    budget_trace_id: str
    prompt_hash: str
    max_tokens: int
    stream: bool


class RouteInput(TypedDict):
    """The routed model and every candidate the caller may use, the routed one included."""

    model_id: str
    tier: str
    escalated: bool
    reason: str
    candidates: list[Candidate]


class BudgetInput(TypedDict):
    budget_id: str
    scope: Literal["tenant", "persona"]
    persona: str | None
    window: str
    window_key: str
    resets_at: str | None
    on_exceed: OnExceed
    approval_above_usd_nano: int | None
    limit: Amounts
    spent: Amounts
    reserved: Amounts
    remaining: Amounts


class ApprovalInput(TypedDict):
    id: str
    status: str
    prompt_hash: str
    model_id: str


class PolicyMeta(TypedDict):
    version: str
    constitution_hash: str


class PolicyInput(TypedDict):
    """The whole input document of ``data.soma.gateway.verdict``."""

    request: RequestInput
    route: RouteInput
    budgets: list[BudgetInput]
    approval: ApprovalInput | None
    policy: PolicyMeta


def usd_to_nano(usd: Decimal) -> int:
    """``usd`` in whole nano-USD, rounded up (a worst case or a spend is never understated).

    Raises ``ValueError`` for a negative or non-finite amount and ``TypeError`` for
    anything but a ``Decimal`` (a float would already have lost the exact value).
    """
    if not isinstance(usd, Decimal):
        raise TypeError(f"money must be a Decimal, not {type(usd).__name__}")
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"money must be a finite amount >= 0, not {usd}")
    return int(usd.scaleb(9, context=_CTX).to_integral_value(rounding=decimal.ROUND_CEILING))


def nano_to_usd(nano: int) -> Decimal:
    """Exact USD of ``nano`` nano-USD."""
    return Decimal(nano).scaleb(-9, context=_CTX)


def remaining_amounts(limit: Amounts, spent: Amounts, reserved: Amounts) -> Amounts:
    """``max(0, limit - spent - reserved)`` per dimension; ``None`` where there is no limit.

    A missing spent or reserved amount on a limited dimension counts as 0.
    """

    def left(key: Literal["tokens", "usd_nano", "gpu_us"]) -> int | None:
        cap = limit[key]
        if cap is None:
            return None
        return max(0, cap - (spent[key] or 0) - (reserved[key] or 0))

    return {"tokens": left("tokens"), "usd_nano": left("usd_nano"), "gpu_us": left("gpu_us")}


def format_reset(moment: datetime) -> str:
    """``moment`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC, rounded up to the whole second.

    Rounding up means a client told to retry then never arrives before the reset. Raises
    ``ValueError`` for a naive datetime.
    """
    if moment.tzinfo is None:
        raise ValueError("reset time must carry a UTC offset")
    return _format_instant(moment)


@lru_cache(maxsize=256)
def _format_instant(moment: datetime) -> str:
    # Keyed by the instant (aware datetimes hash and compare as UTC instants), which is all
    # the text depends on; a call formats the same few window ends again and again.
    utc = moment.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    # isoformat is the same text as strftime("%Y-%m-%dT%H:%M:%SZ"), several times faster.
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _copy(amounts: Amounts) -> Amounts:
    return {
        "tokens": amounts["tokens"],
        "usd_nano": amounts["usd_nano"],
        "gpu_us": amounts["gpu_us"],
    }


def budget_input(
    *,
    budget_id: str,
    scope: Literal["tenant", "persona"],
    persona: str | None,
    window: str,
    window_key: str,
    resets_at: datetime | None,
    on_exceed: OnExceed,
    limit: Amounts,
    spent: Amounts,
    reserved: Amounts,
    approval_above_usd_nano: int | None = None,
) -> BudgetInput:
    """One budget of the input document, with ``remaining`` derived as the policy checks it."""
    if on_exceed not in ON_EXCEED:
        raise ValueError(f"on_exceed must be one of {', '.join(ON_EXCEED)}, not {on_exceed!r}")
    for amounts in (limit, spent, reserved):
        for value in amounts.values():
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"budget amounts must be integers >= 0 or None, not {value!r}")
    return {
        "budget_id": budget_id,
        "scope": scope,
        "persona": persona,
        "window": window,
        "window_key": window_key,
        "resets_at": None if resets_at is None else format_reset(resets_at),
        "on_exceed": on_exceed,
        "approval_above_usd_nano": approval_above_usd_nano,
        "limit": _copy(limit),
        "spent": _copy(spent),
        "reserved": _copy(reserved),
        "remaining": remaining_amounts(limit, spent, reserved),
    }


def example_input() -> PolicyInput:
    """A complete, valid input document (a fresh copy each call): for docs, checks, tests.

    The routed escalation model fits its one tenant budget, so the verdict is ``allow``.
    """
    return {
        "request": {
            "tenant": "acme",
            "persona": "support",
            "role": "user",
            "mode": "LOCAL",
            "session_id": "s1",
            "budget_trace_id": "b1",
            "prompt_hash": "0" * 64,
            "max_tokens": 64,
            "stream": False,
        },
        "route": {
            "model_id": "qwen2.5-coder-0.5b-instruct",
            "tier": "escalation",
            "escalated": True,
            "reason": "high_complexity",
            "candidates": [
                {
                    "model_id": "smollm2-135m-instruct",
                    "tier": "primary",
                    "worst_case": {"tokens": 300, "usd_nano": 8334, "gpu_us": 300000},
                },
                {
                    "model_id": "qwen2.5-coder-0.5b-instruct",
                    "tier": "escalation",
                    "worst_case": {"tokens": 300, "usd_nano": 20000, "gpu_us": 720000},
                },
            ],
        },
        "budgets": [
            budget_input(
                budget_id="bud_1",
                scope="tenant",
                persona=None,
                window="daily",
                window_key="2026-11-22",
                resets_at=datetime(2026, 11, 23, 5, tzinfo=UTC),
                on_exceed="downgrade",
                limit={"tokens": 1000, "usd_nano": None, "gpu_us": None},
                spent={"tokens": 400, "usd_nano": 0, "gpu_us": 0},
                reserved={"tokens": 100, "usd_nano": 0, "gpu_us": 0},
            )
        ],
        "approval": None,
        "policy": {"version": "0" * 64, "constitution_hash": "0" * 64},
    }
