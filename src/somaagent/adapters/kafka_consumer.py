"""Consume telemetry topics as contiguous per-partition batches, commit only what is stored.

On every partition assignment the consumer learns the topic's id (a recreated topic, or a
restarted memory-only broker, gets a new one) and asks the store for the last batch it
holds from that partition. If that batch ends at or after the committed offset, it was
stored but not committed (a crash in between): the first batch handed out for that
partition is then cut at exactly the same end offset, so it is re-inserted with the same
de-duplication token.

A batch handed out stays the same until it is committed: a batch that failed (a sink down
after ClickHouse took the rows) is handed out again with the same offsets, not grown by the
messages that arrived meanwhile, so its retry carries the same de-duplication token.

An assignment whose look-ups fail (the group coordinator too slow to give the committed
offsets, the store down), or a client error out of ``consume``, restarts the consumer:
what it buffered is dropped, and the new member's assignment cuts its first batches from
the store again, exactly as after a crash. Before this, such an error ended the worker's
thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from somaagent.service.ingest import RawMessage

__all__ = ["ConsumerStats", "TelemetryConsumer"]

log = logging.getLogger(__name__)

BatchEnds = Callable[[str, str], dict[int, int]]  # (topic, topic_id) -> partition -> end


@dataclass
class ConsumerStats:
    consumed: int = 0
    committed_batches: int = 0
    assignments: int = 0
    restarts: int = 0  # after an assignment or the client failed (see the module)
    replayed_batches: int = 0
    lag: dict[str, int] = field(default_factory=dict)


class TelemetryConsumer:
    """A confluent-kafka consumer in a group, buffering messages per partition."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        batch_ends: BatchEnds,
        extra_config: dict[str, object] | None = None,
        assign_timeout_s: float = 10.0,
        restart_backoff_s: float = 1.0,
    ) -> None:
        self._bootstrap = bootstrap
        self.assign_timeout_s = assign_timeout_s
        self._restart_backoff_s = restart_backoff_s
        self._assign_failed: str | None = None
        self._topics = topics
        self._batch_ends = batch_ends
        self._config: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "max.poll.interval.ms": 300000,
            "fetch.max.bytes": 52428800,
            "logger": logging.getLogger("somaagent.kafka"),
            **(extra_config or {}),
        }
        self.stats = ConsumerStats()
        self._consumer: Consumer | None = None
        self._buffers: dict[tuple[str, int], list[RawMessage]] = {}
        self._caps: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], int] = {}  # end of a batch handed out
        self._topic_ids: dict[str, str] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._next_lag_refresh = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ assignment
    def _describe(self, topics: list[str]) -> None:
        admin = AdminClient({"bootstrap.servers": self._bootstrap})
        futures = admin.describe_topics(TopicCollection(topics))
        for name, future in futures.items():
            self._topic_ids[name] = str(future.result(timeout=self.assign_timeout_s).topic_id)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing may leave this callback (it would come out of ``consume``): the poll sees
        # the failure and restarts the consumer before any batch of this member is formed.
        try:
            self._assign(consumer, partitions)
        except Exception as exc:  # noqa: BLE001 - a Kafka time-out, the store, anything
            self._assign_failed = f"{type(exc).__name__}: {exc}"

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.assignments += 1
        topics = sorted({tp.topic for tp in partitions})
        self._describe(topics)
        committed = consumer.committed(partitions, timeout=self.assign_timeout_s)
        for topic in topics:
            ends = self._batch_ends(topic, self._topic_ids[topic])
            for tp in committed:
                if tp.topic != topic:
                    continue
                end = ends.get(tp.partition)
                start = tp.offset if tp.offset != OFFSET_INVALID else 0
                if end is not None and end >= start:
                    self._caps[(topic, tp.partition)] = end
        for tp in partitions:
            self._buffers.setdefault((tp.topic, tp.partition), [])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._buffers.pop((tp.topic, tp.partition), None)
            self._caps.pop((tp.topic, tp.partition), None)
            self._pending.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)

    def start(self) -> None:
        self._consumer = Consumer(self._config)
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    # ------------------------------------------------------------------ batches
    def _restart(self, reason: str) -> None:
        """A new member in place of this one, with nothing buffered (see the module)."""
        self.stats.restarts += 1
        log.warning("telemetry consumer restarted (%s)", reason)
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # leaving the group may fail as well
                self._consumer.close()
            self._consumer = None
        for state in (self._buffers, self._caps, self._pending, self._committed):
            state.clear()
        self._assign_failed = None
        time.sleep(self._restart_backoff_s)
        self.start()

    def poll(self, max_messages: int, timeout_s: float) -> int:
        """Fetch up to ``max_messages`` into the partition buffers; return how many."""
        assert self._consumer is not None, "start() first"
        try:
            messages = self._consumer.consume(max_messages, timeout_s)
        except KafkaException as exc:
            self._restart(f"consume failed: {exc}")
            return 0
        if self._assign_failed is not None:
            self._restart(f"assignment failed: {self._assign_failed}")
            return 0
        n = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    self._restart(f"fatal client error: {err}")
                    return 0
                continue  # transient: the client retries by itself
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            key = (topic, partition)
            if offset < self._committed.get(key, 0):
                # Offsets went backwards without a new assignment: the topic was recreated
                # (e.g. a memory-only broker restarted). Learn its new id before storing.
                self._describe([topic])
                self._committed.pop(key, None)
                self._caps.pop(key, None)
                self._pending.pop(key, None)
                self._buffers[key] = []
            buf = self._buffers.setdefault(key, [])
            if buf and offset <= buf[-1].offset:
                continue  # re-delivered after a rewind: already buffered
            buf.append(
                RawMessage(topic, self._topic_ids.get(topic, ""), partition, offset, msg.value())
            )
            n += 1
        self.stats.consumed += n
        now = time.monotonic()
        if now >= self._next_lag_refresh:  # in the consuming thread: the client is not shared
            self._next_lag_refresh = now + 5.0
            self.refresh_lag()
        return n

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def ready_batches(self) -> list[list[RawMessage]]:
        """One contiguous batch per partition that can be processed now."""
        out = []
        for key, buf in self._buffers.items():
            if not buf:
                continue
            pending = self._pending.get(key)
            if pending is not None:  # handed out before and not committed: the same again
                out.append([m for m in buf if m.offset <= pending])
                continue
            cap = self._caps.get(key)
            if cap is None:
                batch = list(buf)
            elif buf[-1].offset >= cap:
                batch = [m for m in buf if m.offset <= cap]
                self.stats.replayed_batches += 1
            else:
                continue  # wait until the whole batch stored before the crash is buffered
            self._pending[key] = batch[-1].offset
            out.append(batch)
        return out

    def commit(self, batch: list[RawMessage]) -> None:
        """Commit the offset after ``batch`` and drop it from its buffer."""
        assert self._consumer is not None
        last = batch[-1]
        key = (last.topic, last.partition)
        self._consumer.commit(
            offsets=[TopicPartition(last.topic, last.partition, last.offset + 1)],
            asynchronous=False,
        )
        self.stats.committed_batches += 1
        self._committed[key] = last.offset + 1
        self._caps.pop(key, None)
        self._pending.pop(key, None)
        buf = self._buffers.get(key)
        if buf is not None:
            self._buffers[key] = [m for m in buf if m.offset > last.offset]

    def refresh_lag(self) -> dict[str, int]:
        """Messages behind the high watermark, per topic (for /metrics)."""
        assert self._consumer is not None
        lag: dict[str, int] = {}
        for tp in self._consumer.assignment():
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                pos = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            behind = high - pos if pos >= 0 else high
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, behind)
        self.stats.lag = lag
        return lag

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
