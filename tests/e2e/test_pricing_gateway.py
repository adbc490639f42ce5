"""Pricing through the gateway: the cost a caller is told is the cost stored, to the last digit.

Real calls to the session stack's llama.cpp servers go through a gateway and the real
pipeline into ClickHouse. Every expected cost is recomputed here by hand, in ``Decimal``,
from the rate card and the usage or GPU time the stored event records.

The gateways run without an in-process worker, so the router has no last-24h model
statistics: an escalation notice estimates the primaries with the escalated call's own
GPU ms (documented in ``service/escalation_notice.py``).
"""

from __future__ import annotations

import decimal
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.bootstrap import Container
from somaagent.domain.ratecards import default_ratecards_text, parse_ratecards
from somaagent.settings import Settings
from tests.conftest import TEST_STATE_ROOT
from tests.e2e.budget_support import gateway_url, make_keys, new_tenant
from tests.e2e.gateway_support import packaged_catalog, running_gateway
from tests.e2e.test_chat_gateway import COMPLEX, events_for
from tests.integration.telemetry_support import wait_until

PRIMARY = "smollm2-135m-instruct"
ESCALATION = "qwen2.5-coder-0.5b-instruct"
SHIPPED = "2026-11-01"  # the shipped card in effect (effective 2026-11-01T00:00:00Z)
GPU_HOUR = Decimal("0.10")  # both local models, 1 instance each, in the shipped card
TOKENS = "smollm2-tokens"  # the primary's llama-server, priced per 1K tokens
CHEAP = "smollm2-cheap"  # the same server at a price far below its GPU time (see notice test)
TOKEN_VERSION = "e2e-pricing-tokens-1"
PRICES: dict[str, tuple[Decimal, Decimal, Decimal]] = {  # input, output, cached per 1K
    TOKENS: (Decimal("0.0006"), Decimal("0.0012"), Decimal("0.0003")),
    CHEAP: (Decimal("0.000000001"), Decimal("0.000000002"), Decimal("0.0000000005")),
}
NOTICE = re.compile(r"^escalated to qwen2\.5-coder-0\.5b-instruct: ([+-][0-9.]+) USD est\.$")
EXACT = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)
Q18 = Decimal("1e-18")


def token_cost(model: str, input_tokens: int, output_tokens: int, cached: int) -> Decimal:
    """(input - cached) x in + cached x cached_in + output x out, per 1K, 18 dp half-even."""
    inp, out, cin = PRICES[model]
    with decimal.localcontext(EXACT):
        total = (Decimal(input_tokens - cached) * inp + Decimal(cached) * cin) / 1000
        total += Decimal(output_tokens) * out / 1000
        return total.quantize(Q18)


def gpu_cost(gpu_ms: object) -> Decimal:
    """0.10 USD x 1 GPU x gpu_ms / 3,600,000 with gpu_ms as the float's shortest repr."""
    assert isinstance(gpu_ms, int | float)  # JSON may print a whole float as an integer
    with decimal.localcontext(EXACT):
        return (GPU_HOUR * 1 * Decimal(repr(float(gpu_ms))) / 3_600_000).quantize(Q18)


@pytest.fixture(scope="module")
def priced_catalog(stack: Settings) -> Iterator[Path]:
    """A catalog with two token-priced aliases of the stack's primary llama-server, and
    their rate card (the packaged cards too: the gateway refuses an unpriced live model)."""
    catalog = packaged_catalog()
    primary = next(m for m in catalog["models"] if m["model_id"] == PRIMARY)
    for alias, (inp, out, cin) in PRICES.items():
        catalog["models"].append(
            {
                **primary,
                "model_id": alias,
                "base_url": stack.url("primary_model_url"),
                "pricing": {
                    "input_per_1k": f"{inp:f}",
                    "output_per_1k": f"{out:f}",
                    "cached_input_per_1k": f"{cin:f}",
                },
            }
        )
    card = {
        "version": 1,
        "cards": [
            {
                "version": TOKEN_VERSION,
                "effective_from": "2026-01-01T00:00:00Z",
                "source": "e2e pricing test: per-1K token prices",
                "models": {
                    alias: {
                        "input_per_1k": f"{inp:f}",
                        "output_per_1k": f"{out:f}",
                        "cached_input_per_1k": f"{cin:f}",
                    }
                    for alias, (inp, out, cin) in PRICES.items()
                },
            }
        ],
    }
    store = RateCardStore(stack.secret("postgres_dsn"))
    store.load(parse_ratecards(default_ratecards_text(), source="packaged"))
    store.load(parse_ratecards(yaml.safe_dump(card), source="pricing test"))
    path = TEST_STATE_ROOT / f"catalog-pricing-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    try:
        yield path
    finally:
        path.unlink()


@dataclass
class Streamed:
    """A streamed call read as raw SSE: its data chunks and the ``: soma`` trailer."""

    chunks: list[dict[str, Any]]
    trailer: dict[str, Any]
    headers: httpx.Headers

    @property
    def text(self) -> str:
        deltas = [c["choices"][0]["delta"] for c in self.chunks if c["choices"]]
        return "".join(d.get("content") or "" for d in deltas)


def stream(gw: Settings, body: dict[str, Any], headers: dict[str, str]) -> Streamed:
    chunks: list[dict[str, Any]] = []
    trailers: list[dict[str, Any]] = []
    done = False
    with httpx.stream(
        "POST",
        gateway_url(gw) + "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=headers,
        timeout=300,
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line.removeprefix("data: ")))
            elif line.startswith(": soma "):
                trailers.append(json.loads(line.removeprefix(": soma ")))
        out = Streamed(chunks, trailers[-1] if trailers else {}, r.headers)
    assert done and len(trailers) == 1, "one ': soma' trailer, then [DONE]"
    return out


def post(gw: Settings, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    r = httpx.post(
        gateway_url(gw) + "/v1/chat/completions", json=body, headers=headers, timeout=300
    )
    assert r.status_code == 200, r.text
    return r


def stored(worker: Container, table: str, session: str, n: int) -> list[dict[str, Any]]:
    assert wait_until(lambda: len(events_for(worker, table, session)) == n)
    return events_for(worker, table, session)


def test_streamed_and_non_streamed_calls_are_priced_identically(
    pipeline: tuple[Container, dict[str, str]], priced_catalog: Path
) -> None:
    worker, env = pipeline
    session = f"price-tok-{uuid.uuid4().hex[:8]}"
    body = {
        "model": TOKENS,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Name three colours. ({session})"},
        ],
        "max_tokens": 24,
        "temperature": 0,
        "seed": 7,
    }
    with running_gateway({**env, "SOMA_CATALOG_FILE": str(priced_catalog)}) as gw:
        # Warm the server's prompt cache so both measured calls reuse the same prefix.
        post(gw, body, {})
        plain = post(gw, body, {"X-Soma-Session-Id": session})
        streamed = stream(gw, body, {"X-Soma-Session-Id": session})

    answer = plain.json()
    assert plain.headers["x-soma-model"] == TOKENS
    assert streamed.text == answer["choices"][0]["message"]["content"]
    usage_chunk = streamed.chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] is not None
    usage = answer["usage"]
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage_chunk["usage"][name] == usage[name], name

    rows = stored(worker, "slm_metrics", session, 2)
    assert [r["streamed"] for r in rows] == [False, True]
    for r in rows:
        assert (r["input_tokens"], r["output_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert r["model_id"] == TOKENS and r["status"] == "ok"
        assert r["rate_card_version"] == TOKEN_VERSION
    cached = {int(r["cached_tokens"]) for r in rows}
    assert cached == {usage["prompt_tokens_details"]["cached_tokens"]}, "same usage, same cache"
    expected = token_cost(TOKENS, usage["prompt_tokens"], usage["completion_tokens"], cached.pop())
    assert expected > 0
    header = Decimal(plain.headers["x-soma-cost"])
    trailer = Decimal(streamed.trailer["cost_usd"])
    events = [Decimal(str(r["cost_usd"])) for r in rows]
    assert header == trailer == events[0] == events[1] == expected
    # and to the digit as text: 18 places, never an exponent
    assert streamed.trailer["cost_usd"] == plain.headers["x-soma-cost"] == f"{expected:f}"


def test_self_hosted_model_is_priced_by_gpu_time(
    pipeline: tuple[Container, dict[str, str]],
) -> None:
    worker, env = pipeline
    session = f"price-gpu-{uuid.uuid4().hex[:8]}"
    body = {
        "model": PRIMARY,
        "messages": [{"role": "user", "content": "Name two colours."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    with running_gateway(env) as gw:
        plain = post(gw, body, {"X-Soma-Session-Id": session})
        streamed = stream(gw, body, {"X-Soma-Session-Id": session})

    rows = stored(worker, "slm_metrics", session, 2)
    told = [Decimal(plain.headers["x-soma-cost"]), Decimal(streamed.trailer["cost_usd"])]
    for r, cost in zip(rows, told, strict=True):
        assert r["model_id"] == PRIMARY and r["status"] == "ok"
        assert r["rate_card_version"] == SHIPPED
        gpu_ms = float(r["gpu_ms"])
        assert gpu_ms > 0
        assert round(gpu_ms, 3) == gpu_ms, "GPU ms are priced at whole microseconds"
        expected = gpu_cost(gpu_ms)
        assert expected > 0
        assert Decimal(str(r["cost_usd"])) == cost == expected


def expected_notice(row: dict[str, Any]) -> Decimal:
    """The escalated call's exact cost minus the cheapest live primary's estimate of its
    tokens (no model statistics in these gateways: GPU models at the call's own GPU ms)."""
    inp, out, cached = (int(row[k]) for k in ("input_tokens", "output_tokens", "cached_tokens"))
    estimates = [gpu_cost(row["gpu_ms"])] + [token_cost(m, inp, out, cached) for m in PRICES]
    return (Decimal(str(row["cost_usd"])) - min(estimates)).quantize(Decimal("1e-9"))


def test_escalated_calls_carry_the_escalation_notice(
    stack: Settings, pipeline: tuple[Container, dict[str, str]], priced_catalog: Path
) -> None:
    worker, env = pipeline
    (dev,) = make_keys(stack, new_tenant("notice"), ("developer", "developer"))
    session = f"price-esc-{uuid.uuid4().hex[:8]}"
    body = {"model": "auto", "messages": [{"role": "user", "content": COMPLEX}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {dev}", "X-Soma-Session-Id": session}
    gw_env = {**env, "ESCALATION_ENABLED": "true", "SOMA_CATALOG_FILE": str(priced_catalog)}
    with running_gateway(gw_env) as gw:
        plain = post(gw, body, headers)
        streamed = stream(gw, body, headers)

    assert plain.headers["x-soma-model"] == ESCALATION
    assert plain.headers["x-soma-escalated"] == "true"
    notice = plain.headers["x-soma-escalation-notice"]
    streamed_notice = streamed.trailer.get("escalation_notice")
    assert streamed.headers["x-soma-model"] == ESCALATION
    assert isinstance(streamed_notice, str)

    rows = stored(worker, "escalation_metrics", session, 2)
    assert [r["streamed"] for r in rows] == [False, True]
    for r, text in zip(rows, (notice, streamed_notice), strict=True):
        match = NOTICE.match(text)
        assert match, text
        assert r["model_id"] == ESCALATION and r["rate_card_version"] == SHIPPED
        tree = json.loads(str(r["decision_tree"]))
        assert tree["escalation_notice"] == text
        # the figure: exact cost minus the cheapest primary's estimate, 9 places at most
        assert Decimal(match.group(1)) == expected_notice(r), (text, r)
        assert Decimal(str(r["cost_usd"])) == gpu_cost(r["gpu_ms"])
    assert Decimal(plain.headers["x-soma-cost"]) == Decimal(str(rows[0]["cost_usd"]))
    assert Decimal(streamed.trailer["cost_usd"]) == Decimal(str(rows[1]["cost_usd"]))
