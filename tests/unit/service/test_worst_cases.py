"""The admission's remembered worst cases: equal to computing them, and never stale."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from somaagent.domain.chat_request import ChatRequest, parse_chat_request
from somaagent.domain.ratecards import RateBook, RateCardEntry
from somaagent.domain.routing import ModelEntry, TokenPricing
from somaagent.service.admission import Gatekeeper
from tests.unit.domain.routing._catalogs import local_catalog

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def card(model: str, version: str, since: datetime, price: str) -> RateCardEntry:
    amount = Decimal(price)
    return RateCardEntry(
        model_id=model,
        version=version,
        effective_from=since,
        pricing=TokenPricing(amount, amount * 2, amount / 2),
        max_ms_per_token=None,
        source=None,
    )


def gatekeeper(rates: RateBook, now: list[datetime]) -> Gatekeeper:
    return Gatekeeper(
        budgets=None,
        policy=None,
        approvals=None,
        rates=rates,
        live=lambda caller: [],
        emit=lambda events: None,
        enforce=True,
        fail_closed=True,
        policy_version="test",
        constitution_hash="0" * 64,
        upstream_timeout_s=120.0,
        approval_ttl_s=60.0,
        producer="test",
        clock=lambda: now[0],
    )


def request(max_tokens: int, text: str = "hello") -> ChatRequest:
    raw = b'{"messages": [{"role": "user", "content": "%s"}], "max_tokens": %d}' % (
        text.encode(),
        max_tokens,
    )
    return parse_chat_request(raw, default_max_tokens=64, max_tokens_cap=4096)


def models() -> list[ModelEntry]:
    return list(local_catalog().live())


def test_remembered_worst_cases_equal_computed_ones() -> None:
    entries = models()
    m = entries[0].model_id
    rates = RateBook([card(m, "v1", T0, "0.001")])
    gate = gatekeeper(rates, [T0 + timedelta(days=1)])
    for max_tokens in (1, 16, 512, 4096):
        for e in entries:
            req = request(max_tokens)
            first = gate.bounds(e, req, 100)
            again = gate.bounds(e, req, 100)
            assert again[0] is first[0] and again[1] is first[1]  # remembered
            computed = gate.bound(e, req, 100)
            assert first == (computed, gate.amounts(computed))
        assert gate.bounds(e, req, 101)[0].prompt_tokens == 101


def test_a_new_card_version_a_new_pricing_or_timeout_computes_again() -> None:
    entry = models()[0]
    m = entry.model_id
    now = [T0 + timedelta(hours=1)]
    rates = RateBook([card(m, "v1", T0, "0.001"), card(m, "v2", T0 + timedelta(days=1), "0.5")])
    gate = gatekeeper(rates, now)
    req = request(64)
    before, _ = gate.bounds(entry, req, 100)
    now[0] = T0 + timedelta(days=2)  # v2 in effect: 500x the price
    after, units = gate.bounds(entry, req, 100)
    assert after.usd == before.usd * 500
    assert units == gate.amounts(gate.bound(entry, req, 100))

    # No card for the model: the catalog entry's own pricing, by identity.
    other = dataclasses.replace(entry, model_id="no-card-model")
    plain, _ = gate.bounds(other, req, 100)
    repriced = dataclasses.replace(other, pricing=TokenPricing(Decimal(1), Decimal(1), Decimal(1)))
    changed, _ = gate.bounds(repriced, req, 100)
    assert changed.usd != plain.usd
    assert changed == gate.bound(repriced, req, 100)

    gate.upstream_timeout_s = 5.0
    assert gate.bounds(entry, req, 100)[0] == gate.bound(entry, req, 100)


def test_the_memory_is_bounded() -> None:
    entry = models()[0]
    gate = gatekeeper(RateBook([]), [T0])
    for prompt_tokens in range(5_000):
        gate.bounds(entry, request(16), prompt_tokens)
    assert 0 < len(gate.worst_cases) <= 4096
