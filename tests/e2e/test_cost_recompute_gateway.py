"""Costs the running gateway charged recompute exactly from ClickHouse and the rate cards.

Real calls to both llama.cpp models (primary and escalation, streamed and not) go through
the gateway, the pipeline stores their events, and ``recompute`` prices each stored row
again under the rate-card version it names, with the packaged cards loaded in PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from openai import OpenAI

from somaagent.adapters import postgres
from somaagent.adapters.api_keys import ApiKeyStore
from somaagent.adapters.ratecards_store import RateCardStore
from somaagent.bootstrap import Container
from somaagent.domain.ratecards import default_ratecards_text, parse_ratecards
from somaagent.service.cost_recompute import recompute
from somaagent.settings import Settings
from tests.e2e.gateway_support import running_gateway
from tests.integration.telemetry_support import wait_until


def test_gateway_costs_recompute_exactly(
    stack: Settings, pipeline: tuple[Container, dict[str, str]]
) -> None:
    worker, env = pipeline
    assert worker.worker is not None
    ch = worker.worker.store
    dsn = stack.secret("postgres_dsn")
    postgres.migrate(dsn)
    cards = RateCardStore(dsn)
    cards.load(parse_ratecards(default_ratecards_text(), source="packaged"))
    keys = ApiKeyStore(dsn)
    _id, dev_key = keys.create("acme", "developer", "developer")
    keys.close()
    session = f"cost-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(seconds=5)
    ask = dict(
        messages=[{"role": "user", "content": "Name two colours."}],
        max_tokens=8,
        temperature=0,
        extra_headers={"X-Soma-Session-Id": session},
    )
    with running_gateway({**env, "ESCALATION_ENABLED": "true"}) as gw:
        sdk = OpenAI(
            base_url=f"http://127.0.0.1:{gw.gateway_port}/v1",
            api_key=dev_key,
            timeout=120,
            max_retries=0,
        )
        for model in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
            sdk.chat.completions.create(model=model, **ask)  # type: ignore[call-overload]
            list(sdk.chat.completions.create(model=model, stream=True, **ask))  # type: ignore[call-overload]
        sdk.close()
    end = datetime.now(UTC) + timedelta(seconds=5)

    def stored() -> int:
        where = f"session_id = '{session}'"
        return ch.count(f"{ch.database}.slm_metrics", where) + ch.count(
            f"{ch.database}.escalation_metrics", where
        )

    assert wait_until(lambda: stored() == 4)
    report = recompute(ch.query, cards.book(), start=start, end=end, database=ch.database)
    assert report.ok, report.to_dict()
    assert report.rows_checked == 4
    assert report.stored_total == report.recomputed_total > 0
    packaged = {e.version for e in parse_ratecards(default_ratecards_text(), source="p")}
    assert set(report.rows_by_version) <= packaged
