"""Per-session summaries in the stack's real PostgreSQL: exact figures, once per batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import psycopg
import pytest

from somaagent.adapters.postgres_summaries import SessionSummaryStore
from somaagent.domain.events import ConversationMetrics, Money, SlmMetrics
from somaagent.settings import Settings
from tests.integration.telemetry_support import fresh
from tests.unit.domain._event_examples import examples


def _read(dsn: str, session: str) -> tuple[object, ...] | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT calls, errors, input_tokens, output_tokens, cost_usd, gpu_ms,"
            " latency_ms_sum, latency_ms_max, turns, interrupts, requeues, first_seen,"
            " last_seen FROM session_summaries WHERE session_id = %s",
            (session,),
        ).fetchone()


@pytest.mark.parametrize("sessions", [1, 300])
def test_summaries_keep_every_digit_and_apply_once_per_batch(
    stack: Settings, sessions: int
) -> None:
    dsn = stack.secret("postgres_dsn")
    slm = next(e for e in examples() if isinstance(e, SlmMetrics))
    turn = next(e for e in examples() if isinstance(e, ConversationMetrics))
    prefix = f"sess-{uuid.uuid4().hex[:10]}"
    # Digits a float or a 28-digit context would lose (35 significant, 18 of them fraction
    # digits), floats whose sum is not a short decimal, microsecond timestamps.
    costs = [Money("12345678901234567.123456789012345678"), Money("0.000000000000000001")]
    events = []
    for i in range(sessions):
        sid = f"{prefix}-{i:04d}"
        for n, cost in enumerate(costs):
            call = fresh(
                slm,
                sid,
                cost_usd=cost,
                gpu_ms=0.1 * (n + 1),
                latency_ms=1e-3 + n,
                status="ok" if n == 0 else "error",
            )
            at = f"2026-12-02T06:0{n}:00.00000{n + 1}Z"
            events.append(msgspec.structs.replace(call, occurred_at=at))
        events.append(fresh(turn, sid, turn_count=3, interrupt_count=1, requeue_count=2))
    store = SessionSummaryStore(dsn)
    try:
        batch = f"test:{uuid.uuid4().hex}:0:0-{len(events) - 1}"
        assert store.apply(events, batch_key=batch) == len(events)
        assert store.apply(events, batch_key=batch) == 0  # the same batch again: no change
        for i in (0, sessions - 1):
            row = _read(dsn, f"{prefix}-{i:04d}")
            assert row is not None
            calls, errors, tin, tout, cost, gpu, lat_sum, lat_max, turns, intr, req, first, last = (
                row
            )
            assert (calls, errors, turns, intr, req) == (2, 1, 3, 1, 2)
            assert (tin, tout) == (2 * slm.input_tokens, 2 * slm.output_tokens)
            assert cost == Decimal("12345678901234567.123456789012345679")
            assert gpu == 0.1 + 0.2  # the float sum, bit for bit
            assert lat_sum == 1e-3 + (1e-3 + 1)
            assert lat_max == 1e-3 + 1
            assert first == datetime(2026, 12, 2, 6, 0, 0, 1, tzinfo=UTC)
            assert isinstance(last, datetime) and last >= datetime(2026, 12, 2, 6, 1, tzinfo=UTC)
    finally:
        store.close()
