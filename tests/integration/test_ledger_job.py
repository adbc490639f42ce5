"""The hourly ledger job over events stored by the real pipeline (spool -> Kafka -> worker ->
chDB), written to the stack's PostgreSQL ``budget_ledger``.

Events of one tenant, two personas and two models (an ``slm.metrics`` and an
``llm.escalation.invocation`` table) are placed in the previous hour, so a two-hour job
covers them however close to an hour boundary the test runs; one more event, three hours
back, lies outside the window. Costs are exact decimals; GPU ms are the values a gateway
writes (whole microseconds), summed here in ``Decimal``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from somaagent.adapters import postgres
from somaagent.adapters.ledger import LedgerStore
from somaagent.domain.events import EscalationInvocation, Event, Money, SlmMetrics, new_event_id
from somaagent.service.periodic import ledger_job
from somaagent.service.usage_report import hour_floor
from somaagent.settings import Settings
from tests.conftest import ROOT
from tests.integration.telemetry_support import running_worker, wait_until
from tests.integration.test_telemetry_pipeline import publish
from tests.unit.domain._event_examples import examples

PRIMARY = "smollm2-135m-instruct"
ESCALATION = "qwen2.5-coder-0.5b-instruct"
# (persona, model, minutes into the hour, input, output, cached, cost, gpu_ms)
Call = tuple[str, str, int, int, int, int, str, float]
FIRST: list[Call] = [
    ("support", PRIMARY, 5, 412, 96, 64, "0.000051447861111111", 1852.123),
    ("support", PRIMARY, 17, 37, 24, 36, "0.000040200000000000", 0.001),
    ("support", ESCALATION, 21, 1830, 512, 0, "0.000022293111111111", 802.552),
    ("developer", PRIMARY, 44, 9, 1, 0, "0.000000000000000001", 0.1),
    ("developer", PRIMARY, 45, 9, 2, 0, "0.000000000000000002", 0.2),  # 0.1 + 0.2 in floats
    ("developer", ESCALATION, 58, 5000, 700, 4096, "0.123456789012345678", 98765.432),
]
LATE: list[Call] = [  # arrive after the first runs, in the same hour
    ("support", PRIMARY, 30, 100, 50, 0, "0.000000277777777778", 10.0),
    ("developer", ESCALATION, 59, 1, 1, 0, "0.000000000000000009", 0.1),
]
OUTSIDE: list[Call] = [("support", PRIMARY, 10, 7, 7, 0, "0.5", 1.0)]
Key = tuple[str, str, str, datetime]


def build(tenant: str, session: str, hour: datetime, calls: Iterable[Call]) -> list[Event]:
    """Model-call events of ``tenant`` as a gateway writes them, at the given minutes."""
    templates: dict[str, SlmMetrics | EscalationInvocation] = {
        PRIMARY: next(e for e in examples() if isinstance(e, SlmMetrics)),
        ESCALATION: next(e for e in examples() if isinstance(e, EscalationInvocation)),
    }
    events: list[Event] = []
    for persona, model, minute, inp, out, cached, cost, gpu_ms in calls:
        at = hour + timedelta(minutes=minute, seconds=30, microseconds=250_000)
        events.append(
            msgspec.structs.replace(
                templates[model],
                event_id=new_event_id(),
                session_id=session,
                occurred_at=at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                tenant=tenant,
                persona=persona,
                model_id=model,
                input_tokens=inp,
                output_tokens=out,
                total_tokens=inp + out,
                cached_tokens=cached,
                cost_usd=Money(cost),
                gpu_ms=gpu_ms,
            )
        )
    return events


def sums(tenant: str, hour: datetime, calls: Iterable[Call]) -> dict[Key, dict[str, Any]]:
    """The ledger rows ``calls`` must produce: per (tenant, persona, model, hour), exact."""
    out: dict[Key, dict[str, Any]] = {}
    for persona, model, _minute, inp, outp, _cached, cost, gpu_ms in calls:
        row = out.setdefault(
            (tenant, persona, model, hour),
            {
                "calls": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": Decimal(0),
                "gpu_ms": Decimal(0),
            },
        )
        row["calls"] += 1
        row["input_tokens"] += inp
        row["output_tokens"] += outp
        row["cost_usd"] += Decimal(cost)
        row["gpu_ms"] += Decimal(repr(gpu_ms))
    return out


def ledger(dsn: str, tenant: str, start: datetime, end: datetime) -> dict[Key, dict[str, Any]]:
    rows = LedgerStore(dsn).rows(tenant=tenant, start=start, end=end)
    return {
        (r["tenant"], r["persona"], r["model_id"], r["hour"]): {
            k: r[k] for k in ("calls", "input_tokens", "output_tokens", "cost_usd", "gpu_ms")
        }
        for r in rows
    }


def stored_calls(store: Any, tenant: str) -> int:
    where = f"tenant = '{tenant}'"
    db = store.database
    return int(
        store.count(f"{db}.slm_metrics", where) + store.count(f"{db}.escalation_metrics", where)
    )


def test_ledger_job_writes_exact_idempotent_hours_and_corrects_late_events(
    stack: Settings,
) -> None:
    dsn = stack.secret("postgres_dsn")
    postgres.migrate(dsn)
    tenant = f"ledger-{uuid.uuid4().hex[:8]}"
    session = f"ledger-{uuid.uuid4().hex[:8]}"
    hour = hour_floor(datetime.now(UTC)) - timedelta(hours=1)
    far = hour - timedelta(hours=2)
    span = (far - timedelta(hours=1), hour + timedelta(hours=3))
    with running_worker(stack) as container:
        assert container.worker is not None
        store = container.worker.store
        events = build(tenant, session, hour, FIRST) + build(tenant, session, far, OUTSIDE)
        publish(container, events)
        assert wait_until(lambda: stored_calls(store, tenant) == len(events))

        job = ledger_job(store.query, LedgerStore(dsn).upsert, database=store.database)
        expected = sums(tenant, hour, FIRST)
        assert job() == {"ledger_rows": len(expected)}  # this chDB holds only this test
        first = ledger(dsn, tenant, *span)
        assert first == expected, "one row per tenant/persona/model/hour, exact sums"
        assert all(k[3] == hour for k in first), "the event three hours back is not covered"

        assert job() == {"ledger_rows": len(expected)}
        assert ledger(dsn, tenant, *span) == first, "a second run changes nothing"

        late = build(tenant, session, hour, LATE)
        publish(container, late)
        assert wait_until(lambda: stored_calls(store, tenant) == len(events) + len(late))
        job()
        corrected = ledger(dsn, tenant, *span)
        assert corrected == sums(tenant, hour, FIRST + LATE), "the hour is rewritten whole"
        assert corrected != first

    # The worker has let go of its chDB path: the CLI, another process, can open it.
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM budget_ledger WHERE tenant = %s", (tenant,))
    assert ledger(dsn, tenant, *span) == {}
    done = subprocess.run(
        [sys.executable, "-m", "somaagent.entrypoints.cli", "job", "aggregate", "--hours", "2"],
        env={**os.environ, **container.settings.to_env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"hours": 2, "ledger_rows": 4}
    assert ledger(dsn, tenant, *span) == corrected
