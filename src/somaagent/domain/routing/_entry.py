"""A catalog entry: one model, its tier, endpoint, price and who may use it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Literal

from somaagent.domain.rate_limits import RateLimits

__all__ = [
    "DEFAULT_DEVELOPER_PERSONAS",
    "DEFAULT_DEVELOPER_ROLES",
    "MS_PER_HOUR",
    "Concurrency",
    "TIERS",
    "GpuPricing",
    "ModelEntry",
    "Pricing",
    "Tier",
    "TokenPricing",
    "is_developer",
]

Tier = Literal["primary", "slm", "escalation"]
TIERS: tuple[Tier, ...] = ("primary", "slm", "escalation")
DEFAULT_DEVELOPER_PERSONAS: frozenset[str] = frozenset({"developer", "coder", "engineer"})
DEFAULT_DEVELOPER_ROLES: frozenset[str] = frozenset({"developer"})
MS_PER_HOUR = Decimal(3_600_000)
DEFAULT_SLA_MS = 2000.0


def _default_sla() -> Mapping[str, float]:
    return MappingProxyType({"default": DEFAULT_SLA_MS})


@dataclass(frozen=True, slots=True)
class TokenPricing:
    """A provider rate card: USD per 1,000 input, output and cached-input tokens."""

    input_per_1k: Decimal
    output_per_1k: Decimal
    cached_input_per_1k: Decimal

    def list_price_per_1k(self) -> Decimal:
        """Blended list price per 1K tokens for ranking: the mean of input and output."""
        return (self.input_per_1k + self.output_per_1k) / 2


@dataclass(frozen=True, slots=True)
class GpuPricing:
    """A self-hosted cost model: one serving instance occupies ``gpus`` accelerators.

    Cost of a call = ``gpu_hour_usd`` x ``gpus`` x GPU ms / 3,600,000, where GPU ms is the
    device time the call kept the instance busy (a CPU-served model counts host time).
    """

    gpu_hour_usd: Decimal
    gpus: int

    def cost_of_ms(self, gpu_ms: Decimal) -> Decimal:
        """USD for ``gpu_ms`` milliseconds of one instance."""
        return self.gpu_hour_usd * self.gpus * gpu_ms / MS_PER_HOUR

    def per_1k_tokens(self, gpu_ms_per_token: Decimal) -> Decimal:
        """USD per 1K tokens when each token costs ``gpu_ms_per_token`` ms of the instance."""
        return self.cost_of_ms(gpu_ms_per_token * 1000)


Pricing = TokenPricing | GpuPricing


@dataclass(frozen=True, slots=True)
class Concurrency:
    """How many calls one gateway process sends a model at once, and how it waits for room.

    ``max_in_flight`` calls run at a time (a llama.cpp server's ``--parallel`` slots); up to
    ``max_queued`` more wait, in arrival order, at most ``max_wait_ms`` each. A call that
    finds the queue full (``max_queued: 0``: at once) or waits its longest goes to the next
    candidate model; when none is left the client gets 503 ``upstream_overloaded``.
    """

    max_in_flight: int
    max_queued: int
    max_wait_ms: float


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model the router may send requests to.

    ``allowed_personas`` holds persona names or ``fnmatch`` patterns (empty = everyone);
    ``developer_only`` further restricts the model to developer personas (see
    ``is_developer``). ``latency_sla_ms`` maps persona -> p95 target in ms and always has a
    ``default`` key.
    """

    model_id: str
    display_name: str
    tier: Tier
    enabled: bool
    base_url: str | None
    revision: str
    context_window: int
    pricing: Pricing
    allowed_personas: tuple[str, ...] = ()
    developer_only: bool = False
    latency_sla_ms: Mapping[str, float] = field(default_factory=_default_sla, hash=False)
    license: str | None = None
    tags: tuple[str, ...] = ()
    concurrency: Concurrency | None = None  # None: no cap in the gateway
    rate_limits: RateLimits | None = None  # the provider's quota, over every replica

    @property
    def live(self) -> bool:
        """Enabled and reachable: the only entries that can receive traffic."""
        return self.enabled and self.base_url is not None

    def sla_ms(self, persona: str) -> float:
        """The p95 latency target for ``persona`` (its own entry, else ``default``)."""
        return self.latency_sla_ms.get(persona, self.latency_sla_ms["default"])

    def persona_listed(self, persona: str) -> bool:
        """Whether ``allowed_personas`` admits ``persona`` (ignores ``developer_only``)."""
        if not self.allowed_personas:
            return True
        return any(fnmatchcase(persona, pattern) for pattern in self.allowed_personas)

    def admits(
        self,
        persona: str,
        role: str,
        *,
        developer_personas: frozenset[str] = DEFAULT_DEVELOPER_PERSONAS,
        developer_roles: frozenset[str] = DEFAULT_DEVELOPER_ROLES,
    ) -> bool:
        """Whether a caller with this persona and role may use the model at all."""
        if self.developer_only and not is_developer(
            persona, role, developer_personas=developer_personas, developer_roles=developer_roles
        ):
            return False
        return self.persona_listed(persona)


def is_developer(
    persona: str,
    role: str,
    *,
    developer_personas: frozenset[str] = DEFAULT_DEVELOPER_PERSONAS,
    developer_roles: frozenset[str] = DEFAULT_DEVELOPER_ROLES,
) -> bool:
    """A developer persona: its name is in ``developer_personas`` or its role is a developer's.

    Names compare case-insensitively; the sets are expected in lower case.
    """
    return persona.lower() in developer_personas or role.lower() in developer_roles
