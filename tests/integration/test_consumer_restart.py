"""The telemetry consumer outlives an assignment whose look-ups fail: against the session
stack's broker, the committed offsets really time out, the consumer restarts, and once the
look-ups answer again it consumes every message (nothing buffered from the failed member)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from somaagent.adapters.kafka_consumer import TelemetryConsumer
from somaagent.settings import Settings


def test_a_failed_assignment_restarts_the_consumer_and_loses_nothing(stack: Settings) -> None:
    bootstrap = stack.url("kafka_bootstrap")
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # referenced until the topic exists
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=10)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(50):
        producer.produce(topic, value=f"m{i}".encode(), key=str(i % 2).encode())
    assert producer.flush(10) == 0

    consumer = TelemetryConsumer(
        bootstrap=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        batch_ends=lambda _topic, _topic_id: {},  # nothing stored yet: no batch to cut
        assign_timeout_s=1e-6,  # the coordinator cannot answer that fast: a real time-out
        restart_backoff_s=0.1,
    )
    consumer.start()
    try:
        deadline = time.monotonic() + 60
        while consumer.stats.restarts == 0 and time.monotonic() < deadline:
            consumer.poll(100, 0.2)
        assert consumer.stats.restarts >= 1
        assert consumer.buffered == 0  # the failed member's messages were not kept

        consumer.assign_timeout_s = 10.0  # the look-ups answer again
        while consumer.buffered < 50 and time.monotonic() < deadline:
            consumer.poll(100, 0.2)
        values = sorted(m.value for batch in consumer.ready_batches() for m in batch)
        assert values == sorted(f"m{i}".encode() for i in range(50))
    finally:
        consumer.close()
