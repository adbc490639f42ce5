"""Producer → Tansu → worker → chDB + PostgreSQL, with the real servers."""

from __future__ import annotations

import os
import threading
import uuid

import msgspec
import psycopg

from somaagent.adapters.clickhouse_schema import TABLE_FOR_EVENT_TYPE
from somaagent.bootstrap import Container
from somaagent.domain.events import Codec, Event
from somaagent.settings import Settings
from tests.integration.telemetry_support import (
    JSON_OUT,
    fresh_examples,
    normalise_stored,
    running_worker,
    wait_until,
)


def publish(container: Container, events: list[Event]) -> None:
    assert container.publisher is not None
    topics = container.settings.topics.topic_for_event_type()
    container.publisher.publish_many(
        [(topics[e.event_type], e.tenant.encode(), container.codec.encode(e)) for e in events]
    )


def stored_row(container: Container, event: Event) -> dict[str, object] | None:
    assert container.worker is not None
    store = container.worker.store
    table = f"{store.database}.{TABLE_FOR_EVENT_TYPE[event.event_type]}"
    rows = store.query(
        f"SELECT * EXCEPT (event_id), toString(event_id) AS event_id FROM {table}"
        f" WHERE event_id = '{event.event_id}'{JSON_OUT}"
    )
    return rows[0] if rows else None


def test_every_event_type_round_trips_field_by_field(stack: Settings) -> None:
    session = f"sess-{uuid.uuid4().hex[:12]}"
    events = fresh_examples(session)
    with running_worker(stack) as container:
        publish(container, events)
        assert wait_until(lambda: all(stored_row(container, e) for e in events))
        for event in events:
            row = stored_row(container, event)
            assert row is not None
            produced = msgspec.json.decode(container.codec.encode(event))
            assert row["event_type"] == event.event_type
            for field, value in produced.items():
                expected, got = normalise_stored(field, value, row[field])
                assert got == expected, (event.event_type, field, expected, got)
            assert (
                row["_topic"] == container.settings.topics.topic_for_event_type()[event.event_type]
            )

        # The per-session summary in PostgreSQL adds up the two model calls.
        calls = [e for e in events if e.event_type in ("slm.metrics", "llm.escalation.invocation")]
        with psycopg.connect(stack.secret("postgres_dsn")) as conn:
            row = conn.execute(
                "SELECT calls, input_tokens, output_tokens, cost_usd, turns"
                " FROM session_summaries WHERE session_id = %s",
                (session,),
            ).fetchone()
        assert row is not None
        assert row[0] == 2
        assert row[1] == sum(e.input_tokens for e in calls)  # type: ignore[attr-defined]
        assert row[2] == sum(e.output_tokens for e in calls)  # type: ignore[attr-defined]
        assert row[3] == sum(e.cost_usd for e in calls)  # type: ignore[attr-defined]
        assert row[4] == 7

        # The worker thread runs at its own, lower priority (the process's is unchanged).
        assert container.worker is not None and container.worker.thread is not None
        tid = container.worker.thread.native_id
        assert tid is not None
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, os.nice(0) + 10)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == os.nice(0)


def test_malformed_messages_are_dead_lettered_and_valid_neighbours_stored(
    stack: Settings,
) -> None:
    session = f"sess-{uuid.uuid4().hex[:12]}"
    good = [e for e in fresh_examples(session) if e.event_type == "slm.metrics"]
    second = [e for e in fresh_examples(session) if e.event_type == "slm.metrics"]
    valid = msgspec.json.decode(Codec().encode(good[0]))
    bad: dict[str, bytes] = {
        "not JSON": b"{not json",
        "array": b"[1, 2, 3]",
        "unknown event type": msgspec.json.encode({**valid, "event_type": "slm.unknown"}),
        "unknown schema version": msgspec.json.encode({**valid, "schema_version": 9}),
        "missing field": msgspec.json.encode({k: v for k, v in valid.items() if k != "tenant"}),
        "wrong type": msgspec.json.encode({**valid, "input_tokens": "many"}),
        "oversize": msgspec.json.encode({**valid, "producer": "x" * 70_000}),
        "wrong topic": Codec().encode(
            [e for e in fresh_examples(session) if e.event_type == "tool.metrics"][0]
        ),
    }
    with running_worker(stack) as container:
        topic = container.settings.topics.slm_metrics
        assert container.publisher is not None
        records = [(topic, b"acme", container.codec.encode(good[0]))]
        records += [(topic, b"acme", raw) for raw in bad.values()]
        records += [(topic, b"acme", container.codec.encode(second[0]))]
        container.publisher.publish_many(records)
        worker = container.worker
        assert worker is not None
        store = worker.store
        dead_table = f"{store.database}.dead_letters"
        assert wait_until(lambda: store.count(dead_table) == len(bad))
        assert wait_until(lambda: all(stored_row(container, e) for e in good + second))
        rows = store.query(
            f"SELECT reason, original_b64, original_bytes FROM {dead_table} ORDER BY _offset"
        )
        reasons = [r["reason"] for r in rows]
        assert reasons[0].startswith("not JSON")
        assert "Expected `object`" in reasons[1]
        assert "event_type" in reasons[2]
        assert "schema_version" in reasons[3]
        assert reasons[4] == "tenant: missing required field"
        assert reasons[5].startswith("input_tokens")
        assert reasons[6].startswith("oversize")
        assert reasons[7] == f"event_type tool.metrics does not belong on topic {topic}"
        import base64

        assert [base64.b64decode(r["original_b64"]) for r in rows] == list(bad.values())
        assert worker.thread is not None and worker.thread.is_alive()
