"""Per-session summaries in PostgreSQL, updated idempotently from telemetry events.

A Kafka batch changes the summaries at most once: its key goes into
``summary_batch_ledger`` in the same transaction that adds its figures. Batches are
reproducible after a crash (same boundaries, same surviving events; see the ingest service),
so a retried batch is recognised by its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import msgspec
import psycopg

from somaagent.domain.events import ConversationMetrics, EscalationInvocation, Event, SlmMetrics
from somaagent.domain.money import SUM_CONTEXT

__all__ = ["SessionDelta", "SessionSummaryStore", "summarise"]


@dataclass
class SessionDelta:
    """What a set of events adds to one session's summary."""

    tenant: str
    persona: str
    first_seen: datetime
    last_seen: datetime
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    gpu_ms: float = 0.0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    turns: int = 0
    interrupts: int = 0
    requeues: int = 0


def _when(event: Event) -> datetime:
    return datetime.fromisoformat(event.occurred_at.replace("Z", "+00:00"))


def summarise(events: Sequence[Event]) -> dict[str, SessionDelta]:
    """Fold events into per-session deltas (pure).

    Model calls add calls, errors, tokens, cost, GPU ms and latency; ``conversation.metrics``
    carries the session's turn number so far (the summary keeps the highest) and this
    turn's interrupts and requeues (summed).
    """
    out: dict[str, SessionDelta] = {}
    for e in events:
        if not isinstance(e, SlmMetrics | EscalationInvocation | ConversationMetrics):
            continue
        when = _when(e)
        d = out.get(e.session_id)
        if d is None:
            d = out[e.session_id] = SessionDelta(e.tenant, e.persona, when, when)
        d.first_seen = min(d.first_seen, when)
        d.last_seen = max(d.last_seen, when)
        if isinstance(e, ConversationMetrics):
            d.turns = max(d.turns, e.turn_count)
            d.interrupts += e.interrupt_count
            d.requeues += e.requeue_count
            continue
        failed = e.status != "ok" if isinstance(e, SlmMetrics) else e.outcome != "success"
        d.calls += 1
        d.errors += int(failed)
        d.input_tokens += e.input_tokens
        d.output_tokens += e.output_tokens
        d.cost_usd = SUM_CONTEXT.add(d.cost_usd, e.cost_usd)  # every digit (Decimal(38, 18))
        d.gpu_ms += e.gpu_ms
        d.latency_ms_sum += e.latency_ms
        d.latency_ms_max = max(d.latency_ms_max, e.latency_ms)
    return out


# The deltas travel as one JSON document, a row per session: its id and its SessionDelta's
# fields (msgspec: Decimal as a string, so numeric gets the exact digits; floats in shortest
# round-trip form; timestamps in RFC 3339). One parameter instead of 16 arrays, which
# psycopg dumps element by element in Python.
_UPSERT = """
INSERT INTO session_summaries AS s (session_id, tenant, persona, calls, errors, input_tokens,
    output_tokens, cost_usd, gpu_ms, latency_ms_sum, latency_ms_max, turns, interrupts,
    requeues, first_seen, last_seen)
SELECT * FROM json_to_recordset(%s::json) AS r(session_id text, tenant text, persona text,
    calls bigint, errors bigint, input_tokens bigint, output_tokens bigint, cost_usd numeric,
    gpu_ms float8, latency_ms_sum float8, latency_ms_max float8, turns bigint,
    interrupts bigint, requeues bigint, first_seen timestamptz, last_seen timestamptz)
ORDER BY r.session_id COLLATE "C"
ON CONFLICT (session_id) DO UPDATE SET
    calls = s.calls + EXCLUDED.calls,
    errors = s.errors + EXCLUDED.errors,
    input_tokens = s.input_tokens + EXCLUDED.input_tokens,
    output_tokens = s.output_tokens + EXCLUDED.output_tokens,
    cost_usd = s.cost_usd + EXCLUDED.cost_usd,
    gpu_ms = s.gpu_ms + EXCLUDED.gpu_ms,
    latency_ms_sum = s.latency_ms_sum + EXCLUDED.latency_ms_sum,
    latency_ms_max = GREATEST(s.latency_ms_max, EXCLUDED.latency_ms_max),
    turns = GREATEST(s.turns, EXCLUDED.turns),
    interrupts = s.interrupts + EXCLUDED.interrupts,
    requeues = s.requeues + EXCLUDED.requeues,
    first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen),
    updated_at = now()
"""


class SessionSummaryStore:
    """Implements the worker's ``SummaryStore`` port."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        return self._conn

    def apply(self, events: Sequence[Event], *, batch_key: str) -> int:
        """Fold ``events`` into their summaries once per ``batch_key``; return events applied.

        ``batch_key`` names the Kafka batch (``topic_id:partition:first-last``). A retried
        batch carries the same key and the same events, so applying it again changes nothing.
        """
        deltas = summarise(events)
        if not deltas:
            return 0
        conn = self._connection()
        try:
            with conn.transaction():
                fresh = conn.execute(
                    "INSERT INTO summary_batch_ledger (batch_key, events) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING batch_key",
                    (batch_key, len(events)),
                ).fetchone()
                if fresh is None:
                    return 0
                # ORDER BY in the statement: one lock order for every worker (no deadlocks)
                rows = [{"session_id": sid, **vars(d)} for sid, d in deltas.items()]
                conn.execute(_UPSERT, (msgspec.json.encode(rows).decode(),))
        except psycopg.OperationalError:
            conn.close()
            raise
        return len(events)

    def get(self, session_id: str) -> dict[str, object] | None:
        conn = self._connection()
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute("SELECT * FROM session_summaries WHERE session_id = %s", (session_id,))
            row = cur.fetchone()
        return dict(row) if row else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
