"""Each service of the LOCAL stack answers a real round trip."""

from __future__ import annotations

import time
import uuid

import httpx
import hvac
import psycopg
import pytest
import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from openai import OpenAI

from somaagent.settings import Settings


def test_kafka_produce_and_consume_through_a_consumer_group(stack: Settings) -> None:
    bootstrap = stack.url("kafka_bootstrap")
    topic = f"it-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=2)]).values():
        future.result(timeout=15)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    sent = {f"m{i}".encode() for i in range(20)}
    for i, value in enumerate(sorted(sent)):
        producer.produce(topic, key=f"tenant-{i % 3}".encode(), value=value)
    assert producer.flush(15) == 0
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    received: set[bytes] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while received != sent and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            received.add(msg.value())
            consumer.commit(message=msg, asynchronous=False)
        committed = consumer.committed(
            [TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10
        )
    finally:
        consumer.close()
    assert received == sent
    # Every partition's committed offset is the count of its messages (-1001 = none committed).
    assert sum(max(tp.offset, 0) for tp in committed) == len(sent)


def test_redis_set_get(stack: Settings) -> None:
    client = redis.Redis.from_url(stack.url("redis_url"))
    key = f"it:{uuid.uuid4().hex}"
    assert client.set(key, "42", ex=60)
    assert client.get(key) == b"42"
    assert client.incrby(key, 8) == 50
    client.close()


def test_postgres_query(stack: Settings) -> None:
    with psycopg.connect(stack.secret("postgres_dsn")) as conn:
        conn.execute("CREATE TEMP TABLE t (id int primary key, v numeric(20,10))")
        conn.execute("INSERT INTO t VALUES (1, 0.1), (2, 0.2)")
        row = conn.execute("SELECT sum(v), current_database() FROM t").fetchone()
    assert row is not None
    assert str(row[0]) == "0.3000000000"
    assert row[1] == stack.postgres_database


def test_openbao_kv_put_get(stack: Settings) -> None:
    client = hvac.Client(url=stack.url("vault_addr"), token=stack.secret("vault_token"))
    path = f"it/{uuid.uuid4().hex[:8]}"
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"api_key": "s3cr3t"})
    read = client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    assert read["data"]["data"] == {"api_key": "s3cr3t"}


def test_prometheus_reports_its_targets_up(stack: Settings) -> None:
    url = stack.url("prometheus_url") + "/api/v1/targets"
    deadline = time.monotonic() + 60
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        targets = httpx.get(url, timeout=5).json()["data"]["activeTargets"]
        health = {f"{t['labels']['job']}@{t['labels']['instance']}": t["health"] for t in targets}
        if health and all(h == "up" for h in health.values()):
            break
        time.sleep(1)
    jobs = {key.split("@")[0] for key in health}
    assert {"prometheus", "alertmanager", "soma-gateway", "model-servers"} <= jobs
    assert all(h == "up" for h in health.values()), health


@pytest.mark.parametrize("tier", ["primary", "escalation"])
def test_model_answers_a_chat_completion(stack: Settings, tier: str) -> None:
    with OpenAI(base_url=stack.url(f"{tier}_model_url"), api_key="local", timeout=120) as client:
        reply = client.chat.completions.create(
            model=getattr(stack, f"{tier}_model_name"),
            messages=[{"role": "user", "content": "Name one colour of the rainbow."}],
            max_tokens=16,
            temperature=0.7,
        )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
