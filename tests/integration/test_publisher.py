"""The publisher: write-ahead spool, delivery to the real broker, outage and replay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException

from somaagent.adapters.kafka_publisher import KafkaPublisher
from somaagent.adapters.spool import Spool, SpoolLockedError
from somaagent.settings import Settings
from somaagent.stack import Supervisor
from tests.conftest import TEST_STATE_ROOT, private_stack


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    out: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    raise KafkaException(msg.error())
                out.append(msg.value())
    finally:
        consumer.close()
    return out


@pytest.fixture()
def spool_dir() -> Path:
    path = TEST_STATE_ROOT / "spools" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    return path


def test_spool_survives_restart_and_drops_a_torn_tail(spool_dir: Path) -> None:
    spool = Spool(spool_dir)
    with pytest.raises(SpoolLockedError):
        Spool(spool_dir)
    seqs = spool.append_many([("t", b"k", f"v{i}".encode()) for i in range(10)])
    spool.ack_many(seqs[:4])
    spool.checkpoint()
    spool.close()
    segment = sorted(spool_dir.glob("*.seg"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\x10\x00\x00\x00garbage")  # a record torn by a crash mid-write
    again = Spool(spool_dir)
    assert [r.value for r in again.pending()] == [f"v{i}".encode() for i in range(4, 10)]
    assert again.depth == 6
    again.close()


def test_checkpoint_drops_delivered_segments_and_keeps_the_rest(spool_dir: Path) -> None:
    spool = Spool(spool_dir, segment_bytes=256)  # a few records per segment
    seqs = spool.append_many([("t", b"k", b"x" * 40) for _ in range(30)])
    seqs += [spool.append("t", b"k", b"y" * 40) for _ in range(30)]  # rolls segments over
    segments = len(list(spool_dir.glob("*.seg")))
    assert segments > 4
    spool.ack_many(seqs[:45])
    spool.ack_many([seqs[50]])  # out of order: the watermark stays at the first undelivered
    spool.checkpoint()
    assert int((spool_dir / "watermark").read_text()) == seqs[45]
    assert 1 <= len(list(spool_dir.glob("*.seg"))) < segments
    spool.append("t", b"k", b"after the checkpoint")
    spool.checkpoint()  # nothing newly delivered: the watermark does not move back
    assert int((spool_dir / "watermark").read_text()) == seqs[45]
    spool.close()
    again = Spool(spool_dir)
    # Only the watermark is persisted: the one delivered above it is replayed (consumers
    # drop the duplicate by event id), nothing below it is.
    assert [r.seq for r in again.pending()] == [*seqs[45:], seqs[-1] + 1]
    again.close()


def test_publish_delivers_and_acknowledges(stack: Settings, spool_dir: Path) -> None:
    topic = f"pub-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(bootstrap=stack.url("kafka_bootstrap"), spool=Spool(spool_dir))
    values = [f"e{i}".encode() for i in range(2000)]
    try:
        publisher.publish_many([(topic, b"tenant-a", v) for v in values])
        assert publisher.flush(30)
        assert publisher.stats.delivered == 2000
        assert publisher.spool.depth == 0
    finally:
        publisher.close()
    assert consume_all(stack.url("kafka_bootstrap"), topic, 2000) == values


def test_the_caller_serves_delivery_reports(stack: Settings, spool_dir: Path) -> None:
    topic = f"pub-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(  # once the caller serves, the background thread waits 60 s
        bootstrap=stack.url("kafka_bootstrap"), spool=Spool(spool_dir), serve_interval_s=60
    )
    try:
        publisher.serve_deliveries()
        time.sleep(0.2)  # the background thread is in its wait now
        publisher.publish_many([(topic, b"tenant-a", f"e{i}".encode()) for i in range(300)])
        time.sleep(0.5)  # reports in, not served
        assert publisher.spool.depth == 300
        deadline = time.monotonic() + 30
        while publisher.spool.depth and time.monotonic() < deadline:
            publisher.serve_deliveries()
            time.sleep(0.01)
        assert publisher.spool.depth == 0
        assert publisher.stats.delivered == 300
    finally:
        publisher.close()


@pytest.fixture()
def private_broker() -> Iterator[Supervisor]:
    with private_stack("outage", 27000, ["kafka"]) as supervisor:
        yield supervisor


def test_broker_outage_spools_then_replays_in_order(
    private_broker: Supervisor, spool_dir: Path
) -> None:
    bootstrap = private_broker.settings.url("kafka_bootstrap")
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(
        bootstrap=bootstrap, spool=Spool(spool_dir), message_timeout_ms=2000, probe_interval_s=0.2
    )
    try:
        _outage_and_replay(private_broker, publisher, bootstrap, topic)
    finally:
        publisher.close(timeout_s=1)


def _outage_and_replay(
    broker: Supervisor, publisher: KafkaPublisher, bootstrap: str, topic: str
) -> None:
    before = [f"before-{i}".encode() for i in range(300)]
    publisher.publish_many([(topic, b"t1", v) for v in before])
    assert publisher.flush(30)
    assert consume_all(bootstrap, topic, 300) == before  # consumed before the broker dies

    broker.down(only=["kafka"])
    during = [f"during-{i}".encode() for i in range(500)]
    slowest = 0.0
    for value in during:
        start = time.perf_counter()
        publisher.publish(topic, b"t1", value)
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.05  # the caller is never blocked by the missing broker
    deadline = time.monotonic() + 20
    while not publisher.degraded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert publisher.degraded
    assert publisher.spool.depth == 500

    broker.up(only=["kafka"])
    assert publisher.flush(60), publisher.stats
    deadline = time.monotonic() + 10
    while publisher.degraded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not publisher.degraded
    assert publisher.stats.replayed >= 500
    got = consume_all(bootstrap, topic, 500)
    # Memory-only Tansu restarted empty: exactly the spooled events, once each, in order.
    assert got == during
